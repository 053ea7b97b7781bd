//! The overlay snapshotters' parts: mounting a stack of snapshot directories (the store's
//! unpacked layers) with a fresh upper directory, by the kernel's overlayfs or by
//! fuse-overlayfs ([`Driver`]), probing whether this kernel and filesystem allow it, and
//! reading a step's layer from the upper directory alone.
//!
//! Mounts are made in the build process's own mount namespace (see
//! [`private_mount_namespace`]), so they die with the process whatever ends it. Kernel
//! options always include `userxattr` (metadata under `user.overlay.*`, as an
//! unprivileged user namespace needs; the same as real root, so one cache serves both)
//! and never `redirect_dir` or `metacopy`. Every directory is passed as a short link in a
//! directory of links that is the working directory of the mount (`lowerdir=2:1:0`), so
//! the 500 layers overlay can stack fit the option size limit.

use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::fuse_overlay;
use super::walk::entry_of;
use super::{LayerEntry, OPAQUE_MARKER, WHITEOUT_PREFIX};

/// Which overlay implementation mounts a stack of snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// The kernel's overlayfs, with `userxattr`.
    Kernel,
    /// fuse-overlayfs, a program serving the mount from user space.
    Fuse,
}

impl Driver {
    /// The snapshotter's name (`--snapshotter`).
    pub fn name(self) -> &'static str {
        match self {
            Driver::Kernel => "overlay",
            Driver::Fuse => fuse_overlay::PROGRAM,
        }
    }
}

/// The xattrs that mark a directory opaque in an upper directory, by writer.
const OPAQUE_XATTRS: [&str; 3] = [
    "user.overlay.opaque",
    "trusted.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
/// Xattrs that mean the upper directory holds more than a plain layer can say.
const REFUSED_XATTRS: [&str; 4] = [
    "user.overlay.redirect",
    "trusted.overlay.redirect",
    "user.overlay.metacopy",
    "trusted.overlay.metacopy",
];

/// Gives this process a private mount namespace (its mounts are seen by no one else and
/// end with it). Needs CAP_SYS_ADMIN in the process's user namespace.
pub fn private_mount_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("cannot make a mount namespace for the build")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("cannot make the build's mounts private")
}

/// An overlay mount at `target`, unmounted (lazily) on drop; a fuse-overlayfs daemon
/// serving it is then waited for.
#[derive(Debug)]
pub struct Mounted {
    target: PathBuf,
    daemon: Option<fuse_overlay::Daemon>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = umount2(&self.target, MntFlags::MNT_DETACH);
        drop(self.daemon.take());
    }
}

/// Mounts `lowers` (top first; at least one) with `upper` and `work` (both None: a
/// read-only view, which then needs two lowers or more) at `target`, by `driver`. `links`
/// is an empty directory the short lower names are made in.
pub fn mount_overlay(
    driver: Driver,
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
    links: &Path,
) -> Result<Mounted> {
    if lowers.is_empty() {
        bail!("an overlay needs a lower directory");
    }
    let link = |to: &Path, name: &str| {
        std::os::unix::fs::symlink(to, links.join(name))
            .with_context(|| format!("cannot prepare the overlay of {}", target.display()))
    };
    for (i, l) in lowers.iter().enumerate() {
        link(l, &i.to_string())?;
    }
    let names: Vec<String> = (0..lowers.len()).map(|i| i.to_string()).collect();
    let mut opts = format!("lowerdir={}", names.join(":"));
    if let Some((upper, work)) = upper_work {
        link(upper, "u")?;
        link(work, "w")?;
        opts.push_str(",upperdir=u,workdir=w");
    }
    let target_abs = std::path::absolute(target)?;
    if driver == Driver::Fuse {
        // No fsync: a snapshot never outlives the boot it was made in.
        opts.push_str(",fsync=0");
        let daemon = fuse_overlay::mount(&opts, &target_abs, links)
            .with_context(|| format!("cannot mount a fuse-overlayfs of {} layers", lowers.len()))?;
        return Ok(Mounted {
            target: target_abs,
            daemon: Some(daemon),
        });
    }
    opts.push_str(",userxattr");
    // The relative names resolve against the working directory, for this call only; the
    // directory is the process's, so stages mounting at once take turns.
    static CWD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _cwd = CWD.lock().unwrap_or_else(|e| e.into_inner());
    // O_PATH: a working directory that may be searched but not read is fine.
    let back = nix::fcntl::open(
        ".",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .context("cannot open the working directory")?;
    nix::unistd::chdir(links).context("cannot enter the overlay's link directory")?;
    let mounted = mount(
        Some("overlay"),
        &target_abs,
        Some("overlay"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(opts.as_str()),
    );
    nix::unistd::fchdir(&back).context("cannot return to the working directory")?;
    mounted.with_context(|| format!("cannot mount an overlay of {} layers", lowers.len()))?;
    Ok(Mounted {
        target: target_abs,
        daemon: None,
    })
}

/// Whether `driver` works here, tried for real in `dir` (on the cache's filesystem): two
/// lowers and an upper, a lower file removed (a whiteout in upper) and a lower directory
/// removed and made again (opaque). Err says why not.
pub fn probe(driver: Driver, dir: &Path) -> Result<()> {
    match driver {
        Driver::Kernel => {
            let on_overlay = nix::sys::statfs::statfs(dir)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC);
            if on_overlay {
                bail!(
                    "the cache directory {} is on overlayfs, which cannot hold upper directories: use a cache directory on a plain filesystem (in Kubernetes, an emptyDir volume)",
                    dir.display()
                );
            }
        }
        Driver::Fuse => {
            fuse_overlay::program()?;
            fuse_overlay::device_usable()?;
        }
    }
    let t = tempfile::Builder::new().prefix("probe-").tempdir_in(dir)?;
    let p = |n: &str| t.path().join(n);
    for d in ["l1/d", "l2", "upper", "work", "merged", "links"] {
        fs::create_dir_all(p(d))?;
    }
    fs::write(p("l1/f"), b"x")?;
    fs::write(p("l1/d/g"), b"y")?;
    fs::write(p("l2/h"), b"z")?;
    {
        let _m = mount_overlay(
            driver,
            &[p("l2"), p("l1")],
            Some((&p("upper"), &p("work"))),
            &p("merged"),
            &p("links"),
        )?;
        fs::remove_file(p("merged/f")).context("removing a lower file")?;
        fs::remove_dir_all(p("merged/d")).context("removing a lower directory")?;
        fs::create_dir(p("merged/d")).context("making it again")?;
        if p("merged/d/g").exists() || !p("merged/h").exists() {
            bail!("the merged view is wrong");
        }
    }
    // A 0/0 device, or (fuse-overlayfs where it cannot make one) a `.wh.` file.
    let device = fs::symlink_metadata(p("upper/f")).is_ok_and(|m| whiteout_name("f", &m).is_some());
    if !device && !p("upper/.wh.f").is_file() {
        bail!("the removed file left no whiteout in the upper directory");
    }
    if !is_opaque(&p("upper/d")) {
        bail!("the re-made directory is not marked opaque");
    }
    Ok(())
}

/// The last probe of a cache directory (`<cache>/overlay-probe.json`), for `rbuild info`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeRecord {
    /// The kernel it was tried on (`uname -r`).
    pub kernel: String,
    /// When, seconds since the epoch.
    pub checked: i64,
    /// Each driver tried, in the order tried.
    pub drivers: Vec<DriverProbe>,
}

/// How one driver fared in a probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverProbe {
    /// The snapshotter's name ([`Driver::name`]).
    pub driver: String,
    /// Whether it worked.
    pub usable: bool,
    /// Why not (empty when it worked).
    pub reason: String,
}

fn probe_path(cache: &Path) -> std::path::PathBuf {
    cache.join("overlay-probe.json")
}

/// Records a probe's outcomes in the cache directory (best effort, replaced atomically).
pub fn record_probe(cache: &Path, outcomes: &[(Driver, &Result<()>)]) {
    let rec = ProbeRecord {
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        checked: crate::store::index::now(),
        drivers: outcomes
            .iter()
            .map(|(d, outcome)| DriverProbe {
                driver: d.name().to_string(),
                usable: outcome.is_ok(),
                reason: outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_default(),
            })
            .collect(),
    };
    let Ok(bytes) = serde_json::to_vec(&rec) else {
        return;
    };
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(cache) {
        use std::io::Write;
        if tmp.write_all(&bytes).is_ok() {
            let _ = tmp.persist(probe_path(cache));
        }
    }
}

/// The last probe recorded in the cache directory, if any (one of an older form reads as
/// none).
pub fn read_probe(cache: &Path) -> Option<ProbeRecord> {
    serde_json::from_slice(&fs::read(probe_path(cache)).ok()?).ok()
}

/// Whether an upper directory is marked opaque, by any overlay implementation.
pub fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS
        .iter()
        .any(|x| matches!(xattr::get(dir, x), Ok(Some(v)) if v == b"y"))
        || dir.join(OPAQUE_MARKER).exists()
}

/// Whether an upper entry is a whiteout: a 0/0 character device, or a `.wh.NAME` file
/// (fuse-overlayfs where it cannot make devices).
fn whiteout_name(name: &str, meta: &fs::Metadata) -> Option<String> {
    if meta.file_type().is_char_device() && meta.rdev() == 0 {
        return Some(name.to_string());
    }
    name.strip_prefix(WHITEOUT_PREFIX)
        .filter(|n| !n.is_empty() && *n != ".wh..opq")
        .map(str::to_string)
}

/// Where a step on an overlay root writes, and what is below it.
#[derive(Debug, Clone)]
pub struct StepDirs {
    /// The upper directory the step's changes go to.
    pub upper: PathBuf,
    /// A read-only view of the layers below.
    pub lower: PathBuf,
    /// What mounts them.
    pub driver: Driver,
}

/// The layer entries of what a step changed, read from its upper directory alone; the
/// view of the layers below is read to leave out entries copied up without a change.
/// `skip` says which paths are never part of a layer (mount points).
///
/// fuse-overlayfs, unlike the kernel, does not put back a directory's times after
/// copying a child up into it: there a directory whose names are all the lower's (none
/// new, none whited out) and whose metadata differs from the lower's in its times only
/// is left out, as walk leaves it out. (A `touch` of such a directory and nothing else
/// is lost under fuse-overlayfs.)
pub fn diff_upper(dirs: &StepDirs, skip: &dyn Fn(&str) -> bool) -> Result<Vec<LayerEntry>> {
    let (upper, lower) = (dirs.upper.as_path(), dirs.lower.as_path());
    let loose_dir_times = dirs.driver == Driver::Fuse;
    let mut out = Vec::new();
    let mut it = walkdir::WalkDir::new(upper)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    // Directories made opaque: what is below them is new whatever the lowers hold.
    let mut opaque: Vec<String> = Vec::new();
    while let Some(e) = it.next() {
        crate::cancel::Cancel.check()?;
        let e = e.with_context(|| format!("cannot read {}", upper.display()))?;
        let rel = e
            .path()
            .strip_prefix(upper)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        if skip(&rel) {
            if e.file_type().is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let meta = e.metadata()?;
        for x in REFUSED_XATTRS {
            if !meta.file_type().is_symlink() && matches!(xattr::get(e.path(), x), Ok(Some(_))) {
                bail!("{rel}: the overlay recorded {x}, which a layer cannot express");
            }
        }
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        if name == OPAQUE_MARKER {
            continue; // fuse-overlayfs's marker file: the directory's xattr says it
        }
        if let Some(gone) = whiteout_name(name, &meta) {
            out.push(LayerEntry::marker(
                join(dir, &format!("{WHITEOUT_PREFIX}{gone}")),
                0,
            ));
            continue;
        }
        let below_opaque = opaque.iter().any(|o| {
            rel.strip_prefix(o.as_str())
                .is_some_and(|r| r.starts_with('/'))
        });
        if meta.is_dir() && is_opaque(e.path()) {
            opaque.push(rel.clone());
            out.push(LayerEntry::marker(
                format!("{rel}/{OPAQUE_MARKER}"),
                meta.mtime(),
            ));
            out.push(entry_of(&rel, e.path(), &meta)?);
            continue;
        }
        if !below_opaque && unchanged(&lower.join(&rel), e.path(), &meta) {
            continue;
        }
        if !below_opaque
            && loose_dir_times
            && meta.is_dir()
            && same_names(&lower.join(&rel), e.path())
            && unchanged_but_times(&lower.join(&rel), e.path(), &meta)
        {
            continue;
        }
        out.push(entry_of(&rel, e.path(), &meta)?);
    }
    Ok(out)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether the upper entry is a copy-up of the lower one with nothing changed: same type,
/// mode, owner, size, mtime, device, link target and kept xattrs (a directory's size is
/// not compared: it moves with its children).
fn unchanged(lower: &Path, upper: &Path, um: &fs::Metadata) -> bool {
    let Ok(lm) = fs::symlink_metadata(lower) else {
        return false;
    };
    let same = lm.mode() == um.mode()
        && lm.uid() == um.uid()
        && lm.gid() == um.gid()
        && (lm.is_dir() || lm.size() == um.size())
        && lm.mtime() == um.mtime()
        && lm.mtime_nsec() == um.mtime_nsec()
        && lm.rdev() == um.rdev();
    if !same {
        return false;
    }
    if um.file_type().is_symlink() {
        return fs::read_link(lower).ok() == fs::read_link(upper).ok();
    }
    if crate::xattrs::kept(lower) != crate::xattrs::kept(upper) {
        return false;
    }
    // Same size, mode, owner and mtime can still hide new bytes (archives extracted with
    // fixed times): a regular file is left out only when its bytes are the lower's too.
    !um.is_file() || same_bytes(lower, upper).unwrap_or(false)
}

/// Whether an upper directory names nothing its lower one lacks and hides nothing of it.
fn same_names(lower: &Path, upper: &Path) -> bool {
    let Ok(entries) = fs::read_dir(upper) else {
        return false;
    };
    entries.into_iter().all(|e| {
        let Ok(e) = e else {
            return false;
        };
        let name = e.file_name();
        let text = name.to_string_lossy();
        if text == OPAQUE_MARKER || text.starts_with(WHITEOUT_PREFIX) {
            return false;
        }
        let whiteout = e
            .metadata()
            .is_ok_and(|m| whiteout_name(&text, &m).is_some());
        !whiteout && fs::symlink_metadata(lower.join(&name)).is_ok()
    })
}

/// Whether a directory is its lower one but for its times.
fn unchanged_but_times(lower: &Path, upper: &Path, um: &fs::Metadata) -> bool {
    fs::symlink_metadata(lower).is_ok_and(|lm| {
        lm.is_dir() && lm.mode() == um.mode() && lm.uid() == um.uid() && lm.gid() == um.gid()
    }) && crate::xattrs::kept(lower) == crate::xattrs::kept(upper)
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut fa = crate::cancel::Cancellable(File::open(a)?);
    let mut fb = File::open(b)?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_of_an_upper_directory_without_a_mount() {
        // An upper directory as overlay leaves it, read without mounting anything.
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(lower.join("etc/same"), b"s").unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        // A copy-up without a change: same metadata as the lower file.
        fs::copy(lower.join("etc/same"), upper.join("etc/same")).unwrap();
        let lm = fs::metadata(lower.join("etc/same")).unwrap();
        filetime::set_file_mtime(
            upper.join("etc/same"),
            filetime::FileTime::from_last_modification_time(&lm),
        )
        .unwrap();
        fs::write(upper.join("etc/new"), b"n").unwrap();
        fs::write(upper.join(".wh.gone"), b"").unwrap();
        fs::create_dir_all(upper.join("proc/x")).unwrap();
        // New bytes under the same size, mode, owner and mtime.
        fs::write(lower.join("etc/fixed-time"), b"v1").unwrap();
        fs::write(upper.join("etc/fixed-time"), b"v2").unwrap();
        let t = filetime::FileTime::from_unix_time(499_162_500, 0);
        filetime::set_file_mtime(lower.join("etc/fixed-time"), t).unwrap();
        filetime::set_file_mtime(upper.join("etc/fixed-time"), t).unwrap();
        let dirs = StepDirs {
            upper,
            lower,
            driver: Driver::Kernel,
        };
        let entries = diff_upper(&dirs, &|r| r == "proc").unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"etc/fixed-time"), "{paths:?}");
        assert!(paths.contains(&"etc/new"), "{paths:?}");
        assert!(paths.contains(&".wh.gone"), "{paths:?}");
        assert!(!paths.contains(&"etc/same"), "{paths:?}");
        assert!(!paths.iter().any(|p| p.starts_with("proc")), "{paths:?}");
    }
}
