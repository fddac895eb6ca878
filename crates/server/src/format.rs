//! The data directory's format version, in a `FORMAT` file written when a node first uses
//! the directory. The state inside (RocksDB values, Raft logs and snapshots) is postcard,
//! which carries no field names and no version: read by a build with other types it would be
//! misread, not refused. So a node refuses a directory of another format, with a clear error.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::Path;

use anyhow::{bail, Context};

/// The format this build writes and reads. 1: up to the third session of 2026-11-26 (no
/// feature services or vectorizers in the layout); 2: since.
pub const DATA_FORMAT: u32 = 2;

/// Checks `dir`'s format, writing it (durably) into a directory that has no state yet.
pub fn check_or_init(dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("FORMAT");
    match fs::read_to_string(&file) {
        Ok(text) => {
            let found: u32 = text
                .trim()
                .parse()
                .with_context(|| format!("{} is not a format number", file.display()))?;
            if found != DATA_FORMAT {
                bail!(
                    "{} holds data of format {found}; this build reads format {DATA_FORMAT}: \
                     run the release that wrote it, or start a new data directory and reload",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if dir.join("meta").exists() || dir.join("groups").exists() {
                bail!(
                    "{} holds data written before data directories had a FORMAT file (format \
                     1); this build reads format {DATA_FORMAT}: start a new data directory and \
                     reload",
                    dir.display()
                );
            }
            let partial = dir.join("FORMAT.partial");
            let mut out = fs::File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?;
            writeln!(out, "{DATA_FORMAT}")?;
            out.sync_all()?;
            fs::rename(&partial, &file)?;
            fs::File::open(dir)?.sync_all()?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_the_format_and_others_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        check_or_init(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("FORMAT"))
                .unwrap()
                .trim(),
            DATA_FORMAT.to_string()
        );
        check_or_init(dir.path()).unwrap();

        fs::write(dir.path().join("FORMAT"), "1\n").unwrap();
        let err = check_or_init(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format 1"), "{err}");

        let old = tempfile::tempdir().unwrap();
        fs::create_dir(old.path().join("meta")).unwrap();
        let err = check_or_init(old.path()).unwrap_err().to_string();
        assert!(
            err.contains("before data directories had a FORMAT file"),
            "{err}"
        );
        assert!(
            !old.path().join("FORMAT").exists(),
            "nothing written into old data"
        );
    }
}
