//! The cache index: an SQLite database (`<root>/index.db`, WAL, busy timeout) shared by
//! every rbuild process using the cache directory.
//!
//! Tables:
//! - `records`: one row per thing that holds disk space or points at it: blobs (`id` is
//!   the digest), step results (`step:<key>`), image names (`image:<name>`), cache mounts
//!   (`mount:<dir>`). Size on disk (blobs and cache mounts; pointers are 0), created, last
//!   used, use count, a description, and kind-specific JSON data.
//! - `refs`: parent → child edges (a step → its layer, an image name → its manifest, a
//!   manifest → its config and layers). A blob with no incoming edge is garbage.
//! - `leases`, `leased`: which live process uses which record (see [`super::lease`]).
//! - `file_digests`: content digests of context files by (device, inode, size, mtime,
//!   ctime), so an unchanged file is not read again.
//!
//! Every change that pairs a file with a row (a blob renamed into place, a blob removed
//! by GC) happens inside one write transaction, which SQLite serialises across processes:
//! a reader that leased a record before GC looked is never left without its file.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::{Digest, Store};

/// How long a process waits for another's write transaction before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records(
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    use_count INTEGER NOT NULL DEFAULT 0,
    description TEXT NOT NULL DEFAULT '',
    data TEXT
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, last_used);
CREATE TABLE IF NOT EXISTS refs(
    parent TEXT NOT NULL,
    child TEXT NOT NULL,
    PRIMARY KEY(parent, child)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_child ON refs(child);
CREATE TABLE IF NOT EXISTS leases(
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    started INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leased(
    lease TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY(lease, record)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leased_record ON leased(record);
CREATE TABLE IF NOT EXISTS file_digests(
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,
    last_used INTEGER NOT NULL,
    PRIMARY KEY(dev, ino)
);
CREATE TABLE IF NOT EXISTS verified_layers(
    digest TEXT PRIMARY KEY,
    diff_id TEXT NOT NULL
) WITHOUT ROWID;
";

/// What a record is; decides how GC treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    /// A blob: layer, config, manifest or index.
    Blob,
    /// The result of one build step.
    Step,
    /// A named image that rbuild built.
    Image,
    /// A named image that was pulled or loaded: evicted after everything else.
    BaseImage,
    /// A `RUN --mount=type=cache` directory.
    CacheMount,
    /// An unpacked layer (a lower directory of the overlay snapshotter).
    Snapshot,
}

impl RecordKind {
    /// The name stored in the index and used by `--filter type=`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Blob => "blob",
            RecordKind::Step => "regular",
            RecordKind::Image => "image",
            RecordKind::BaseImage => "base-image",
            RecordKind::CacheMount => "exec.cachemount",
            RecordKind::Snapshot => "snapshot",
        }
    }

    /// Parses a stored kind or a `--filter type=` value.
    pub fn parse(s: &str) -> Option<RecordKind> {
        Some(match s {
            "blob" => RecordKind::Blob,
            "regular" | "step" => RecordKind::Step,
            "image" => RecordKind::Image,
            "base-image" | "source.image" => RecordKind::BaseImage,
            "exec.cachemount" | "cache-mount" => RecordKind::CacheMount,
            "snapshot" => RecordKind::Snapshot,
            _ => return None,
        })
    }

    /// Named images, which GC removes after everything else.
    pub fn is_named_image(self) -> bool {
        matches!(self, RecordKind::Image | RecordKind::BaseImage)
    }

    /// Every kind.
    pub const ALL: [RecordKind; 6] = [
        RecordKind::Blob,
        RecordKind::Step,
        RecordKind::Image,
        RecordKind::BaseImage,
        RecordKind::CacheMount,
        RecordKind::Snapshot,
    ];
}

/// One row of `records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `sha256:…`, `step:…`, `image:…` or `mount:…`.
    pub id: String,
    /// What it is.
    pub kind: RecordKind,
    /// Bytes on disk it holds itself (0 for pointers).
    pub size: u64,
    /// Seconds since the epoch.
    pub created: i64,
    /// Seconds since the epoch.
    pub last_used: i64,
    /// How many builds used it.
    pub use_count: u64,
    /// What it is, for people.
    pub description: String,
    /// Kind-specific JSON.
    pub data: Option<String>,
}

/// A step's cached result: the layer it made, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// The layer blob, if the step made one.
    pub layer: Option<LayerRef>,
}

/// A layer as a step record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Compressed digest (the blob).
    pub digest: String,
    /// Uncompressed digest.
    pub diff_id: String,
    /// Blob size.
    pub size: u64,
    /// Blob media type.
    pub media_type: String,
}

/// The index connection of one process (reopened after a fork: SQLite connections must not
/// cross one).
pub(super) struct Db {
    pid: u32,
    conn: Connection,
}

impl Db {
    pub(super) fn open(root: &Path) -> Result<Db> {
        let path = root.join("index.db");
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the cache index {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("cannot use the cache index {}", path.display()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The write-ahead log is cut back to this after a checkpoint.
        conn.pragma_update(None, "journal_size_limit", 1 << 20)?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot set up the cache index {}", path.display()))?;
        Ok(Db {
            pid: std::process::id(),
            conn,
        })
    }

    pub(super) fn is_current(&self) -> bool {
        self.pid == std::process::id()
    }

    /// Removes the rows of lease `id` (this process, ending).
    pub(super) fn drop_lease(&self, id: &str) -> rusqlite::Result<()> {
        self.conn
            .execute("DELETE FROM leased WHERE lease = ?1", params![id])?;
        self.conn
            .execute("DELETE FROM leases WHERE id = ?1", params![id])?;
        Ok(())
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let kind: String = row.get(1)?;
    Ok(Record {
        id: row.get(0)?,
        kind: RecordKind::parse(&kind).unwrap_or(RecordKind::Blob),
        size: row.get::<_, i64>(2)? as u64,
        created: row.get(3)?,
        last_used: row.get(4)?,
        use_count: row.get::<_, i64>(5)? as u64,
        description: row.get(6)?,
        data: row.get(7)?,
    })
}

/// The columns [`record_from_row`] reads, in order.
pub(super) const RECORD_COLUMNS: &str =
    "id, kind, size, created, last_used, use_count, description, data";

impl Store {
    /// Runs `f` on this process's index connection inside an immediate (write)
    /// transaction, committed when `f` succeeds.
    pub(super) fn write_tx<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R>,
    ) -> Result<R> {
        self.with_db(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        })
    }

    /// Runs `f` on this process's index connection (read-only work).
    pub(super) fn with_db<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R>) -> Result<R> {
        let mut guard = self.shared.db.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|d| !d.is_current()) {
            // Opened before a fork: never use (or close) it in this process.
            std::mem::forget(guard.take());
        }
        if guard.is_none() {
            let db = Db::open(&self.root)?;
            db.conn.execute(
                "INSERT OR REPLACE INTO leases(id, pid, started) VALUES (?1, ?2, ?3)",
                params![self.shared.lease.id(), std::process::id(), now()],
            )?;
            *guard = Some(db);
        }
        let db = guard.as_mut().expect("index connection was just opened");
        f(&mut db.conn).context("cache index")
    }

    /// Bytes of the index's own files (database, write-ahead log, shared memory).
    pub fn index_size(&self) -> u64 {
        ["index.db", "index.db-wal", "index.db-shm"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.root.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Moves the write-ahead log into the database and truncates it (best effort: readers
    /// of other processes may hold it).
    pub fn checkpoint(&self) {
        let _ = self.with_db(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        });
    }

    /// Leases `id` for this process (GC leaves it alone until the process ends).
    pub(super) fn lease_in(&self, tx: &rusqlite::Transaction<'_>, id: &str) -> Result<()> {
        tx.execute(
            "INSERT OR IGNORE INTO leased(lease, record) VALUES (?1, ?2)",
            params![self.shared.lease.id(), id],
        )?;
        Ok(())
    }

    /// Marks `id` used now by one more build.
    pub(super) fn touch_in(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<()> {
        tx.execute(
            "UPDATE records SET last_used = ?2, use_count = use_count + 1 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    /// Inserts (or keeps) a record and its outgoing references.
    pub(super) fn put_record_in(
        tx: &rusqlite::Transaction<'_>,
        rec: &Record,
        children: &[String],
        replace: bool,
    ) -> Result<()> {
        let verb = if replace {
            "INSERT OR REPLACE"
        } else {
            "INSERT OR IGNORE"
        };
        tx.execute(
            &format!(
                "{verb} INTO records(id, kind, size, created, last_used, use_count, description, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                rec.id,
                rec.kind.as_str(),
                rec.size as i64,
                rec.created,
                rec.last_used,
                rec.use_count as i64,
                rec.description,
                rec.data
            ],
        )?;
        if replace {
            tx.execute("DELETE FROM refs WHERE parent = ?1", params![rec.id])?;
        }
        for c in children {
            tx.execute(
                "INSERT OR IGNORE INTO refs(parent, child) VALUES (?1, ?2)",
                params![rec.id, c],
            )?;
        }
        Ok(())
    }

    /// One record inside a transaction, if the index has it.
    pub(super) fn record_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: &str,
    ) -> Result<Option<Record>> {
        Ok(tx
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"),
                params![id],
                record_from_row,
            )
            .optional()?)
    }

    /// One record, if the index has it.
    pub fn record(&self, id: &str) -> Result<Option<Record>> {
        self.with_db(|c| {
            Ok(c.query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"),
                params![id],
                record_from_row,
            )
            .optional()?)
        })
    }

    /// Every record, oldest use first.
    pub fn records(&self) -> Result<Vec<Record>> {
        self.with_db(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM records ORDER BY last_used, use_count, id"
            ))?;
            let rows = st.query_map([], record_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Every reference edge (parent, child).
    pub fn refs(&self) -> Result<Vec<(String, String)>> {
        self.with_db(|c| {
            let mut st = c.prepare("SELECT parent, child FROM refs")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// The ids leased by live processes (this one included).
    pub fn leased_ids(&self) -> Result<std::collections::BTreeSet<String>> {
        self.with_db(|c| {
            let mut st = c.prepare("SELECT DISTINCT record FROM leased")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// The cached result of step `key`, leased for this build and marked used; None when
    /// the index has none or its layer blob is gone.
    pub fn step_result(&self, key: &Digest) -> Result<Option<StepResult>> {
        let id = format!("step:{}", key.hex());
        self.write_tx(|tx| {
            let data: Option<Option<String>> = tx
                .query_row("SELECT data FROM records WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(Some(data)) = data else {
                return Ok(None);
            };
            let Ok(result) = serde_json::from_str::<StepResult>(&data) else {
                return Ok(None);
            };
            if let Some(layer) = &result.layer {
                let Ok(digest) = layer.digest.parse::<Digest>() else {
                    return Ok(None);
                };
                if !self.blob_usable_in(tx, &digest)? {
                    return Ok(None);
                }
            }
            self.lease_in(tx, &id)?;
            Self::touch_in(tx, &id)?;
            Ok(Some(result))
        })
    }

    /// Records the result of step `key` (replacing an older one: the newest result wins).
    pub fn put_step_result(
        &self,
        key: &Digest,
        result: &StepResult,
        description: &str,
    ) -> Result<()> {
        let id = format!("step:{}", key.hex());
        let t = now();
        let rec = Record {
            id: id.clone(),
            kind: RecordKind::Step,
            size: 0,
            created: t,
            last_used: t,
            use_count: 1,
            description: description.to_string(),
            data: Some(serde_json::to_string(result)?),
        };
        let children: Vec<String> = result.layer.iter().map(|l| l.digest.clone()).collect();
        self.write_tx(|tx| {
            Self::put_record_in(tx, &rec, &children, true)?;
            self.lease_in(tx, &id)
        })
    }

    /// A context file's content digest remembered for this exact (device, inode, size,
    /// mtime, ctime), if any.
    pub fn file_digest(&self, key: &FileKey) -> Result<Option<Digest>> {
        self.with_db(|c| {
            let d: Option<String> = c
                .query_row(
                    "SELECT digest FROM file_digests
                     WHERE dev = ?1 AND ino = ?2 AND size = ?3 AND mtime_ns = ?4 AND ctime_ns = ?5",
                    params![
                        key.dev as i64,
                        key.ino as i64,
                        key.size as i64,
                        key.mtime_ns,
                        key.ctime_ns
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(d.and_then(|d| d.parse().ok()))
        })
    }

    /// Whether the layer blob `digest` was seen to decompress to content `diff_id`.
    pub fn layer_verified(&self, digest: &Digest, diff_id: &Digest) -> Result<bool> {
        self.with_db(|c| {
            let found: Option<String> = c
                .query_row(
                    "SELECT diff_id FROM verified_layers WHERE digest = ?1",
                    params![digest.to_string()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(found.is_some_and(|d| d == diff_id.to_string()))
        })
    }

    /// Remembers that the layer blob `digest` decompresses to content `diff_id` (the same
    /// bytes always do, so the row outlives the blob harmlessly).
    pub fn note_layer_verified(&self, digest: &Digest, diff_id: &Digest) -> Result<()> {
        self.write_tx(|tx| Self::note_layer_verified_in(tx, digest, diff_id))
    }

    /// [`Store::note_layer_verified`] inside a transaction.
    pub(super) fn note_layer_verified_in(
        tx: &rusqlite::Transaction<'_>,
        digest: &Digest,
        diff_id: &Digest,
    ) -> Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO verified_layers(digest, diff_id) VALUES (?1, ?2)",
            params![digest.to_string(), diff_id.to_string()],
        )?;
        Ok(())
    }

    /// Every remembered context file digest.
    pub fn file_digests(&self) -> Result<Vec<(FileKey, Digest)>> {
        self.with_db(|c| {
            let mut st =
                c.prepare("SELECT dev, ino, size, mtime_ns, ctime_ns, digest FROM file_digests")?;
            let rows = st.query_map([], |r| {
                Ok((
                    FileKey {
                        dev: r.get::<_, i64>(0)? as u64,
                        ino: r.get::<_, i64>(1)? as u64,
                        size: r.get::<_, i64>(2)? as u64,
                        mtime_ns: r.get(3)?,
                        ctime_ns: r.get(4)?,
                    },
                    r.get::<_, String>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (k, d) = row?;
                if let Ok(d) = d.parse() {
                    out.push((k, d));
                }
            }
            Ok(out)
        })
    }

    /// Remembers context file digests (one transaction for the lot).
    pub fn put_file_digests(&self, found: &[(FileKey, Digest)]) -> Result<()> {
        if found.is_empty() {
            return Ok(());
        }
        let t = now();
        self.write_tx(|tx| {
            let mut st = tx.prepare(
                "INSERT OR REPLACE INTO file_digests(dev, ino, size, mtime_ns, ctime_ns, digest, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (k, d) in found {
                st.execute(params![
                    k.dev as i64,
                    k.ino as i64,
                    k.size as i64,
                    k.mtime_ns,
                    k.ctime_ns,
                    d.to_string(),
                    t
                ])?;
            }
            Ok(())
        })
    }

    /// Forgets the context file digests remembered before `before` (seconds).
    pub fn forget_file_digests(&self, before: i64) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute(
                "DELETE FROM file_digests WHERE last_used < ?1",
                params![before],
            )?;
            Ok(())
        })
    }

    /// Records that this build uses the cache mount in `dir` (leased for this process),
    /// with its size when it was measured.
    pub fn note_cache_mount(&self, dir: &Path, id: &str, size: Option<u64>) -> Result<()> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rid = format!("mount:{name}");
        let t = now();
        self.write_tx(|tx| {
            let exists: bool = tx
                .query_row("SELECT 1 FROM records WHERE id = ?1", params![rid], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if exists {
                tx.execute(
                    "UPDATE records SET size = COALESCE(?2, size), last_used = ?3, use_count = use_count + (?2 IS NULL) WHERE id = ?1",
                    params![rid, size.map(|s| s as i64), t],
                )?;
            } else {
                let rec = Record {
                    id: rid.clone(),
                    kind: RecordKind::CacheMount,
                    size: size.unwrap_or(0),
                    created: t,
                    last_used: t,
                    use_count: 1,
                    description: format!("cache mount {id}"),
                    data: None,
                };
                Self::put_record_in(tx, &rec, &[], false)?;
            }
            self.lease_in(tx, &rid)
        })
    }

    /// Drops the rows of the leases `ids` (their processes are gone).
    pub(super) fn drop_lease_rows(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write_tx(|tx| {
            for id in ids {
                tx.execute("DELETE FROM leased WHERE lease = ?1", params![id])?;
                tx.execute("DELETE FROM leases WHERE id = ?1", params![id])?;
            }
            Ok(())
        })
    }

    /// The ids of every lease row.
    pub(super) fn lease_ids(&self) -> Result<Vec<String>> {
        self.with_db(|c| {
            let mut st = c.prepare("SELECT id FROM leases")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}

/// What identifies a file's content without reading it, as far as the cache trusts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds.
    pub mtime_ns: i64,
    /// Change time in nanoseconds.
    pub ctime_ns: i64,
}

impl FileKey {
    /// The key of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}
