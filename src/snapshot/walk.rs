//! The RUN snapshotter: a RUN works on the stage's own private root (materialised from
//! its layers, never shared), and its layer is the difference between a record of that
//! tree taken before the step and the tree after it.
//!
//! The record keeps each entry's inode, type, mode, owner, size and change time. The
//! kernel bumps an inode's ctime on every change to its data or metadata, and userspace
//! cannot set it, so after [`TreeState::capture`] waits for the clock to pass the newest
//! ctime it saw, any change the step makes is visible as a new ctime. Replaced
//! directories (a new inode) become opaque directories; deleted entries become whiteouts.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::fdwalk::Descend;
use super::{Content, EntryKind, LayerEntry, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::coarse_clock::Stamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl Meta {
    fn of_stat(st: &nix::sys::stat::FileStat) -> Meta {
        Meta {
            ino: st.st_ino,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            ctime: (st.st_ctime, st.st_ctime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
        }
    }

    fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Whether the entry changed. A directory's ctime and size move with its children,
    /// which are compared themselves; its own changes show in mode, owner or mtime.
    fn differs(&self, now: &Meta) -> bool {
        if self.is_dir() && now.is_dir() {
            (self.ino, self.mode, self.uid, self.gid, self.mtime)
                != (now.ino, now.mode, now.uid, now.gid, now.mtime)
        } else {
            self != now
        }
    }
}

/// The state of a tree before a step.
#[derive(Debug)]
pub struct TreeState {
    entries: HashMap<String, Meta>,
}

/// Paths (relative to the root) whose contents never go into a layer: the mount points
/// of the RUN sandbox.
pub const SANDBOX_MOUNTS: &[&str] = &["proc", "sys", "dev"];

/// Whether `rel` is below one of the sandbox's mount points (never part of a layer).
pub fn skipped(rel: &str) -> bool {
    SANDBOX_MOUNTS.iter().any(|m| {
        rel.strip_prefix(m)
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Walks `root` by descriptors (linear in its entries whatever the depth), leaving out
/// what is below the sandbox's mount points.
fn walk(root: &Path, visit: &mut dyn FnMut(&str, Meta) -> Result<()>) -> Result<()> {
    super::fdwalk::walk(root, &mut |rel, st| {
        visit(rel, Meta::of_stat(st))?;
        Ok(if SANDBOX_MOUNTS.contains(&rel) {
            Descend::No
        } else {
            Descend::Yes
        })
    })
}

impl TreeState {
    /// Records `root`; returns the record and the newest ctime seen. The caller must let
    /// no change happen until the coarse clock is past that time
    /// ([`crate::coarse_clock::wait_past`], e.g. in the step right before its command
    /// starts), so that any later change gives a different ctime.
    pub fn capture(root: &Path) -> Result<(TreeState, Stamp)> {
        let mut entries = HashMap::new();
        let mut newest = (0i64, 0i64);
        walk(root, &mut |rel, m| {
            newest = newest.max(m.ctime);
            entries.insert(rel.to_string(), m);
            Ok(())
        })?;
        Ok((TreeState { entries }, newest))
    }

    /// The layer entries that turn the recorded tree into the tree now at `root`.
    pub fn diff(&self, root: &Path) -> Result<Vec<LayerEntry>> {
        let mut out = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        // Directories replaced by new ones: everything below them is new.
        let mut replaced: Vec<String> = Vec::new();
        walk(root, &mut |rel, now| {
            seen.insert(rel.to_string());
            let under_replaced = replaced.iter().any(|r| {
                rel.strip_prefix(r.as_str())
                    .is_some_and(|x| x.starts_with('/'))
            });
            let changed = match self.entries.get(rel) {
                None => true,
                Some(_) if under_replaced => true,
                Some(before) => {
                    if before.is_dir() && now.is_dir() && before.ino != now.ino {
                        replaced.push(rel.to_string());
                        out.push(opaque_marker(rel, &now));
                    }
                    before.differs(&now)
                }
            };
            if changed {
                let host = root.join(rel);
                let meta = fs::symlink_metadata(&host)
                    .with_context(|| format!("cannot read {}", host.display()))?;
                out.push(entry_of(rel, &host, &meta)?);
            }
            Ok(())
        })?;
        // Deletions: one whiteout at the top of each deleted subtree.
        let mut gone: Vec<&String> = self.entries.keys().filter(|k| !seen.contains(*k)).collect();
        gone.sort();
        let mut last_top: Option<&str> = None;
        for g in gone {
            if let Some(t) = last_top {
                if g.strip_prefix(t).is_some_and(|x| x.starts_with('/')) {
                    continue;
                }
            }
            let in_replaced = replaced.iter().any(|r| {
                g.strip_prefix(r.as_str())
                    .is_some_and(|x| x.starts_with('/'))
            });
            last_top = Some(g);
            if in_replaced {
                continue; // the opaque marker already hides it
            }
            let (dir, name) = g.rsplit_once('/').unwrap_or(("", g));
            let path = if dir.is_empty() {
                format!("{WHITEOUT_PREFIX}{name}")
            } else {
                format!("{dir}/{WHITEOUT_PREFIX}{name}")
            };
            out.push(LayerEntry::marker(path, 0));
        }
        Ok(out)
    }
}

fn opaque_marker(dir: &str, m: &Meta) -> LayerEntry {
    LayerEntry::marker(format!("{dir}/{OPAQUE_MARKER}"), m.mtime.0)
}

/// A layer entry for the file now at `host` (also the overlay snapshotter's, for an upper
/// directory's entries).
pub(crate) fn entry_of(rel: &str, host: &Path, m: &fs::Metadata) -> Result<LayerEntry> {
    let ft = m.file_type();
    // A socket: layers cannot hold one; an empty file keeps the name visible.
    let kind = EntryKind::of_disk(host, m)?.unwrap_or(EntryKind::File {
        size: 0,
        source: Content::Bytes(Vec::new()),
    });
    Ok(LayerEntry {
        path: rel.to_string(),
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        xattrs: if ft.is_symlink() {
            Vec::new()
        } else {
            crate::xattrs::kept(host)
        },
    })
}

/// Paths created only to be mount points, removed again after the step.
///
/// The step may have changed anything by then, so removal trusts no path: an entry goes
/// only if it is still the very inode made here (same device and inode number), reached
/// without a symlink on the way, and empty; nothing is removed recursively. A directory
/// the step put files in stays, and its contents are the step's.
#[derive(Debug, Default)]
pub struct MountPoints {
    made: Vec<Made>,
}

/// One path [`MountPoints::ensure`] made, and its parent's times to restore.
#[derive(Debug)]
struct Made {
    root: PathBuf,
    path: PathBuf,
    id: (u64, u64),
    dir: bool,
    parent: PathBuf,
    parent_id: (u64, u64),
    parent_times: (filetime::FileTime, filetime::FileTime),
}

fn id_of(m: &fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

impl MountPoints {
    /// Makes `rel` (a directory or an empty file) inside `root` if it is missing, with
    /// the missing directories above it; an existing entry, of any kind, is left as it is.
    /// `rel` must be resolved already: a symlink on the way is an error. Returns the host
    /// path.
    pub fn ensure(&mut self, root: &Path, rel: &str, dir: bool) -> Result<PathBuf> {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut cur = root.to_path_buf();
        for (i, c) in comps.iter().enumerate() {
            let parent = cur.clone();
            cur.push(c);
            let last = i + 1 == comps.len();
            match fs::symlink_metadata(&cur) {
                // Whatever is there already is left to the caller (the sandbox binds over
                // regular files only), but nothing is made behind a symlink.
                Ok(_) if last => {}
                Ok(m) if m.file_type().is_symlink() => {
                    anyhow::bail!(
                        "/{} has a symlink on the way; a mount point cannot be made there",
                        rel
                    )
                }
                Ok(m) if !m.is_dir() => {
                    anyhow::bail!("/{}: {} is not a directory", rel, cur.display())
                }
                Ok(_) => {}
                Err(_) => {
                    let pm = fs::symlink_metadata(&parent)?;
                    let parent_times = (
                        filetime::FileTime::from_last_access_time(&pm),
                        filetime::FileTime::from_last_modification_time(&pm),
                    );
                    let is_dir = !last || dir;
                    if is_dir {
                        fs::create_dir(&cur)?;
                    } else {
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&cur)?;
                    }
                    let m = fs::symlink_metadata(&cur)?;
                    self.made.push(Made {
                        root: root.to_path_buf(),
                        path: cur.clone(),
                        id: id_of(&m),
                        dir: is_dir,
                        parent,
                        parent_id: id_of(&pm),
                        parent_times,
                    });
                }
            }
        }
        Ok(cur)
    }

    /// Removes what [`MountPoints::ensure`] made, deepest first, where it is still what
    /// was made and empty, and restores the parents' times.
    pub fn remove(self) {
        use nix::sys::stat::{fstat, fstatat, futimens, FileStat};
        use nix::sys::time::TimeSpec;
        use nix::unistd::{unlinkat, UnlinkatFlags};
        let id = |st: &FileStat| (st.st_dev, st.st_ino);
        for m in self.made.into_iter().rev() {
            // Everything through descriptors held on the way, so nothing the step put in
            // place of a path (or swaps in meanwhile) can lead outside the root.
            let (Some(parent), Some(name)) =
                (open_dir_beneath(&m.root, &m.parent), m.path.file_name())
            else {
                continue;
            };
            let Ok(now) = fstatat(&parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let kind = now.st_mode & libc::S_IFMT;
            let same = id(&now) == m.id
                && if m.dir {
                    kind == libc::S_IFDIR
                } else {
                    kind == libc::S_IFREG && now.st_size == 0
                };
            if !same {
                continue;
            }
            let how = if m.dir {
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            let removed = unlinkat(&parent, name, how).is_ok();
            if removed && fstat(&parent).is_ok_and(|p| id(&p) == m.parent_id) {
                let ts = |t: filetime::FileTime| {
                    TimeSpec::new(t.unix_seconds(), i64::from(t.nanoseconds()))
                };
                let _ = futimens(&parent, &ts(m.parent_times.0), &ts(m.parent_times.1));
            }
        }
    }
}

/// Opens directory `dir`, which is `root` or below it, one component at a time without
/// following symlinks; None when something on the way is not a plain directory.
fn open_dir_beneath(root: &Path, dir: &Path) -> Option<std::os::fd::OwnedFd> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = open(root, flags, Mode::empty()).ok()?;
    for c in dir.strip_prefix(root).ok()?.components() {
        fd = openat(&fd, c.as_os_str(), flags | OFlag::O_NOFOLLOW, Mode::empty()).ok()?;
    }
    Some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A record of `root` once the clock has passed it.
    fn settled(root: &Path) -> TreeState {
        let (state, newest) = TreeState::capture(root).unwrap();
        crate::coarse_clock::wait_past(newest);
        state
    }

    fn paths(entries: &[LayerEntry]) -> Vec<String> {
        let mut p: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
        p.sort();
        p
    }

    #[test]
    fn mount_points_go_without_touching_anything_else() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(outside.join("t")).unwrap();
        fs::write(outside.join("f"), "").unwrap();
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(&root, old, old).unwrap();

        // Made and removed: the root's mtime is as it was.
        let mut points = MountPoints::default();
        points.ensure(&root, "new/deep/t", true).unwrap();
        points.ensure(&root, "etc/hosts", false).unwrap();
        assert!(root.join("new/deep/t").is_dir() && root.join("etc/hosts").is_file());
        points.remove();
        assert!(!root.join("new").exists() && !root.join("etc/hosts").exists());
        let m = fs::metadata(&root).unwrap();
        assert_eq!(filetime::FileTime::from_last_modification_time(&m), old);

        // The step replaced a made directory with a symlink out: nothing outside goes.
        let mut points = MountPoints::default();
        points.ensure(&root, "x/t", true).unwrap();
        points.ensure(&root, "x/f", false).unwrap();
        fs::remove_dir(root.join("x/t")).unwrap();
        fs::remove_file(root.join("x/f")).unwrap();
        fs::remove_dir(root.join("x")).unwrap();
        symlink(&outside, root.join("x")).unwrap();
        points.remove();
        assert!(outside.join("t").is_dir() && outside.join("f").is_file());

        // What the step made inside a made directory stays, with the directory.
        let mut points = MountPoints::default();
        points.ensure(&root, "out/m", true).unwrap();
        fs::write(root.join("out/__init__.py"), "").unwrap();
        points.remove();
        assert!(root.join("out/__init__.py").is_file());
        assert!(!root.join("out/m").exists());

        // A symlink on the way is refused.
        let mut points = MountPoints::default();
        assert!(points.ensure(&root, "x/y", true).is_err());
    }

    #[test]
    fn finds_additions_changes_deletions_and_replaced_dirs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("etc/sub")).unwrap();
        fs::write(r.join("etc/keep"), "k").unwrap();
        fs::write(r.join("etc/change"), "c").unwrap();
        fs::write(r.join("etc/sub/gone"), "g").unwrap();
        fs::create_dir_all(r.join("old/deep")).unwrap();
        fs::write(r.join("old/deep/f"), "f").unwrap();
        fs::create_dir_all(r.join("re/x")).unwrap();
        fs::create_dir_all(r.join("proc/1")).unwrap();
        let before = settled(r);

        fs::write(r.join("etc/change"), "C").unwrap();
        fs::write(r.join("etc/new"), "n").unwrap();
        symlink("keep", r.join("etc/link")).unwrap();
        fs::remove_file(r.join("etc/sub/gone")).unwrap();
        fs::remove_dir_all(r.join("old")).unwrap();
        // The old directory still exists while the new one is made, so the inode differs
        // (a freed inode number can be reused; then the change shows as whiteouts instead).
        fs::rename(r.join("re"), r.join("re-old")).unwrap();
        fs::create_dir(r.join("re")).unwrap();
        fs::remove_dir_all(r.join("re-old")).unwrap();
        fs::write(r.join("re/y"), "y").unwrap();
        fs::write(r.join("proc/1/ignored"), "i").unwrap();

        let got = paths(&before.diff(r).unwrap());
        let mut want: Vec<String> = [
            "etc",
            "etc/change",
            "etc/link",
            "etc/new",
            "etc/sub",
            "etc/sub/.wh.gone",
            ".wh.old",
            "re",
            "re/.wh..wh..opq",
            "re/y",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn an_untouched_tree_has_no_diff() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a/b")).unwrap();
        fs::write(t.path().join("a/b/c"), "x").unwrap();
        let before = settled(t.path());
        fs::read(t.path().join("a/b/c")).unwrap();
        assert!(before.diff(t.path()).unwrap().is_empty());
        // A change right after the capture is still seen.
        fs::write(t.path().join("a/b/c"), "y").unwrap();
        assert_eq!(paths(&before.diff(t.path()).unwrap()), ["a/b/c"]);
    }

    #[test]
    fn mount_points_are_made_and_removed_without_a_trace() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc")).unwrap();
        let before = settled(t.path());
        let mut mp = MountPoints::default();
        mp.ensure(t.path(), "etc/hosts", false).unwrap();
        mp.ensure(t.path(), "proc", true).unwrap();
        assert!(t.path().join("etc/hosts").is_file());
        mp.remove();
        assert!(!t.path().join("etc/hosts").exists());
        assert!(!t.path().join("proc").exists());
        assert!(before.diff(t.path()).unwrap().is_empty());
    }
}
