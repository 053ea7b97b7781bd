//! Unpacked layers ("snapshots"): `<root>/snapshots/<key>/`, the upper directory of one
//! layer on top of its parent chain, in overlay's own format (whiteouts as 0/0 devices,
//! opaque directories marked with `user.overlay.opaque`), used as a lower directory by
//! every build and step that stands on the same chain. The key names the chain (and the
//! id mapping its owners were made with). Each is an index record (`snapshot:<key>`) with
//! its size; GC removes them like any other root, least recently used first.
//!
//! Snapshots are not fsynced (a step's upper directory can be large, and everything in
//! it can be made again from the blobs): each record names the boot it was made in, and a
//! snapshot from another boot is dropped when next looked up, since a power loss or a
//! killed VM may have left it torn.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::index::{now, Record, RecordKind};
use super::{remove_tree, Store};

fn record_id(key: &str) -> String {
    format!("snapshot:{key}")
}

/// This boot's id (the kernel's `boot_id`).
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn boot_data() -> String {
    serde_json::json!({ "boot": boot_id() }).to_string()
}

impl Store {
    /// Where snapshot `key` lives (whether or not it exists).
    pub fn snapshot_dir(&self, key: &str) -> PathBuf {
        self.root().join("snapshots").join(key)
    }

    /// Snapshot `key`, leased for this process and marked used, when the store has it.
    pub fn snapshot(&self, key: &str) -> Result<Option<PathBuf>> {
        let id = record_id(key);
        let dir = self.snapshot_dir(key);
        let mut stale = None;
        let found = self.write_tx(|tx| {
            let Some(rec) = self.record_in(tx, &id)? else {
                return Ok(None);
            };
            if rec.data.as_deref() != Some(boot_data().as_str()) || !dir.is_dir() {
                // Made before this boot (maybe torn by a crash), or gone: made again.
                let leased = tx
                    .query_row(
                        "SELECT 1 FROM leased WHERE record = ?1",
                        rusqlite::params![id],
                        |_| Ok(()),
                    )
                    .is_ok();
                if !leased {
                    tx.execute("DELETE FROM records WHERE id = ?1", rusqlite::params![id])?;
                    let aside = self.tmp_dir().join(format!("stale-{key}"));
                    if fs::rename(&dir, &aside).is_ok() {
                        stale = Some(aside);
                    }
                }
                return Ok(None);
            }
            self.lease_in(tx, &id)?;
            Self::touch_in(tx, &id)?;
            Ok(Some(dir.clone()))
        });
        if let Some(s) = stale {
            remove_tree(&s);
        }
        found
    }

    /// Makes the directory `upper` snapshot `key` (moved into place) and returns where it
    /// is. When another process made the same snapshot first, that one is kept and
    /// `upper` is removed.
    pub fn commit_snapshot(&self, upper: &Path, key: &str) -> Result<PathBuf> {
        let id = record_id(key);
        let dest = self.snapshot_dir(key);
        fs::create_dir_all(self.root().join("snapshots"))?;
        let size = super::gc::tree_size(upper);
        let mut stale = None;
        let kept_other = self.write_tx(|tx| {
            self.lease_in(tx, &id)?;
            let current = self
                .record_in(tx, &id)?
                .is_some_and(|r| r.data.as_deref() == Some(boot_data().as_str()));
            if current && dest.is_dir() {
                Self::touch_in(tx, &id)?;
                return Ok(true);
            }
            if dest.exists() {
                // Left by a process killed between its rename and its row.
                let aside = self.tmp_dir().join(format!("stale-{key}"));
                fs::rename(&dest, &aside)?;
                stale = Some(aside);
            }
            fs::rename(upper, &dest)
                .with_context(|| format!("cannot store snapshot {}", dest.display()))?;
            let t = now();
            let rec = Record {
                id: id.clone(),
                kind: RecordKind::Snapshot,
                size,
                created: t,
                last_used: t,
                use_count: 1,
                description: "unpacked layer".into(),
                data: Some(boot_data()),
            };
            Self::put_record_in(tx, &rec, &[], true)?;
            Ok(false)
        })?;
        if let Some(s) = stale {
            remove_tree(&s);
        }
        if kept_other {
            remove_tree(upper);
        }
        Ok(dest)
    }

    /// Removes snapshot directories no record names (left by killed processes), under the
    /// write lock so no commit is half-way.
    pub(super) fn sweep_snapshot_orphans(&self) -> Result<()> {
        let Ok(entries) = fs::read_dir(self.root().join("snapshots")) else {
            return Ok(());
        };
        let names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut doomed = Vec::new();
        self.write_tx(|tx| {
            for n in &names {
                if self.record_in(tx, &record_id(n))?.is_none() {
                    let aside = self.tmp_dir().join(format!("orphan-{n}"));
                    if fs::rename(self.snapshot_dir(n), &aside).is_ok() {
                        doomed.push(aside);
                    }
                }
            }
            Ok(())
        })?;
        for d in doomed {
            remove_tree(&d);
        }
        Ok(())
    }
}
