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

/// The first of `ids` that no line of an id map (`/proc/PID/uid_map` text: `inside
/// outside count` per line) covers.
pub fn first_unmapped(map: &str, ids: &[u32]) -> Option<u32> {
    let ranges: Vec<(u64, u64)> = map
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|n| n.parse::<u64>().ok());
            let (inside, _outside, count) = (f.next()??, f.next()??, f.next()??);
            Some((inside, inside + count))
        })
        .collect();
    ids.iter().copied().find(|&id| {
        !ranges
            .iter()
            .any(|&(lo, hi)| (lo..hi).contains(&u64::from(id)))
    })
}

/// Checks that this process's user namespace maps `uid`, `gid` and `groups` (a RUN step
/// must switch to them); the error names the first that is not and the way out.
pub fn check_mapped(uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
    let read = |f: &str| fs::read_to_string(format!("/proc/self/{f}")).unwrap_or_default();
    let (uid_map, gid_map) = (read("uid_map"), read("gid_map"));
    let hint = |map: &str| {
        if first_unmapped(map, &[1]).is_some() {
            "only your own id is mapped into rbuild's user namespace (as root inside); `rbuild info` says why and how to map a full sub-id range".to_string()
        } else {
            format!(
                "rbuild's user namespace maps only these ids (inside, outside, count): {}",
                map.split_whitespace()
                    .collect::<Vec<_>>()
                    .chunks(3)
                    .map(|c| c.join(" "))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    if let Some(u) = first_unmapped(&uid_map, &[uid]) {
        bail!("uid {u} is not mapped: {}", hint(&uid_map));
    }
    let mut all = vec![gid];
    all.extend_from_slice(groups);
    if let Some(g) = first_unmapped(&gid_map, &all) {
        bail!("gid {g} is not mapped: {}", hint(&gid_map));
    }
    Ok(())
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

/// How many user ids the user namespace this process is in maps (all 2^32 - 1 in the
/// initial one), from `/proc/self/uid_map`.
pub fn mapped_ids() -> u64 {
    std::fs::read_to_string("/proc/self/uid_map")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

/// What running as root gives: real root, or root of a user namespace that maps one id
/// only (`unshare -Ur`), where files can belong to root only.
pub fn root_mapping() -> Mapping {
    match mapped_ids() {
        n if n >= 2 => Mapping::HostRoot,
        _ => Mapping::SingleId {
            reason: format!(
                "rbuild runs as root of a user namespace that maps one id (uid_map: {})",
                std::fs::read_to_string("/proc/self/uid_map")
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        },
    }
}

/// One process's ends of the two pipes between the halves of a fork.
struct Pipes {
    /// Writes to the other process.
    send: OwnedFd,
    /// Reads from the other process.
    recv: OwnedFd,
}

/// One side of a fork made to enter a user namespace.
enum Side {
    /// The process that unshares.
    Child(Pipes),
    /// The process that writes the child's id maps.
    Parent(Pid, Pipes),
}

/// `None` as real root (no user namespace is needed); otherwise what the machine offers,
/// and a fork with a pipe each way. Callers fork while single-threaded, or have the child
/// only unshare, use the pipes and exit.
fn fork_unless_root() -> Result<Option<(UsernsFacts, Side)>> {
    if getuid().is_root() {
        return Ok(None);
    }
    let f = facts();
    let (from_parent, to_child) = nix::unistd::pipe()?;
    let (from_child, to_parent) = nix::unistd::pipe()?;
    // SAFETY: see the contract above.
    let side = match unsafe { fork() }.context("cannot fork")? {
        ForkResult::Child => Side::Child(Pipes {
            send: to_parent,
            recv: from_parent,
        }),
        ForkResult::Parent { child } => Side::Parent(
            child,
            Pipes {
                send: to_child,
                recv: from_child,
            },
        ),
    };
    Ok(Some((f, side)))
}

/// Enters the user namespace (or does nothing as real root). Must be called while the
/// process has a single thread. Returns in the process that goes on with the build; the
/// supervising parent never returns.
pub fn enter() -> Result<Mapping> {
    let Some((f, side)) = fork_unless_root()? else {
        return Ok(root_mapping());
    };
    match side {
        Side::Child(pipes) => {
            // Die with the supervisor rather than linger.
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
            let mapping = unshare_and_wait(&f, pipes)?;
            nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                .context("cannot become root in the user namespace")?;
            nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                .context("cannot become root in the user namespace")?;
            if matches!(mapping, Mapping::Full { .. }) {
                nix::unistd::setgroups(&[]).ok();
            }
            Ok(mapping)
        }
        Side::Parent(child, pipes) => {
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
            // The child reports a failure itself.
            let _ = map_child(child, &f, pipes);
            std::process::exit(wait_child(child));
        }
    }
}

/// What `enter` would do, found out in a throwaway child (for `rbuild info`): the mapping
/// that newuidmap/newgidmap really accept, or why only one id can be mapped.
pub fn probe() -> Result<Mapping> {
    let Some((f, side)) = fork_unless_root()? else {
        return Ok(root_mapping());
    };
    match side {
        Side::Child(pipes) => {
            let code = i32::from(unshare_and_wait(&f, pipes).is_err());
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        Side::Parent(child, pipes) => {
            let mapped = map_child(child, &f, pipes);
            wait_child(child);
            mapped
        }
    }
}

/// The child's half of entering: unshares the user namespace, tells the parent, and waits
/// for the parent's word on the maps (a status byte, then for a single id the reason).
fn unshare_and_wait(f: &UsernsFacts, pipes: Pipes) -> Result<Mapping> {
    let unshared = unshare(CloneFlags::CLONE_NEWUSER);
    write_byte(&pipes.send, u8::from(unshared.is_ok()))?;
    if let Err(e) = unshared {
        bail!("cannot create a user namespace ({e}): {}", hints(f));
    }
    let word = read_to_end(&pipes.recv)?;
    match word.split_first() {
        Some((1, _)) => Ok(Mapping::Full {
            uids: f.subuid.ok_or_else(|| anyhow!("sub-uid range vanished"))?,
            gids: f.subgid.ok_or_else(|| anyhow!("sub-gid range vanished"))?,
        }),
        Some((2, reason)) => Ok(Mapping::SingleId {
            reason: String::from_utf8_lossy(reason).into_owned(),
        }),
        Some((_, why)) if !why.is_empty() => bail!(
            "cannot map ids into the user namespace: {}",
            String::from_utf8_lossy(why)
        ),
        _ => bail!("cannot map ids into the user namespace: {}", hints(f)),
    }
}

/// The parent's half of entering: maps the child's ids once it has unshared, and sends
/// the outcome (see [`unshare_and_wait`]); returns it too.
fn map_child(child: Pid, f: &UsernsFacts, pipes: Pipes) -> Result<Mapping> {
    let mapped = if read_byte(&pipes.recv).is_ok_and(|b| b == 1) {
        write_maps(child, f)
    } else {
        Err(anyhow!("cannot create a user namespace: {}", hints(f)))
    };
    let word = match &mapped {
        Ok(Mapping::SingleId { reason }) => [&[2u8][..], reason.as_bytes()].concat(),
        Ok(_) => vec![1],
        Err(e) => [&[0u8][..], format!("{e:#}").as_bytes()].concat(),
    };
    // The child reads to the end: closing the pipe ends the word.
    let _ = nix::unistd::write(&pipes.send, &word);
    mapped
}

/// Writes the child's maps: the full sub-id mapping when the helpers and ranges are there
/// and newuidmap/newgidmap accept them, else the caller's own id only, saying why.
fn write_maps(child: Pid, f: &UsernsFacts) -> Result<Mapping> {
    let (uid, gid) = (getuid(), getgid());
    let reason = match (&f.helpers, f.subuid, f.subgid) {
        (Some((newuidmap, newgidmap)), Some(su), Some(sg)) => {
            let refused = helper_map(newuidmap, child, uid.as_raw(), su)
                .and_then(|()| helper_map(newgidmap, child, gid.as_raw(), sg));
            match refused {
                Ok(()) => return Ok(Mapping::Full { uids: su, gids: sg }),
                Err(why) => why,
            }
        }
        (None, _, _) => {
            "newuidmap/newgidmap are not installed (install Debian's `uidmap` package)".into()
        }
        _ => {
            let who = f.user.clone().unwrap_or_else(|| f.uid.to_string());
            format!(
                "no /etc/subuid or /etc/subgid range for {who} (as root: `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {who}`)"
            )
        }
    };
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
    Ok(Mapping::SingleId { reason })
}

/// Runs newuidmap or newgidmap for `child`: 0 inside = `own`, 1.. inside = the range;
/// on failure, what the helper said.
fn helper_map(tool: &str, child: Pid, own: u32, r: SubIdRange) -> std::result::Result<(), String> {
    let args: Vec<OsString> = [
        child.as_raw().to_string(),
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
    match Command::new(tool).args(&args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ");
            Err(format!(
                "{tool} refused the sub-id range ({}): {said}",
                out.status
            ))
        }
        Err(e) => Err(format!("cannot run {tool}: {e}")),
    }
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

fn read_to_end(fd: &OwnedFd) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
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
    fn unmapped_ids() {
        let single = "         0       1001          1\n";
        assert_eq!(first_unmapped(single, &[0]), None);
        assert_eq!(first_unmapped(single, &[0, 1000]), Some(1000));
        let full = "0 1001 1\n1 100000 65536\n";
        assert_eq!(first_unmapped(full, &[0, 1000, 65536]), None);
        assert_eq!(first_unmapped(full, &[65537]), Some(65537));
        let host = "0 0 4294967295\n";
        assert_eq!(first_unmapped(host, &[4294967294]), None);
    }

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
