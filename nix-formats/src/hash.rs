//! Content hashes as Nix writes them: `algo:nix32`, `algo:base16`, `algo:base64` and SRI
//! (`algo-base64`). NarHash and FileHash are always sha256; the other algorithms are parsed
//! because CA fields and old narinfos carry them.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::Digest;
use thiserror::Error;

use crate::nixbase32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "md5" => Some(HashAlgo::Md5),
            "sha1" => Some(HashAlgo::Sha1),
            "sha256" => Some(HashAlgo::Sha256),
            "sha512" => Some(HashAlgo::Sha512),
            _ => None,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HashError {
    #[error("unknown hash algorithm {0:?}")]
    UnknownAlgo(String),
    #[error("hash {0:?} has no algorithm prefix")]
    NoAlgo(String),
    #[error("{algo} hash has a digest of the wrong length")]
    WrongLength { algo: &'static str },
    #[error("{algo} hash digest is not valid {encoding}")]
    BadEncoding {
        algo: &'static str,
        encoding: &'static str,
    },
}

/// A digest together with its algorithm.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    algo: HashAlgo,
    digest: Vec<u8>,
}

impl Hash {
    /// Wraps a digest; fails when the length does not fit the algorithm.
    pub fn new(algo: HashAlgo, digest: &[u8]) -> Result<Self, HashError> {
        if digest.len() != algo.digest_len() {
            return Err(HashError::WrongLength { algo: algo.name() });
        }
        Ok(Hash {
            algo,
            digest: digest.to_vec(),
        })
    }

    pub fn sha256(digest: [u8; 32]) -> Self {
        Hash {
            algo: HashAlgo::Sha256,
            digest: digest.to_vec(),
        }
    }

    /// sha256 of a byte slice.
    pub fn sha256_of(data: &[u8]) -> Self {
        Self::sha256(sha2::Sha256::digest(data).into())
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    pub fn to_base16(&self) -> String {
        hex::encode(&self.digest)
    }

    pub fn to_nix32(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    pub fn to_base64(&self) -> String {
        B64.encode(&self.digest)
    }

    /// `sha256:<nix32>`, the form narinfo files use.
    pub fn to_nix32_string(&self) -> String {
        format!("{}:{}", self.algo.name(), self.to_nix32())
    }

    /// `sha256-<base64>`, the Subresource Integrity form newer Nix prints.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo.name(), self.to_base64())
    }

    /// `sha256:<base16>`, the form Nix's SQLite database stores.
    pub fn to_base16_string(&self) -> String {
        format!("{}:{}", self.algo.name(), self.to_base16())
    }

    /// Parses a digest of a known algorithm, telling the encoding from its length:
    /// base16, nix32 or base64, as Nix does.
    pub fn parse_digest(algo: HashAlgo, s: &str) -> Result<Self, HashError> {
        let n = algo.digest_len();
        let bad = |encoding| HashError::BadEncoding {
            algo: algo.name(),
            encoding,
        };
        let digest = if s.len() == n * 2 {
            hex::decode(s).map_err(|_| bad("base16"))?
        } else if s.len() == nixbase32::encoded_len(n) {
            nixbase32::decode_exact(s, n).map_err(|_| bad("nix32"))?
        } else if s.len() == n.div_ceil(3) * 4 {
            B64.decode(s).map_err(|_| bad("base64"))?
        } else {
            return Err(HashError::WrongLength { algo: algo.name() });
        };
        Hash::new(algo, &digest)
    }
}

impl FromStr for Hash {
    type Err = HashError;

    /// Accepts `algo:digest` (digest in base16, nix32 or base64) and SRI `algo-base64`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((algo, rest)) = s.split_once(':') {
            let algo = HashAlgo::from_name(algo)
                .ok_or_else(|| HashError::UnknownAlgo(algo.to_string()))?;
            return Hash::parse_digest(algo, rest);
        }
        if let Some((algo, rest)) = s.split_once('-') {
            if let Some(algo) = HashAlgo::from_name(algo) {
                let digest = B64.decode(rest).map_err(|_| HashError::BadEncoding {
                    algo: algo.name(),
                    encoding: "base64",
                })?;
                return Hash::new(algo, &digest);
            }
        }
        Err(HashError::NoAlgo(s.to_string()))
    }
}

/// Displays as `algo:nix32`, the narinfo form.
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32_string())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_nix32_string())
    }
}

/// Incremental sha256, for hashing streams.
#[derive(Default, Clone)]
pub struct Sha256Hasher(sha2::Sha256);

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish(self) -> Hash {
        Hash::sha256(self.0.finalize().into())
    }
}

impl std::io::Write for Sha256Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Read` adapter that hashes (sha256) and counts every byte read through it: NarHash
/// and NarSize of an archive, or FileHash and FileSize of a compressed upload, in the same
/// pass that consumes the bytes.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256Hasher,
    count: u64,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256Hasher::new(),
            count: 0,
        }
    }

    /// Bytes read through the adapter so far.
    pub fn bytes_read(&self) -> u64 {
        self.count
    }

    /// The underlying reader. There is deliberately no `get_mut`: reading around the
    /// adapter would leave bytes out of the hash.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The sha256 and count of everything read.
    pub fn finish(self) -> (Hash, u64) {
        (self.hasher.finish(), self.count)
    }

    /// Like [`finish`](Self::finish), and gives the underlying reader back.
    pub fn into_parts(self) -> (R, Hash, u64) {
        (self.inner, self.hasher.finish(), self.count)
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn parses_every_encoding_to_the_same_hash() {
        let h = Hash::sha256_of(b"");
        for s in [
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{EMPTY_NIX32}"),
            format!("sha256:{EMPTY_B64}"),
            format!("sha256-{EMPTY_B64}"),
        ] {
            assert_eq!(s.parse::<Hash>().unwrap(), h, "{s}");
        }
        assert_eq!(h.to_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(h.to_sri(), format!("sha256-{EMPTY_B64}"));
        assert_eq!(h.to_base16_string(), format!("sha256:{EMPTY_HEX}"));
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            "sha257:abc".parse::<Hash>(),
            Err(HashError::UnknownAlgo(_))
        ));
        assert!(matches!(
            EMPTY_HEX.parse::<Hash>(),
            Err(HashError::NoAlgo(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Hash>(),
            Err(HashError::WrongLength { .. })
        ));
        let bad_nix32 = format!("sha256:{}e", &EMPTY_NIX32[1..]);
        assert!(matches!(
            bad_nix32.parse::<Hash>(),
            Err(HashError::BadEncoding { .. })
        ));
    }

    #[test]
    fn hashing_reader_sees_every_byte() {
        use std::io::Read;
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        let mut small = [0u8; 3];
        r.read_exact(&mut small).unwrap();
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(r.bytes_read(), 100_000);
        assert_eq!(r.finish(), (Hash::sha256_of(&data), 100_000));
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = Sha256Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Hash::sha256_of(b"hello world"));
    }
}
