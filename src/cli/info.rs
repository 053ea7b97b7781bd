//! `rbuild info`: what rbuild found on this machine, what it will use, and why; for each
//! missing piece, the fix.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use nix::sched::CloneFlags;

use super::cache::CacheDirArg;
use super::{default_cache_dir, EXIT_BUILD_FAILED, EXIT_OK};
use crate::sandbox::caps::DEFAULT_CAPS;
use crate::sandbox::run::{can_unshare, STEP_NAMESPACES};
use crate::sandbox::seccomp::{kernel_version, Filter};
use crate::sandbox::userns::{facts, probe, Mapping, SubIdRange};
use crate::snapshot::clone::can_reflink;

/// `rbuild info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    cache: CacheDirArg,
}

/// Runs `rbuild info` and returns the exit code.
pub fn main(args: InfoArgs) -> i32 {
    match run(args.cache.cache_dir) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            super::print_error(&e);
            EXIT_BUILD_FAILED
        }
    }
}

/// Prints the report; `cache_dir` is the store that builds would use.
fn run(cache_dir: Option<PathBuf>) -> Result<()> {
    let f = facts();
    let root = nix::unistd::getuid().is_root();
    let who = f.user.clone().unwrap_or_else(|| "?".into());
    println!("rbuild {}", env!("CARGO_PKG_VERSION"));
    let (major, minor) = kernel_version();
    println!("kernel:            {major}.{minor}");
    println!("user:              {who} (uid {})", f.uid);
    let range = |r: Option<SubIdRange>| match r {
        Some(r) => format!("{}-{} ({} ids)", r.start, r.start + r.count - 1, r.count),
        None => "none".into(),
    };
    println!("sub-uids:          {}", range(f.subuid));
    println!("sub-gids:          {}", range(f.subgid));
    println!(
        "newuidmap/gidmap:  {}",
        f.helpers.as_ref().map_or(
            "not installed (install Debian's `uidmap` package)".to_string(),
            |(u, g)| format!("{u}, {g}")
        )
    );
    let userns = can_unshare(CloneFlags::CLONE_NEWUSER);
    println!(
        "user namespaces:   {}",
        match (userns, f.max_user_namespaces) {
            (true, Some(m)) => format!("available (max {m})"),
            (true, None) => "available".into(),
            (false, _) => "NOT available".into(),
        }
    );
    for b in &f.blockers {
        println!("  fix: {b}");
    }
    let mapping = if root {
        match crate::sandbox::userns::root_mapping() {
            Mapping::SingleId { reason } => format!(
                "single id only: files can belong to root only and RUN-time chown to other ids fails, because {reason}; map more ids (unshare --map-users/--map-groups, or run rbuild as a user with sub-id ranges)"
            ),
            _ => "none needed: rbuild runs as root (every other isolation is kept)".to_string(),
        }
    } else if !userns {
        "impossible: no user namespace can be created (see the fixes above; in Kubernetes use `hostUsers: false`)".to_string()
    } else {
        // Tried for real: the helpers may be there and still refuse (not setuid, a
        // range that is not the caller's).
        match probe() {
            Ok(Mapping::Full { uids, .. }) => format!(
                "full (tried): root inside = uid {}, ids 1..{} inside = the sub-id ranges",
                f.uid,
                uids.count.min(65536)
            ),
            Ok(Mapping::SingleId { reason }) => format!(
                "single id only (tried): files can belong to root only and RUN-time chown to other ids fails, because {reason}"
            ),
            Ok(Mapping::HostRoot) => "none needed".to_string(),
            Err(e) => format!("impossible: {e:#}"),
        }
    };
    println!("id mapping:        {mapping}");
    let isolation = if root {
        if can_unshare(STEP_NAMESPACES) {
            "namespaces (mount, pid, ipc, uts; net for --network=none), pivot_root"
        } else {
            "chroot: namespaces cannot be made here (e.g. an unprivileged container); see README"
        }
    } else if userns {
        "namespaces inside the user namespace (mount, pid, ipc, uts; net for --network=none), pivot_root"
    } else {
        "none possible: RUN steps cannot run"
    };
    println!("isolation:         {isolation}");
    let caps = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    match Filter::default_profile(&caps, kernel_version()) {
        Ok(filter) => println!(
            "seccomp:           built-in Docker default profile ({} BPF instructions for {})",
            filter.len(),
            std::env::consts::ARCH
        ),
        Err(e) => println!("seccomp:           unavailable: {e:#}"),
    }
    println!(
        "capabilities:      Docker's default set ({})",
        DEFAULT_CAPS.len()
    );
    let cache_dir = cache_dir.unwrap_or_else(default_cache_dir);
    let chosen = std::env::var("RBUILD_SNAPSHOTTER").unwrap_or_else(|_| "auto".into());
    let reflink = match can_reflink(&cache_dir) {
        Ok(true) => "reflinked: the cache's filesystem shares blocks until written",
        Ok(false) => "copied: the cache's filesystem cannot reflink",
        Err(_) => "reflinked if the cache's filesystem can (it does not exist yet)",
    };
    println!(
        "snapshotter:       {chosen} (--snapshotter, env RBUILD_SNAPSHOTTER); auto: overlay where a test mount in the cache directory works at the start of a build (namespaces isolation, userxattr, two lowers, a whiteout, an opaque directory; not on overlayfs), else fuse-overlayfs where the same test works with it, else walk; overlay: each RUN on a kernel overlay of the cache's unpacked layers, the layer read from the upper directory; fuse-overlayfs: the same, served by the fuse-overlayfs program ({fuse}); walk: each RUN changes the stage's private root in place, the layer is the diff by inode, mode, owner, size and ctime; copy: each RUN works on a private copy, {reflink}",
        fuse = match crate::snapshot::fuse_overlay::program() {
            Ok(p) => format!("found at {}", p.display()),
            Err(_) => "not on PATH".into(),
        }
    );
    for line in probe_lines(crate::snapshot::overlay::read_probe(&cache_dir)) {
        println!("{line}");
    }
    println!("cache dir:         {}", cache_dir.display());
    Ok(())
}

/// What the last probe of the cache directory found, a line per driver tried.
fn probe_lines(record: Option<crate::snapshot::overlay::ProbeRecord>) -> Vec<String> {
    let Some(p) = record else {
        return vec![
            "overlay probe:     not run yet in this cache directory (the first build with a RUN step probes it)".into(),
        ];
    };
    let when = crate::solver::rfc3339(p.checked);
    p.drivers
        .iter()
        .map(|d| {
            let label = format!("{} probe: ", d.driver);
            if d.usable {
                format!(
                    "{label:<19}usable in this cache directory (kernel {}, {when})",
                    p.kernel
                )
            } else {
                format!(
                    "{label:<19}not usable in this cache directory (kernel {}, {when}): {}",
                    p.kernel, d.reason
                )
            }
        })
        .collect()
}
