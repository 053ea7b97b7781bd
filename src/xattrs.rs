//! Extended attributes: the ones layers keep (for every snapshotter, COPY and the context
//! digest alike), read from a file, and set on one (through the `xattr` crate, which never
//! follows a symlink).

use std::path::Path;

use anyhow::{Context, Result};

/// Whether a layer keeps the extended attribute `name`: `user.*` and
/// `security.capability`, never an overlay's own bookkeeping (`user.overlay.*`,
/// `user.fuseoverlayfs.*`).
fn is_kept(name: &str) -> bool {
    let private = name.starts_with("user.overlay.") || name.starts_with("user.fuseoverlayfs.");
    !private && (name.starts_with("user.") || name == "security.capability")
}

/// The extended attributes of `path` a layer keeps, sorted by name (none for a file whose
/// attributes cannot be read).
pub fn kept(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .filter_map(|n| n.into_string().ok())
        .filter(|n| is_kept(n))
        .filter_map(|n| match xattr::get(path, &n) {
            Ok(Some(v)) => Some((n, v)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Sets one extended attribute on `path` (not following a symlink). Names this process may
/// not set (`trusted.*`, `security.*` without privileges) or the filesystem does not
/// support are skipped, as rootless runtimes do.
pub fn set(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    match xattr::set(path, name, value) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::ENOTSUP | libc::EACCES)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot set xattr {name}")),
    }
}
