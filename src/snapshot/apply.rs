//! Applying a layer (or an archive ADD extracts) onto a root directory, safely.
//!
//! Nothing is ever written outside the root: entries with absolute paths or `..`
//! components are refused, and so is any entry that would be written through a symlink
//! or hard link pointing outside the root. An absolute symlink names the image's own path
//! (`var/run -> /run` is followed to the root's `run`), as inside a container; one whose
//! path the image does not have counts as pointing outside. OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`)
//! delete what lower layers put there.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::stat::FileStat;

use crate::inroot::{AboveRoot, FileKind, InRootError, Links, Missing, Root, Rules};

use super::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// How a layer is applied.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Give files the owners the layer records (needs privileges; otherwise files belong
    /// to the caller).
    pub set_owners: bool,
    /// Treat `.wh.` entries as OCI whiteouts (true for image layers, false for ADD).
    pub whiteouts: bool,
}

/// Applies the tar stream `layer` onto `root`. `label` names the layer in errors (a digest
/// or an archive name).
pub fn apply_layer(layer: impl Read, root: &Path, label: &str, opts: &ApplyOptions) -> Result<()> {
    let mut applier = Applier {
        root,
        dir: Root::open_dir(root)?,
        opts,
        privileged: nix::unistd::geteuid().is_root(),
        created: HashSet::new(),
        deferred_dirs: Vec::new(),
        plain_dirs: BTreeSet::new(),
    };
    let result = applier.run(layer, label);
    // Directory modes and times are set last (children change a directory's mtime, and a
    // read-only directory could not receive its children), deepest first.
    let finish = applier.finish_dirs();
    result?;
    finish.with_context(|| format!("layer {label}: cannot set directory metadata"))
}

struct Applier<'a> {
    root: &'a Path,
    /// The root, opened: paths of the layer are resolved inside it by descriptors.
    dir: Root,
    opts: &'a ApplyOptions,
    privileged: bool,
    /// Paths this layer wrote (an opaque marker hides only what lower layers wrote).
    created: HashSet<PathBuf>,
    /// Directories whose mode and mtime are set at the end, by their paths in the root.
    deferred_dirs: Vec<(PathBuf, u32, i64)>,
    /// Directories already resolved that no symbolic link leads to (each path is its own
    /// place in the root), so the next entry in one costs no resolution. An entry that
    /// changes a path forgets that path and everything below it.
    plain_dirs: BTreeSet<PathBuf>,
}

impl Applier<'_> {
    fn run(&mut self, layer: impl Read, label: &str) -> Result<()> {
        let mut archive = tar::Archive::new(layer);
        let entries = archive
            .entries()
            .with_context(|| format!("layer {label}: not a tar archive"))?;
        for entry in entries {
            crate::cancel::Cancel.check()?;
            let mut entry = entry.with_context(|| format!("layer {label}: corrupt tar stream"))?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            self.apply_entry(&mut entry, &raw)
                .with_context(|| format!("layer {label}: entry {shown:?}"))?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<()> {
        let Some(rel) = clean_entry_path(raw)? else {
            return Ok(()); // the root itself
        };
        let name = rel
            .file_name()
            .ok_or_else(|| anyhow!("entry has no file name"))?
            .to_os_string();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let name_bytes = name.as_bytes();

        if self.opts.whiteouts && name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            let Some(parent_real) = self.resolve_dir(parent_rel, false)? else {
                return Ok(()); // nothing below to hide
            };
            let parent = self.root.join(&parent_real);
            if name_bytes == OPAQUE_MARKER.as_bytes() {
                self.forget_below(&parent_real);
                for child in fs::read_dir(&parent)? {
                    let child = child?;
                    if !self.created.contains(&parent_rel.join(child.file_name())) {
                        remove_all(&child.path())?;
                    }
                }
            } else {
                let gone = &name_bytes[WHITEOUT_PREFIX.len()..];
                // `.wh.`, `.wh..` and `.wh...` would name the directory itself or its parent.
                if gone.is_empty() || gone == b"." || gone == b".." || gone.contains(&b'/') {
                    bail!("whiteout {:?} names no entry; refusing it", name);
                }
                let target_real = parent_real.join(OsStr::from_bytes(gone));
                self.forget_below(&target_real);
                let target = self.root.join(target_real);
                if target.symlink_metadata().is_ok() {
                    remove_all(&target)?;
                }
            }
            return Ok(());
        }

        let real = self
            .resolve_dir(parent_rel, true)?
            .ok_or_else(|| anyhow!("cannot create the parent directory"))?
            .join(&name);
        let host = self.root.join(&real);
        self.forget_below(&real);
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
        let uid = header.uid()?;
        let gid = header.gid()?;
        let mtime = header.mtime()? as i64;
        let kind = header.entry_type();
        let existing = host.symlink_metadata().ok();

        match kind {
            tar::EntryType::Directory => {
                match &existing {
                    Some(m) if m.is_dir() => {}
                    Some(_) => {
                        remove_all(&host)?;
                        fs::create_dir(&host)?;
                    }
                    None => fs::create_dir(&host)?,
                }
                // The owner the layer records (a base image's /home/app is app's), and
                // writable and searchable until the end of the layer.
                self.set_meta(&host, uid, gid, Some(0o700 | mode), mtime)?;
                self.deferred_dirs.push((real, mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if existing.is_some() {
                    remove_all(&host)?;
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&host)?;
                io::copy(entry, &mut f)?;
                drop(f);
                self.set_meta(&host, uid, gid, Some(mode), mtime)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("symlink without a target"))?
                    .into_owned();
                if existing.is_some() {
                    remove_all(&host)?;
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &host)?;
                self.set_meta(&host, uid, gid, None, mtime)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("hard link without a target"))?
                    .into_owned();
                let target_rel = clean_entry_path(&target)?
                    .ok_or_else(|| anyhow!("hard link to the root directory"))?;
                let source = self.resolve_link_target(&target_rel)?;
                if existing.is_some() {
                    if same_file(&source, &host) {
                        return Ok(());
                    }
                    remove_all(&host)?;
                }
                fs::hard_link(&source, &host).with_context(|| {
                    format!("cannot link to {}", String::from_utf8_lossy(&target))
                })?;
            }
            tar::EntryType::Fifo => {
                if existing.is_some() {
                    remove_all(&host)?;
                }
                nix::unistd::mkfifo(&host, nix::sys::stat::Mode::from_bits_truncate(mode))?;
                self.set_meta(&host, uid, gid, Some(mode), mtime)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major()?.unwrap_or(0);
                let minor = header.device_minor()?.unwrap_or(0);
                if existing.is_some() {
                    remove_all(&host)?;
                }
                let sflag = if kind == tar::EntryType::Char {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                let made = nix::sys::stat::mknod(
                    &host,
                    sflag,
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
                );
                match made {
                    Ok(()) => self.set_meta(&host, uid, gid, Some(mode), mtime)?,
                    // Device nodes cannot be made without privileges (as in rootless
                    // Docker, they are left out of the unpacked tree).
                    Err(nix::errno::Errno::EPERM) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            // Metadata records the tar crate already folded into the next entry, and
            // types with no filesystem meaning.
            _ => return Ok(()),
        }
        self.set_xattrs(entry, &host)?;
        self.created.insert(rel);
        Ok(())
    }

    /// Resolves a directory path of the layer inside the root ([`crate::inroot`]),
    /// following symlinks that stay inside it and refusing those that point out. An
    /// absolute symlink means the image's own path (`var/run -> /run`), as in a container;
    /// when that path is not in the image it is taken as pointing out. With `create`,
    /// missing directories are made (mode 0755), but never behind an absolute symlink;
    /// without, a missing one gives `None`. The answer is the directory's own path in the
    /// root (links replaced by their targets).
    fn resolve_dir(&mut self, rel: &Path, create: bool) -> Result<Option<PathBuf>> {
        if self.plain_dirs.contains(rel) {
            return Ok(Some(rel.to_path_buf()));
        }
        let rules = Rules {
            follow_last: true,
            links: Links::Follow,
            above_root: AboveRoot::Refuse,
            missing: if create {
                Missing::MakeDirs
            } else {
                Missing::Keep
            },
        };
        let (root, privileged, deferred) = (self.root, self.privileged, &mut self.deferred_dirs);
        // Unprivileged, a read-only directory of a lower layer must still take this
        // layer's entries: writable and searchable until its mode is restored at the end.
        let mut writable = |rel: &Path, st: &FileStat| -> Result<(), InRootError> {
            let mode = st.st_mode & 0o7777;
            if privileged || mode & 0o300 == 0o300 {
                return Ok(());
            }
            let host = root.join(rel);
            fs::set_permissions(&host, fs::Permissions::from_mode(mode | 0o700))
                .map_err(|e| InRootError::from_io(rel.to_path_buf(), &e))?;
            deferred.push((rel.to_path_buf(), mode, st.st_mtime));
            Ok(())
        };
        let r = self.dir.resolve_visiting(rel, rules, &mut writable)?;
        match r.kind() {
            Some(FileKind::Dir) => {
                if r.links.is_empty() {
                    self.plain_dirs.insert(r.rel.clone());
                }
                Ok(Some(r.rel))
            }
            Some(_) => bail!("{} is not a directory", r.rel.display()),
            None => Ok(None),
        }
    }

    /// Forgets the resolved directories at and below `real`, a path of the root that the
    /// current entry replaces or removes.
    fn forget_below(&mut self, real: &Path) {
        use std::ops::Bound;
        // Paths order component by component, so those below `real` follow it at once.
        let below: Vec<PathBuf> = self
            .plain_dirs
            .range::<Path, _>((Bound::Included(real), Bound::Unbounded))
            .take_while(|p| p.starts_with(real))
            .cloned()
            .collect();
        for p in below {
            self.plain_dirs.remove(&p);
        }
    }

    /// Where a hard link's target is: its parent resolved like any directory, the last
    /// component not followed. The target must exist and not be a directory.
    fn resolve_link_target(&mut self, rel: &Path) -> Result<PathBuf> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = self
            .resolve_dir(parent, false)?
            .map(|real| self.root.join(real))
            .ok_or_else(|| anyhow!("hard link target {} does not exist", rel.display()))?;
        let name = rel
            .file_name()
            .ok_or_else(|| anyhow!("hard link target has no name"))?;
        let path = dir.join(name);
        match path.symlink_metadata() {
            Ok(m) if m.is_dir() => bail!("hard link to directory {}", rel.display()),
            Ok(_) => Ok(path),
            Err(_) => bail!("hard link target {} does not exist", rel.display()),
        }
    }

    fn set_meta(
        &self,
        host: &Path,
        uid: u64,
        gid: u64,
        mode: Option<u32>,
        mtime: i64,
    ) -> Result<()> {
        if self.opts.set_owners && self.privileged {
            match std::os::unix::fs::lchown(host, Some(uid as u32), Some(gid as u32)) {
                Ok(()) => {}
                // An id the user namespace does not map (only one id is): the file stays
                // root's, the documented limit of that mode.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(mode) = mode {
            // After chown, which clears setuid/setgid.
            fs::set_permissions(host, fs::Permissions::from_mode(mode))?;
        }
        let t = filetime::FileTime::from_unix_time(mtime, 0);
        filetime::set_symlink_file_times(host, t, t)?;
        Ok(())
    }

    fn set_xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, host: &Path) -> Result<()> {
        let Some(exts) = entry.pax_extensions()? else {
            return Ok(());
        };
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            crate::xattrs::set(host, name, ext.value_bytes())?;
        }
        Ok(())
    }

    /// Sets a directory's final mode and mtime, by descriptors inside the root: a later
    /// entry of the layer may have replaced it (or a directory above it) by a symbolic
    /// link, which a host path would follow out of the root. What is no longer a
    /// directory reached without links is left alone.
    fn finish_dir(&self, rel: &Path, mode: u32, mtime: i64) -> Result<()> {
        use nix::sys::stat::{fchmodat, utimensat, FchmodatFlags, UtimensatFlags};
        use nix::sys::time::TimeSpec;
        let r = match self.dir.resolve(rel, Rules::strict(Missing::Fail)) {
            Ok(r) => r,
            Err(InRootError::NotFound(_) | InRootError::NotDir(_) | InRootError::Symlink(_)) => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        };
        let (Some(FileKind::Dir), Some(parent), Some(name)) = (r.kind(), &r.parent, r.name())
        else {
            return Ok(());
        };
        // `name` is a directory (just checked, and nothing else writes this root).
        let mode = nix::sys::stat::Mode::from_bits_truncate(mode);
        fchmodat(parent, name, mode, FchmodatFlags::FollowSymlink)?;
        let t = TimeSpec::new(mtime, 0);
        utimensat(parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)?;
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.deferred_dirs);
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (rel, mode, mtime) in dirs {
            self.finish_dir(&rel, mode, mtime)?;
        }
        Ok(())
    }
}

/// The entry's path relative to the root, or `None` for the root itself. Absolute paths
/// and `..` components are refused.
fn clean_entry_path(raw: &[u8]) -> Result<Option<PathBuf>> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!("absolute path in archive; refusing to write outside the root")
            }
            Component::ParentDir => {
                bail!("path contains \"..\"; refusing to write outside the root")
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.symlink_metadata(), b.symlink_metadata()) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Removes a file or a whole tree, making unprivileged read-only directories writable
/// first.
fn remove_all(path: &Path) -> Result<()> {
    let meta = path.symlink_metadata()?;
    if !meta.is_dir() {
        return fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()));
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    for e in walkdir::WalkDir::new(path).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o700));
        }
    }
    fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tar_writer::{TarHeader, TarKind, TarWriter};

    fn h(path: &str, kind: TarKind) -> TarHeader {
        TarHeader {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            xattrs: Vec::new(),
        }
    }

    fn tar_of(entries: &[(TarHeader, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new());
        for (hd, data) in entries {
            w.append(hd, &mut &data[..]).unwrap();
        }
        w.finish().unwrap()
    }

    fn file(path: &str, data: &'static [u8]) -> (TarHeader, &'static [u8]) {
        let mut hd = h(
            path,
            TarKind::File {
                size: data.len() as u64,
            },
        );
        hd.mode = 0o644;
        (hd, data)
    }

    const LAYER: ApplyOptions = ApplyOptions {
        set_owners: false,
        whiteouts: true,
    };

    #[test]
    fn applies_whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let lower = tar_of(&[
            (h("a", TarKind::Dir), b""),
            file("a/keep", b"k"),
            file("a/gone", b"g"),
            (h("o", TarKind::Dir), b""),
            file("o/old", b"o"),
            (h("ro", TarKind::Dir), b""),
        ]);
        apply_layer(&lower[..], root, "lower", &LAYER).unwrap();
        let mtime = fs::metadata(root.join("a")).unwrap().mtime();
        assert_eq!(mtime, 1_600_000_000);
        let upper = tar_of(&[
            file("a/.wh.gone", b""),
            (h("o", TarKind::Dir), b""),
            file("o/new", b"n"),
            file("o/.wh..wh..opq", b""),
            file("a/keep", b"K"),
        ]);
        apply_layer(&upper[..], root, "upper", &LAYER).unwrap();
        assert_eq!(fs::read(root.join("a/keep")).unwrap(), b"K");
        assert!(!root.join("a/gone").exists());
        assert!(!root.join("o/old").exists());
        assert_eq!(fs::read(root.join("o/new")).unwrap(), b"n");
        assert!(!root.join("o/.wh..wh..opq").exists());
    }

    #[test]
    fn without_whiteouts_wh_files_are_plain_files() {
        let t = tempfile::tempdir().unwrap();
        let opts = ApplyOptions {
            set_owners: false,
            whiteouts: false,
        };
        apply_layer(&tar_of(&[file(".wh.x", b"x")])[..], t.path(), "a", &opts).unwrap();
        assert!(t.path().join(".wh.x").is_file());
    }

    #[test]
    fn read_only_dirs_still_receive_children_and_keep_their_mode() {
        let t = tempfile::tempdir().unwrap();
        let mut ro = h("ro", TarKind::Dir);
        ro.mode = 0o555;
        apply_layer(
            &tar_of(&[(ro.clone(), b""), file("ro/f", b"1")])[..],
            t.path(),
            "l1",
            &LAYER,
        )
        .unwrap();
        apply_layer(&tar_of(&[file("ro/g", b"2")])[..], t.path(), "l2", &LAYER).unwrap();
        assert!(t.path().join("ro/g").is_file());
        let mode = fs::metadata(t.path().join("ro")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o555);
        fs::set_permissions(t.path().join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A layer header with a raw name the safe writer would never produce.
    fn raw_tar(name: &[u8], kind: tar::EntryType, link: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
        let mut hd = tar::Header::new_gnu();
        hd.as_old_mut().name[..name.len()].copy_from_slice(name);
        hd.set_entry_type(kind);
        hd.set_size(data.len() as u64);
        hd.set_mode(0o644);
        if let Some(l) = link {
            hd.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        hd.set_cksum();
        let mut out = hd.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn malicious_layers_are_refused_without_writing_outside() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let victim = outer.path().join("victim");
        fs::write(&victim, b"original").unwrap();

        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "traversal",
                raw_tar(b"../victim", tar::EntryType::Regular, None, b"pwned"),
            ),
            ("absolute", {
                let p = format!("{}", victim.display());
                raw_tar(p.as_bytes(), tar::EntryType::Regular, None, b"pwned")
            }),
            ("symlink-then-write", {
                let target = outer.path().display().to_string();
                let mut t = raw_tar(
                    b"link",
                    tar::EntryType::Symlink,
                    Some(target.as_bytes()),
                    b"",
                );
                t.extend(raw_tar(
                    b"link/victim",
                    tar::EntryType::Regular,
                    None,
                    b"pwned",
                ));
                t
            }),
            ("relative-symlink-escape", {
                let mut t = raw_tar(b"up", tar::EntryType::Symlink, Some(b".."), b"");
                t.extend(raw_tar(
                    b"up/victim",
                    tar::EntryType::Regular,
                    None,
                    b"pwned",
                ));
                t
            }),
            ("hardlink-outside", {
                let target = victim.display().to_string();
                raw_tar(b"hl", tar::EntryType::Link, Some(target.as_bytes()), b"")
            }),
            (
                "hardlink-traversal",
                raw_tar(b"hl2", tar::EntryType::Link, Some(b"../victim"), b""),
            ),
            // A whiteout of "..": would remove the root's parent, victim included.
            (
                "whiteout-of-parent",
                raw_tar(b".wh...", tar::EntryType::Regular, None, b""),
            ),
            ("whiteout-of-self", {
                let mut t = raw_tar(b"d", tar::EntryType::Directory, None, b"");
                t.extend(raw_tar(b"d/.wh..", tar::EntryType::Regular, None, b""));
                t
            }),
        ];
        for (name, layer) in cases {
            let err = apply_layer(&layer[..], &root, "sha256:bad", &LAYER)
                .expect_err(&format!("{name} must be refused"));
            let msg = format!("{err:#}");
            assert!(msg.contains("sha256:bad"), "{name}: {msg}");
            assert_eq!(fs::read(&victim).unwrap(), b"original", "{name}");
            assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1, "{name}");
        }
    }

    #[test]
    fn absolute_symlinks_mean_the_images_own_paths() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        // As in Debian's images: /var/run -> /run; a later layer writes through it.
        let base = tar_of(&[
            (h("run", TarKind::Dir), b""),
            (h("var", TarKind::Dir), b""),
            (h("var/run", TarKind::Symlink("/run".into())), b""),
        ]);
        apply_layer(&base[..], &root, "sha256:base", &LAYER).unwrap();
        let upper = tar_of(&[file("var/run/app.pid", b"42")]);
        apply_layer(&upper[..], &root, "sha256:upper", &LAYER).unwrap();
        assert_eq!(fs::read(root.join("run/app.pid")).unwrap(), b"42");
        assert!(fs::symlink_metadata(root.join("var/run"))
            .unwrap()
            .file_type()
            .is_symlink());
        // A directory the image does not have is not made behind an absolute link.
        let missing = tar_of(&[file("var/run/sub/x", b"x")]);
        let e = apply_layer(&missing[..], &root, "sha256:missing", &LAYER).unwrap_err();
        assert!(
            format!("{e:#}").contains("which is not in the image"),
            "{e:#}"
        );
        assert!(!root.join("run/sub").exists());
    }

    /// A temporary directory holding an empty root and, beside it, a host directory
    /// `outside` that nothing applied to the root may touch.
    fn root_beside(outside: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join(outside));
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        (t, root, outside)
    }

    #[test]
    fn a_directory_replaced_within_the_layer_is_resolved_again() {
        // Entries in a directory reuse its resolution; an entry that replaces or removes
        // that directory (or one above it) must make the next entry resolve afresh.
        let (_t, root, outside) = root_beside("c");
        let layer = tar_of(&[
            (h("c", TarKind::Dir), b""),
            (h("a", TarKind::Dir), b""),
            (h("a/b", TarKind::Dir), b""),
            file("a/b/f", b"f"),
            // The directory becomes an absolute link: `/c` is the image's own c, never
            // the host's (the host's c sits right beside the root here).
            (h("a/b", TarKind::Symlink("/c".into())), b""),
            file("a/b/g", b"g"),
            // A directory above a resolved one goes away, then is written into again.
            (h("x", TarKind::Dir), b""),
            (h("x/y", TarKind::Dir), b""),
            file("x/y/1", b"1"),
            file(".wh.x", b""),
            file("x/y/2", b"2"),
            // An opaque marker empties the directory of what lower layers put there.
            (h("o", TarKind::Dir), b""),
            (h("o/p", TarKind::Dir), b""),
            file("o/p/1", b"1"),
        ]);
        apply_layer(&layer[..], &root, "l", &LAYER).unwrap();
        assert_eq!(fs::read(root.join("c/g")).unwrap(), b"g");
        assert!(!outside.join("g").exists(), "written outside the root");
        assert!(fs::symlink_metadata(root.join("a/b")).unwrap().is_symlink());
        assert!(!root.join("x/y/1").exists());
        assert_eq!(fs::read(root.join("x/y/2")).unwrap(), b"2");
        // (The whiteout of nothing makes the layer resolve o/p before the marker.)
        let upper = tar_of(&[
            file("o/q", b"q"),
            file("o/p/.wh.nothing", b""),
            file("o/.wh..wh..opq", b""),
            file("o/p/2", b"2"),
        ]);
        apply_layer(&upper[..], &root, "u", &LAYER).unwrap();
        assert!(!root.join("o/p/1").exists());
        assert_eq!(fs::read(root.join("o/p/2")).unwrap(), b"2");
        assert_eq!(fs::read(root.join("o/q")).unwrap(), b"q");
    }

    #[test]
    fn a_directory_replaced_by_a_link_keeps_its_mode_inside_the_root() {
        // A directory's mode is set at the end of the layer; a later entry that turns it
        // into a link to a host path must not carry that mode out of the root.
        let (_t, root, victim) = root_beside("victim");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
        let target = victim.to_str().unwrap().to_string();
        let mut open = h("x", TarKind::Dir);
        open.mode = 0o777;
        let layer = tar_of(&[(open, b""), (h("x", TarKind::Symlink(target)), b"")]);
        apply_layer(&layer[..], &root, "l", &LAYER).unwrap();
        assert!(fs::symlink_metadata(root.join("x")).unwrap().is_symlink());
        let mode = fs::metadata(&victim).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "a host directory's mode was changed");
    }

    #[test]
    fn hard_links_and_symlinks_inside_are_made() {
        let t = tempfile::tempdir().unwrap();
        let layer = tar_of(&[
            (h("d", TarKind::Dir), b""),
            file("d/f", b"data"),
            (h("d/hl", TarKind::Hardlink("d/f".into())), b""),
            (h("d/sl", TarKind::Symlink("f".into())), b""),
        ]);
        apply_layer(&layer[..], t.path(), "l", &LAYER).unwrap();
        assert!(same_file(&t.path().join("d/f"), &t.path().join("d/hl")));
        assert_eq!(
            fs::read_link(t.path().join("d/sl")).unwrap(),
            Path::new("f")
        );
    }

    /// Layer apply as a fuzz target: random layers of hostile names (`..`, absolute
    /// paths, whiteouts), symlinks and hard links pointing out of the root, applied with
    /// and without whiteouts: never a panic, and nothing outside the root is touched.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        const PARTS: &[&str] = &[
            "a",
            "b",
            "..",
            ".",
            "",
            "etc",
            ".wh.a",
            ".wh..wh..opq",
            "link",
            "outside",
        ];
        const TARGETS: &[&str] = &[
            "a",
            "../outside",
            "../../outside",
            "/outside-rbuild-fuzz",
            "link/../..",
            "/",
            "a/b",
            ".",
        ];

        fn path() -> impl Strategy<Value = String> {
            (
                prop::bool::ANY,
                prop::collection::vec(prop::sample::select(PARTS), 1..4),
            )
                .prop_map(|(abs, parts)| {
                    format!("{}{}", if abs { "/" } else { "" }, parts.join("/"))
                })
        }

        /// One raw tar entry: name bytes as given (no cleaning), type, link name.
        fn entry() -> impl Strategy<Value = Vec<u8>> {
            (path(), 0u8..6, prop::sample::select(TARGETS)).prop_map(|(p, k, target)| {
                let mut hd = tar::Header::new_gnu();
                let (kind, data): (tar::EntryType, &[u8]) = match k {
                    0 => (tar::EntryType::Regular, b"x"),
                    1 => (tar::EntryType::Directory, b""),
                    2 => (tar::EntryType::Symlink, b""),
                    3 => (tar::EntryType::Link, b""),
                    4 => (tar::EntryType::Fifo, b""),
                    _ => (tar::EntryType::Regular, b""),
                };
                hd.set_entry_type(kind);
                let name = &mut hd.as_gnu_mut().unwrap().name;
                let n = p.len().min(name.len());
                name[..n].copy_from_slice(&p.as_bytes()[..n]);
                let link = &mut hd.as_gnu_mut().unwrap().linkname;
                let n = target.len().min(link.len());
                link[..n].copy_from_slice(&target.as_bytes()[..n]);
                hd.set_mode(0o755);
                hd.set_uid(0);
                hd.set_gid(0);
                hd.set_mtime(1_600_000_000);
                hd.set_size(data.len() as u64);
                hd.set_cksum();
                let mut b = tar::Builder::new(Vec::new());
                b.append(&hd, data).unwrap();
                let mut bytes = b.into_inner().unwrap();
                bytes.truncate(512 + data.len().div_ceil(512) * 512); // no end marker
                bytes
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

            #[test]
            fn apply_never_leaves_the_root(
                layers in prop::collection::vec(prop::collection::vec(entry(), 1..10), 1..3),
                whiteouts in prop::bool::ANY,
            ) {
                let t = tempfile::tempdir().unwrap();
                let (root, outside) = (t.path().join("root"), t.path().join("outside"));
                fs::create_dir(&root).unwrap();
                fs::create_dir(&outside).unwrap();
                fs::write(outside.join("keep"), b"k").unwrap();
                let opts = ApplyOptions { set_owners: false, whiteouts };
                for entries in &layers {
                    let mut tar: Vec<u8> = entries.concat();
                    tar.extend_from_slice(&[0u8; 1024]);
                    let _ = apply_layer(&tar[..], &root, "fuzz", &opts);
                }
                let mut names: Vec<_> = fs::read_dir(t.path()).unwrap()
                    .map(|e| e.unwrap().file_name()).collect();
                names.sort();
                prop_assert_eq!(names, vec![std::ffi::OsString::from("outside"), "root".into()]);
                let inside: Vec<_> = fs::read_dir(&outside).unwrap()
                    .map(|e| e.unwrap().file_name()).collect();
                prop_assert_eq!(inside, vec![std::ffi::OsString::from("keep")]);
                prop_assert_eq!(fs::read(outside.join("keep")).unwrap(), b"k".to_vec());
                prop_assert!(!Path::new("/outside-rbuild-fuzz").exists());
            }
        }
    }
}
