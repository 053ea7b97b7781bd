//! A stage's root as an overlay (the kernel's or fuse-overlayfs): the store's snapshots (one unpacked layer each,
//! shared by every build on the same chain) as lower directories, and a fresh upper
//! directory that a step's changes go to. A layer with no snapshot yet is unpacked once,
//! through the mount (so it lands on its parent chain exactly as in a container), and its
//! upper directory becomes its snapshot; so does a RUN step's upper directory, after its
//! layer was read from it.

use std::path::PathBuf;

use anyhow::Result;

use crate::image::Layer;
use crate::snapshot::overlay::{mount_overlay, Driver, Mounted, StepDirs};
use crate::snapshot::{apply_layer, open_layer, ApplyOptions};
use crate::store::{remove_tree, FieldHasher, Store};

/// The overlay root of one stage.
pub struct OverlayRoot {
    dir: tempfile::TempDir,
    /// The id mapping (host owners on disk depend on it): snapshots are kept apart by it.
    mapping: String,
    /// What mounts the stack (snapshots are kept apart by it too: fuse-overlayfs may write
    /// whiteouts the kernel does not read).
    driver: Driver,
    /// Snapshot directories, bottom layer first.
    lowers: Vec<PathBuf>,
    merged: Option<Mounted>,
    view: Option<Mounted>,
    /// Numbers the upper, work and link directories of each mount.
    generation: usize,
}

/// The snapshot key of the filesystem made by `layers` (bottom first) on disk through the
/// id `mapping` (its files carry host owners) by `driver`.
pub fn snapshot_key(layers: &[Layer], mapping: &str, driver: Driver) -> String {
    let mut h = FieldHasher::new("rbuild-snapshot-v3");
    h.str("mapping", mapping);
    h.str("driver", driver.name());
    for l in layers {
        h.str("diff_id", &l.diff_id.to_string());
    }
    h.finish().hex().to_string()
}

impl OverlayRoot {
    /// An empty root in the store's temp area.
    pub fn new(store: &Store, mapping: &str, driver: Driver) -> Result<OverlayRoot> {
        let dir = store.temp_dir("overlay-")?;
        for d in ["merged", "view", "empty1", "empty2"] {
            std::fs::create_dir(dir.path().join(d))?;
        }
        Ok(OverlayRoot {
            dir,
            mapping: mapping.to_string(),
            driver,
            lowers: Vec::new(),
            merged: None,
            view: None,
            generation: 0,
        })
    }

    /// Where the merged tree is (mounted by [`OverlayRoot::sync`]).
    pub fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }

    fn part(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}-{}", self.generation))
    }

    /// The upper directory of the current mount.
    pub fn upper(&self) -> PathBuf {
        self.part("upper")
    }

    /// Lower directories, top first, never fewer than `min` (empty ones fill up).
    fn stack(&self, min: usize) -> Vec<PathBuf> {
        let mut s: Vec<PathBuf> = self.lowers.iter().rev().cloned().collect();
        for e in ["empty1", "empty2"] {
            if s.len() < min {
                s.push(self.dir.path().join(e));
            }
        }
        s
    }

    fn mount(&mut self) -> Result<()> {
        if self.merged.is_some() {
            return Ok(());
        }
        let (upper, work, links) = (self.part("upper"), self.part("work"), self.part("links"));
        remove_tree(&links);
        for d in [&upper, &work, &links] {
            std::fs::create_dir_all(d)?;
        }
        self.merged = Some(mount_overlay(
            self.driver,
            &self.stack(1),
            Some((&upper, &work)),
            &self.merged(),
            &links,
        )?);
        Ok(())
    }

    fn unmount(&mut self) {
        self.view = None;
        self.merged = None;
    }

    /// Leaves the current upper directory behind (removed) for a fresh one.
    fn next_generation(&mut self) {
        self.unmount();
        for p in ["upper", "work", "links", "vlinks"] {
            remove_tree(&self.part(p));
        }
        self.generation += 1;
    }

    /// Brings the lowers up to `layers` (the first `applied` are there) and mounts the
    /// merged tree with an empty upper directory.
    pub fn sync(&mut self, store: &Store, layers: &[Layer], applied: usize) -> Result<()> {
        for i in applied.min(layers.len())..layers.len() {
            let key = snapshot_key(&layers[..=i], &self.mapping, self.driver);
            if let Some(dir) = store.snapshot(&key)? {
                // The lowers change: the next mount starts on fresh directories.
                self.next_generation();
                self.lowers.push(dir);
                continue;
            }
            // The bottom layer has nothing below it to land on: unpacked straight into a
            // plain directory (no overlay in the way of every file it creates).
            let into = if self.lowers.is_empty() {
                self.unmount();
                let upper = self.upper();
                std::fs::create_dir_all(&upper)?;
                upper
            } else {
                self.mount()?;
                self.merged()
            };
            let layer = &layers[i];
            let mut reader = open_layer(store, layer)?;
            apply_layer(
                &mut reader,
                &into,
                &layer.digest.to_string(),
                &ApplyOptions {
                    set_owners: true,
                    whiteouts: true,
                },
            )?;
            reader.finish()?;
            self.commit(store, &key)?;
        }
        self.mount()
    }

    /// Makes the current upper directory snapshot `key`, the new top lower.
    fn commit(&mut self, store: &Store, key: &str) -> Result<()> {
        self.unmount();
        let dir = store.commit_snapshot(&self.upper(), key)?;
        self.lowers.push(dir);
        self.next_generation();
        Ok(())
    }

    /// For a step: the upper directory its changes go to, and a read-only view of the
    /// layers below (to tell a copy-up from a change).
    pub fn step_dirs(&mut self) -> Result<StepDirs> {
        self.mount()?;
        if self.view.is_none() {
            let links = self.part("vlinks");
            remove_tree(&links);
            std::fs::create_dir_all(&links)?;
            let view = self.dir.path().join("view");
            self.view = Some(mount_overlay(
                self.driver,
                &self.stack(2),
                None,
                &view,
                &links,
            )?);
        }
        Ok(StepDirs {
            upper: self.upper(),
            lower: self.dir.path().join("view"),
            driver: self.driver,
        })
    }

    /// After a step whose layer is the last of `layers`: its upper directory becomes that
    /// layer's snapshot.
    pub fn commit_step(&mut self, store: &Store, layers: &[Layer]) -> Result<()> {
        let key = snapshot_key(layers, &self.mapping, self.driver);
        self.commit(store, &key)
    }

    /// After a step that made no layer: its upper directory is thrown away.
    pub fn discard_step(&mut self) {
        self.next_generation();
    }
}

impl Drop for OverlayRoot {
    fn drop(&mut self) {
        // Unmounted first: removing through the mount would only whiteout the lowers.
        self.unmount();
        crate::store::make_removable(self.dir.path());
    }
}
