//! Writing files so that nobody ever sees a partial file or a file with the wrong mode:
//! a temp file in the target directory, created with its final mode, written, fsynced,
//! then renamed into place and the directory fsynced. Dropping a [`Staged`] file that
//! was never committed removes the temp file.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tempfile::NamedTempFile;

/// A fully written, fsynced temp file waiting to be renamed to `dest`.
pub struct Staged {
    tmp: NamedTempFile,
    dest: PathBuf,
}

/// The directory a path lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `contents` to a temp file next to `dest`, created with `mode` from the start
/// (the umask can only narrow it), and fsyncs it.
pub fn stage(dest: &Path, contents: &[u8], mode: u32) -> Result<Staged> {
    let dir = parent_dir(dest);
    let mut tmp = tempfile::Builder::new()
        .prefix(".cachectl-tmp-")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let write = |f: &mut File| -> io::Result<()> {
        f.write_all(contents)?;
        f.sync_all()
    };
    write(tmp.as_file_mut()).with_context(|| format!("cannot write {}", tmp.path().display()))?;
    Ok(Staged {
        tmp,
        dest: dest.to_path_buf(),
    })
}

impl Staged {
    /// Renames the file into place. Unless `overwrite`, fails if `dest` exists, even if
    /// it appeared after any earlier check.
    pub fn commit(self, overwrite: bool) -> Result<()> {
        let Staged { tmp, dest } = self;
        let result = if overwrite {
            tmp.persist(&dest).map(drop)
        } else {
            tmp.persist_noclobber(&dest).map(drop)
        };
        if let Err(e) = result {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                bail!(
                    "{} already exists; not overwriting it without --force",
                    dest.display()
                );
            }
            return Err(e.error).with_context(|| format!("cannot create {}", dest.display()));
        }
        let dir = parent_dir(&dest);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot fsync directory {}", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn commit_creates_with_mode_and_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        stage(&dest, b"one", 0o600).unwrap().commit(false).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let err = stage(&dest, b"two", 0o600)
            .unwrap()
            .commit(false)
            .unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"one");

        stage(&dest, b"three", 0o644).unwrap().commit(true).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"three");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o644
        );

        // No temp files left behind, committed or not.
        drop(stage(&dest, b"four", 0o600).unwrap());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
    }
}
