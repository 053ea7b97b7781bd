//! A stage's filesystem materialised on disk (applied from its layers on demand), and
//! paths inside it resolved by [`crate::inroot`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::image::Layer;
use crate::inroot::{Resolved, Root, Rules};
use crate::snapshot::overlay::{Driver, StepDirs};
use crate::snapshot::{apply_layer, open_layer, ApplyOptions};
use crate::store::Store;

use super::overlay_root::OverlayRoot;

/// Owners recorded in the layers, by path relative to the root.
pub type OwnerMap = BTreeMap<String, (u32, u32)>;

/// A stage's root filesystem, kept in step with its layers lazily: a directory with the
/// layers applied, or an overlay of the store's snapshots.
///
/// Without privileges files cannot be given other owners on disk, so the owners the layers
/// record are kept in a map beside the tree; as root the disk itself is right.
pub struct Rootfs {
    tree: Tree,
    applied: usize,
    owners: Option<OwnerMap>,
}

enum Tree {
    /// Every layer applied into one directory (the walk and copy snapshotters).
    Dir(tempfile::TempDir, PathBuf),
    /// An overlay of the store's snapshots (the overlay snapshotters).
    Overlay(Box<OverlayRoot>, PathBuf),
}

/// How stage roots are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind<'a> {
    /// A directory with the layers applied.
    Dir,
    /// An overlay of snapshots.
    Overlay {
        /// The build's id mapping (`/proc/self/uid_map` and `gid_map`): snapshots made
        /// through another mapping hold other host owners and are kept apart.
        mapping: &'a str,
        /// What mounts it.
        driver: Driver,
    },
}

impl Rootfs {
    /// An empty root in the store's temp area (removed on drop).
    pub fn new(store: &Store, kind: RootKind<'_>) -> Result<Rootfs> {
        let privileged = nix::unistd::geteuid().is_root();
        let tree = match kind {
            RootKind::Dir => {
                let dir = store.temp_dir("rootfs-")?;
                let path = dir.path().to_path_buf();
                Tree::Dir(dir, path)
            }
            RootKind::Overlay { mapping, driver } => {
                let o = OverlayRoot::new(store, mapping, driver)?;
                let path = o.merged();
                Tree::Overlay(Box::new(o), path)
            }
        };
        Ok(Rootfs {
            tree,
            applied: 0,
            owners: (!privileged).then(OwnerMap::new),
        })
    }

    /// The root directory (as of the last sync).
    pub fn path(&self) -> &Path {
        match &self.tree {
            Tree::Dir(_, p) | Tree::Overlay(_, p) => p,
        }
    }

    /// For a RUN on an overlay root: the upper directory the step's changes go to and a
    /// view of the layers below; None for a directory root.
    pub fn step_dirs(&mut self) -> Result<Option<StepDirs>> {
        match &mut self.tree {
            Tree::Dir(..) => Ok(None),
            Tree::Overlay(o, _) => o.step_dirs().map(Some),
        }
    }

    /// After a RUN that made the last of `layers`: the tree holds it (an overlay keeps the
    /// step's upper directory as that layer's snapshot).
    pub fn step_done(&mut self, store: &Store, layers: &[Layer]) -> Result<()> {
        if let Tree::Overlay(o, _) = &mut self.tree {
            o.commit_step(store, layers)?;
        }
        self.applied = layers.len();
        Ok(())
    }

    /// After a RUN that made no layer: an overlay drops what the step left in its upper
    /// directory (copy-ups without a change).
    pub fn step_empty(&mut self) {
        if let Tree::Overlay(o, _) = &mut self.tree {
            o.discard_step();
        }
    }

    /// The owner of `rel` as the layers record it, when the disk cannot tell (unprivileged).
    pub fn recorded_owner(&self, rel: &str) -> Option<(u32, u32)> {
        self.owners
            .as_ref()
            .map(|m| m.get(rel).copied().unwrap_or((0, 0)))
    }

    /// A private copy of this root (as of the last sync), for a step that must not change
    /// it: the copy snapshotter. Reflinked where the filesystem can.
    pub fn private_copy(&self, store: &Store) -> Result<Rootfs> {
        let dir = store.temp_dir("rootfs-")?;
        let path = dir.path().to_path_buf();
        crate::snapshot::clone::copy_tree(self.path(), &path)
            .context("cannot make a private copy of the stage's root")?;
        Ok(Rootfs {
            tree: Tree::Dir(dir, path),
            applied: self.applied,
            owners: self.owners.clone(),
        })
    }

    /// Applies the layers not yet applied and returns the root directory.
    pub fn sync(&mut self, store: &Store, layers: &[Layer]) -> Result<&Path> {
        if let Tree::Overlay(o, _) = &mut self.tree {
            o.sync(store, layers, self.applied)?;
            self.applied = layers.len();
            return Ok(self.path());
        }
        let set_owners = self.owners.is_none();
        let root = self.path().to_path_buf();
        for layer in &layers[self.applied.min(layers.len())..] {
            let mut reader = open_layer(store, layer)?;
            apply_layer(
                &mut reader,
                &root,
                &layer.digest.to_string(),
                &ApplyOptions {
                    set_owners,
                    whiteouts: true,
                },
            )?;
            reader.finish()?;
            if let Some(owners) = &mut self.owners {
                record_owners(open_layer(store, layer)?, owners)
                    .with_context(|| format!("cannot read layer {}", layer.digest))?;
            }
        }
        self.applied = layers.len();
        Ok(self.path())
    }
}

/// Updates `owners` with one layer's entries: its whiteouts and opaque markers first hide
/// what lower layers recorded, then its own entries are added.
fn record_owners(layer: impl Read, owners: &mut OwnerMap) -> Result<()> {
    let mut added = Vec::new();
    let mut hidden = Vec::new();
    for entry in tar::Archive::new(layer).entries()? {
        let entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n.to_string()),
            None => (String::new(), path.clone()),
        };
        if name == ".wh..wh..opq" {
            hidden.push((dir, true));
        } else if let Some(gone) = name.strip_prefix(".wh.") {
            let gone = if dir.is_empty() {
                gone.to_string()
            } else {
                format!("{dir}/{gone}")
            };
            hidden.push((gone, false));
        } else {
            let h = entry.header();
            added.push((path, (h.uid()? as u32, h.gid()? as u32)));
        }
    }
    for (path, only_below) in hidden {
        let below = format!("{path}/");
        owners.retain(|k, _| !(k.starts_with(&below) || (!only_below && *k == path)));
    }
    owners.extend(added);
    Ok(())
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if let Tree::Dir(dir, _) = &self.tree {
            crate::store::make_removable(dir.path());
        }
    }
}

/// Resolves absolute `path` inside `root` as a process chrooted there would see it
/// ([`inroot::Rules::chroot`]): every symlink met on the way (and the last component when
/// `follow_last`) is followed inside the root; a missing rest is kept as written.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<Resolved> {
    Ok(Root::open_dir(root)?.resolve(Path::new(path), Rules::chroot(follow_last))?)
}

/// The most of an image file rbuild reads whole (`/etc/passwd`, `/etc/group`).
const IMAGE_FILE_LIMIT: u64 = 16 << 20;

/// Reads a small file of the image (e.g. `/etc/passwd`) if it exists and is a regular
/// file of at most 16 MiB, by a descriptor opened inside the root.
pub fn read_image_file(root: &Path, path: &str) -> Option<String> {
    let bytes = Root::open_dir(root)
        .ok()?
        .read_file(Path::new(path), IMAGE_FILE_LIMIT)
        .ok()??;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn image_files_are_read_inside_the_root() {
        // Resolution itself is tested in `inroot`; this is the reading on top of it.
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("data")).unwrap();
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("data/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        symlink("/../../data/passwd", root.join("etc/passwd")).unwrap();
        symlink("/../../../../etc/hostname", root.join("etc/hostname")).unwrap();
        assert_eq!(
            read_image_file(root, "/etc/passwd").as_deref(),
            Some("root:x:0:0::/root:/bin/sh\n")
        );
        assert!(read_image_file(root, "/etc/hostname").is_none());
        // A hostile image's /etc/group as a fifo: refused at once, never waited on.
        nix::unistd::mkfifo(
            &root.join("etc/group"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(read_image_file(root, "/etc/group").is_none());
        assert!(read_image_file(root, "/etc").is_none());
        let r = resolve_in_root(root, "/etc/passwd/x", false);
        assert!(r.is_err());
    }
}
