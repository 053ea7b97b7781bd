//! Entering a user namespace, once, before any thread starts.
//!
//! rbuild forks: the child unshares a user namespace and waits; the parent (still the
//! caller outside) writes the child's id maps — with `newuidmap`/`newgidmap` from the
//! caller's `/etc/subuid` and `/etc/subgid` ranges (root inside = the caller, ids 1–65536
//! inside = the sub-ids), or, without helpers or ranges, the caller's own id only — and
//! then only waits, forwarding signals, and exits with the child's status. The child goes
//! on with the build as root of the namespace.

use std::ffi::OsString;
use std::fs;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getgid, getuid, ForkResult, Gid, Pid, Uid};

/// A range of subordinate ids (`/etc/subuid` line `user:start:count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    /// First id outside.
    pub start: u32,
    /// Number of ids.
    pub count: u32,
}

/// How ids are mapped for the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// rbuild runs as real root: no user namespace is needed.
    HostRoot,
    /// Root inside is the caller; ids 1.. inside come from the sub-id ranges.
    Full {
        /// Sub-uid range used.
        uids: SubIdRange,
        /// Sub-gid range used.
        gids: SubIdRange,
    },
    /// Only the caller's id is mapped (to root): files can belong to root only, and a
    /// RUN-time chown to another id fails.
    SingleId {
        /// Why the full mapping could not be used.
        reason: String,
    },
}

/// What was found about the machine's user namespace support (`rbuild info`).
#[derive(Debug, Clone)]
pub struct UsernsFacts {
    /// The caller's uid and user name.
    pub uid: u32,
    /// The caller's user name, if known.
    pub user: Option<String>,
    /// Sub-uid range of the caller, if any.
    pub subuid: Option<SubIdRange>,
    /// Sub-gid range of the caller, if any.
    pub subgid: Option<SubIdRange>,
    /// Paths of newuidmap / newgidmap, if installed.
    pub helpers: Option<(String, String)>,
    /// `/proc/sys/user/max_user_namespaces`.
    pub max_user_namespaces: Option<u64>,
    /// Problems that stop unprivileged user namespaces, each with its fix.
    pub blockers: Vec<String>,
}

/// Reads what the machine offers.
pub fn facts() -> UsernsFacts {
    let uid = getuid().as_raw();
    let user = user_name(uid);
    let ranges = |file: &str| {
        fs::read_to_string(file)
            .ok()
            .and_then(|t| find_range(&t, user.as_deref(), uid))
    };
    let (subuid, subgid) = (ranges("/etc/subuid"), ranges("/etc/subgid"));
    let which = |name: &str| {
        ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
            .iter()
            .map(|d| format!("{d}/{name}"))
            .find(|p| fs::metadata(p).is_ok())
    };
    let helpers = match (which("newuidmap"), which("newgidmap")) {
        (Some(u), Some(g)) => Some((u, g)),
        _ => None,
    };
    let read_num = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let max = read_num("/proc/sys/user/max_user_namespaces");
    let mut blockers = Vec::new();
    if max == Some(0) {
        blockers.push(
            "user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0): `sysctl -w user.max_user_namespaces=15000`, or use --isolation=chroot as root".into(),
        );
    }
    if read_num("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        blockers.push(
            "unprivileged user namespaces are disabled: `sysctl -w kernel.unprivileged_userns_clone=1`".into(),
        );
    }
    if read_num("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        blockers.push(
            "AppArmor restricts unprivileged user namespaces: `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or an AppArmor profile allowing `userns` for rbuild".into(),
        );
    }
    UsernsFacts {
        uid,
        user,
        subuid,
        subgid,
        helpers,
        max_user_namespaces: max,
        blockers,
    }
}

/// The first range for the user (by name or numeric id) in a subuid/subgid file.
pub fn find_range(text: &str, user: Option<&str>, uid: u32) -> Option<SubIdRange> {
    let uid = uid.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if Some(who) != user && who != uid {
                return None;
            }
            Some(SubIdRange {
                start: start.parse().ok()?,
                count: count.parse().ok()?,
            })
        })
        .find(|r| r.count > 0)
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
}

/// How to fix a failed unshare, for error messages.
pub fn hints(f: &UsernsFacts) -> String {
    let mut h: Vec<String> = f.blockers.clone();
    h.push("in Kubernetes, run the pod with `hostUsers: false` or a seccomp/AppArmor profile that allows user namespaces; as root, --isolation=chroot needs none".into());
    h.join("; ")
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Enters the user namespace (or does nothing as real root). Must be called while the
/// process has a single thread. Returns in the process that goes on with the build; the
/// supervising parent never returns.
pub fn enter() -> Result<Mapping> {
    if getuid().is_root() {
        return Ok(Mapping::HostRoot);
    }
    let f = facts();
    let (to_child_r, to_child_w) = nix::unistd::pipe()?;
    let (to_parent_r, to_parent_w) = nix::unistd::pipe()?;
    let (uid, gid) = (getuid(), getgid());
    // SAFETY: single-threaded at this point (checked by the caller's contract); the child
    // only continues the program.
    match unsafe { fork() }.context("cannot fork")? {
        ForkResult::Child => {
            drop(to_child_w);
            drop(to_parent_r);
            // Die with the supervisor rather than linger.
            // SAFETY: plain prctl call.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            }
            let unshared = unshare(CloneFlags::CLONE_NEWUSER);
            write_byte(&to_parent_w, u8::from(unshared.is_ok()))?;
            if let Err(e) = unshared {
                bail!("cannot create a user namespace ({e}): {}", hints(&f));
            }
            let status = read_byte(&to_child_r)?;
            let mapping = match status {
                1 => Mapping::Full {
                    uids: f.subuid.ok_or_else(|| anyhow!("sub-uid range vanished"))?,
                    gids: f.subgid.ok_or_else(|| anyhow!("sub-gid range vanished"))?,
                },
                2 => Mapping::SingleId {
                    reason: single_reason(&f),
                },
                _ => bail!("cannot map ids into the user namespace: {}", hints(&f)),
            };
            nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                .context("cannot become root in the user namespace")?;
            nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                .context("cannot become root in the user namespace")?;
            if matches!(mapping, Mapping::Full { .. }) {
                nix::unistd::setgroups(&[]).ok();
            }
            Ok(mapping)
        }
        ForkResult::Parent { child } => {
            drop(to_child_r);
            drop(to_parent_w);
            CHILD.store(child.as_raw(), Ordering::SeqCst);
            for sig in [
                Signal::SIGINT,
                Signal::SIGTERM,
                Signal::SIGHUP,
                Signal::SIGQUIT,
            ] {
                // SAFETY: the handler only calls kill.
                unsafe {
                    let _ = signal::signal(sig, SigHandler::Handler(forward));
                }
            }
            let status = match read_byte(&to_parent_r) {
                Ok(1) => match write_maps(child, uid, gid, &f) {
                    Ok(full) => {
                        if full {
                            1
                        } else {
                            2
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        0
                    }
                },
                _ => 0,
            };
            let _ = write_byte(&to_child_w, status);
            drop(to_child_w);
            std::process::exit(wait_child(child));
        }
    }
}

fn single_reason(f: &UsernsFacts) -> String {
    if f.helpers.is_none() {
        "newuidmap/newgidmap are not installed (install Debian's `uidmap` package)".into()
    } else if f.subuid.is_none() || f.subgid.is_none() {
        let who = f.user.clone().unwrap_or_else(|| f.uid.to_string());
        format!(
            "no /etc/subuid or /etc/subgid range for {who} (as root: `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {who}`)"
        )
    } else {
        "newuidmap/newgidmap refused the ranges".into()
    }
}

/// Writes the child's maps; true for the full sub-id mapping, false for the single id.
fn write_maps(child: Pid, uid: Uid, gid: Gid, f: &UsernsFacts) -> Result<bool> {
    if let (Some((newuidmap, newgidmap)), Some(su), Some(sg)) = (&f.helpers, f.subuid, f.subgid) {
        let pid = child.as_raw().to_string();
        let run = |tool: &str, own: u32, r: SubIdRange| -> bool {
            let args: Vec<OsString> = [
                pid.clone(),
                "0".into(),
                own.to_string(),
                "1".into(),
                "1".into(),
                r.start.to_string(),
                r.count.min(65536).to_string(),
            ]
            .into_iter()
            .map(OsString::from)
            .collect();
            Command::new(tool)
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if run(newuidmap, uid.as_raw(), su) && run(newgidmap, gid.as_raw(), sg) {
            return Ok(true);
        }
    }
    let proc_dir = format!("/proc/{}", child.as_raw());
    fs::write(
        format!("{proc_dir}/uid_map"),
        format!("0 {} 1\n", uid.as_raw()),
    )
    .context("cannot write the user namespace's uid map")?;
    fs::write(format!("{proc_dir}/setgroups"), "deny\n").ok();
    fs::write(
        format!("{proc_dir}/gid_map"),
        format!("0 {} 1\n", gid.as_raw()),
    )
    .context("cannot write the user namespace's gid map")?;
    Ok(false)
}

fn wait_child(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

fn write_byte(fd: &OwnedFd, b: u8) -> Result<()> {
    nix::unistd::write(fd, &[b]).context("pipe to the namespace helper")?;
    Ok(())
}

fn read_byte(fd: &OwnedFd) -> Result<u8> {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(fd, &mut b) {
            Ok(1) => return Ok(b[0]),
            Ok(_) => bail!("the namespace helper went away"),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ranges_by_name_or_id() {
        let t = "# comment\nalice:100000:65536\n1001:200000:1000\nbob:300000:0\nbob:400000:10\n";
        assert_eq!(
            find_range(t, Some("alice"), 5),
            Some(SubIdRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            find_range(t, Some("carol"), 1001),
            Some(SubIdRange {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(
            find_range(t, Some("bob"), 7),
            Some(SubIdRange {
                start: 400000,
                count: 10
            })
        );
        assert_eq!(find_range(t, Some("dave"), 9), None);
    }
}
