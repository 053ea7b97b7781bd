//! Cancellation: SIGINT and SIGTERM set a flag that long operations check, so a build
//! stops promptly and still cleans up (kills the running step, unmounts, removes its
//! temporary directories).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// The cancellation flag, as something to pass around.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cancel;

impl Cancel {
    /// Installs the SIGINT/SIGTERM handlers (once, at the start of a build).
    pub fn install() -> Cancel {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only stores to an atomic.
            unsafe {
                libc::signal(
                    sig,
                    on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
        }
        Cancel
    }

    /// True once a signal asked the build to stop.
    pub fn requested(&self) -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    /// Fails with "cancelled" once a signal asked the build to stop.
    pub fn check(&self) -> Result<()> {
        if self.requested() {
            bail!("cancelled");
        }
        Ok(())
    }
}
