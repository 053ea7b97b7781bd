//! fuse-overlayfs, the overlay served from user space where the kernel's own cannot be
//! mounted: an external program (Debian's `fuse-overlayfs`), found on PATH and run in the
//! foreground as a child of the build.
//!
//! The child is killed when the thread that started it ends (`PR_SET_PDEATHSIG`), so a
//! build killed with SIGKILL leaves no daemon behind holding its mount namespace and upper
//! directory; it has its own process group, so a terminal's Ctrl-C reaches the build, which
//! unmounts in order, not the daemon. Whiteouts it makes are 0/0 devices where it can make
//! them and `.wh.NAME` files where it cannot, opaque directories carry
//! `user.fuseoverlayfs.opaque` and a `.wh..wh..opq` file: both are read by
//! [`super::overlay::diff_upper`], and both are understood in lower directories.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The program's name, looked up on PATH.
pub const PROGRAM: &str = "fuse-overlayfs";

/// How long a mount may take to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to end after its mount is gone.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where fuse-overlayfs is on PATH, or what to install.
pub fn program() -> Result<PathBuf> {
    crate::which::on_path(PROGRAM).with_context(|| {
        format!("{PROGRAM} is not on PATH: install it (Debian and Ubuntu: apt-get install fuse-overlayfs; Fedora: dnf install fuse-overlayfs)")
    })
}

/// Whether this process may open `/dev/fuse`, which every FUSE mount needs.
pub fn device_usable() -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .context("cannot open /dev/fuse: give the build access to it (as root: chmod 666 /dev/fuse; in a container: --device /dev/fuse)")
}

/// A running fuse-overlayfs serving one mount.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
}

/// Starts fuse-overlayfs on `target` with mount `options` whose directory names are
/// relative to `links`, and waits until the mount is there.
pub fn mount(options: &str, target: &Path, links: &Path) -> Result<Daemon> {
    let program = program()?;
    let log_path = links.join("fuse-overlayfs.log");
    let log = File::create(&log_path).context("cannot create the fuse-overlayfs log")?;
    let mut cmd = Command::new(program);
    cmd.arg("-f")
        .arg("-o")
        .arg(options)
        .arg(target)
        .current_dir(links)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and calls prctl and
    // getppid only, both async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before the line above: then nothing would kill us.
            if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
                return Err(std::io::Error::other("the build ended"));
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {PROGRAM}"))?;
    let mut daemon = Daemon { child };
    let started = Instant::now();
    loop {
        crate::cancel::Cancel.check()?;
        if is_fuse(target) {
            return Ok(daemon);
        }
        if let Some(status) = daemon.child.try_wait()? {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "{PROGRAM} ended ({status}) before mounting: {}",
                said.trim()
            );
        }
        if started.elapsed() > MOUNT_TIMEOUT {
            bail!(
                "{PROGRAM} did not mount {} within {}s",
                target.display(),
                MOUNT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn is_fuse(target: &Path) -> bool {
    nix::sys::statfs::statfs(target)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC)
}

impl Drop for Daemon {
    /// Called once its mount is gone: the daemon ends by itself then; one that does not
    /// is killed. Either way it is reaped.
    fn drop(&mut self) {
        let started = Instant::now();
        while started.elapsed() < EXIT_TIMEOUT {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
