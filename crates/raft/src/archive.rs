//! A shard snapshot's file: a header (its [`SnapshotMeta`]) followed by a tar archive of
//! the shard's checkpoint directory (`db/` and `segments/`).
//!
//! The header makes the file self-describing, so one atomic rename replaces the current
//! snapshot. A received archive comes from a peer: unpacking refuses entries that would
//! land outside the target directory, and links of any kind.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::SnapshotMeta;

/// Refuses a header longer than this: a meta is a few hundred bytes.
const MAX_HEADER: u32 = 1 << 20;

/// Writes a snapshot file at `to`: `meta`, then every file under `dir`. The file is
/// fsynced.
pub(crate) fn pack(meta: &SnapshotMeta, dir: &Path, to: &Path) -> io::Result<()> {
    let header = postcard::to_allocvec(meta).map_err(io::Error::other)?;
    let mut out = BufWriter::new(File::create(to)?);
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(&header)?;
    let mut archive = tar::Builder::new(out);
    archive.follow_symlinks(false);
    archive.append_dir_all(".", dir)?;
    let file = archive
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Reads a snapshot file's meta and leaves `file` at the start of its archive.
pub(crate) fn read_header(file: &mut File) -> io::Result<SnapshotMeta> {
    file.seek(SeekFrom::Start(0))?;
    let mut len = [0u8; 4];
    file.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot header of {len} bytes: not a Shoal snapshot"),
        ));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)?;
    postcard::from_bytes(&header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Unpacks a snapshot file's archive into `dir` (created; it must not exist) and fsyncs
/// everything written. Returns the file's meta.
pub(crate) fn unpack(file: &mut File, dir: &Path) -> io::Result<SnapshotMeta> {
    let meta = read_header(file)?;
    fs::create_dir(dir)?;
    let mut archive = tar::Archive::new(BufReader::new(&mut *file));
    archive.set_preserve_permissions(false);
    archive.set_overwrite(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot entry {} is neither a file nor a directory",
                    entry.path()?.display()
                ),
            ));
        }
        // False for a path that would leave `dir` (tar refuses those).
        if !entry.unpack_in(dir)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot entry {} leaves its directory",
                    entry.path()?.display()
                ),
            ));
        }
    }
    sync_tree(dir)?;
    Ok(meta)
}

/// Fsyncs every file and directory under `dir`, and `dir` itself.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Fsyncs a directory, so the names created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "s".into(),
        }
    }

    #[test]
    fn a_directory_survives_packing_and_unpacking() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(source.join("segments/1")).unwrap();
        fs::write(source.join("segments/1/seg"), b"index").unwrap();
        fs::write(source.join("CURRENT"), b"db").unwrap();
        let file = dir.path().join("snapshot");
        pack(&meta(), &source, &file).unwrap();
        let target = dir.path().join("target");
        let got = unpack(&mut File::open(&file).unwrap(), &target).unwrap();
        assert_eq!(got, meta());
        assert_eq!(fs::read(target.join("segments/1/seg")).unwrap(), b"index");
        assert_eq!(fs::read(target.join("CURRENT")).unwrap(), b"db");
    }

    #[test]
    fn entries_that_leave_the_directory_or_are_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (name, kind) in [
            ("../escape", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
        ] {
            let file = dir.path().join(format!("snapshot-{kind:?}"));
            let header = postcard::to_allocvec(&meta()).unwrap();
            let mut out = File::create(&file).unwrap();
            out.write_all(&(header.len() as u32).to_le_bytes()).unwrap();
            out.write_all(&header).unwrap();
            let mut archive = tar::Builder::new(out);
            let mut entry = tar::Header::new_gnu();
            entry.set_entry_type(kind);
            entry.set_size(1);
            entry.set_mode(0o644);
            // `set_path` refuses `..`; write the name bytes as a hostile sender would.
            entry.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if kind == tar::EntryType::Symlink {
                entry.set_link_name("/etc/passwd").unwrap();
            }
            entry.set_cksum();
            archive.append(&entry, &b"x"[..]).unwrap();
            archive.finish().unwrap();
            drop(archive);
            let target = dir.path().join(format!("target-{kind:?}"));
            let err = unpack(&mut File::open(&file).unwrap(), &target).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
            assert!(!dir.path().join("escape").exists());
        }
    }
}
