//! A walk of a directory tree by descriptors: each directory is opened relative to its
//! parent's descriptor and each entry is `fstatat`ed relative to its directory, so the
//! cost of a walk is linear in the number of entries whatever the depth (a path-based
//! walk resolves every path from the top: quadratic in depth). Entries come in the order
//! of a sorted depth-first walk, directories before their contents.
//!
//! At most [`OPEN_DIRS`] directories are held open at once, whatever the depth: going
//! deeper closes the descriptor of the highest one still open, and going back up reopens
//! a closed directory as `..` of its child, once. The tree must not change during the
//! walk (the step that changed it has ended).

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use nix::dir::Dir;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode};

/// Most directory descriptors a walk holds.
const OPEN_DIRS: usize = 64;

/// What the visitor says about a directory it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descend {
    /// Walk its contents.
    Yes,
    /// Skip them.
    No,
}

/// One directory on the way down: its descriptor (None once closed), its sorted entries
/// and where the walk is in them, and its path relative to the root.
struct Frame {
    fd: Option<OwnedFd>,
    entries: Vec<OsString>,
    next: usize,
    rel: String,
}

/// Walks the tree below `root` (not `root` itself), calling `visit(rel, stat)` for every
/// entry; a directory's contents are walked when `visit` says [`Descend::Yes`].
pub fn walk(root: &Path, visit: &mut dyn FnMut(&str, &FileStat) -> Result<Descend>) -> Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let fd = open(root, flags, Mode::empty())
        .with_context(|| format!("cannot open {}", root.display()))?;
    let entries = sorted_names(&fd).with_context(|| format!("cannot read {}", root.display()))?;
    let mut stack = vec![Frame {
        fd: Some(fd),
        entries,
        next: 0,
        rel: String::new(),
    }];
    let mut open_count = 1;
    while let Some(top) = stack.last_mut() {
        crate::cancel::Cancel.check()?;
        let Some(name) = top.entries.get(top.next).cloned() else {
            pop(&mut stack, &mut open_count)?;
            continue;
        };
        top.next += 1;
        let dir = top.fd.as_ref().expect("the top frame is open");
        let rel = if top.rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{}/{}", top.rel, name.to_string_lossy())
        };
        let st = fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .with_context(|| format!("cannot read {}", root.join(&rel).display()))?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if visit(&rel, &st)? == Descend::No || !is_dir {
            continue;
        }
        let child = openat(
            dir,
            name.as_os_str(),
            flags | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open {}", root.join(&rel).display()))?;
        let entries = sorted_names(&child)
            .with_context(|| format!("cannot read {}", root.join(&rel).display()))?;
        if open_count == OPEN_DIRS {
            // Close the highest open directory; it is reopened on the way back up.
            if let Some(f) = stack.iter_mut().find(|f| f.fd.is_some()) {
                f.fd = None;
                open_count -= 1;
            }
        }
        stack.push(Frame {
            fd: Some(child),
            entries,
            next: 0,
            rel,
        });
        open_count += 1;
    }
    Ok(())
}

/// Leaves the top directory; reopens its parent (as its `..`) when that was closed.
fn pop(stack: &mut Vec<Frame>, open_count: &mut usize) -> Result<()> {
    let done = stack.pop().expect("a frame to leave");
    let Some(parent) = stack.last_mut() else {
        return Ok(());
    };
    if parent.fd.is_none() {
        let fd = done.fd.as_ref().expect("the left frame was open");
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        parent.fd = Some(
            openat(fd, OsStr::from_bytes(b".."), flags, Mode::empty())
                .with_context(|| format!("cannot reopen the parent of {}", done.rel))?,
        );
    } else {
        *open_count -= 1;
    }
    Ok(())
}

/// The names in directory `fd` (without `.` and `..`), sorted by their bytes.
fn sorted_names(fd: &OwnedFd) -> Result<Vec<OsString>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = Dir::openat(fd, OsStr::from_bytes(b"."), flags, Mode::empty())?;
    let mut names = Vec::new();
    for e in dir.iter() {
        let name = e?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from(OsStr::from_bytes(&name)));
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        walk(root, &mut |rel, _| {
            out.push(rel.to_string());
            Ok(if rel == "skip" {
                Descend::No
            } else {
                Descend::Yes
            })
        })
        .unwrap();
        out
    }

    #[test]
    fn sorted_depth_first_with_skips() {
        let d = tempfile::tempdir().unwrap();
        for p in ["b/y", "a/x/deep", "skip/hidden"] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        std::fs::write(d.path().join("a/file"), "").unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("link")).unwrap();
        assert_eq!(
            walked(d.path()),
            ["a", "a/file", "a/x", "a/x/deep", "b", "b/y", "link", "skip"]
        );
    }

    #[test]
    fn deeper_than_the_open_directory_budget() {
        // 3 × OPEN_DIRS levels, with a sibling at each level to walk on the way back up.
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().to_path_buf();
        let depth = 3 * OPEN_DIRS;
        for _ in 0..depth {
            p.push("d");
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.with_file_name("e"), "").unwrap();
        }
        let got = walked(d.path());
        assert_eq!(got.len(), 2 * depth);
        let deepest = vec!["d"; depth].join("/");
        assert!(got.contains(&deepest));
        // Every sibling came, after the subtree beside it.
        let top_e = got.iter().position(|r| r == "e").unwrap();
        assert_eq!(top_e, got.len() - 1, "{:?}", &got[got.len() - 3..]);
    }
}
