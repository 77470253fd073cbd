//! narinfo files: parsing and rendering (byte-for-byte round trip of what
//! `nix copy --to file://` writes) and signature fingerprints.
//!
//! A narinfo is `Key: value` lines, each ending in `\n`. Nix ignores keys it does not
//! know, so we do too (they are dropped on render); every other deviation is an error.

use std::fmt::Write as _;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NarInfoError {
    #[error("line {0} is not of the form 'Key: value'")]
    BadLine(usize),
    #[error("field {0} appears more than once")]
    Duplicate(&'static str),
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("field {field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// What Nix assumes when a narinfo has no `Compression` line: binary caches predating
/// the field compressed with bzip2.
pub const DEFAULT_COMPRESSION: &str = "bzip2";

/// A parsed narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_dir: StoreDir,
    pub store_path: StorePath,
    pub url: String,
    pub compression: String,
    pub file_hash: Option<Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

/// The fields with a meaning; each may appear once, except `Sig`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    StorePath,
    Url,
    Compression,
    FileHash,
    FileSize,
    NarHash,
    NarSize,
    References,
    Deriver,
    System,
    Ca,
}

impl Field {
    const ALL: [Field; 11] = [
        Field::StorePath,
        Field::Url,
        Field::Compression,
        Field::FileHash,
        Field::FileSize,
        Field::NarHash,
        Field::NarSize,
        Field::References,
        Field::Deriver,
        Field::System,
        Field::Ca,
    ];

    fn key(self) -> &'static str {
        match self {
            Field::StorePath => "StorePath",
            Field::Url => "URL",
            Field::Compression => "Compression",
            Field::FileHash => "FileHash",
            Field::FileSize => "FileSize",
            Field::NarHash => "NarHash",
            Field::NarSize => "NarSize",
            Field::References => "References",
            Field::Deriver => "Deriver",
            Field::System => "System",
            Field::Ca => "CA",
        }
    }
}

fn invalid(field: &'static str, reason: impl ToString) -> NarInfoError {
    NarInfoError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

/// A decimal size as Nix writes it: digits only, no sign or spaces.
fn parse_size(field: &'static str, value: &str) -> Result<u64, NarInfoError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(field, "not a decimal number"));
    }
    value.parse().map_err(|_| invalid(field, "out of range"))
}

fn parse_hash(field: &'static str, value: &str) -> Result<Hash, NarInfoError> {
    value.parse::<Hash>().map_err(|e| invalid(field, e))
}

/// A content address: `text:<hash>`, `fixed:<hash>`, `fixed:r:<hash>` or
/// `fixed:git:<hash>`, where `<hash>` is `algo:digest`. Kept as text; checked so a
/// corrupt one is refused at the door rather than handed on to clients.
fn check_ca(value: &str) -> Result<(), NarInfoError> {
    let mut parts = value.rsplitn(3, ':');
    let (digest, algo, method) = (parts.next(), parts.next(), parts.next());
    let (Some(digest), Some(algo), Some(method)) = (digest, algo, method) else {
        return Err(invalid("CA", "not a content address"));
    };
    if !matches!(method, "text" | "fixed" | "fixed:r" | "fixed:git") {
        return Err(invalid("CA", "unknown content address method"));
    }
    parse_hash("CA", &format!("{algo}:{digest}")).map(drop)
}

impl NarInfo {
    /// Parses a narinfo as Nix writes it. The store directory is whatever precedes the
    /// last `/` of `StorePath`.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut seen = [false; Field::ALL.len()];
        let mut store: Option<(StoreDir, StorePath)> = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut system = None;
        let mut sigs = Vec::new();
        let mut ca = None;

        // Nix ends every line with '\n'; a missing one at the very end is forgiven.
        let body = text.strip_suffix('\n').unwrap_or(text);
        for (i, line) in body.split('\n').enumerate() {
            let (key, value) = line.split_once(": ").ok_or(NarInfoError::BadLine(i + 1))?;
            if key == "Sig" {
                if value.is_empty() || !value.contains(':') {
                    return Err(invalid("Sig", "not of the form 'keyname:signature'"));
                }
                sigs.push(value.to_string());
                continue;
            }
            let Some(index) = Field::ALL.iter().position(|f| f.key() == key) else {
                continue;
            };
            let field = Field::ALL[index];
            let name = field.key();
            if std::mem::replace(&mut seen[index], true) {
                return Err(NarInfoError::Duplicate(name));
            }
            match field {
                Field::StorePath => {
                    let (dir, _) = value
                        .rsplit_once('/')
                        .ok_or_else(|| invalid(name, "not an absolute path"))?;
                    let dir = StoreDir::new(dir).map_err(|e| invalid(name, e))?;
                    let path = dir.parse_path(value).map_err(|e| invalid(name, e))?;
                    store = Some((dir, path));
                }
                Field::Url => {
                    if value.is_empty() {
                        return Err(invalid(name, "empty"));
                    }
                    url = Some(value.to_string());
                }
                // Nix treats an empty value like a missing line.
                Field::Compression => {
                    compression = Some(value).filter(|v| !v.is_empty()).map(str::to_string)
                }
                Field::FileHash => file_hash = Some(parse_hash(name, value)?),
                Field::FileSize => file_size = Some(parse_size(name, value)?),
                Field::NarHash => {
                    let hash = parse_hash(name, value)?;
                    // Fingerprints, and so signatures, are defined over a sha256.
                    if hash.algo() != HashAlgo::Sha256 {
                        return Err(invalid(name, "not a sha256 hash"));
                    }
                    nar_hash = Some(hash);
                }
                Field::NarSize => {
                    let size = parse_size(name, value)?;
                    // No archive is empty; Nix rejects this too.
                    if size == 0 {
                        return Err(invalid(name, "zero"));
                    }
                    nar_size = Some(size);
                }
                Field::References => {
                    references = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(StorePath::from_base_name)
                        .collect::<Result<_, _>>()
                        .map_err(|e| invalid(name, e))?;
                }
                // Old caches wrote a placeholder for "no deriver".
                Field::Deriver if value == "unknown-deriver" => {}
                Field::Deriver => {
                    deriver = Some(StorePath::from_base_name(value).map_err(|e| invalid(name, e))?)
                }
                Field::System => system = Some(value).filter(|v| !v.is_empty()).map(str::to_string),
                Field::Ca if value.is_empty() => {}
                Field::Ca => {
                    check_ca(value)?;
                    ca = Some(value.to_string());
                }
            }
        }

        let (store_dir, store_path) = store.ok_or(NarInfoError::Missing("StorePath"))?;
        Ok(NarInfo {
            store_dir,
            store_path,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            compression: compression.unwrap_or_else(|| DEFAULT_COMPRESSION.to_string()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references,
            deriver,
            system,
            sigs,
            ca,
        })
    }

    /// Writes the narinfo with Nix's field order and spelling, so a file written by Nix
    /// renders back to the same bytes. `References` is always present, with its
    /// trailing space when empty, as Nix writes it.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(512 + 80 * self.references.len());
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "StorePath: {}",
            self.store_dir.display(&self.store_path)
        );
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {}", h.to_nix32_string());
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(out, "FileSize: {n}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash.to_nix32_string());
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        out.push_str("References:");
        for r in &self.references {
            out.push(' ');
            out.push_str(&r.base_name());
        }
        if self.references.is_empty() {
            out.push(' ');
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {d}");
        }
        if let Some(s) = &self.system {
            let _ = writeln!(out, "System: {s}");
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// The string Nix signs: `1;<path>;<narhash>;<narsize>;<refs,comma-separated>`.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }
}

/// The signature fingerprint of a path: full store paths, the NarHash as
/// `sha256:<nix32>`, references comma-separated in the order given (Nix passes them
/// sorted).
pub fn fingerprint(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut out = format!(
        "1;{};{};{};",
        store_dir.display(path),
        nar_hash.to_nix32_string(),
        nar_size
    );
    for (i, r) in references.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&store_dir.display(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `nix copy --to file://` (Nix 2.8), signed with `nix store sign`.
    const SIGNED: &str = "\
StorePath: /nix/store/33lpbm8skx86vnzkzbynk6h3qpqbbp1c-golden-b
URL: nar/08vx6cip2cb3jxwzc247qfhc1nnkf6kpgac0jy33vvibsqzkqb3s.nar.xz
Compression: xz
FileHash: sha256:08vx6cip2cb3jxwzc247qfhc1nnkf6kpgac0jy33vvibsqzkqb3s
FileSize: 304
NarHash: sha256:02dgji62zgbkx9jii9dwx8raradf8pz03sssjl4xc85r1skhhmvm
NarSize: 632
References: 33lpbm8skx86vnzkzbynk6h3qpqbbp1c-golden-b 3xa6d6rjmpix3gcm468fr9h9asamhs34-golden-a qgc4awl7mw7nsa43r84wqczrqnsz9q0a-golden-text
Deriver: z60x3h8a0gdsq4s7g639ydy7215aka5g-golden-b.drv
Sig: golden-1:ssHDo8+J9viZHQI3rqeh/9F/Vwu91drEsnOPeZj7pmWO0zLwQFMpVRRSIVXUNttTZpQNE2cS2byVuBK4+6QPCQ==
";

    /// A path added with `nix-store --add`: no references (note the trailing space), CA.
    const ADDED: &str = "\
StorePath: /nix/store/if2qk5kd7ly6z29h8iixaab040gg7brn-added.txt
URL: nar/0al2xxy2pbhmgi79rciqm11z1q0praxjb1kkk1prfccmf63yilgl.nar.xz
Compression: xz
FileHash: sha256:0al2xxy2pbhmgi79rciqm11z1q0praxjb1kkk1prfccmf63yilgl
FileSize: 136
NarHash: sha256:1hhxhxprf0ky7hrzwdnv2s258mwnkcavrmbklgg4hk6yz7gd7mqd
NarSize: 128
References: 
CA: fixed:r:sha256:1hhxhxprf0ky7hrzwdnv2s258mwnkcavrmbklgg4hk6yz7gd7mqd
";

    const MINIMAL: &str = "\
StorePath: /nix/store/if2qk5kd7ly6z29h8iixaab040gg7brn-added.txt
URL: nar/x.nar
NarHash: sha256:1hhxhxprf0ky7hrzwdnv2s258mwnkcavrmbklgg4hk6yz7gd7mqd
NarSize: 128
";

    #[test]
    fn parses_what_nix_writes() {
        let ni = NarInfo::parse(SIGNED).unwrap();
        assert_eq!(ni.store_dir.as_str(), "/nix/store");
        assert_eq!(
            ni.store_path.base_name(),
            "33lpbm8skx86vnzkzbynk6h3qpqbbp1c-golden-b"
        );
        assert_eq!(ni.compression, "xz");
        assert_eq!(ni.file_size, Some(304));
        assert_eq!(ni.nar_size, 632);
        assert_eq!(ni.references.len(), 3);
        assert_eq!(ni.references[0], ni.store_path, "self-reference kept");
        assert_eq!(ni.deriver.as_ref().unwrap().name(), "golden-b.drv");
        assert_eq!(ni.sigs.len(), 1);
        assert_eq!(ni.render(), SIGNED);
        // Nix's own signature over exactly this string verifies (checked with the
        // signer crate when this fixture was captured).
        assert_eq!(
            ni.fingerprint(),
            "1;/nix/store/33lpbm8skx86vnzkzbynk6h3qpqbbp1c-golden-b;\
             sha256:02dgji62zgbkx9jii9dwx8raradf8pz03sssjl4xc85r1skhhmvm;632;\
             /nix/store/33lpbm8skx86vnzkzbynk6h3qpqbbp1c-golden-b,\
             /nix/store/3xa6d6rjmpix3gcm468fr9h9asamhs34-golden-a,\
             /nix/store/qgc4awl7mw7nsa43r84wqczrqnsz9q0a-golden-text"
        );

        let ni = NarInfo::parse(ADDED).unwrap();
        assert!(ni.references.is_empty());
        assert!(ni.ca.as_deref().unwrap().starts_with("fixed:r:sha256:"));
        assert_eq!(ni.render(), ADDED);
        assert!(ni.fingerprint().ends_with(";128;"), "{}", ni.fingerprint());
    }

    #[test]
    fn defaults_and_leniencies() {
        let ni = NarInfo::parse(MINIMAL).unwrap();
        assert_eq!(ni.compression, DEFAULT_COMPRESSION);
        assert_eq!((ni.file_hash.clone(), ni.file_size), (None, None));
        let rendered = ni.render();
        assert!(rendered.contains("Compression: bzip2\nNarHash"));
        assert!(rendered.ends_with("NarSize: 128\nReferences: \n"));

        // Unknown keys are ignored (and dropped), as Nix does; so is "Deriver:
        // unknown-deriver"; the final newline may be missing; hashes in any encoding.
        let text = format!(
            "{MINIMAL}Frobnicate: yes\nFrobnicate: twice\nDeriver: unknown-deriver\n\
             System: x86_64-linux\nFileHash: sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        let ni = NarInfo::parse(&text).unwrap();
        assert_eq!(ni.deriver, None);
        assert_eq!(ni.system.as_deref(), Some("x86_64-linux"));
        assert_eq!(ni.file_hash, Some(Hash::sha256_of(b"")));
        assert!(!ni.render().contains("Frobnicate"));
        assert!(ni.render().contains("References: \nSystem: x86_64-linux\n"));

        // Another store directory comes from the StorePath line.
        let other = MINIMAL.replace("/nix/store/", "/gnu/store/");
        let ni = NarInfo::parse(&other).unwrap();
        assert_eq!(ni.store_dir.as_str(), "/gnu/store");
        assert!(ni.fingerprint().starts_with("1;/gnu/store/if2q"));
        assert_eq!(NarInfo::parse(&ni.render()).unwrap(), ni);
    }

    #[test]
    fn field_order_of_render() {
        let mut ni = NarInfo::parse(SIGNED).unwrap();
        ni.system = Some("x86_64-linux".into());
        ni.sigs.push("other-1:c2ln".into());
        ni.ca = Some("text:sha256:0p2ak661524h4j7q6d7bz3aw0298b1dgww1gyrmirgb8mdwj20hl".into());
        let keys: Vec<_> = ni
            .render()
            .lines()
            .map(|l| l.split_once(": ").unwrap().0.to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "StorePath",
                "URL",
                "Compression",
                "FileHash",
                "FileSize",
                "NarHash",
                "NarSize",
                "References",
                "Deriver",
                "System",
                "Sig",
                "Sig",
                "CA"
            ]
        );
        assert_eq!(NarInfo::parse(&ni.render()).unwrap(), ni);
    }

    #[test]
    fn rejects_malformed() {
        use NarInfoError as E;
        let replace = |from: &str, to: &str| {
            assert!(MINIMAL.contains(from), "{from}");
            MINIMAL.replacen(from, to, 1)
        };
        let cases: Vec<(String, E)> = vec![
            (String::new(), E::BadLine(1)),
            (format!("{MINIMAL}\n"), E::BadLine(5)),
            (format!("{MINIMAL}garbage\n"), E::BadLine(5)),
            (replace("URL: ", "URL:"), E::BadLine(2)),
            (format!("{MINIMAL}NarSize: 128\n"), E::Duplicate("NarSize")),
            (format!("{MINIMAL}URL: y\n"), E::Duplicate("URL")),
            (
                format!("{MINIMAL}Compression: xz\nCompression: xz\n"),
                E::Duplicate("Compression"),
            ),
            (replace("URL: nar/x.nar\n", ""), E::Missing("URL")),
            (replace("NarSize: 128\n", ""), E::Missing("NarSize")),
            (
                replace(
                    "NarHash: sha256:1hhxhxprf0ky7hrzwdnv2s258mwnkcavrmbklgg4hk6yz7gd7mqd\n",
                    "",
                ),
                E::Missing("NarHash"),
            ),
            (
                replace(
                    "StorePath: /nix/store/if2qk5kd7ly6z29h8iixaab040gg7brn-added.txt\n",
                    "",
                ),
                E::Missing("StorePath"),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(NarInfo::parse(&text), Err(want), "{text:?}");
        }

        let invalid = [
            ("StorePath", replace("/nix/store/if2q", "nix/store/if2q")),
            ("StorePath", replace("/nix/store/if2q", "/nix/store//if2q")),
            ("StorePath", replace("if2qk5kd7ly6z29h8iixaab040gg7brn", "if2qk5kd7ly6z29h8iixaab040gg7bre")),
            ("StorePath", replace("-added.txt", "")),
            ("URL", replace("nar/x.nar", "")),
            ("NarHash", replace("sha256:1hhx", "sha256:1hh")),
            ("NarHash", replace("sha256:1hhx", "sha257:1hhx")),
            ("NarHash", replace("sha256:1hhxhxprf0ky7hrzwdnv2s258mwnkcavrmbklgg4hk6yz7gd7mqd", "sha1:0000000000000000000000000000000000000000")),
            ("NarSize", replace("NarSize: 128", "NarSize: 0")),
            ("NarSize", replace("NarSize: 128", "NarSize: -1")),
            ("NarSize", replace("NarSize: 128", "NarSize: +128")),
            ("NarSize", replace("NarSize: 128", "NarSize: 128 ")),
            ("NarSize", replace("NarSize: 128", "NarSize: 99999999999999999999999")),
            ("FileSize", format!("{MINIMAL}FileSize: x\n")),
            ("FileHash", format!("{MINIMAL}FileHash: md5:abc\n")),
            ("References", format!("{MINIMAL}References: /nix/store/if2qk5kd7ly6z29h8iixaab040gg7brn-a\n")),
            ("References", format!("{MINIMAL}References: if2qk5kd7ly6z29h8iixaab040gg7brn\n")),
            ("Deriver", format!("{MINIMAL}Deriver: \n")),
            ("Deriver", format!("{MINIMAL}Deriver: x.drv\n")),
            ("Sig", format!("{MINIMAL}Sig: \n")),
            ("Sig", format!("{MINIMAL}Sig: nocolon\n")),
            ("CA", format!("{MINIMAL}CA: sha256:abc\n")),
            ("CA", format!("{MINIMAL}CA: fixed:x:sha256:1hhxhxprf0ky7hrzwdnv2s258mwnkcavrmbklgg4hk6yz7gd7mqd\n")),
            ("CA", format!("{MINIMAL}CA: text:sha256:1hhx\n")),
        ];
        for (field, text) in invalid {
            match NarInfo::parse(&text) {
                Err(E::Invalid { field: f, .. }) if f == field => {}
                other => panic!("{field}: {text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn fingerprint_with_other_store_dir() {
        let dir = StoreDir::new("/tmp/store").unwrap();
        let a = StorePath::from_base_name("if2qk5kd7ly6z29h8iixaab040gg7brn-a").unwrap();
        let b = StorePath::from_base_name("3xa6d6rjmpix3gcm468fr9h9asamhs34-b").unwrap();
        let h = Hash::sha256_of(b"");
        assert_eq!(
            fingerprint(&dir, &a, &h, 8, &[a.clone(), b]),
            format!(
                "1;/tmp/store/if2qk5kd7ly6z29h8iixaab040gg7brn-a;{h};8;\
                 /tmp/store/if2qk5kd7ly6z29h8iixaab040gg7brn-a,\
                 /tmp/store/3xa6d6rjmpix3gcm468fr9h9asamhs34-b"
            )
        );
        assert_eq!(
            fingerprint(&dir, &a, &h, 8, &[]),
            format!("1;/tmp/store/if2qk5kd7ly6z29h8iixaab040gg7brn-a;{h};8;")
        );
    }
}
