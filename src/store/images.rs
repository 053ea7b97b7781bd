//! Image names in the store: each name (normalised, e.g. `docker.io/library/busybox:latest`)
//! points at a manifest (or index) blob. Names are index records (`image:<name>`) with a
//! reference to that blob, so GC keeps what a name needs and frees it once the name goes.
//! Pulled and loaded images are base images, which GC evicts after everything else.

use std::fs;

use anyhow::{Context, Result};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::index::{now, Record, RecordKind, RECORD_COLUMNS};
use super::{Digest, Store};

/// One named image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalised reference.
    pub name: String,
    /// Digest of its manifest or index blob.
    pub digest: String,
    /// Where it came from (`pull docker://…`, `load FILE`, `build`).
    pub source: String,
    /// When the record was written, seconds since the epoch.
    pub updated: i64,
}

impl ImageRecord {
    /// The manifest digest, parsed.
    pub fn manifest_digest(&self) -> Result<Digest> {
        self.digest.parse()
    }

    /// Built images are regular cache records; pulled and loaded ones are base images.
    fn kind(&self) -> RecordKind {
        if self.source.starts_with("build") {
            RecordKind::Image
        } else {
            RecordKind::BaseImage
        }
    }
}

fn record_id(name: &str) -> String {
    format!("image:{name}")
}

impl Store {
    /// Points `name` at manifest `digest` (replacing what it pointed at).
    pub fn set_image(&self, name: &str, digest: &Digest, source: &str) -> Result<()> {
        let t = now();
        let image = ImageRecord {
            name: name.to_string(),
            digest: digest.to_string(),
            source: source.to_string(),
            updated: t,
        };
        let rec = Record {
            id: record_id(name),
            kind: image.kind(),
            size: 0,
            created: t,
            last_used: t,
            use_count: 1,
            description: format!("{source}: {name}"),
            data: Some(serde_json::to_string(&image)?),
        };
        self.write_tx(|tx| {
            Self::put_record_in(tx, &rec, &[digest.to_string()], true)?;
            self.lease_in(tx, &rec.id)
        })
        .with_context(|| format!("cannot record image {name}"))
    }

    /// The record of `name`, if the store has one (marked used).
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        let id = record_id(name);
        let rec = self
            .write_tx(|tx| {
                let r = self.record_in(tx, &id)?;
                if r.is_some() {
                    self.lease_in(tx, &id)?;
                    Self::touch_in(tx, &id)?;
                }
                Ok(r)
            })
            .with_context(|| format!("cannot read the record of image {name}"))?;
        rec.map(|r| parse(&r))
            .transpose()
            .with_context(|| format!("the record of image {name} is corrupt"))
    }

    /// Every named image, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let recs = self.with_db(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE id LIKE 'image:%' ORDER BY id"
            ))?;
            let rows = st.query_map([], |r| r.get::<_, Option<String>>(7))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })?;
        let mut out: Vec<ImageRecord> = recs
            .into_iter()
            .flatten()
            .filter_map(|d| serde_json::from_str(&d).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the name; true if it existed. What only this image held is freed by the
    /// next GC (other images and the build cache may share its blobs).
    pub fn remove_image(&self, name: &str) -> Result<bool> {
        let id = record_id(name);
        self.write_tx(|tx| {
            tx.execute("DELETE FROM refs WHERE parent = ?1", params![id])?;
            Ok(tx.execute("DELETE FROM records WHERE id = ?1", params![id])? > 0)
        })
        .with_context(|| format!("cannot remove image {name}"))
    }
}

fn parse(r: &Record) -> Result<ImageRecord> {
    let data = r.data.as_deref().unwrap_or("");
    Ok(serde_json::from_str(data)?)
}

/// Moves the names of a cache directory from before the index (one JSON file per name
/// under `images/`) into the index, then removes those files.
pub(super) fn migrate_legacy_names(store: &Store) -> Result<()> {
    let dir = store.root().join("images");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if let Ok(bytes) = fs::read(e.path()) {
            if let Ok(r) = serde_json::from_slice::<ImageRecord>(&bytes) {
                if let Ok(d) = r.manifest_digest() {
                    store.adopt_closure(&d);
                    store.set_image(&r.name, &d, &r.source)?;
                }
            }
        }
        let _ = fs::remove_file(e.path());
    }
    let _ = fs::remove_dir(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_set_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"m");
        store
            .set_image("docker.io/library/b:1", &d, "load x")
            .unwrap();
        store
            .set_image("docker.io/library/a:1", &d, "load x")
            .unwrap();
        store
            .set_image("docker.io/library/a:1", &Digest::of(b"n"), "load y")
            .unwrap();
        let names: Vec<String> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["docker.io/library/a:1", "docker.io/library/b:1"]);
        let a = store.image("docker.io/library/a:1").unwrap().unwrap();
        assert_eq!(a.manifest_digest().unwrap(), Digest::of(b"n"));
        assert!(store.remove_image("docker.io/library/a:1").unwrap());
        assert!(!store.remove_image("docker.io/library/a:1").unwrap());
        assert!(store.image("docker.io/library/a:1").unwrap().is_none());
    }

    #[test]
    fn legacy_name_files_move_into_the_index() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("images")).unwrap();
        let r = ImageRecord {
            name: "docker.io/library/old:1".into(),
            digest: Digest::of(b"m").to_string(),
            source: "load x".into(),
            updated: 1,
        };
        fs::write(
            dir.path().join("images/abc"),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let got = store.image("docker.io/library/old:1").unwrap().unwrap();
        assert_eq!(got.digest, r.digest);
        assert!(!dir.path().join("images").exists());
    }
}
