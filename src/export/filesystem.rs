//! The image's final root filesystem: unpacked into a directory (`type=local`), or
//! flattened into one tar (`type=tar`) without unpacking, so owners recorded in the
//! layers survive even when rbuild runs unprivileged.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::image::{BuiltImage, Layer};
use crate::snapshot::compression::decompressing_reader;
use crate::snapshot::tar_writer::{TarHeader, TarKind, TarWriter};
use crate::snapshot::{apply_layer, ApplyOptions, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::store::Store;

fn open_layer(store: &Store, layer: &Layer) -> Result<Box<dyn Read>> {
    let blob = store.open_blob(&layer.digest)?;
    let (_, r) = decompressing_reader(BufReader::with_capacity(1 << 20, blob))
        .with_context(|| format!("cannot read layer {}", layer.digest))?;
    Ok(r)
}

/// Unpacks the layers into `dest`. A new directory is built beside it and renamed into
/// place; into an existing directory, each top-level entry replaces the one of that name.
pub fn write_dir(store: &Store, image: &BuiltImage, dest: &Path) -> Result<()> {
    if dest.exists() && !dest.is_dir() {
        bail!(
            "cannot write {}: it exists and is not a directory",
            dest.display()
        );
    }
    let parent = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".rbuild-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    let opts = ApplyOptions {
        set_owners: nix::unistd::geteuid().is_root(),
        whiteouts: true,
    };
    for layer in &image.layers {
        apply_layer(
            open_layer(store, layer)?,
            tmp.path(),
            &layer.digest.to_string(),
            &opts,
        )?;
    }
    if !dest.exists() {
        let tmp = tmp.keep();
        return fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()));
    }
    for entry in fs::read_dir(tmp.path())? {
        let entry = entry?;
        let target = dest.join(entry.file_name());
        if let Ok(m) = target.symlink_metadata() {
            if m.is_dir() {
                fs::remove_dir_all(&target)
            } else {
                fs::remove_file(&target)
            }
            .with_context(|| format!("cannot replace {}", target.display()))?;
        }
        fs::rename(entry.path(), &target)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

/// The entry of the merged filesystem at a path: which layer and which entry of it, and
/// for directories the header (written where the directory first appears).
struct Winner {
    layer: usize,
    ordinal: usize,
    dir: Option<TarHeader>,
}

/// Writes the merged filesystem as one tar: a first pass over the layers works out which
/// entry of which layer is visible at each path (whiteouts and opaque directories
/// applied), a second pass copies those entries out in layer order.
pub fn write_tar(store: &Store, image: &BuiltImage, out: &mut dyn Write) -> Result<()> {
    let mut winners: BTreeMap<String, Winner> = BTreeMap::new();
    for (li, layer) in image.layers.iter().enumerate() {
        let mut adds: Vec<(String, usize, Option<TarHeader>)> = Vec::new();
        let mut hidden: Vec<(String, bool)> = Vec::new();
        let mut ar = tar::Archive::new(open_layer(store, layer)?);
        for (ei, entry) in ar.entries()?.enumerate() {
            let mut entry = entry.with_context(|| format!("corrupt layer {}", layer.digest))?;
            let Some(path) = entry_path(&entry) else {
                continue;
            };
            let (dir, name) = split(&path);
            if name == OPAQUE_MARKER {
                hidden.push((dir.to_string(), true));
            } else if let Some(gone) = name.strip_prefix(WHITEOUT_PREFIX) {
                hidden.push((join(dir, gone), false));
            } else {
                let dir_header = if entry.header().entry_type().is_dir() {
                    Some(header_of(&mut entry, &path)?)
                } else {
                    None
                };
                adds.push((path, ei, dir_header));
            }
        }
        // Whiteouts hide lower layers only, so they go first.
        for (path, only_below) in hidden {
            remove_tree(&mut winners, &path, !only_below);
        }
        for (path, ordinal, dir) in adds {
            if dir.is_none() {
                remove_tree(&mut winners, &path, false);
            }
            winners.insert(
                path,
                Winner {
                    layer: li,
                    ordinal,
                    dir,
                },
            );
        }
    }

    let mut tar = TarWriter::new(out);
    let mut dirs_written: HashSet<String> = HashSet::new();
    for (li, layer) in image.layers.iter().enumerate() {
        let mut ar = tar::Archive::new(open_layer(store, layer)?);
        for (ei, entry) in ar.entries()?.enumerate() {
            let mut entry = entry?;
            let Some(path) = entry_path(&entry) else {
                continue;
            };
            let Some(w) = winners.get(&path) else {
                continue;
            };
            if let Some(dir) = &w.dir {
                if dirs_written.insert(path.clone()) {
                    tar.append(dir, &mut std::io::empty())?;
                }
                continue;
            }
            if (w.layer, w.ordinal) != (li, ei) {
                continue;
            }
            let header = header_of(&mut entry, &path)?;
            tar.append(&header, &mut entry)
                .with_context(|| format!("cannot copy {path} from layer {}", layer.digest))?;
        }
    }
    tar.finish()?;
    Ok(())
}

/// Removes `path`'s descendants (and `path` itself when `itself`) from the map.
fn remove_tree(winners: &mut BTreeMap<String, Winner>, path: &str, itself: bool) {
    if itself {
        winners.remove(path);
    }
    if path.is_empty() {
        winners.clear();
        return;
    }
    let prefix = format!("{path}/");
    let doomed: Vec<String> = winners
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        winners.remove(&k);
    }
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Option<String> {
    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let p = raw
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    (!p.is_empty() && p != ".").then(|| p.to_string())
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The metadata of a layer entry, for copying it into the merged tar.
fn header_of<R: Read>(entry: &mut tar::Entry<'_, R>, path: &str) -> Result<TarHeader> {
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    let h = entry.header();
    let link = || {
        entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default()
    };
    let kind = match h.entry_type() {
        tar::EntryType::Directory => TarKind::Dir,
        tar::EntryType::Symlink => TarKind::Symlink(link()),
        tar::EntryType::Link => TarKind::Hardlink(link().trim_start_matches("./").to_string()),
        tar::EntryType::Fifo => TarKind::Fifo,
        tar::EntryType::Char => TarKind::CharDevice(
            h.device_major()?.unwrap_or(0),
            h.device_minor()?.unwrap_or(0),
        ),
        tar::EntryType::Block => TarKind::BlockDevice(
            h.device_major()?.unwrap_or(0),
            h.device_minor()?.unwrap_or(0),
        ),
        _ => TarKind::File { size: entry.size() },
    };
    Ok(TarHeader {
        path: path.to_string(),
        kind,
        mode: h.mode()? & 0o7777,
        uid: h.uid()?,
        gid: h.gid()?,
        mtime: h.mtime()? as i64,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{write_layer, Content, EntryKind, LayerEntry, LayerOptions};

    fn entry(path: &str, kind: EntryKind, uid: u32) -> LayerEntry {
        LayerEntry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid,
            gid: uid,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }

    fn file(path: &str, data: &str, uid: u32) -> LayerEntry {
        entry(
            path,
            EntryKind::File {
                size: data.len() as u64,
                source: Content::Bytes(data.as_bytes().to_vec()),
            },
            uid,
        )
    }

    #[test]
    fn flattening_applies_whiteouts_and_keeps_owners() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let opts = LayerOptions {
            clamp_mtime: None,
            format: crate::image::LayerFormat {
                compression: crate::image::LayerCompression::Gzip,
                level: 1,
            },
        };
        let l1 = write_layer(
            &store,
            vec![
                entry("etc", EntryKind::Dir, 0),
                file("etc/a", "a", 7),
                file("etc/b", "b", 0),
                entry("opq", EntryKind::Dir, 0),
                file("opq/old", "o", 0),
                entry("d", EntryKind::Dir, 0),
                file("d/x", "x", 0),
            ],
            &opts,
        )
        .unwrap();
        let l2 = write_layer(
            &store,
            vec![
                entry("etc", EntryKind::Dir, 5),
                file("etc/.wh.b", "", 0),
                file("etc/c", "c", 0),
                entry("opq", EntryKind::Dir, 0),
                file("opq/.wh..wh..opq", "", 0),
                file("opq/new", "n", 0),
                file("d", "now a file", 0),
            ],
            &opts,
        )
        .unwrap();
        let image = BuiltImage {
            manifest_digest: store.write_blob(b"m").unwrap(),
            manifest: b"m".to_vec(),
            config_digest: store.write_blob(b"c").unwrap(),
            config: b"c".to_vec(),
            layers: vec![l1, l2],
        };
        let mut out = Vec::new();
        write_tar(&store, &image, &mut out).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let got: Vec<(String, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path()
                        .unwrap()
                        .to_string_lossy()
                        .trim_end_matches('/')
                        .to_string(),
                    e.header().uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("etc".to_string(), 5),
                ("etc/a".to_string(), 7),
                ("opq".to_string(), 0),
                ("d".to_string(), 0),
                ("etc/c".to_string(), 0),
                ("opq/new".to_string(), 0),
            ]
        );

        let target = dir.path().join("rootfs");
        write_dir(&store, &image, &target).unwrap();
        assert_eq!(fs::read_to_string(target.join("d")).unwrap(), "now a file");
        assert!(!target.join("etc/b").exists());
        assert!(!target.join("opq/old").exists());
        assert!(target.join("opq/new").exists());
    }
}
