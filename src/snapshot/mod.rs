//! Snapshots: layers written from a list of entries (deterministic tar, gzip, hashed while
//! streaming), layers applied safely onto a root directory (OCI whiteouts, no escapes),
//! and compression detected by content.

mod apply;
pub mod clone;
pub mod compression;
mod fdwalk;
pub mod fuse_overlay;
mod layer;
pub mod overlay;
mod pgzip;
mod stored;
pub mod tar_writer;
pub mod walk;

use std::path::{Path, PathBuf};

pub use apply::{apply_layer, ApplyOptions};
pub use layer::{recompress, write_layer, LayerOptions};
pub use stored::{open_layer, verify_layers, LayerReader};

/// Where a file entry's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Bytes held in memory (heredocs, small generated files).
    Bytes(Vec<u8>),
    /// A file on disk, read when the layer is written.
    Path(PathBuf),
}

/// The kind of a layer entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file of `size` bytes.
    File {
        /// Size in bytes.
        size: u64,
        /// Where its bytes are.
        source: Content,
    },
    /// A directory.
    Dir,
    /// A symbolic link to the target.
    Symlink(String),
    /// A hard link to another entry of the same layer (its path).
    Hardlink(String),
    /// A named pipe.
    Fifo,
    /// A character device (major, minor).
    CharDevice(u32, u32),
    /// A block device (major, minor).
    BlockDevice(u32, u32),
}

impl EntryKind {
    /// The kind of what is on disk at `host` (`meta`: its own metadata, links not
    /// followed); a regular file's bytes are read from there later. None for a socket,
    /// which a layer cannot hold.
    pub fn of_disk(host: &Path, meta: &std::fs::Metadata) -> anyhow::Result<Option<EntryKind>> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let ft = meta.file_type();
        let device = || (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        Ok(Some(if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File {
                size: meta.len(),
                source: Content::Path(host.to_path_buf()),
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(host)
                .map_err(|e| anyhow::anyhow!("cannot read link {}: {e}", host.display()))?;
            EntryKind::Symlink(target.to_string_lossy().into_owned())
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() {
            let (major, minor) = device();
            EntryKind::CharDevice(major, minor)
        } else if ft.is_block_device() {
            let (major, minor) = device();
            EntryKind::BlockDevice(major, minor)
        } else {
            return Ok(None);
        }))
    }
}

/// One file of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path relative to the image root, `/`-separated, no leading `/`.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl LayerEntry {
    /// An empty marker file: a whiteout (`.wh.NAME`) or an opaque marker.
    pub fn marker(path: String, mtime: i64) -> LayerEntry {
        LayerEntry {
            path,
            kind: EntryKind::File {
                size: 0,
                source: Content::Bytes(Vec::new()),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        }
    }
}

/// Name prefix that marks a whiteout (a deletion) in an OCI layer.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the marker that makes a directory opaque (hides everything below it).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
