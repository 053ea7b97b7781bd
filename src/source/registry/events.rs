//! Progress of a transfer (pull or push), as reported to the caller's callback.

use crate::store::Digest;

/// One step of a pull or a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// A pull knows the image manifest for its platform.
    Resolved {
        /// Its digest.
        manifest: Digest,
    },
    /// Nothing to move: a pulled blob was in the store already, or a pushed blob was in the
    /// registry already (or was mounted from another repository there).
    Present {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes of a blob moved (about every MiB on a pull, after each chunk on a push).
    Progress {
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        done: u64,
        /// Its size.
        total: u64,
    },
    /// A blob was moved: downloaded, verified and stored, or uploaded.
    Moved {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
}

/// The progress callback of a pull or a push.
pub type TransferProgress<'a> = Option<&'a (dyn Fn(&TransferEvent) + Sync)>;

/// Hands `event` to the callback, if there is one.
pub(super) fn emit(progress: TransferProgress, event: TransferEvent) {
    if let Some(f) = progress {
        f(&event);
    }
}
