//! Content digests of what a COPY/ADD or a bind mount selects from a context: names,
//! kinds, modes, sizes, link targets and file contents, never times or owners (files from
//! a context always arrive as 0:0 or the `--chown` owner, so owners cannot change a
//! layer). A file's content digest is remembered by its (device, inode, size, mtime,
//! ctime), so an unchanged file is read once.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use super::{BuildContext, EntryKind};
use crate::store::index::FileKey;
use crate::store::{Digest, FieldHasher};

/// Remembered file digests: looked up before a file is read, filled after.
pub trait ContentMemo {
    /// The digest remembered for a file with this key, if any.
    fn get(&mut self, key: &FileKey) -> Option<Digest>;
    /// Remembers a digest.
    fn put(&mut self, key: FileKey, digest: Digest);
}

/// A memo that remembers nothing (every file is read).
#[derive(Debug, Default)]
pub struct NoMemo;

impl ContentMemo for NoMemo {
    fn get(&mut self, _: &FileKey) -> Option<Digest> {
        None
    }
    fn put(&mut self, _: FileKey, _: Digest) {}
}

/// A file changed this recently may change again within the same timestamp tick without
/// its (size, mtime, ctime) changing: its digest is not remembered.
const RACY_SECS: i64 = 2;

impl BuildContext {
    /// The digest of what the sources `srcs` (as a COPY writes them) select.
    pub fn digest_sources(&self, srcs: &[String], memo: &mut dyn ContentMemo) -> Result<Digest> {
        let mut h = FieldHasher::new("rbuild-sources-v1");
        h.u64("sources", srcs.len() as u64);
        for src in srcs {
            let matches = self.resolve_some(src)?;
            h.u64("matches", matches.len() as u64);
            for m in &matches {
                h.str("match", &m.rel_path);
                let meta = fs::metadata(&m.host_path)
                    .with_context(|| format!("cannot read {:?}", m.rel_path))?;
                let declared = self.declared(&m.host_path);
                entry(&mut h, "", &m.host_path, &meta, declared, memo)?;
                if m.kind == EntryKind::Dir {
                    for e in self.walk(m)? {
                        crate::cancel::Cancel.check()?;
                        let declared = self.declared(&e.host_path);
                        entry(
                            &mut h,
                            &e.rel_path,
                            &e.host_path,
                            &e.metadata,
                            declared,
                            memo,
                        )?;
                    }
                }
            }
        }
        Ok(h.finish())
    }
}

/// Adds one entry: its path, kind, mode, what it holds and the xattrs a layer keeps.
fn entry(
    h: &mut FieldHasher,
    rel: &str,
    host: &Path,
    meta: &fs::Metadata,
    declared: Option<super::Declared>,
    memo: &mut dyn ContentMemo,
) -> Result<()> {
    let ft = meta.file_type();
    h.str("path", rel).u64(
        "mode",
        u64::from(declared.map_or(meta.mode() & 0o7777, |d| d.mode)),
    );
    if let Some(device) = declared.and_then(|d| d.device) {
        h.str("kind", "device")
            .str("device", &format!("{device:?}"));
    } else if ft.is_file() {
        h.str("kind", "file")
            .u64("size", meta.size())
            .str("content", &file_digest(host, meta, memo)?.to_string());
    } else if ft.is_dir() {
        h.str("kind", "dir");
    } else if ft.is_symlink() {
        let target = fs::read_link(host).with_context(|| format!("cannot read {rel:?}"))?;
        h.str("kind", "symlink")
            .bytes("target", target.as_os_str().as_encoded_bytes());
    } else if ft.is_fifo() {
        h.str("kind", "fifo");
    } else {
        h.str("kind", "other").u64("rdev", meta.rdev());
    }
    if !ft.is_symlink() {
        // COPY keeps them, so they are part of what a source holds.
        let xattrs = crate::xattrs::kept(host);
        h.u64("xattrs", xattrs.len() as u64);
        for (name, value) in &xattrs {
            h.str("xattr", name).bytes("value", value);
        }
    }
    Ok(())
}

/// The content digest of a regular file, from the memo when its key is known.
fn file_digest(path: &Path, meta: &fs::Metadata, memo: &mut dyn ContentMemo) -> Result<Digest> {
    let key = FileKey::of(meta);
    if let Some(d) = memo.get(&key) {
        return Ok(d);
    }
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut crate::cancel::Cancellable(&mut f), &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let digest = Digest::from_sha256(hasher.finalize().into());
    // Read back: the file must not have changed while it was read.
    let after = f.metadata()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if FileKey::of(&after) == key && after.ctime() < now - RACY_SECS {
        memo.put(key, digest.clone());
    }
    Ok(digest)
}

/// A memo over a preloaded map, collecting new digests to be saved in one go.
#[derive(Debug, Default)]
pub struct MapMemo {
    known: HashMap<(u64, u64), (FileKey, Digest)>,
    /// Digests found since loading, to be saved.
    pub found: Vec<(FileKey, Digest)>,
}

impl MapMemo {
    /// A memo that knows `rows`.
    pub fn new(rows: Vec<(FileKey, Digest)>) -> MapMemo {
        MapMemo {
            known: rows
                .into_iter()
                .map(|(k, d)| ((k.dev, k.ino), (k, d)))
                .collect(),
            found: Vec::new(),
        }
    }
}

impl ContentMemo for MapMemo {
    fn get(&mut self, key: &FileKey) -> Option<Digest> {
        match self.known.get(&(key.dev, key.ino)) {
            Some((k, d)) if k == key => Some(d.clone()),
            _ => None,
        }
    }

    fn put(&mut self, key: FileKey, digest: Digest) {
        self.known.insert((key.dev, key.ino), (key, digest.clone()));
        self.found.push((key, digest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(ctx: &BuildContext, srcs: &[&str]) -> Digest {
        let srcs: Vec<String> = srcs.iter().map(|s| s.to_string()).collect();
        ctx.digest_sources(&srcs, &mut NoMemo).unwrap()
    }

    #[test]
    fn content_and_mode_count_times_do_not() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/a"), "one").unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let first = digest(&ctx, &["d"]);
        filetime::set_file_mtime(
            t.path().join("d/a"),
            filetime::FileTime::from_unix_time(1, 0),
        )
        .unwrap();
        assert_eq!(digest(&ctx, &["d"]), first, "mtime changed the digest");
        fs::write(t.path().join("d/a"), "two").unwrap();
        let changed = digest(&ctx, &["d"]);
        assert_ne!(changed, first);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(t.path().join("d/a"), fs::Permissions::from_mode(0o600)).unwrap();
        let chmodded = digest(&ctx, &["d"]);
        assert_ne!(chmodded, changed);
        // COPY keeps user.* xattrs, so they count; the filesystems here support them.
        xattr::set(t.path().join("d/a"), "user.note", b"1").unwrap();
        assert_ne!(digest(&ctx, &["d"]), chmodded, "an xattr did not count");
        // The same file named two ways is two selections.
        fs::write(t.path().join("b"), "x").unwrap();
        assert_ne!(digest(&ctx, &["d", "b"]), digest(&ctx, &["b", "d"]));
        assert!(ctx
            .digest_sources(&["missing".to_string()], &mut NoMemo)
            .is_err());
    }

    #[test]
    fn the_memo_is_used_and_filled_only_for_settled_files() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), "one").unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let mut memo = MapMemo::default();
        let d = ctx.digest_sources(&["a".into()], &mut memo).unwrap();
        // Just written: too recent to remember.
        assert!(memo.found.is_empty());
        let meta = fs::metadata(t.path().join("a")).unwrap();
        let mut memo = MapMemo::new(vec![(FileKey::of(&meta), Digest::of(b"pretend"))]);
        assert_ne!(ctx.digest_sources(&["a".into()], &mut memo).unwrap(), d);
    }
}
