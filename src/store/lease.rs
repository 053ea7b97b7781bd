//! Process leases: each rbuild process that opens the store holds an exclusive `flock` on
//! its own file under `<root>/leases/` for as long as it lives. Records it uses are leased
//! in the index under that id, and its temporary files live under `<root>/tmp/<id>/`.
//! A lease whose lock can be taken belongs to a dead process (killed, crashed): its rows
//! and its temporary directory are collected. flock works across pid namespaces (CI
//! runners sharing a volume), where pids alone would not tell.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// This process's lease: held until dropped (or the process dies).
#[derive(Debug)]
pub struct Lease {
    id: String,
    _lock: Flock<File>,
}

impl Lease {
    /// Takes a new lease under `root` (the store's root).
    pub fn take(root: &Path) -> Result<Lease> {
        let dir = root.join("leases");
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        let id = new_id();
        // Locked under a name no collector looks at, then renamed into view.
        let staging = dir.join(format!(".{id}.new"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        // Who holds it, for people looking at the directory.
        let _ = writeln!(file, "{}", std::process::id());
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}", staging.display()))?;
        let path = lock_path(root, &id);
        fs::rename(&staging, &path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Lease { id, _lock: lock })
    }

    /// The lease's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A lease id: unique across processes and machines sharing the directory.
fn new_id() -> String {
    use sha2::{Digest as _, Sha256};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(nanos.to_le_bytes());
    if let Ok(host) = nix::unistd::gethostname() {
        h.update(host.as_encoded_bytes());
    }
    let stack = 0u8;
    h.update((&stack as *const u8 as usize).to_le_bytes());
    hex::encode(&h.finalize()[..12])
}

/// The ids of the leases under `root` whose holders are gone (their lock can be taken).
/// Their lock files are removed as they are found; the caller removes the rest.
pub fn dead_leases(root: &Path, own: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root.join("leases")) else {
        return Vec::new();
    };
    let mut dead = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".lock") else {
            continue;
        };
        if id == own {
            continue;
        }
        let Ok(file) = File::open(e.path()) else {
            continue;
        };
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Removed while locked, so no other collector takes it for live.
            let _ = fs::remove_file(e.path());
            drop(lock);
            dead.push(id.to_string());
        }
    }
    dead
}

/// True when the lease `id` is still held by a live process. Only a missing lock file
/// or a lock that can be taken means dead: a file this process cannot open counts as
/// live (a lease is never reclaimed on a doubt).
pub fn is_live(root: &Path, id: &str) -> bool {
    let path = lock_path(root, id);
    match File::open(&path) {
        Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

fn lock_path(root: &Path, id: &str) -> PathBuf {
    root.join("leases").join(format!("{id}.lock"))
}

/// Removes this process's lock file (its rows are removed by the store).
pub fn release(root: &Path, lease: &Lease) {
    let _ = fs::remove_file(lock_path(root, &lease.id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lease_is_live_and_a_dropped_one_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease::take(dir.path()).unwrap();
        let b = Lease::take(dir.path()).unwrap();
        assert_ne!(a.id(), b.id());
        assert!(is_live(dir.path(), a.id()));
        assert!(dead_leases(dir.path(), b.id()).is_empty());
        let a_id = a.id().to_string();
        drop(a);
        assert!(!is_live(dir.path(), &a_id));
        assert_eq!(dead_leases(dir.path(), b.id()), vec![a_id]);
        assert!(is_live(dir.path(), b.id()));
    }
}
