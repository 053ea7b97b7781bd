//! The content store: blobs by digest under the cache directory, written atomically.
//!
//! Layout: `<root>/blobs/sha256/<hex>` for content; `<root>/tmp/<lease>/` for what one
//! process is writing (same filesystem, so a finished blob is renamed into place);
//! `<root>/index.db` for the index of blobs, step results, image names and leases
//! ([`index`]); `<root>/leases/` for the processes using the store ([`lease`]);
//! `<root>/mounts/` for `RUN --mount=type=cache` directories. [`gc`] keeps it in size.

pub mod check;
pub mod gc;
pub mod images;
pub mod index;
pub mod lease;
pub mod snapshots;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use lease::Lease;

/// A content digest, `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(bytes).into())
    }

    /// Wraps a finished SHA-256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest {
            hex: hex::encode(hash),
        }
    }

    /// The hex part without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            bail!("unsupported digest {s:?}: only sha256 is supported");
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("malformed digest {s:?}");
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

/// A SHA-256 over named, length-prefixed fields, so that different sequences of fields
/// can never hash the same (`"ab","c"` and `"a","bc"` differ). Cache keys and content
/// digests of sources are made with it.
pub struct FieldHasher(Sha256);

impl FieldHasher {
    /// A hasher for keys of kind `domain` (a name with a version, e.g. `rbuild-step-v1`).
    pub fn new(domain: &str) -> FieldHasher {
        let mut h = FieldHasher(Sha256::new());
        h.bytes("domain", domain.as_bytes());
        h
    }

    /// Adds field `name` with value `value`.
    pub fn bytes(&mut self, name: &str, value: &[u8]) -> &mut Self {
        for part in [name.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    /// Adds a text field.
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        self.bytes(name, value.as_bytes())
    }

    /// Adds a number field.
    pub fn u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.bytes(name, &value.to_le_bytes())
    }

    /// Adds an optional text field (absent and empty differ).
    pub fn opt(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        match value {
            None => self.u64(name, 0),
            Some(v) => self.u64(name, 1).str(name, v),
        }
    }

    /// Adds a list of text fields (its length first).
    pub fn list<S: AsRef<str>>(&mut self, name: &str, items: &[S]) -> &mut Self {
        self.u64(name, items.len() as u64);
        for i in items {
            self.str(name, i.as_ref());
        }
        self
    }

    /// The digest.
    pub fn finish(self) -> Digest {
        Digest::from_sha256(self.0.finalize().into())
    }
}

/// A writer that hashes everything passing through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Returns the inner writer, the digest and the byte count of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        (
            self.inner,
            Digest::from_sha256(self.hasher.finalize().into()),
            self.written,
        )
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The on-disk content store, with its index and this process's lease.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    shared: Arc<Shared>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// What clones of one process's store share.
struct Shared {
    root: PathBuf,
    db: Mutex<Option<index::Db>>,
    lease: Lease,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let guard = self.db.get_mut().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|d| !d.is_current()) {
            // Opened before a fork: never used here; the rows are collected as dead later.
            std::mem::forget(guard.take());
        }
        if let Some(db) = guard.as_ref() {
            let _ = db.drop_lease(self.lease.id());
        }
        remove_tree(&self.root.join("tmp").join(self.lease.id()));
        lease::release(&self.root, &self.lease);
    }
}

/// Asks the filesystem to place each directory made in `dir` in a block group of its own
/// choosing rather than next to `dir` (ext4's `T` attribute, `FS_TOPDIR_FL`, which the
/// Orlov allocator reads). Each process's temporary trees (step upper directories that
/// become snapshots, unpacked roots) are unrelated to those of the builds before it.
/// Packed next to the trees of a build just removed, every new inode would be looked for
/// past the freed ones that ext4 without a journal declines to reuse for a minute: on
/// this project's CI machine, 20,000 files took 7.2 s to create right after 20,000 were
/// deleted in the same place, and 0.5 s with the flag. Best effort: filesystems without
/// the flag ignore or refuse it.
fn spread_children(dir: &Path) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let Ok(f) = fs::File::open(dir) else {
        return;
    };
    if let Ok(flags) = ioctl_getflags(&f) {
        if !flags.contains(IFlags::TOPDIR) {
            let _ = ioctl_setflags(&f, flags | IFlags::TOPDIR);
        }
    }
}

/// Entries of `tmp/` from before leases (older rbuild versions) are removed once this old.
const LEGACY_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Store {
    /// Opens (creating if needed) the store at `root`, takes this process's lease and
    /// collects what dead processes left behind.
    pub fn open(root: &Path) -> Result<Store> {
        for sub in ["blobs/sha256", "tmp", "leases"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create cache directory {}", root.display()))?;
        }
        spread_children(&root.join("tmp"));
        // Absolute: overlay lower directories are named through links to it.
        let root = &fs::canonicalize(root)
            .with_context(|| format!("cannot open cache directory {}", root.display()))?;
        let lease = Lease::take(root)?;
        fs::create_dir_all(root.join("tmp").join(lease.id()))
            .with_context(|| format!("cannot create cache directory {}", root.display()))?;
        let store = Store {
            root: root.to_path_buf(),
            shared: Arc::new(Shared {
                root: root.to_path_buf(),
                db: Mutex::new(None),
                lease,
            }),
        };
        store.with_db(|_| Ok(()))?;
        images::migrate_legacy_names(&store)?;
        store.collect_dead()?;
        Ok(store)
    }

    /// Removes the leases, lease rows and temporary files of processes that are gone.
    /// Files a dead build made inside its user namespace may need that namespace to be
    /// removed: what cannot be removed now is tried again at the next collection.
    pub fn collect_dead(&self) -> Result<()> {
        let own = self.shared.lease.id().to_string();
        lease::dead_leases(&self.root, &own);
        let mut dead_rows = Vec::new();
        for id in self.lease_ids()? {
            if id != own && !lease::is_live(&self.root, &id) {
                dead_rows.push(id);
            }
        }
        self.drop_lease_rows(&dead_rows)?;
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == own {
                continue;
            }
            let is_lease_dir = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
            let dead = if is_lease_dir {
                !lease::is_live(&self.root, &name)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > LEGACY_TEMP_AGE)
            };
            if dead {
                if is_lease_dir {
                    self.recover_staged(&e.path())?;
                }
                remove_tree(&e.path());
            }
        }
        Ok(())
    }

    /// Settles what a dead process left half-done in its temporary directory `dir`: a
    /// blob it linked into place without committing its row (`commit-<hex>-<n>`, same inode)
    /// is unlinked; a blob or cache directory GC moved aside (`gc-<hex>`, `gc-mount-<name>`)
    /// whose row survived (the removal never committed) goes back.
    fn recover_staged(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = fs::read_dir(dir) else {
            return Ok(());
        };
        let names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("commit-") || n.starts_with("gc-"))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        self.write_tx(|tx| {
            for name in &names {
                let staged = dir.join(name);
                if let Some(rest) = name.strip_prefix("gc-mount-") {
                    let place = self.root.join("mounts").join(rest);
                    if self.record_in(tx, &format!("mount:{rest}"))?.is_some() && !place.exists() {
                        let _ = fs::rename(&staged, &place);
                    }
                    continue;
                }
                if let Some(rest) = name.strip_prefix("gc-snap-") {
                    let place = self.snapshot_dir(rest);
                    if self.record_in(tx, &format!("snapshot:{rest}"))?.is_some() && !place.exists()
                    {
                        let _ = fs::rename(&staged, &place);
                    }
                    continue;
                }
                let (hex, gc) = match (name.strip_prefix("commit-"), name.strip_prefix("gc-")) {
                    (Some(h), _) => (h.split_once('-').map_or(h, |(hex, _)| hex), false),
                    (_, Some(h)) => (h, true),
                    _ => continue,
                };
                let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() else {
                    continue;
                };
                let place = self.blob_path(&digest);
                let indexed = self.record_in(tx, &digest.to_string())?.is_some();
                if gc {
                    if indexed && !place.exists() {
                        let _ = fs::rename(&staged, &place);
                    }
                } else if !indexed {
                    let same = match (fs::metadata(&staged), fs::metadata(&place)) {
                        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                        _ => false,
                    };
                    if same {
                        let _ = fs::remove_file(&place);
                    }
                }
            }
            Ok(())
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This process's temporary directory inside the store (same filesystem as the
    /// blobs; removed when the process ends, or collected after it died).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp").join(self.shared.lease.id())
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The directory of the `RUN --mount=type=cache` cache named `id` (not created here).
    pub fn cache_mount_dir(&self, id: &str) -> PathBuf {
        self.root
            .join("mounts")
            .join(&Digest::of(id.as_bytes()).hex()[..32])
    }

    /// True when the blob is present; it is then leased for this process.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.write_tx(|tx| self.blob_usable_in(tx, digest))
            .unwrap_or(false)
    }

    /// Leases blob `digest` and tells whether it is usable: indexed and on disk. A file
    /// with no record (a cache from before the index) is adopted.
    pub(crate) fn blob_usable_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        digest: &Digest,
    ) -> Result<bool> {
        let id = digest.to_string();
        self.lease_in(tx, &id)?;
        let path = self.blob_path(digest);
        let Ok(meta) = fs::metadata(&path) else {
            return Ok(false);
        };
        let t = index::now();
        let rec = index::Record {
            id: id.clone(),
            kind: index::RecordKind::Blob,
            size: meta.len(),
            created: t,
            last_used: t,
            use_count: 0,
            description: String::new(),
            data: None,
        };
        if self.record_in(tx, &id)?.is_none() {
            Self::put_record_in(tx, &rec, &children_of_file(&path), false)?;
        }
        Self::touch_in(tx, &id)?;
        Ok(true)
    }

    /// Indexes blob `digest` and every blob it names (a manifest's config and layers, an
    /// index's manifests) that is on disk: a name migrated from before the index keeps
    /// what it needs.
    pub(crate) fn adopt_closure(&self, digest: &Digest) {
        let mut todo = vec![digest.clone()];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) || !self.has_blob(&d) {
                continue;
            }
            for c in children_of_file(&self.blob_path(&d)) {
                if let Ok(c) = c.parse() {
                    todo.push(c);
                }
            }
        }
    }

    /// A new temporary file inside the store, removed on drop unless committed.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .context("cannot create a temporary file in the cache directory")
    }

    /// A new temporary directory inside the store, removed on drop.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp_dir())
            .context("cannot create a temporary directory in the cache directory")
    }

    /// Moves a fully written temporary file into place as blob `digest` (fsynced first)
    /// and indexes it, leased for this process. If the blob already exists the temporary
    /// file is dropped.
    pub fn commit_blob(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> Result<PathBuf> {
        let children = children_of_file(tmp.path());
        self.commit_blob_with(tmp, digest, &children, None)
    }

    /// As [`Store::commit_blob`], for a layer whose uncompressed digest `diff_id` was
    /// computed from the bytes written: remembered as verified in the same transaction.
    pub fn commit_layer(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
        diff_id: &Digest,
    ) -> Result<PathBuf> {
        self.commit_blob_with(tmp, digest, &[], Some(diff_id))
    }

    fn commit_blob_with(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
        children: &[String],
        diff_id: Option<&Digest>,
    ) -> Result<PathBuf> {
        let dest = self.blob_path(digest);
        tmp.as_file().sync_all()?;
        let size = tmp.as_file().metadata()?.len();
        // Named by its digest in this process's directory, then linked into place in the
        // transaction that adds its row: a process killed in between leaves the name
        // behind, which tells the next start what to undo. Threads of one build may
        // commit the same blob at once (stages that load the same base), so each stages
        // it under a name of its own.
        static STAGED: AtomicU64 = AtomicU64::new(0);
        let n = STAGED.fetch_add(1, Ordering::Relaxed);
        let staged = self.tmp_dir().join(format!("commit-{}-{n}", digest.hex()));
        tmp.persist(&staged)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot store blob {digest}"))?;
        let _remove_staged = RemoveOnDrop(&staged);
        self.write_tx(|tx| {
            let id = digest.to_string();
            self.lease_in(tx, &id)?;
            if let Some(diff_id) = diff_id {
                Self::note_layer_verified_in(tx, digest, diff_id)?;
            }
            if self.record_in(tx, &id)?.is_some() && dest.is_file() {
                return Ok(());
            }
            match fs::hard_link(&staged, &dest) {
                Ok(()) => {}
                // Left by a process that died before its row: the same content.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot store blob {digest}"));
                }
            }
            let t = index::now();
            let rec = index::Record {
                id,
                kind: index::RecordKind::Blob,
                size,
                created: t,
                last_used: t,
                use_count: 1,
                description: String::new(),
                data: None,
            };
            Self::put_record_in(tx, &rec, children, true)
        })?;
        Ok(dest)
    }

    /// Stores `bytes` as a blob and returns its digest. The configs, layers and manifests
    /// a manifest or index names become its references.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if !self.has_blob(&digest) {
            let mut tmp = self.temp_file()?;
            tmp.write_all(bytes)?;
            self.commit_blob_with(tmp, &digest, &children_of(bytes), None)?;
        }
        Ok(digest)
    }

    /// Opens blob `digest` for reading (leased for this process).
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        if !self.has_blob(digest) {
            bail!("blob {digest} is missing from the cache");
        }
        File::open(self.blob_path(digest))
            .with_context(|| format!("blob {digest} is missing from the cache"))
    }

    /// Reads a whole (small) blob such as a config or manifest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_blob(digest)?.read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// Removes a file when dropped.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Manifests and indexes larger than this are not looked into for references.
const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// [`children_of`] for a file: only a small file that starts like JSON is read whole.
fn children_of_file(path: &Path) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let mut first = [0u8; 1];
    let small = f.metadata().is_ok_and(|m| m.len() <= MAX_MANIFEST_SIZE);
    if !small || f.read_exact(&mut first).is_err() || first[0] != b'{' {
        return Vec::new();
    }
    fs::read(path).map(|b| children_of(&b)).unwrap_or_default()
}

/// The digests a manifest (config, layers) or an index (manifests) names; nothing for
/// anything else.
pub fn children_of(bytes: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Desc {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Doc {
        config: Option<Desc>,
        #[serde(default)]
        layers: Vec<Desc>,
        #[serde(default)]
        manifests: Vec<Desc>,
    }
    if bytes.first() != Some(&b'{') {
        return Vec::new();
    }
    let Ok(doc) = serde_json::from_slice::<Doc>(bytes) else {
        return Vec::new();
    };
    doc.config
        .into_iter()
        .chain(doc.layers)
        .chain(doc.manifests)
        .map(|d| d.digest)
        .filter(|d| d.parse::<Digest>().is_ok())
        .collect()
}

/// Removes a tree even when it holds read-only directories (unpacked images do); errors
/// are ignored (what stays is collected later).
pub fn remove_tree(path: &Path) {
    if fs::symlink_metadata(path).is_err() {
        return;
    }
    make_removable(path);
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let _ = fs::remove_dir_all(path);
    } else {
        let _ = fs::remove_file(path);
    }
}

/// Gives the owner write and search permission on every directory below `path`, so a tree
/// unpacked with read-only directories can be removed without privileges.
pub fn make_removable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        if entry.file_type().is_dir() {
            if let Ok(meta) = entry.metadata() {
                let mode = meta.permissions().mode();
                if mode & 0o700 != 0o700 {
                    let _ =
                        fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode | 0o700));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_trees_are_spread_where_the_filesystem_can() {
        use rustix::fs::{ioctl_getflags, IFlags};
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(&dir.path().join("cache")).unwrap();
        let tmp = fs::File::open(dir.path().join("cache/tmp")).unwrap();
        // Under CI the temporary directory is on ext4 (the machine's root filesystem),
        // which keeps the flag; elsewhere a filesystem may not have inode flags at all.
        match ioctl_getflags(&tmp) {
            Ok(flags) if std::env::var_os("CI").is_some() => {
                assert!(flags.contains(IFlags::TOPDIR), "{flags:?}")
            }
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI's temporary directory has no inode flags: {e}")
            }
            _ => {}
        }
    }

    #[test]
    fn threads_may_commit_the_same_blob_at_once() {
        // Parallel stages that load the same base each store its blobs: every commit
        // succeeds and the blob is there once.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let data = b"the same layer, from three stages";
        let digest = Digest::of(data);
        // Once staged under one shared name, a link from it raced a rename over it and
        // failed with ENOENT about one time in seven in a three-stage build.
        let start = std::sync::Barrier::new(4);
        for _ in 0..200 {
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        let mut tmp = store.temp_file().unwrap();
                        io::Write::write_all(&mut tmp, data).unwrap();
                        start.wait();
                        store.commit_blob(tmp, &digest).unwrap();
                    });
                }
            });
        }
        assert_eq!(fs::read(store.blob_path(&digest)).unwrap(), data);
        let left = fs::read_dir(store.tmp_dir()).unwrap().flatten();
        let staged: Vec<_> = left
            .filter(|e| e.file_name().to_string_lossy().starts_with("commit-"))
            .collect();
        assert!(staged.is_empty(), "{staged:?}");
    }

    #[test]
    fn digest_parse_and_display_round_trip() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!("md5:abc".parse::<Digest>().is_err());
        assert!("sha256:XYZ".parse::<Digest>().is_err());
    }

    #[test]
    fn field_boundaries_matter() {
        let mut a = FieldHasher::new("t");
        a.str("x", "ab").str("x", "c");
        let mut b = FieldHasher::new("t");
        b.str("x", "a").str("x", "bc");
        assert_ne!(a.finish(), b.finish());
        let mut a = FieldHasher::new("t");
        a.opt("x", None);
        let mut b = FieldHasher::new("t");
        b.opt("x", Some(""));
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn write_blob_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.write_blob(b"data").unwrap();
        let b = store.write_blob(b"data").unwrap();
        assert_eq!(a, b);
        assert_eq!(store.read_blob(&a).unwrap(), b"data");
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
