//! Capabilities of RUN steps: Docker's default set, nothing more.

use std::collections::HashSet;
use std::str::FromStr;

use anyhow::{anyhow, Result};
use caps::{CapSet, Capability};

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// The capabilities a step keeps: Docker's default set. Under the chroot isolation
/// without CAP_SYS_CHROOT (a second chroot is how a process gets out of the first) and
/// CAP_MKNOD (there is no nodev mount there to disarm a device node).
fn step_set(chroot: bool) -> Result<HashSet<Capability>> {
    DEFAULT_CAPS
        .iter()
        .filter(|c| !(chroot && matches!(**c, "CAP_SYS_CHROOT" | "CAP_MKNOD")))
        .map(|c| Capability::from_str(c).map_err(|e| anyhow!("{c}: {e}")))
        .collect()
}

/// Before the user change: cuts the bounding set to the step's set (see [`step_set`])
/// and clears the ambient set, so no later exec can regain anything else.
pub fn restrict_capabilities(chroot: bool) -> Result<()> {
    let keep = step_set(chroot)?;
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| anyhow!("cannot drop {cap} from the bounding set: {e}"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).ok();
    Ok(())
}

/// After the user change: root keeps exactly the step's set; other users keep none
/// (the kernel already cleared them on setuid; the inheritable set is cleared too).
pub fn finish_for_user(uid: u32, chroot: bool) -> Result<()> {
    if uid == 0 {
        let keep = step_set(chroot)?;
        for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
            caps::set(None, set, &keep).map_err(|e| anyhow!("cannot set capabilities: {e}"))?;
        }
    } else {
        caps::clear(None, CapSet::Inheritable).ok();
    }
    Ok(())
}
