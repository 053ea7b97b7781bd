//! Programs found on PATH (fuse-overlayfs, git): the first executable file of that name.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Where `name` is on PATH, if anywhere.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
