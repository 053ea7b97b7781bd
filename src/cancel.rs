//! Cancellation: SIGINT and SIGTERM set a flag that long operations check, so a build
//! stops promptly and still cleans up (kills the running step, unmounts, removes its
//! temporary directories).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::{bail, Result};

/// The signal that asked the build to stop (0: none yet).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// A stage failed: the others stop too.
static ABORTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    REQUESTED.store(sig, Ordering::SeqCst);
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

    /// True once a signal asked the build to stop, or a stage failed.
    pub fn requested(&self) -> bool {
        self.signal().is_some() || ABORTED.load(Ordering::SeqCst)
    }

    /// Stops the rest of the build: a stage failed, so the others running beside it end
    /// (their steps are killed as on a signal; the exit code stays the failure's).
    pub fn abort(&self) {
        ABORTED.store(true, Ordering::SeqCst);
    }

    /// The signal that asked the build to stop, if one did.
    pub fn signal(&self) -> Option<i32> {
        match REQUESTED.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }

    /// Fails with "cancelled" once a signal asked the build to stop.
    pub fn check(&self) -> Result<()> {
        if self.requested() {
            bail!("cancelled");
        }
        Ok(())
    }
}

/// A reader that fails with "cancelled" once a signal asked the build to stop, so that
/// copying one large file ends promptly too.
pub struct Cancellable<R>(pub R);

impl<R: std::io::Read> std::io::Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Cancel.requested() {
            return Err(std::io::Error::other("cancelled"));
        }
        self.0.read(buf)
    }
}
