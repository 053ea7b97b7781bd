//! Running one RUN command in its sandbox.
//!
//! Process tree: rbuild forks a *keeper*, which unshares mount, pid, ipc, uts (and, for
//! `--network=none`, net) namespaces and forks the *init* (pid 1 of the new pid
//! namespace). Init mounts the step's root (proc, a minimal /dev, read-only /sys, the
//! generated /etc files), pivots into it and forks the command, then reaps every process
//! until the command exits — and by exiting, ends every process left in the namespace.
//! The command drops capabilities to Docker's default set, sets no_new_privs, loads the
//! seccomp filter, takes the step's user and groups, and execs. Killing the keeper kills
//! init (parent-death signal), which kills the rest: cancellation leaves nothing behind,
//! and the mounts vanish with their namespace.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::caps::restrict_capabilities;
use super::seccomp::Filter;
use super::Cancel;

/// The network a step gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network (the default, as BuildKit's `--network=default` in rootless mode).
    Host,
    /// A new network namespace with only `lo`.
    None,
}

/// How a step is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Namespaces, pivot_root, capabilities, seccomp.
    Namespaces,
    /// chroot into the root, for containers where namespaces cannot be made.
    Chroot,
}

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// A mount a step asked for (`RUN --mount`), made before the step starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepMount {
    /// Where, relative to the root: a real path (no symlink on the way) whose last
    /// component exists, as a directory or a file like the source.
    pub target: String,
    /// What is mounted there.
    pub source: MountSource,
}

/// What a [`StepMount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host file or directory, bound (recursively).
    Bind {
        /// The file or directory.
        path: PathBuf,
        /// Bound read-only.
        readonly: bool,
    },
    /// A new, empty tmpfs.
    Tmpfs {
        /// Its size limit in bytes (None: the kernel's default).
        size: Option<u64>,
    },
}

/// Everything the sandbox needs for one command.
pub struct RunSpec<'a> {
    /// The step's root filesystem (a private directory).
    pub rootfs: &'a Path,
    /// The command.
    pub argv: &'a [String],
    /// The file to execute: `argv[0]`, or where the caller found it on the step's PATH
    /// (an absolute path inside the root).
    pub program: &'a str,
    /// Its environment (`KEY=value`).
    pub env: &'a [String],
    /// Working directory inside the root (exists).
    pub cwd: &'a str,
    /// User and groups.
    pub user: &'a Credentials,
    /// Network mode.
    pub network: Network,
    /// Isolation mode.
    pub isolation: Isolation,
    /// Files bind-mounted over the image's `/etc/hosts`, `hostname` and `resolv.conf`:
    /// where (relative to the root, symlinks resolved by the caller) and contents. They are
    /// made in the step's own `/dev` tmpfs, so they never touch the disk and a step that
    /// changes one changes it for itself only.
    pub etc_files: &'a [(String, String)],
    /// The command starts only once the coarse clock is past this (see
    /// [`crate::coarse_clock`]): the snapshot's record needs it, and the wait overlaps the
    /// sandbox's setup.
    pub start_after: Option<crate::coarse_clock::Stamp>,
    /// A script for a heredoc RUN with a shebang, made available at `/dev/pipes/<name>`.
    pub script: Option<(&'a str, &'a str)>,
    /// The compiled seccomp filter (None: no filter, e.g. `--security=insecure`).
    pub seccomp: Option<&'a Filter>,
    /// The step's hostname.
    pub hostname: &'a str,
    /// `RUN --mount`s, parents before children.
    pub mounts: &'a [StepMount],
    /// Resource limits the command runs with (`--ulimit`): resource, soft, hard.
    pub rlimits: &'a [(nix::sys::resource::Resource, u64, u64)],
    /// The size of the step's `/dev/shm` in bytes (`--shm-size`; 64 MiB by default).
    pub shm_size: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

/// Runs the command, passing its output (stdout and stderr, interleaved) to `output`.
pub fn run(spec: &RunSpec<'_>, cancel: &Cancel, mut output: impl FnMut(&[u8])) -> Result<Outcome> {
    let (out_r, out_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    // Everything the children need is prepared before forking (no allocation surprises).
    let prepared = Prepared::new(spec)?;
    // The step's init is re-parented to rbuild if its keeper dies first (cancellation),
    // so rbuild can reap it rather than leave a zombie.
    nix::sys::prctl::set_child_subreaper(true).context("cannot become a subreaper")?;
    // SAFETY: other threads may be running (stages run at once). The child only performs
    // the sandbox setup and exits or execs: it uses the memory allocator (which glibc's
    // fork leaves usable), system calls and nix's wrappers, never a lock another thread
    // may hold (stdio, the environment); everything else was prepared before the fork.
    let keeper = match unsafe { fork() }.context("cannot fork")? {
        ForkResult::Child => {
            drop(out_r);
            drop(err_r);
            let code = match keeper_main(spec, &prepared, out_w.as_raw_fd(), &err_w) {
                Ok(code) => code,
                Err(e) => {
                    report(&err_w, &format!("{e:#}"));
                    126
                }
            };
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(out_w);
    drop(err_w);
    let result = pump(keeper, out_r, cancel, &mut output);
    reap_orphans(keeper);
    let mut setup_error = String::new();
    let mut f = fs::File::from(err_r);
    let _ = f.read_to_string(&mut setup_error);
    let outcome = result?;
    if !setup_error.is_empty() {
        bail!("{}", setup_error.trim_end());
    }
    Ok(outcome)
}

/// Streams the output until it closes and the keeper exits; kills the keeper (and so the
/// whole step) on cancellation. Waits on a pidfd, so the end of a step is seen at once.
fn pump(
    keeper: Pid,
    out: OwnedFd,
    cancel: &Cancel,
    output: &mut impl FnMut(&[u8]),
) -> Result<Outcome> {
    // SAFETY: pidfd_open on our own child; the result is checked.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, keeper.as_raw(), 0) } as RawFd;
    // SAFETY: a fresh fd owned by nobody else (or -1, handled below).
    let pidfd =
        (raw >= 0).then(|| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = true;
    let mut killed = false;
    loop {
        if cancel.requested() && !killed {
            // The keeper's whole group: the step's init too, even when it was forked just
            // before the keeper died and so missed its parent-death signal (the
            // namespace, and the command in it, die with their init).
            let _ = nix::sys::signal::killpg(keeper, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(keeper, nix::sys::signal::Signal::SIGKILL);
            killed = true;
        }
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let mut fds = Vec::with_capacity(2);
        if open {
            fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        let timeout: u16 = if pidfd.is_some() || open { 100 } else { 5 };
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(timeout));
        let out_ready = open && fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        if out_ready {
            match nix::unistd::read(&out, &mut buf) {
                Ok(0) => open = false,
                Ok(k) => output(&buf[..k]),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => open = false,
            }
            continue;
        }
        if open {
            continue;
        }
        match waitpid(keeper, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(WaitStatus::Exited(_, code)) => {
                if killed {
                    bail!("cancelled");
                }
                return Ok(decode(code));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                if killed {
                    bail!("cancelled");
                }
                return Ok(Outcome::Signaled(sig as i32));
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits (briefly) for processes of the step re-parented to rbuild (in the keeper's
/// process group) and reaps them.
fn reap_orphans(keeper: Pid) {
    for _ in 0..200 {
        match waitpid(
            Pid::from_raw(-keeper.as_raw()),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => {}
            Err(_) => return, // ECHILD: nothing left
        }
    }
}

/// Exit codes from init: 128+N means "killed by signal N" (as a shell reports it).
fn decode(code: i32) -> Outcome {
    if code > 128 && code < 128 + 65 {
        Outcome::Signaled(code - 128)
    } else {
        Outcome::Exited(code)
    }
}

/// C strings and paths computed before forking.
struct Prepared {
    argv0: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
}

impl Prepared {
    fn new(spec: &RunSpec<'_>) -> Result<Prepared> {
        let cs = |s: &str| CString::new(s).map_err(|_| anyhow!("NUL byte in {s:?}"));
        let argv: Vec<CString> = spec.argv.iter().map(|a| cs(a)).collect::<Result<_>>()?;
        if spec.argv.is_empty() {
            bail!("RUN has an empty command");
        }
        Ok(Prepared {
            argv0: cs(spec.program)?,
            argv,
            // Only the name: the value may be a secret.
            env: spec
                .env
                .iter()
                .map(|e| {
                    CString::new(e.as_str()).map_err(|_| {
                        let key = e.split('=').next().unwrap_or_default();
                        anyhow!("NUL byte in the value of ${key}")
                    })
                })
                .collect::<Result<_>>()?,
            cwd: cs(spec.cwd)?,
        })
    }
}

fn keeper_main(spec: &RunSpec<'_>, p: &Prepared, out: RawFd, err: &OwnedFd) -> Result<i32> {
    // Die with rbuild.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // Forked from a build with other threads at work: descriptors they had open (a file
    // of another stage being unpacked, open for writing) would stay open here for the
    // whole step, and that stage's exec of the file would fail with ETXTBSY.
    close_all_but(&[out, err.as_raw_fd()]);
    // A process group of its own: what it leaves re-parented to rbuild is reaped by group,
    // never rbuild's other children (fuse-overlayfs daemons).
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    if spec.isolation == Isolation::Chroot {
        return chroot_main(spec, p, out, err);
    }
    let mut flags = STEP_NAMESPACES;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).context("cannot create the step's namespaces")?;
    // SAFETY: single-threaded child.
    match unsafe { fork() }.context("cannot fork the step's init")? {
        ForkResult::Child => {
            let code = match init_main(spec, p, out, err) {
                Ok(code) => code,
                Err(e) => {
                    report(err, &format!("{e:#}"));
                    126
                }
            };
            // SAFETY: leave without destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            // SAFETY: closing our copy of the output so EOF comes when the step ends.
            unsafe { libc::close(out) };
            Ok(wait_for(child))
        }
    }
}

fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 126,
        }
    }
}

/// pid 1 of the step: mounts, pivot_root, then runs the command and reaps orphans.
fn init_main(spec: &RunSpec<'_>, p: &Prepared, out: RawFd, err: &OwnedFd) -> Result<i32> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    setup_mounts(spec)?;
    nix::unistd::sethostname(spec.hostname).ok();
    if spec.network == Network::None {
        loopback_up()?;
    }
    // SAFETY: single-threaded.
    match unsafe { fork() }.context("cannot fork the command")? {
        ForkResult::Child => {
            let e = exec_command(spec, p, out);
            report(err, &format!("{e:#}"));
            // SAFETY: leave without destructors.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            // SAFETY: init keeps no copy of the output.
            unsafe { libc::close(out) };
            loop {
                match waitpid(Pid::from_raw(-1), None) {
                    Ok(WaitStatus::Exited(pid, c)) if pid == child => return Ok(c),
                    Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => {
                        return Ok(128 + s as i32)
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return Ok(126),
                }
            }
        }
    }
}

/// The chroot isolation: no new namespaces (they cannot be made), only chroot,
/// capabilities, no_new_privs, seccomp and the user change.
fn chroot_main(spec: &RunSpec<'_>, p: &Prepared, out: RawFd, err: &OwnedFd) -> Result<i32> {
    // SAFETY: single-threaded.
    match unsafe { fork() }.context("cannot fork the command")? {
        ForkResult::Child => {
            let e = (|| -> Result<std::convert::Infallible> {
                if !spec.mounts.is_empty() {
                    unshare(CloneFlags::CLONE_NEWNS).context(
                        "RUN --mount needs a mount namespace, which cannot be made here (--isolation=chroot)",
                    )?;
                    let none: Option<&str> = None;
                    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
                        .context("cannot make the mounts private")?;
                    step_mounts(spec)?;
                }
                nix::unistd::chroot(spec.rootfs).context("chroot")?;
                nix::unistd::chdir("/")?;
                Err(exec_command(spec, p, out))
            })()
            .err()
            .unwrap_or_else(|| anyhow!("exec failed"));
            report(err, &format!("{e:#}"));
            // SAFETY: leave without destructors.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            // SAFETY: closing our copy of the output.
            unsafe { libc::close(out) };
            Ok(wait_for(child))
        }
    }
}

fn setup_mounts(spec: &RunSpec<'_>) -> Result<()> {
    let root = spec.rootfs;
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .context("cannot make the mounts private")?;
    // nosuid and nodev: with no device cgroup, a device node (made by a step running as
    // real root, or shipped in a layer) must not open the host's devices.
    mount(
        Some(root),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .context("cannot bind the step's root")?;
    // In a user namespace device nodes never open and no_new_privs disarms set-id bits,
    // so there a kernel that refuses the flags does not stop the build.
    if let Err(e) = restrict(root, false) {
        if host_root() {
            return Err(e.context("cannot make the step's root nosuid,nodev"));
        }
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = root.join("proc");
    if mount(Some("proc"), &proc_dir, Some("proc"), nosuid, none).is_err() {
        // Inside containers whose /proc has masked paths a fresh proc is refused.
        mount(
            Some("/proc"),
            &proc_dir,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .context("cannot mount /proc")?;
    }
    let dev = root.join("dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        // The devices rbuild binds here are mounts of their own, so nodev spares them.
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .context("cannot mount /dev")?;
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(d);
        fs::File::create(&target)?;
        let src = format!("/dev/{d}");
        if Path::new(&src).exists() {
            mount(Some(src.as_str()), &target, none, MsFlags::MS_BIND, none)
                .with_context(|| format!("cannot bind {src}"))?;
        }
    }
    fs::create_dir(dev.join("pts"))?;
    if mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .is_ok()
    {
        std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))?;
    }
    fs::create_dir(dev.join("shm"))?;
    mount(
        Some("shm"),
        &dev.join("shm"),
        Some("tmpfs"),
        nosuid,
        Some(format!("mode=1777,size={}", spec.shm_size).as_str()),
    )
    .context("cannot mount /dev/shm")?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name))?;
    }
    if let Some((name, body)) = spec.script {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir(dev.join("pipes"))?;
        let path = dev.join("pipes").join(name);
        fs::write(&path, body)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    let sys = root.join("sys");
    let ro = MsFlags::MS_RDONLY | nosuid;
    if mount(Some("sysfs"), &sys, Some("sysfs"), ro, none).is_err() {
        // Where a new sysfs is refused, the host's, read-only, if even that is allowed.
        let _ = bind(Path::new("/sys"), &sys, true);
    }
    // The generated /etc files: written in /dev's tmpfs, bound, and unlinked again (the
    // mounts keep them).
    let staging = dev.join(".etc");
    fs::create_dir(&staging)?;
    for (rel, contents) in spec.etc_files {
        // At the path the image resolves /etc/NAME to (a symlinked resolv.conf included),
        // opened without following symlinks; only over a regular file.
        let (_, name, fd) = open_beneath(root, rel, false)?;
        let st = nix::sys::stat::fstat(&fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let source = staging.join(&name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&source)
            .and_then(|mut f| std::io::Write::write_all(&mut f, contents.as_bytes()))
            .with_context(|| format!("cannot write /{rel}"))?;
        fs::set_permissions(&source, fs::Permissions::from_mode(0o644))?;
        let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(Some(&source), at.as_str(), none, MsFlags::MS_BIND, none)
            .with_context(|| format!("cannot bind /{rel}"))?;
        fs::remove_file(&source)?;
    }
    fs::remove_dir(&staging)?;
    step_mounts(spec)?;
    nix::unistd::chdir(root)?;
    nix::unistd::pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("cannot detach the old root")?;
    nix::unistd::chdir("/")?;
    Ok(())
}

/// The step's own mounts (`RUN --mount`), parents first. Each target is opened below the
/// root without following any symlink (see [`open_beneath`]) and mounted on through its
/// descriptor, so neither a symlink in the image nor one inside a mount above (a shared
/// cache) can move a mount elsewhere.
fn step_mounts(spec: &RunSpec<'_>) -> Result<()> {
    let none: Option<&str> = None;
    for m in spec.mounts {
        let (is_dir, readonly) = match &m.source {
            MountSource::Bind { path, readonly } => (path.is_dir(), *readonly),
            MountSource::Tmpfs { .. } => (true, false),
        };
        let made = (|| -> Result<()> {
            let (parent, name, fd) = open_beneath(spec.rootfs, &m.target, is_dir)?;
            let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
            match &m.source {
                MountSource::Bind { path, .. } => mount(
                    Some(path.as_path()),
                    at.as_str(),
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none,
                )?,
                MountSource::Tmpfs { size } => {
                    let options = size.map(|s| format!("size={s}"));
                    mount(
                        Some("tmpfs"),
                        at.as_str(),
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        options.as_deref(),
                    )?
                }
            }
            // Opened again from its parent: the new mount's root, not what it covers, and
            // not whatever the path might lead to by now.
            let mounted = nix::fcntl::openat(
                &parent,
                name.as_str(),
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            restrict(
                Path::new(&format!("/proc/self/fd/{}", mounted.as_raw_fd())),
                readonly,
            )
        })();
        made.with_context(|| format!("cannot mount /{}", m.target))?;
    }
    Ok(())
}

/// Opens `rel` below `root` as an `O_PATH` descriptor ([`crate::inroot`]), refusing a
/// symlink anywhere on the way; returns its parent's descriptor, its name and its own. A
/// missing last component (hidden by a mount made above it) is made there: a directory, or
/// an empty file when `dir` is false; that fails on a read-only mount.
fn open_beneath(root: &Path, rel: &str, dir: bool) -> Result<(OwnedFd, String, OwnedFd)> {
    use crate::inroot::{Missing, Root, Rules};
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let r = Root::open_dir(root)?.resolve(Path::new(rel), Rules::strict(Missing::Keep))?;
    let Some(name) = r.rel.file_name() else {
        bail!("cannot mount over the root");
    };
    let Some(parent) = r.parent else {
        bail!(
            "/{} does not exist below the mounts above it",
            r.rel.parent().unwrap_or(&r.rel).display()
        );
    };
    let name = name
        .to_str()
        .context("a mount point that is not UTF-8")?
        .to_string();
    if let Some(fd) = r.fd {
        return Ok((parent, name, fd));
    }
    if dir {
        nix::sys::stat::mkdirat(&parent, name.as_str(), Mode::from_bits_truncate(0o755))?;
    } else {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        drop(openat(
            &parent,
            name.as_str(),
            flags | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?);
    }
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(&parent, name.as_str(), flags, Mode::empty())?;
    Ok((parent, name, fd))
}

/// Binds `source` at `target` (recursively), with [`restrict`]'s flags.
fn bind(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    let none: Option<&str> = None;
    mount(
        Some(source),
        target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )?;
    restrict(target, readonly)
}

/// `mount_setattr(2)`'s argument.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Makes the mount at `target` and every mount below it nosuid and nodev, and read-only
/// if asked (`mount_setattr` with `AT_RECURSIVE`). Kernels before 5.12 get a remount of
/// the top mount only, keeping the flags the kernel locked on it.
fn restrict(target: &Path, readonly: bool) -> Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV
            | if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let c = CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path and a mount_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Before 5.12 there is no mount_setattr; a seccomp profile may answer EPERM for it.
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
        return Err(e).context("cannot set the mount's flags");
    }
    // A remount must repeat the flags the kernel keeps locked in a user namespace, the
    // atime ones included, or it is refused.
    use nix::sys::statvfs::FsFlags;
    let have = nix::sys::statvfs::statvfs(target)
        .map(|s| s.flags())
        .unwrap_or(FsFlags::empty());
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let none: Option<&str> = None;
    mount(none, target, none, flags, none).context("cannot set the mount's flags")?;
    Ok(())
}

/// True when this process runs as the host's root (the identity uid map), where nodev
/// on the step's root is what keeps device nodes from opening host devices.
fn host_root() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

/// Brings `lo` up in a new network namespace.
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("cannot open a socket to bring up lo");
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
        if rc != 0 {
            bail!("cannot bring up lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Becomes the step's process: output, credentials, capabilities, no_new_privs,
/// seccomp, working directory, exec. Returns only on failure.
fn exec_command(spec: &RunSpec<'_>, p: &Prepared, out: RawFd) -> anyhow::Error {
    let r = (|| -> Result<std::convert::Infallible> {
        if let Ok(null) = fs::File::open("/dev/null") {
            nix::unistd::dup2_stdin(&null)?;
        }
        // SAFETY: `out` is the step's output pipe, open until the close below.
        let pipe = unsafe { std::os::fd::BorrowedFd::borrow_raw(out) };
        nix::unistd::dup2_stdout(pipe)?;
        nix::unistd::dup2_stderr(pipe)?;
        // SAFETY: `out` is owned by this process and not used after this.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(out) });
        nix::unistd::setsid()?;
        close_inherited_fds();
        reset_signals();
        let u = spec.user;
        let groups: Vec<nix::unistd::Gid> = u
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        for (resource, soft, hard) in spec.rlimits {
            nix::sys::resource::setrlimit(*resource, *soft, *hard)
                .map_err(|e| anyhow!("--ulimit {resource:?}={soft}:{hard}: {e}"))?;
        }
        if let Err(e) = nix::unistd::setgroups(&groups) {
            // With only one id mapped, setgroups is denied: the step keeps no groups.
            if !(e == nix::errno::Errno::EPERM && u.groups.iter().all(|g| *g == u.gid)) {
                return Err(anyhow!("setgroups: {e}"));
            }
        }
        let chroot = spec.isolation == Isolation::Chroot;
        restrict_capabilities(chroot)?;
        let gid = nix::unistd::Gid::from_raw(u.gid);
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| anyhow!("setgid {}: {e}", u.gid))?;
        let uid = nix::unistd::Uid::from_raw(u.uid);
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| anyhow!("setuid {}: {e}", u.uid))?;
        super::caps::finish_for_user(u.uid, chroot)?;
        nix::sys::prctl::set_no_new_privs().context("cannot set no_new_privs")?;
        if let Some(f) = spec.seccomp {
            f.load()?;
        }
        nix::unistd::chdir(p.cwd.as_c_str())
            .map_err(|e| anyhow!("cannot enter the working directory {}: {e}", spec.cwd))?;
        if let Some(t) = spec.start_after {
            crate::coarse_clock::wait_past(t);
        }
        let e = nix::unistd::execve(&p.argv0, &p.argv, &p.env).unwrap_err();
        Err(anyhow!("exec {}: {e}", p.argv0.to_string_lossy()))
    })();
    match r {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Makes every descriptor but 0–2 go away at exec (rbuild's own, and whatever its caller
/// left open): a step must not reach host files through an inherited descriptor.
/// Closes every descriptor above 2 but `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .map(|&fd| fd as u32)
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep.into_iter().chain([u32::MAX]) {
        if fd > from {
            // SAFETY: close_range on descriptor numbers this process does not use; the
            // kept ones are outside every range.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = fd.saturating_add(1);
    }
}

fn close_inherited_fds() {
    // close_range(3, ~0, CLOSE_RANGE_CLOEXEC): every descriptor above 2 closes at exec.
    // SAFETY: a plain syscall with constant arguments.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32) } == 0 {
        return;
    }
    let keep: Vec<RawFd> = (0..3).collect();
    if let Ok(dir) = fs::read_dir("/proc/self/fd") {
        let fds: Vec<RawFd> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for fd in fds {
            if keep.contains(&fd) {
                continue;
            }
            // SAFETY: F_GETFD/F_SETFD on a descriptor number; harmless if it is gone.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                    libc::close(fd);
                }
            }
        }
    }
}

/// Restores default signal dispositions and an empty mask: the Rust runtime ignores
/// SIGPIPE, and an ignored signal stays ignored across exec (pipelines like `yes | head`
/// would never end).
fn reset_signals() {
    // Every signal up to SIGRTMAX, real-time ones too (a caller may pass them in ignored;
    // glibc's wrappers and nix's Signal refuse 32 and 33, so the raw syscall is used). An
    // all-zero kernel sigaction is SIG_DFL with no flags and an empty mask; 32 zero bytes
    // cover the kernel's struct on every target (20 bytes on 32-bit ones, 32 on 64-bit).
    let dfl = [0u64; 4];
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: `dfl` is a valid, large enough, zeroed sigaction; no old action is
            // asked for; 8 is the size of the kernel's signal mask.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null::<u64>(),
                    8usize,
                );
            }
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

fn report(err: &OwnedFd, msg: &str) {
    let _ = nix::unistd::write(err, msg.as_bytes());
}

/// Paths the step's root must have as mount points: `(path, is_dir)`.
pub fn mount_points(etc_files: &[(String, String)]) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = ["proc", "dev", "sys"]
        .iter()
        .map(|d| (d.to_string(), true))
        .collect();
    v.extend(etc_files.iter().map(|(rel, _)| (rel.clone(), false)));
    v
}

/// The namespaces every step gets (plus a network namespace for `--network=none`).
pub const STEP_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS);

/// True if this process can create the namespaces a step needs (tried in a child).
pub fn namespaces_work() -> bool {
    can_unshare(STEP_NAMESPACES)
}

/// True if a child of this process can unshare `flags`.
pub fn can_unshare(flags: CloneFlags) -> bool {
    // SAFETY: single-threaded; the child only calls unshare and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = i32::from(unshare(flags).is_err());
            // SAFETY: leave without destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => wait_for(child) == 0,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_decode_like_a_shell() {
        assert_eq!(decode(0), Outcome::Exited(0));
        assert_eq!(decode(1), Outcome::Exited(1));
        assert_eq!(decode(128), Outcome::Exited(128));
        assert_eq!(decode(137), Outcome::Signaled(9));
        assert_eq!(decode(128 + 64), Outcome::Signaled(64));
        assert_eq!(decode(128 + 65), Outcome::Exited(193));
    }

    #[test]
    fn mount_points_cover_the_sandbox_and_etc_files() {
        let points = mount_points(&[("etc/hosts".into(), "x".into())]);
        assert_eq!(
            points,
            vec![
                ("proc".to_string(), true),
                ("dev".to_string(), true),
                ("sys".to_string(), true),
                ("etc/hosts".to_string(), false)
            ]
        );
    }

    #[test]
    fn open_beneath_makes_what_is_missing_and_refuses_symlinks() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        let (_, name, _) = open_beneath(t.path(), "etc/hosts", false).unwrap();
        assert_eq!(name, "hosts");
        assert!(
            t.path().join("etc/hosts").is_file(),
            "a missing file is made"
        );
        open_beneath(t.path(), "proc", true).unwrap();
        assert!(
            t.path().join("proc").is_dir(),
            "a missing directory is made"
        );
        std::os::unix::fs::symlink("/etc", t.path().join("link")).unwrap();
        let e = open_beneath(t.path(), "link/passwd", false).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let e = open_beneath(t.path(), "nothere/x", false).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(
            open_beneath(t.path(), "/", true).is_err(),
            "never over the root"
        );
    }
}
