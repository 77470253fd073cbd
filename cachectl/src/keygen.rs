//! `cachectl keygen`: a new signing key pair, in the files and format Nix uses.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Result};
use signer::SecretKey;

use crate::files;

/// Generate a Nix binary cache signing key pair
///
/// Writes the secret key to SECRET_FILE (mode 0600, created that way: it is never
/// readable by others, not even briefly) and the public key to PUBLIC_FILE (mode 0644
/// less the umask), in the same format as `nix-store --generate-binary-cache-key`, then
/// prints the public key, ready for `trusted-public-keys`. Existing files are left alone unless --force.
#[derive(clap::Args)]
pub struct Args {
    /// Key name, conventionally the cache's host name and a number, e.g.
    /// `cache.example.org-1`. It becomes part of every signature.
    name: String,
    /// Where to write the secret key.
    secret_file: PathBuf,
    /// Where to write the public key.
    public_file: PathBuf,
    /// Replace SECRET_FILE and PUBLIC_FILE if they exist.
    #[arg(long)]
    force: bool,
    /// Print a JSON object (name, public_key, secret_file, public_file) instead of the
    /// bare public key.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let key = SecretKey::generate(&args.name)?;
    let public = key.public().to_string();

    if same_file(&args.secret_file, &args.public_file) {
        bail!("the secret and public key files must be different files");
    }
    if !args.force {
        for path in [&args.secret_file, &args.public_file] {
            if fs::symlink_metadata(path).is_ok() {
                bail!(
                    "{} already exists; not overwriting it without --force",
                    path.display()
                );
            }
        }
    }

    // Stage both first, so that a failure leaves neither half behind.
    let secret = files::stage(&args.secret_file, key.to_file_text().as_bytes(), 0o600)?;
    let public_staged = files::stage(&args.public_file, public.as_bytes(), 0o644)?;
    secret.commit(args.force)?;
    if let Err(e) = public_staged.commit(args.force) {
        // Without --force the secret file did not exist before (the rename refuses to
        // replace), so removing it leaves things as we found them.
        if !args.force {
            let _ = fs::remove_file(&args.secret_file);
        }
        return Err(e);
    }

    if args.json {
        let out = serde_json::json!({
            "name": key.name(),
            "public_key": public,
            "secret_file": args.secret_file,
            "public_file": args.public_file,
        });
        println!("{out}");
    } else {
        println!("{public}");
    }
    Ok(())
}

/// Whether two paths name one file: equal as given, or the same existing inode.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::Args,
    }

    #[test]
    fn parses() {
        let cli = Cli::try_parse_from(["keygen", "n-1", "s", "p", "--force"]).unwrap();
        assert_eq!(cli.args.name, "n-1");
        assert!(cli.args.force && !cli.args.json);
        assert!(Cli::try_parse_from(["keygen", "n-1", "s"]).is_err());
    }
}
