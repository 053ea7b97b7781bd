//! `rbuild cache check`: every blob's digest against its name, every record against what
//! is on disk, and what is on disk but in no record.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;

use anyhow::Result;
use rusqlite::params;
use sha2::{Digest as _, Sha256};

use super::index::RecordKind;
use super::{Digest, Store};

/// What a check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Blob files read.
    pub blobs: usize,
    /// Records looked at.
    pub records: usize,
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Checks the store; with `repair`, removes records whose data is missing or corrupt
/// (and the corrupt files), and indexes orphaned blobs whose content is intact.
pub fn check(store: &Store, repair: bool) -> Result<CheckReport> {
    store.collect_dead()?;
    let mut report = CheckReport::default();
    let records = store.records()?;
    report.records = records.len();
    let indexed: BTreeSet<String> = records.iter().map(|r| r.id.clone()).collect();
    let mut broken = Vec::new();
    for r in &records {
        match r.kind {
            RecordKind::Blob => {
                let Ok(d) = r.id.parse::<Digest>() else {
                    report.problems.push(format!("{}: not a digest", r.id));
                    broken.push(r.id.clone());
                    continue;
                };
                match fs::metadata(store.blob_path(&d)) {
                    Err(_) => {
                        report.problems.push(format!("{}: blob file missing", r.id));
                        broken.push(r.id.clone());
                    }
                    Ok(m) if m.len() != r.size => {
                        report.problems.push(format!(
                            "{}: {} bytes on disk, {} recorded",
                            r.id,
                            m.len(),
                            r.size
                        ));
                        broken.push(r.id.clone());
                    }
                    Ok(_) => {}
                }
            }
            RecordKind::Snapshot => {
                let key = r.id.trim_start_matches("snapshot:");
                if !store.snapshot_dir(key).is_dir() {
                    report
                        .problems
                        .push(format!("{}: unpacked layer directory missing", r.id));
                    broken.push(r.id.clone());
                }
            }
            RecordKind::CacheMount => {
                let name = r.id.trim_start_matches("mount:");
                if !store.root().join("mounts").join(name).is_dir() {
                    report
                        .problems
                        .push(format!("{}: cache directory missing", r.id));
                    broken.push(r.id.clone());
                }
            }
            _ => {}
        }
    }
    // Pointers to blobs that are not there (a step's layer, an image's manifest). A blob
    // that is on disk but not indexed (a cache from before the index) is an orphan below,
    // indexed by --repair, not a broken pointer.
    for (parent, child) in store.refs()? {
        let parent_kind = records.iter().find(|r| r.id == parent).map(|r| r.kind);
        let Some(kind) = parent_kind else { continue };
        let on_disk = child
            .parse::<Digest>()
            .is_ok_and(|d| store.blob_path(&d).is_file());
        if kind != RecordKind::Blob && !indexed.contains(&child) && !on_disk {
            report.problems.push(format!(
                "{parent}: refers to {child}, which is not in the cache"
            ));
            broken.push(parent.clone());
        }
    }
    // Every blob file's content against its name.
    let mut orphans = Vec::new();
    for e in fs::read_dir(store.root().join("blobs/sha256"))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let id = format!("sha256:{name}");
        report.blobs += 1;
        let Ok(d) = id.parse::<Digest>() else {
            report
                .problems
                .push(format!("blobs/sha256/{name}: not a digest"));
            continue;
        };
        let mut hasher = Sha256::new();
        let read = File::open(e.path()).and_then(|mut f| io::copy(&mut f, &mut hasher));
        if read
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        {
            continue; // collected meanwhile
        }
        let ok = read.is_ok() && Digest::from_sha256(hasher.finalize().into()) == d;
        if !ok {
            report
                .problems
                .push(format!("{id}: content does not match its digest"));
            if repair {
                store.write_tx(|tx| {
                    tx.execute("DELETE FROM refs WHERE parent = ?1", params![id])?;
                    tx.execute("DELETE FROM records WHERE id = ?1", params![id])?;
                    let _ = fs::remove_file(store.blob_path(&d));
                    Ok(())
                })?;
            }
        } else if !indexed.contains(&id) {
            orphans.push(d);
        }
    }
    // Orphans seen under the write lock: a blob being committed has its row by then.
    let orphans: Vec<Digest> = store.write_tx(|tx| {
        let mut out = Vec::new();
        for d in orphans {
            if store.record_in(tx, &d.to_string())?.is_none() {
                out.push(d);
            }
        }
        Ok(out)
    })?;
    for d in &orphans {
        report
            .problems
            .push(format!("{d}: blob file in no record (orphan)"));
        if repair {
            // Indexed, it is garbage the next collection frees, or a blob a name needs.
            store.has_blob(d);
        }
    }
    if repair {
        for id in broken {
            store.write_tx(|tx| {
                // Looked at again under the write lock: another process may have fixed it.
                if still_broken(store, tx, &id)? {
                    tx.execute("DELETE FROM refs WHERE parent = ?1", params![id])?;
                    tx.execute("DELETE FROM records WHERE id = ?1", params![id])?;
                }
                Ok(())
            })?;
        }
    }
    Ok(report)
}

/// Whether record `id` still lacks what it describes (its file or directory, or a blob it
/// names).
fn still_broken(store: &Store, tx: &rusqlite::Transaction<'_>, id: &str) -> Result<bool> {
    let Some(rec) = store.record_in(tx, id)? else {
        return Ok(false);
    };
    Ok(match rec.kind {
        RecordKind::Blob => id
            .parse::<Digest>()
            .map_or(true, |d| !store.blob_path(&d).is_file()),
        RecordKind::Snapshot => !store
            .snapshot_dir(id.trim_start_matches("snapshot:"))
            .is_dir(),
        RecordKind::CacheMount => !store
            .root()
            .join("mounts")
            .join(id.trim_start_matches("mount:"))
            .is_dir(),
        _ => {
            let mut st = tx.prepare("SELECT child FROM refs WHERE parent = ?1")?;
            let kids: Vec<String> = st
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut missing = false;
            for k in kids {
                missing |= store.record_in(tx, &k)?.is_none();
            }
            missing
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_repairs_corrupt_missing_and_orphaned_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = store.write_blob(b"good").unwrap();
        let bad = store.write_blob(b"bad").unwrap();
        let gone = store.write_blob(b"gone").unwrap();
        assert!(check(&store, false).unwrap().problems.is_empty());
        fs::write(store.blob_path(&bad), b"tampered").unwrap();
        fs::remove_file(store.blob_path(&gone)).unwrap();
        let orphan = Digest::of(b"orphan");
        fs::write(store.blob_path(&orphan), b"orphan").unwrap();
        let r = check(&store, false).unwrap();
        assert_eq!(r.problems.len(), 4, "{:?}", r.problems);
        check(&store, true).unwrap();
        let r = check(&store, false).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(store.blob_path(&good).exists());
        assert!(!store.blob_path(&bad).exists());
        assert!(store.record(&orphan.to_string()).unwrap().is_some());
    }
}
