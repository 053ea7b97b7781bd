//! One model for a root filesystem, whatever it was read from: image layers applied in order
//! (with OCI whiteouts), a single tar, or a directory on disk. Expectations are checked
//! against this model, so every output is judged by the same rules.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (including a hard link to one).
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl Kind {
    /// The name used in `expect.json` (`file`, `dir`, `symlink`, `fifo`, `chardev`, `blockdev`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDevice => "chardev",
            Kind::BlockDevice => "blockdev",
        }
    }
}

/// One path of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its type.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Owner uid and gid, where the source records them.
    pub owner: Option<(u64, u64)>,
    /// Content of a regular file (through hard links).
    pub content: Option<Vec<u8>>,
    /// Target of a symlink, as written.
    pub link_target: Option<String>,
    /// Hard-link identity: paths with the same value are the same file.
    pub link_group: String,
    /// True when this entry was a hard link (tar `Link` entry) to an earlier path.
    pub is_hardlink_entry: bool,
    /// Modification time in seconds.
    pub mtime: u64,
}

/// A filesystem tree: absolute, normalised paths (`/a/b`, the root itself excluded) to nodes.
#[derive(Debug, Clone, Default)]
pub struct FsTree {
    /// Paths to what is there.
    pub nodes: BTreeMap<String, Node>,
}

/// Normalises a path from a tar header or an expectation to `/a/b` form: `./` prefixes,
/// leading and trailing slashes and `.` components go; `None` for the root itself; an error
/// for a `..` component (a path that could escape the root).
pub fn normalize(path: &str) -> Result<Option<String>, String> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("path {path:?} has a '..' component")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        Ok(None)
    } else {
        Ok(Some(format!("/{}", parts.join("/"))))
    }
}

/// Reads a whole blob, decompressing gzip (detected by its magic number).
pub fn decompress(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| format!("bad gzip stream: {e}"))?;
        Ok(out)
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err("zstd-compressed layers are not supported by the test reader".into())
    } else {
        Ok(bytes.to_vec())
    }
}

/// One entry of a layer, before it is applied.
enum Item {
    Whiteout(String),
    Opaque(String),
    Put(String, Node, Option<String>),
}

impl FsTree {
    /// An empty tree.
    pub fn new() -> FsTree {
        FsTree::default()
    }

    /// Applies one layer (a tar, plain or gzip) on top of the tree, OCI style: the layer's
    /// whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) hide what lower layers had,
    /// then its entries are added in order (a later entry for the same path wins).
    pub fn apply_layer(&mut self, blob: &[u8]) -> Result<(), String> {
        self.apply(blob, true)
    }

    /// A tree from one flat tar (plain or gzip), where whiteouts are not expected.
    pub fn from_tar(blob: &[u8]) -> Result<FsTree, String> {
        let mut t = FsTree::new();
        t.apply(blob, false)?;
        Ok(t)
    }

    fn apply(&mut self, blob: &[u8], whiteouts: bool) -> Result<(), String> {
        let data = decompress(blob)?;
        let mut items = Vec::new();
        let mut archive = tar::Archive::new(&data[..]);
        let entries = archive.entries().map_err(|e| format!("not a tar: {e}"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
            let raw_path = entry
                .path()
                .map_err(|e| format!("bad tar path: {e}"))?
                .to_string_lossy()
                .into_owned();
            let Some(path) = normalize(&raw_path)? else {
                continue; // the root directory itself
            };
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
            if let Some(hidden) = name.strip_prefix(".wh.") {
                if !whiteouts {
                    return Err(format!("unexpected whiteout {path} in a flat tar"));
                }
                if hidden == ".wh..opq" {
                    items.push(Item::Opaque(dir.to_string()));
                } else {
                    items.push(Item::Whiteout(format!("{dir}/{hidden}")));
                }
                continue;
            }
            let h = entry.header().clone();
            let et = h.entry_type();
            let mut pax: BTreeMap<String, String> = BTreeMap::new();
            if let Ok(Some(exts)) = entry.pax_extensions() {
                for ext in exts.flatten() {
                    if let (Ok(k), Ok(v)) = (ext.key(), ext.value()) {
                        pax.insert(k.to_string(), v.to_string());
                    }
                }
            }
            let num = |key: &str, header: std::io::Result<u64>| -> Result<u64, String> {
                match pax.get(key) {
                    Some(v) => v
                        .split('.')
                        .next()
                        .unwrap_or("")
                        .parse()
                        .map_err(|_| format!("{path}: bad PAX {key} {v:?}")),
                    None => header.map_err(|e| format!("{path}: bad {key}: {e}")),
                }
            };
            let uid = num("uid", h.uid())?;
            let gid = num("gid", h.gid())?;
            let mtime = num("mtime", h.mtime())?;
            let mode = h.mode().map_err(|e| format!("{path}: bad mode: {e}"))? & 0o7777;
            let link_name = entry
                .link_name()
                .map_err(|e| format!("{path}: bad link name: {e}"))?
                .map(|l| l.to_string_lossy().into_owned());
            let mut node = Node {
                kind: Kind::File,
                mode,
                owner: Some((uid, gid)),
                content: None,
                link_target: None,
                link_group: path.clone(),
                is_hardlink_entry: false,
                mtime,
            };
            let mut hardlink_to = None;
            if et.is_hard_link() {
                let target =
                    link_name.ok_or_else(|| format!("{path}: hard link without target"))?;
                let target =
                    normalize(&target)?.ok_or_else(|| format!("{path}: hard link to the root"))?;
                node.is_hardlink_entry = true;
                hardlink_to = Some(target);
            } else if et.is_file() || et == tar::EntryType::Continuous {
                let mut content = Vec::new();
                entry
                    .read_to_end(&mut content)
                    .map_err(|e| format!("{path}: cannot read content: {e}"))?;
                node.content = Some(content);
            } else if et.is_dir() {
                node.kind = Kind::Dir;
            } else if et.is_symlink() {
                node.kind = Kind::Symlink;
                node.link_target =
                    Some(link_name.ok_or_else(|| format!("{path}: symlink without target"))?);
            } else if et.is_fifo() {
                node.kind = Kind::Fifo;
            } else if et.is_character_special() {
                node.kind = Kind::CharDevice;
            } else if et.is_block_special() {
                node.kind = Kind::BlockDevice;
            } else {
                return Err(format!("{path}: unexpected tar entry type {et:?}"));
            }
            items.push(Item::Put(path, node, hardlink_to));
        }
        // Whiteouts hide lower layers only, so they go first.
        for item in &items {
            match item {
                Item::Whiteout(p) => self.remove_with_children(p, true),
                Item::Opaque(d) => self.remove_with_children(d, false),
                Item::Put(..) => {}
            }
        }
        for item in items {
            if let Item::Put(path, mut node, hardlink_to) = item {
                if let Some(target) = hardlink_to {
                    let t = self
                        .nodes
                        .get(&target)
                        .ok_or_else(|| format!("{path}: hard link to missing {target}"))?;
                    if t.kind != Kind::File {
                        return Err(format!("{path}: hard link to non-file {target}"));
                    }
                    node.content = t.content.clone();
                    node.link_group = t.link_group.clone();
                }
                // A directory over a directory keeps what is inside; anything else replaces
                // the old path and everything below it.
                let dir_over_dir = node.kind == Kind::Dir
                    && self
                        .nodes
                        .get(&path)
                        .is_some_and(|old| old.kind == Kind::Dir);
                if !dir_over_dir {
                    self.remove_with_children(&path, true);
                }
                self.nodes.insert(path, node);
            }
        }
        Ok(())
    }

    /// Removes everything below `path`, and `path` itself when `itself`.
    fn remove_with_children(&mut self, path: &str, itself: bool) {
        let below = format!("{path}/");
        self.nodes
            .retain(|k, _| !(k.starts_with(&below) || (itself && k == path)));
    }

    /// A tree from a directory on disk (symlinks not followed). `owners` says whether the
    /// disk's owners mean anything (they do not after an unprivileged extraction).
    pub fn from_dir(root: &Path, owners: bool) -> Result<FsTree, String> {
        let mut t = FsTree::new();
        for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
            let entry = entry.map_err(|e| format!("walking {}: {e}", root.display()))?;
            let rel = entry
                .path()
                .strip_prefix(root)
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
            let path = format!("/{rel}");
            let meta =
                std::fs::symlink_metadata(entry.path()).map_err(|e| format!("{path}: {e}"))?;
            let ft = meta.file_type();
            let mut node = Node {
                kind: Kind::File,
                mode: meta.mode() & 0o7777,
                owner: owners.then(|| (u64::from(meta.uid()), u64::from(meta.gid()))),
                content: None,
                link_target: None,
                link_group: path.clone(),
                is_hardlink_entry: false,
                mtime: meta.mtime().max(0) as u64,
            };
            if ft.is_dir() {
                node.kind = Kind::Dir;
            } else if ft.is_symlink() {
                node.kind = Kind::Symlink;
                node.link_target = Some(
                    std::fs::read_link(entry.path())
                        .map_err(|e| format!("{path}: {e}"))?
                        .to_string_lossy()
                        .into_owned(),
                );
            } else if ft.is_file() {
                node.content =
                    Some(std::fs::read(entry.path()).map_err(|e| format!("{path}: {e}"))?);
                if meta.nlink() > 1 {
                    node.link_group = format!("inode {}:{}", meta.dev(), meta.ino());
                }
            } else if ft.is_fifo() {
                node.kind = Kind::Fifo;
            } else if ft.is_char_device() {
                node.kind = Kind::CharDevice;
            } else if ft.is_block_device() {
                node.kind = Kind::BlockDevice;
            } else {
                return Err(format!("{path}: unexpected file type (socket?)"));
            }
            t.nodes.insert(path, node);
        }
        Ok(t)
    }
}
