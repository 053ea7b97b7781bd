//! Image names in the store: each name (normalised, e.g. `docker.io/library/busybox:latest`)
//! points at a manifest (or index) blob. One small file per name, replaced atomically, so
//! concurrent rbuild processes never see a half-written record.

use std::fs;
use std::io::Write;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

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
}

impl Store {
    fn image_path(&self, name: &str) -> std::path::PathBuf {
        self.root()
            .join("images")
            .join(Digest::of(name.as_bytes()).hex())
    }

    /// Points `name` at manifest `digest` (replacing what it pointed at).
    pub fn set_image(&self, name: &str, digest: &Digest, source: &str) -> Result<()> {
        let record = ImageRecord {
            name: name.to_string(),
            digest: digest.to_string(),
            source: source.to_string(),
            updated: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        let mut tmp = self.temp_file()?;
        tmp.write_all(&serde_json::to_vec(&record)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.image_path(name))
            .map_err(|e| e.error)
            .with_context(|| format!("cannot record image {name}"))?;
        Ok(())
    }

    /// The record of `name`, if the store has one.
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        match fs::read(self.image_path(name)) {
            Ok(bytes) => {
                let r: ImageRecord = serde_json::from_slice(&bytes)
                    .with_context(|| format!("the record of image {name} is corrupt"))?;
                Ok((r.name == name).then_some(r))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read the record of image {name}")),
        }
    }

    /// Every named image, sorted by name. Unreadable records are skipped.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root().join("images"))? {
            let entry = entry?;
            if let Ok(bytes) = fs::read(entry.path()) {
                if let Ok(r) = serde_json::from_slice::<ImageRecord>(&bytes) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the name; true if it existed. Blobs stay (other images and the build cache
    /// may share them).
    pub fn remove_image(&self, name: &str) -> Result<bool> {
        if self.image(name)?.is_none() {
            return Ok(false);
        }
        fs::remove_file(self.image_path(name))
            .with_context(|| format!("cannot remove image {name}"))?;
        Ok(true)
    }
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
}
