//! A private copy of a root filesystem, for the copy snapshotter: every entry keeps its
//! type, mode, owner, times and the extended attributes layers carry; hard links stay
//! hard links. File data is cloned (FICLONE: a reflink, sharing blocks until written)
//! where the filesystem can, and otherwise copied inside the kernel (copy_file_range).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use filetime::FileTime;

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries made (directories, files, links, ...).
    pub entries: u64,
    /// Regular files whose data was cloned (reflinked).
    pub cloned: u64,
    /// Regular files whose data was copied.
    pub copied: u64,
}

/// Copies the tree at `src` into `dst`, which must not exist yet or be an empty directory.
/// Device nodes that cannot be made without privileges are left out, as when layers are
/// unpacked.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyStats> {
    let mut copier = Copier {
        stats: CopyStats::default(),
        links: HashMap::new(),
        dirs: Vec::new(),
        can_clone: true,
        privileged: nix::unistd::geteuid().is_root(),
    };
    for entry in walkdir::WalkDir::new(src).follow_links(false) {
        let entry = entry.with_context(|| format!("cannot read {}", src.display()))?;
        let rel = entry
            .path()
            .strip_prefix(src)
            .context("an entry outside the copied tree")?;
        let to = if rel.as_os_str().is_empty() {
            dst.to_path_buf()
        } else {
            dst.join(rel)
        };
        copier.copy_entry(entry.path(), &to).with_context(|| {
            format!("cannot copy {} to {}", entry.path().display(), to.display())
        })?;
    }
    // Directories last, deepest first: making their children changed their times, and a
    // read-only mode would have been in the way.
    for (to, from, meta) in copier.dirs.iter().rev() {
        copier
            .set_meta(from, to, meta)
            .with_context(|| format!("cannot set the metadata of {}", to.display()))?;
    }
    Ok(copier.stats)
}

struct Copier {
    stats: CopyStats,
    /// First copy of each multiply-linked inode, by (device, inode) of the source.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories made (target, source, source metadata), in the order made.
    dirs: Vec<(PathBuf, PathBuf, fs::Metadata)>,
    /// False once cloning has failed for want of support: copy from then on.
    can_clone: bool,
    /// Owners can be set (root, or root in a user namespace).
    privileged: bool,
}

impl Copier {
    fn copy_entry(&mut self, from: &Path, to: &Path) -> Result<()> {
        let meta = fs::symlink_metadata(from)?;
        let ft = meta.file_type();
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, to)?;
                self.stats.entries += 1;
                return Ok(());
            }
            self.links
                .insert((meta.dev(), meta.ino()), to.to_path_buf());
        }
        if ft.is_dir() {
            match fs::create_dir(to) {
                Ok(()) => {}
                // The destination root may exist, empty.
                Err(e) if self.dirs.is_empty() && e.kind() == io::ErrorKind::AlreadyExists => {
                    if fs::read_dir(to)?.next().is_some() {
                        bail!("{} is not empty", to.display());
                    }
                }
                Err(e) => return Err(e.into()),
            }
            fs::set_permissions(to, fs::Permissions::from_mode(0o700))?;
            self.dirs.push((to.to_path_buf(), from.to_path_buf(), meta));
            self.stats.entries += 1;
            return Ok(());
        }
        if ft.is_file() {
            self.copy_data(from, to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
        } else if ft.is_fifo() {
            nix::unistd::mkfifo(to, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFBLK
            };
            let made = nix::sys::stat::mknod(
                to,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                meta.rdev(),
            );
            match made {
                Ok(()) => {}
                Err(nix::errno::Errno::EPERM) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        } else {
            // Sockets mean nothing in an image.
            return Ok(());
        }
        self.set_meta(from, to, &meta)?;
        self.stats.entries += 1;
        Ok(())
    }

    /// The data of a regular file: cloned, else copied.
    fn copy_data(&mut self, from: &Path, to: &Path) -> Result<()> {
        let mut source = File::open(from)?;
        let mut target = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)?;
        if self.can_clone {
            // SAFETY: both descriptors are open files owned by this function.
            let rc = unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
            if rc == 0 {
                self.stats.cloned += 1;
                return Ok(());
            }
            match io::Error::last_os_error().raw_os_error() {
                // Not this filesystem (or not across these two): copy from now on.
                Some(
                    libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS,
                ) => {
                    self.can_clone = false;
                }
                _ => return Err(io::Error::last_os_error().into()),
            }
        }
        let n = io::copy(&mut source, &mut target)?;
        if n != source.metadata()?.len() {
            bail!("{} changed while it was copied", from.display());
        }
        self.stats.copied += 1;
        Ok(())
    }

    /// Owner, mode (after the owner: chown clears set-id bits), extended attributes and
    /// times of `to`, from the source `from` and its `meta`.
    fn set_meta(&self, from: &Path, to: &Path, meta: &fs::Metadata) -> Result<()> {
        let is_link = meta.file_type().is_symlink();
        match std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())) {
            Ok(()) => {}
            // An owner with no id in this user namespace (the overflow id) cannot be
            // given; unprivileged, no other owner can.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) if !self.privileged && e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e.into()),
        }
        if !is_link {
            fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            for (name, value) in crate::xattrs::kept(from) {
                crate::xattrs::set(to, &name, &value)?;
            }
        }
        filetime::set_symlink_file_times(
            to,
            FileTime::from_last_access_time(meta),
            FileTime::from_last_modification_time(meta),
        )?;
        Ok(())
    }
}

/// Whether files in `dir` can be cloned (reflinked), tried on two scratch files there.
pub fn can_reflink(dir: &Path) -> io::Result<bool> {
    let source = tempfile::tempfile_in(dir)?;
    let target = tempfile::tempfile_in(dir)?;
    io::Write::write_all(&mut &source, &[0u8; 4096])?;
    // SAFETY: both descriptors are open files owned by this function.
    let rc = unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    Ok(rc == 0)
}

/// Which snapshotter RUN steps use: how a step's root is prepared and its layer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Snapshotter {
    /// The step changes the stage's root in place; the layer is the difference from a
    /// record of the tree taken before (inode, type, mode, owner, size, ctime). Nothing is
    /// copied.
    #[default]
    Walk,
    /// The step runs on a private copy of the stage's root ([`copy_tree`], reflinked where
    /// the filesystem can); the layer is the difference between the copy and its parent,
    /// which stays as it was if the step fails.
    Copy,
    /// The step's root is a kernel overlay of the store's unpacked layers with a fresh
    /// upper directory; the layer is read from the upper directory alone.
    Overlay,
    /// As overlay, served by fuse-overlayfs (a program on PATH; needs `/dev/fuse`).
    #[value(name = "fuse-overlayfs")]
    FuseOverlayfs,
    /// Overlay where this kernel and cache directory allow it (probed), else
    /// fuse-overlayfs where that works, else walk.
    Auto,
}

impl Snapshotter {
    /// The name `--snapshotter` takes.
    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Walk => "walk",
            Snapshotter::Copy => "copy",
            Snapshotter::Overlay => "overlay",
            Snapshotter::FuseOverlayfs => "fuse-overlayfs",
            Snapshotter::Auto => "auto",
        }
    }

    /// The overlay driver this snapshotter mounts with, if it is an overlay one.
    pub fn driver(self) -> Option<super::overlay::Driver> {
        match self {
            Snapshotter::Overlay => Some(super::overlay::Driver::Kernel),
            Snapshotter::FuseOverlayfs => Some(super::overlay::Driver::Fuse),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Everything [`copy_tree`] keeps about an entry, by path.
    fn describe(root: &Path) -> Vec<String> {
        let mut inodes: HashMap<u64, String> = HashMap::new();
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(root).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let what = if m.is_file() {
                format!("data={:?}", fs::read(e.path()).unwrap())
            } else if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(e.path()).unwrap().display())
            } else {
                String::new()
            };
            let link = if !m.is_dir() && m.nlink() > 1 {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                format!("link of {first}")
            } else {
                String::new()
            };
            let mtime = if m.file_type().is_symlink() {
                0
            } else {
                m.mtime()
            };
            out.push(format!(
                "{rel} mode={:o} uid={} gid={} mtime={mtime} {what} {link} xattrs={:?}",
                m.mode(),
                m.uid(),
                m.gid(),
                crate::xattrs::kept(e.path()),
            ));
        }
        out
    }

    #[test]
    fn copies_every_kind_with_its_metadata() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("etc/ro")).unwrap();
        fs::write(src.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(src.join("etc/ro/file"), "inside a read-only directory").unwrap();
        fs::write(src.join("tool"), vec![7u8; 100_000]).unwrap();
        fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(src.join("tool"), src.join("tool-link")).unwrap();
        symlink("etc/passwd", src.join("passwd")).unwrap();
        symlink("/nowhere", src.join("dangling")).unwrap();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        crate::xattrs::set(&src.join("etc/passwd"), "user.note", b"kept").unwrap();
        for (path, secs) in [
            ("etc/passwd", 1_000_000),
            ("etc", 2_000_000),
            ("", 3_000_000),
        ] {
            let t = FileTime::from_unix_time(secs, 0);
            filetime::set_file_times(src.join(path), t, t).unwrap();
        }
        fs::set_permissions(src.join("etc/ro"), fs::Permissions::from_mode(0o555)).unwrap();

        let dst = t.path().join("dst");
        let stats = copy_tree(&src, &dst).unwrap();
        assert_eq!(stats.entries, 10);
        assert_eq!(
            stats.cloned + stats.copied,
            3,
            "three files with data: {stats:?}"
        );
        assert_eq!(describe(&dst), describe(&src));

        // The copy is private: writing to it leaves the source alone.
        fs::write(dst.join("tool"), "changed").unwrap();
        assert_eq!(fs::read(src.join("tool")).unwrap(), vec![7u8; 100_000]);
        assert_eq!(fs::read(dst.join("tool-link")).unwrap(), b"changed");
        fs::set_permissions(src.join("etc/ro"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dst.join("etc/ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn into_an_empty_directory_only() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), "x").unwrap();
        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        copy_tree(&src, &empty).unwrap();
        assert_eq!(fs::read(empty.join("f")).unwrap(), b"x");
        let e = copy_tree(&src, &empty).unwrap_err();
        assert!(format!("{e:#}").contains("is not empty"), "{e:#}");
    }

    #[test]
    fn reflink_probe_answers() {
        let t = tempfile::tempdir().unwrap();
        // Either answer is right; the probe must not fail on an ordinary directory.
        can_reflink(t.path()).unwrap();
        assert!(can_reflink(&t.path().join("missing")).is_err());
    }

    #[test]
    fn snapshotter_names() {
        use clap::ValueEnum;
        for s in Snapshotter::value_variants() {
            assert_eq!(Snapshotter::from_str(s.name(), false).unwrap(), *s);
        }
        assert!(Snapshotter::from_str("fuse", false).is_err());
    }
}
