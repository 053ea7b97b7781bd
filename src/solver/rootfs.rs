//! A stage's filesystem materialised on disk (applied from its layers on demand), and
//! path resolution that follows symlinks without leaving the root.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::image::Layer;
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

/// Result of resolving an absolute in-image path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The path relative to the root after following symlinks ("" is the root itself).
    pub rel: String,
    /// What is there now, if anything.
    pub kind: Option<FileKind>,
}

/// The kind of an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// Anything else (file, symlink not followed, device...).
    Other,
}

/// Resolves absolute `path` inside `root`: every symlink met on the way (including the last
/// component when `follow_last`) is followed as if `root` were `/`, so the result never
/// leaves the root. Missing components are kept as written.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<Resolved> {
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .rev()
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = root.join(done.join("/")).join(&c);
        let is_last = todo.is_empty();
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                hops += 1;
                if hops > 255 {
                    bail!("too many levels of symbolic links resolving {path}");
                }
                let target = fs::read_link(&candidate)?;
                let target = target.to_string_lossy().to_string();
                if target.starts_with('/') {
                    done.clear();
                }
                for t in target.split('/').filter(|t| !t.is_empty()).rev() {
                    todo.push(t.to_string());
                }
            }
            _ => done.push(c),
        }
    }
    let rel = done.join("/");
    let kind = match fs::symlink_metadata(root.join(&rel)) {
        Ok(m) if m.is_dir() => Some(FileKind::Dir),
        Ok(_) => Some(FileKind::Other),
        Err(_) => None,
    };
    Ok(Resolved { rel, kind })
}

/// Reads a small file of the image (e.g. `/etc/passwd`) if it exists.
pub fn read_image_file(root: &Path, path: &str) -> Option<String> {
    let r = resolve_in_root(root, path, true).ok()?;
    if r.kind != Some(FileKind::Other) {
        return None;
    }
    fs::read(root.join(&r.rel))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/../../../etc", root.join("escape")).unwrap();
        symlink("../..", root.join("usr/up")).unwrap();
        let r = resolve_in_root(root, "/bin/sh", false).unwrap();
        assert_eq!(
            r,
            Resolved {
                rel: "usr/bin/sh".into(),
                kind: None
            }
        );
        let r = resolve_in_root(root, "/escape/passwd", false).unwrap();
        assert_eq!(r.rel, "etc/passwd");
        let r = resolve_in_root(root, "/usr/up/usr/up/usr/bin", true).unwrap();
        assert_eq!(
            r,
            Resolved {
                rel: "usr/bin".into(),
                kind: Some(FileKind::Dir)
            }
        );
        let r = resolve_in_root(root, "/bin", false).unwrap();
        assert_eq!(
            r,
            Resolved {
                rel: "bin".into(),
                kind: Some(FileKind::Other)
            }
        );
        assert!(read_image_file(root, "/escape/passwd").is_none());
    }

    #[test]
    fn symlink_loops_are_errors() {
        let t = tempfile::tempdir().unwrap();
        symlink("b", t.path().join("a")).unwrap();
        symlink("a", t.path().join("b")).unwrap();
        assert!(resolve_in_root(t.path(), "/a/x", true).is_err());
    }
}
