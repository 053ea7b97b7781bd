//! Extended attributes: the ones layers keep, read from a file, and set on one.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Extended attributes worth keeping in a layer (`user.*`, `security.capability`), never
/// an overlay's own bookkeeping (`user.overlay.*`, `user.fuseoverlayfs.*`).
pub(crate) fn kept(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: the buffer pointer and length are valid.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let Ok(text) = std::str::from_utf8(name) else {
            continue;
        };
        let private = text.starts_with("user.overlay.") || text.starts_with("user.fuseoverlayfs.");
        if private || !(text.starts_with("user.") || text == "security.capability") {
            continue;
        }
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 65536];
        // SAFETY: valid NUL-terminated strings and buffer.
        let len = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((text.to_string(), value));
        }
    }
    out
}

/// Sets one extended attribute on `path` (not following a symlink). Names this process may
/// not set (`trusted.*`, `security.*` without privileges) or the filesystem does not
/// support are skipped, as rootless runtimes do.
pub(crate) fn set(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let cname = CString::new(name)?;
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both strings are NUL-terminated and the value pointer/len pair is valid.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EPERM | libc::ENOTSUP | libc::EACCES) => {}
            _ => return Err(err).with_context(|| format!("cannot set xattr {name}")),
        }
    }
    Ok(())
}
