//! The output paths a derivation file names, for queue entries that carry only
//! `DRV_PATH`: Nix 2.8.0 runs the post-build-hook with `OUT_PATHS` empty
//! (NixOS/nix#6446), so the uploader reads the outputs from the `.drv` itself.
//!
//! Only the first list of the ATerm (`Derive([("out","/nix/store/…","",""),…],…`) is
//! read. Floating content-addressed derivations leave the paths empty there; those
//! are refused with a reason rather than guessed.

use anyhow::{bail, Context, Result};

/// The non-empty output paths of a derivation, in the order the file lists them.
pub fn outputs(text: &str) -> Result<Vec<String>> {
    let mut p = Parser { rest: text };
    p.expect("Derive([")?;
    let mut paths = Vec::new();
    if p.eat("]") {
        return Ok(paths);
    }
    loop {
        p.expect("(")?;
        let _name = p.string()?;
        p.expect(",")?;
        let path = p.string()?;
        for _ in 0..2 {
            p.expect(",")?;
            p.string()?;
        }
        p.expect(")")?;
        if !path.is_empty() {
            paths.push(path);
        }
        if p.eat("]") {
            return Ok(paths);
        }
        p.expect(",")?;
    }
}

/// The outputs of the derivation in file `drv`.
pub fn outputs_of_file(drv: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(drv)
        .with_context(|| format!("cannot read the derivation {}", drv.display()))?;
    let paths =
        outputs(&text).with_context(|| format!("cannot parse the derivation {}", drv.display()))?;
    if paths.is_empty() {
        bail!(
            "the derivation {} names no output paths (content-addressed?) and Nix gave no OUT_PATHS",
            drv.display()
        );
    }
    Ok(paths)
}

struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn eat(&mut self, token: &str) -> bool {
        match self.rest.strip_prefix(token) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, token: &str) -> Result<()> {
        if !self.eat(token) {
            bail!("expected {token:?}");
        }
        Ok(())
    }

    /// A quoted string with ATerm escapes (`\"`, `\\`, `\n`, `\r`, `\t`).
    fn string(&mut self) -> Result<String> {
        self.expect("\"")?;
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, c)) => out.push(c),
                    None => break,
                },
                c => out.push(c),
            }
        }
        bail!("unterminated string")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_of_a_real_looking_derivation() {
        let drv = r#"Derive([("doc","/nix/store/1ngbffk3kp4lzrpq1wqxr1d6s8q9x8l5-hooked-doc","",""),("out","/nix/store/mnxlj1gif8ws6hiz7n61qbhdq4db950j-hooked","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo \"$SALT\" > $out; echo doc\\n $SALT > $doc"],[("SALT","1"),("builder","/bin/sh")])"#;
        assert_eq!(
            outputs(drv).unwrap(),
            [
                "/nix/store/1ngbffk3kp4lzrpq1wqxr1d6s8q9x8l5-hooked-doc",
                "/nix/store/mnxlj1gif8ws6hiz7n61qbhdq4db950j-hooked"
            ]
        );
    }

    #[test]
    fn fixed_output_and_floating_outputs() {
        let fixed = r#"Derive([("out","/nix/store/abc-src","sha256","0a1b")],[],[])"#;
        assert_eq!(outputs(fixed).unwrap(), ["/nix/store/abc-src"]);
        let floating = r#"Derive([("out","","r:sha256","")],[],[])"#;
        assert!(outputs(floating).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            "",
            "Derive(",
            "Derive([(\"out\"",
            "Foo([])",
            "Derive([(\"out\",\"/p\",\"\",\"\"]",
        ] {
            assert!(outputs(bad).is_err(), "{bad:?}");
        }
    }
}
