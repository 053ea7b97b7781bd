//! Snapshots: layers written from a list of entries (deterministic tar, gzip, hashed while
//! streaming), layers applied safely onto a root directory (OCI whiteouts, no escapes),
//! and compression detected by content.

mod apply;
pub mod clone;
pub mod compression;
mod layer;
mod pgzip;
pub mod tar_writer;
pub mod walk;
mod xattr;

use std::path::PathBuf;

pub use apply::{apply_layer, ApplyOptions};
pub use layer::{write_layer, LayerOptions};

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

/// Name prefix that marks a whiteout (a deletion) in an OCI layer.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the marker that makes a directory opaque (hides everything below it).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
