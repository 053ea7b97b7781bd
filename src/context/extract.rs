//! Safe extraction of a build context sent as a tar stream.
//!
//! Nothing may be written outside the extraction directory: entry names are cleaned
//! (a leading `/` is dropped, a `..` that would climb above the top is refused), no entry is
//! written through a symbolic link, and hard links must point at an entry already inside.
//! Directory modes and times are applied at the end, deepest first, so that restrictive
//! modes do not get in the way of extraction; the owner keeps full access to every
//! directory on disk (a mode-000 directory could not be read back otherwise), and the mode
//! the tar gave is remembered for COPY. FIFOs are made; device nodes, which cannot be made
//! without privileges, are empty files on disk remembered as the devices they are.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Cursor, ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use filetime::FileTime;
use flate2::read::MultiGzDecoder;
use tempfile::TempDir;

/// What the tar says an extracted entry is, where the disk cannot say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// Its permission bits.
    pub mode: u32,
    /// A device node (kept on disk as an empty file).
    pub device: Option<Device>,
}

/// A character or block device: its kind, major and minor numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
}

/// A temporary directory holding an extracted context, removed on drop.
#[derive(Debug)]
pub(super) struct Extracted {
    dir: TempDir,
    /// Entries whose mode or kind on disk is not the tar's, by path below the directory.
    declared: std::collections::HashMap<PathBuf, Declared>,
}

impl Extracted {
    /// The extraction directory.
    pub(super) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What the tar said of the entry at `rel` (below the directory), where the disk
    /// holds something else.
    pub(super) fn declared(&self, rel: &Path) -> Option<Declared> {
        self.declared.get(rel).copied()
    }
}

/// A directory entry whose mode and time are applied once everything is extracted.
struct DirMeta {
    comps: Vec<OsString>,
    mode: u32,
    mtime: Option<FileTime>,
}

/// Extracts the tar stream `r` (gzip-compressed or not) into a new directory under `parent`.
pub(super) fn extract<R: Read>(mut r: R, parent: &Path) -> Result<Extracted> {
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("context-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    let mut out = Extracted {
        dir,
        declared: Default::default(),
    };

    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < magic.len() {
        match r.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("cannot read the context tar"),
        }
    }
    let stream = Cursor::new(magic[..got].to_vec()).chain(r);
    let root = out.path().to_path_buf();
    let dirs = if magic[..got] == [0x1f, 0x8b] {
        unpack_all(MultiGzDecoder::new(stream), &root, &mut out.declared)?
    } else {
        unpack_all(stream, &root, &mut out.declared)?
    };
    apply_dir_meta(&root, dirs, &mut out.declared)?;
    Ok(out)
}

type DeclaredMap = std::collections::HashMap<PathBuf, Declared>;

/// Unpacks every entry of the archive, returning the directories whose metadata is pending.
fn unpack_all<T: Read>(input: T, root: &Path, declared: &mut DeclaredMap) -> Result<Vec<DirMeta>> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut dirs = Vec::new();
    for entry in archive.entries().context("cannot read the context tar")? {
        let mut entry = entry.context("cannot read the context tar")?;
        unpack_entry(root, &mut entry, &mut dirs, declared)?;
    }
    Ok(dirs)
}

fn unpack_entry<R: Read>(
    root: &Path,
    entry: &mut tar::Entry<'_, R>,
    dirs: &mut Vec<DirMeta>,
    declared: &mut DeclaredMap,
) -> Result<()> {
    use tar::EntryType as T;
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let kind = entry.header().entry_type();
    let is_dir =
        kind.is_dir() || (matches!(kind, T::Regular | T::Continuous) && name.ends_with('/'));
    if !is_dir
        && !matches!(
            kind,
            T::Regular | T::Continuous | T::GNUSparse | T::Symlink | T::Link | T::Fifo
        )
        && !matches!(kind, T::Char | T::Block)
    {
        // Metadata entries are handled by the tar reader.
        return Ok(());
    }
    let path = entry
        .path()
        .with_context(|| format!("tar entry {name:?} has an invalid name"))?
        .into_owned();
    let comps =
        clean(&path).ok_or_else(|| anyhow!("tar entry {name:?} points outside the context"))?;
    let Some((_, parents)) = comps.split_last() else {
        return Ok(()); // the top directory itself
    };
    make_parents(root, parents, &name)?;
    let dst = join(root, &comps);
    let failed = || format!("cannot extract tar entry {name:?}");

    if is_dir {
        match fs::symlink_metadata(&dst) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&dst).with_context(failed)?;
                new_dir(&dst).with_context(failed)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => new_dir(&dst).with_context(failed)?,
            Err(e) => return Err(e).with_context(failed),
        }
        let header = entry.header();
        dirs.push(DirMeta {
            comps,
            mode: header.mode().with_context(failed)? & 0o7777,
            mtime: header.mtime().ok().and_then(file_time),
        });
        return Ok(());
    }

    match kind {
        T::Symlink => {
            let target = entry
                .link_name()
                .with_context(failed)?
                .ok_or_else(|| anyhow!("tar entry {name:?} is a symbolic link without a target"))?
                .into_owned();
            remove_existing(&dst).with_context(failed)?;
            std::os::unix::fs::symlink(&target, &dst).with_context(failed)?;
            if let Some(t) = entry.header().mtime().ok().and_then(file_time) {
                filetime::set_symlink_file_times(&dst, t, t).with_context(failed)?;
            }
        }
        T::Link => {
            let target = entry
                .link_name()
                .with_context(failed)?
                .ok_or_else(|| anyhow!("tar entry {name:?} is a hard link without a target"))?
                .into_owned();
            let shown = target.display();
            let tcomps = clean(&target).filter(|c| !c.is_empty()).ok_or_else(|| {
                anyhow!("tar entry {name:?} is a hard link to {shown:?}, outside the context")
            })?;
            if tcomps == comps {
                return Ok(());
            }
            if !real_dirs(root, &tcomps[..tcomps.len() - 1]) {
                bail!(
                    "tar entry {name:?} is a hard link to {shown:?}, which is not an entry extracted before it"
                );
            }
            let tpath = join(root, &tcomps);
            match fs::symlink_metadata(&tpath) {
                Ok(m) if !m.is_dir() => {}
                _ => bail!(
                    "tar entry {name:?} is a hard link to {shown:?}, which is not a file extracted before it"
                ),
            }
            remove_existing(&dst).with_context(failed)?;
            fs::hard_link(&tpath, &dst).with_context(failed)?;
        }
        T::Fifo => {
            let mode = entry.header().mode().with_context(failed)? & 0o7777;
            remove_existing(&dst).with_context(failed)?;
            nix::unistd::mkfifo(&dst, nix::sys::stat::Mode::from_bits_truncate(mode))
                .with_context(failed)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).with_context(failed)?;
        }
        T::Char | T::Block => {
            // Not makeable without privileges: an empty file, remembered as the device.
            let h = entry.header();
            let (major, minor) = (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            );
            let device = if kind == T::Char {
                Device::Char(major, minor)
            } else {
                Device::Block(major, minor)
            };
            let mode = h.mode().with_context(failed)? & 0o7777;
            remove_existing(&dst).with_context(failed)?;
            fs::File::create(&dst).with_context(failed)?;
            declared.insert(
                comps.iter().collect(),
                Declared {
                    mode,
                    device: Some(device),
                },
            );
        }
        _ => {
            remove_existing(&dst).with_context(failed)?;
            entry.unpack(&dst).with_context(failed)?;
        }
    }
    Ok(())
}

/// The normal components of an entry name: a leading `/` and `.` dropped, `..` resolved.
/// None when `..` would climb above the top.
fn clean(path: &Path) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Normal(n) => out.push(n.to_os_string()),
        }
    }
    Some(out)
}

fn join(root: &Path, comps: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(comps);
    p
}

fn file_time(secs: u64) -> Option<FileTime> {
    // As the tar reader does for files: a zero time becomes one second after the epoch.
    i64::try_from(secs.max(1))
        .ok()
        .map(|s| FileTime::from_unix_time(s, 0))
}

/// A new directory with mode 0755 whatever the umask (the entry's own mode comes later).
fn new_dir(path: &Path) -> io::Result<()> {
    fs::create_dir(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// Makes sure every component of `parents` is a real directory (created when missing),
/// refusing to go through symbolic links or non-directories.
fn make_parents(root: &Path, parents: &[OsString], name: &str) -> Result<()> {
    let mut p = root.to_path_buf();
    for (i, c) in parents.iter().enumerate() {
        p.push(c);
        let shown = || {
            parents[..=i]
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        };
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                bail!(
                    "tar entry {name:?} would be written through the symbolic link {:?}",
                    shown()
                )
            }
            Ok(_) => bail!("tar entry {name:?}: {:?} is not a directory", shown()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                new_dir(&p).with_context(|| format!("cannot extract tar entry {name:?}"))?
            }
            Err(e) => return Err(e).with_context(|| format!("cannot extract tar entry {name:?}")),
        }
    }
    Ok(())
}

/// True when every component of `comps` exists and is a real directory (not a symlink).
fn real_dirs(root: &Path, comps: &[OsString]) -> bool {
    let mut p = root.to_path_buf();
    comps.iter().all(|c| {
        p.push(c);
        fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
    })
}

/// Removes whatever is at `path` (never following a symlink) so a new entry can take it.
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies the recorded directory modes and times, deepest first; a later entry for the
/// same directory wins. Directories that were replaced since are skipped. The owner keeps
/// full access on disk; a mode that would take it away is remembered in `declared`.
fn apply_dir_meta(root: &Path, mut dirs: Vec<DirMeta>, declared: &mut DeclaredMap) -> Result<()> {
    dirs.sort_by_key(|d| std::cmp::Reverse(d.comps.len()));
    for d in dirs {
        if !real_dirs(root, &d.comps) {
            continue;
        }
        let path = join(root, &d.comps);
        let failed = || format!("cannot set the mode of {}", path.display());
        if let Some(t) = d.mtime {
            filetime::set_symlink_file_times(&path, t, t).with_context(failed)?;
        }
        let rel: PathBuf = d.comps.iter().collect();
        if d.mode & 0o700 == 0o700 {
            declared.remove(&rel);
        } else {
            declared.insert(
                rel,
                Declared {
                    mode: d.mode,
                    device: None,
                },
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(d.mode | 0o700))
            .with_context(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_cleaned() {
        let c = |s: &str| clean(Path::new(s)).map(|v| rel(&v));
        fn rel(v: &[OsString]) -> String {
            v.iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        }
        assert_eq!(c("/etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(c("./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(c("a/../b").as_deref(), Some("b"));
        assert_eq!(c("./").as_deref(), Some(""));
        assert_eq!(c("../x"), None);
        assert_eq!(c("a/../../x"), None);
        assert_eq!(c("/../x"), None);
    }
}
