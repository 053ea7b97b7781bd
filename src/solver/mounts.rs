//! `RUN --mount`: each mount of a step turned into what the sandbox mounts — a directory
//! or file of the context, a stage or an image (bound read-only, or a throwaway copy when
//! writable), a cache directory kept in the store, a tmpfs, a secret file, an SSH agent
//! socket — with the mount points made in the step's root (removed after the step, so they
//! never reach a layer) and whatever must live as long as the step (locks, copies).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::rootfs::resolve_in_root;
use crate::cancel::Cancel;
use crate::context::{BuildContext, EntryKind, SourceMatch};
use crate::inroot::{FileKind, Root};
use crate::plan::mounts::{MountKind, Sharing};
use crate::plan::steps::RunMount;
use crate::sandbox::run::{MountSource, StepMount};
use crate::snapshot::clone::copy_tree;
use crate::snapshot::walk::MountPoints;
use crate::store::Store;

/// Where a secret given with `--secret` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file, read when a step mounts it.
    File(PathBuf),
    /// An environment variable of rbuild's, read when a step mounts it.
    Env(String),
}

/// What the build was given for mounts: secrets and SSH agent sockets, by id.
#[derive(Debug, Clone, Default)]
pub struct MountInputs {
    /// `--secret id=...`.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `--ssh id=SOCKET`.
    pub ssh: BTreeMap<String, PathBuf>,
}

/// What a mount reads from, found by the solver: the build context or a named context
/// directory (their `.dockerignore` applies), or the root of a stage or an image.
pub enum MountFrom<'a> {
    /// The build context.
    Context(&'a BuildContext),
    /// A named context directory (`--build-context NAME=DIR`).
    Named(BuildContext),
    /// A directory tree read as it is.
    Root(PathBuf),
}

impl MountFrom<'_> {
    /// The context (build or named) this reads from, if it is one.
    fn context(&self) -> Option<&BuildContext> {
        match self {
            MountFrom::Context(c) => Some(c),
            MountFrom::Named(c) => Some(c),
            MountFrom::Root(_) => None,
        }
    }
}

/// A step's mounts, ready for the sandbox.
#[derive(Default)]
pub struct PreparedMounts {
    /// What the sandbox mounts, parents before children.
    pub mounts: Vec<StepMount>,
    /// Variables the step gets (`SSH_AUTH_SOCK`, secrets given as `env=`).
    pub env: Vec<String>,
    /// The shared cache directories the step uses, with their ids (their sizes go into
    /// the cache index after the step).
    pub caches: Vec<(PathBuf, String)>,
    /// Locks on cache directories, released (closed) when the step is over.
    _locks: Vec<Flock<File>>,
    /// Throwaway directories (copies for writable binds, secrets, private caches),
    /// removed when the step is over.
    _dirs: Vec<tempfile::TempDir>,
}

/// Prepares the mounts of a step whose root is `root`; `from` has the source of each
/// mount that reads from one (in order). Mount points are recorded in `points`.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    mounts: &[RunMount],
    from: Vec<Option<MountFrom<'_>>>,
    inputs: &MountInputs,
    store: &Store,
    root: &Path,
    scratch: &Path,
    cancel: &Cancel,
    points: &mut MountPoints,
) -> Result<PreparedMounts> {
    let mut out = PreparedMounts::default();
    let mut order: Vec<(usize, StepMount)> = Vec::new();
    let mut locks: BTreeMap<PathBuf, Sharing> = BTreeMap::new();
    // Targets as the image resolves them: mounts inside mounts are found by these.
    let resolved: Vec<Option<Target>> = mounts
        .iter()
        .map(|m| {
            m.spec
                .target
                .as_ref()
                .map(|t| Target::resolve(root, t))
                .transpose()
        })
        .collect::<Result<_>>()?;
    for (i, (m, from)) in mounts.iter().zip(from).enumerate() {
        let spec = &m.spec;
        let what = spec.target.clone().unwrap_or_default();
        // The mount points other mounts need inside this one (relative to its target).
        let children: Vec<(String, bool)> = match &resolved[i] {
            Some(t) => mounts
                .iter()
                .zip(&resolved)
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, (c, ct))| {
                    let below = ct.as_ref()?.rel.strip_prefix(t.rel.as_str())?;
                    let below = below.strip_prefix('/')?;
                    let dir = !matches!(
                        c.spec.kind,
                        MountKind::Secret { .. } | MountKind::Ssh { .. }
                    );
                    Some((below.to_string(), dir))
                })
                .collect(),
            None => Vec::new(),
        };
        let step = StepContext {
            inputs,
            store,
            scratch,
            cancel,
        };
        let made = prepare_one(m, from, &children, &step, &mut locks, &mut out)
            .with_context(|| format!("mount at {what}"))?;
        let (Some(target), Some(at), Some((source, is_dir))) = (&spec.target, &resolved[i], made)
        else {
            continue;
        };
        // In a writable tree (a cache, a writable copy) the mount points of the mounts
        // inside it are made now and removed after the step, like those in the root.
        if let MountSource::Bind {
            path,
            readonly: false,
        } = &source
        {
            if is_dir {
                for (rel, dir) in &children {
                    points.ensure(path, rel, *dir)?;
                }
            }
        }
        // The target as the image resolves it, not only as written.
        let first = at.rel.split('/').next().unwrap_or("");
        if at.rel.is_empty() {
            bail!("mount at {target}: it is the root directory of the image");
        }
        if matches!(first, "proc" | "dev" | "sys") {
            bail!("mount at {target}: /{} belongs to the sandbox", at.rel);
        }
        match (at.kind, is_dir) {
            (Some(FileKind::Dir), false) => {
                bail!("cannot mount a file over the directory {target}")
            }
            (Some(kind), true) if kind != FileKind::Dir => {
                bail!("cannot mount a directory over the file {target}")
            }
            _ => {}
        }
        points.ensure(root, &at.rel, is_dir)?;
        let depth = at.rel.split('/').count();
        order.push((
            depth,
            StepMount {
                target: at.rel.clone(),
                source,
            },
        ));
    }
    // Parents before children, whatever order they were written in.
    order.sort_by_key(|(depth, _)| *depth);
    out.mounts = order.into_iter().map(|(_, m)| m).collect();
    Ok(out)
}

/// A mount's target as the image resolves it.
struct Target {
    /// Relative to the root, links followed.
    rel: String,
    /// What is there now.
    kind: Option<FileKind>,
}

impl Target {
    fn resolve(root: &Path, target: &str) -> Result<Target> {
        let r = resolve_in_root(root, target, true)?;
        Ok(Target {
            rel: r.rel_str()?.to_string(),
            kind: r.kind(),
        })
    }
}

/// What every mount of a step may use.
struct StepContext<'a> {
    inputs: &'a MountInputs,
    store: &'a Store,
    scratch: &'a Path,
    cancel: &'a Cancel,
}

/// One mount: what to mount and whether it is a directory (None: nothing to mount, e.g. a
/// secret only given as a variable, or an optional one not given). `children` are the
/// mount points other mounts need inside this one; `locks` the caches this step holds.
fn prepare_one(
    m: &RunMount,
    from: Option<MountFrom<'_>>,
    children: &[(String, bool)],
    step: &StepContext<'_>,
    locks: &mut BTreeMap<PathBuf, Sharing>,
    out: &mut PreparedMounts,
) -> Result<Option<(MountSource, bool)>> {
    let (inputs, store) = (step.inputs, step.store);
    let throwaway = |out: &mut PreparedMounts, prefix: &str| -> Result<PathBuf> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(step.scratch)?;
        let path = dir.path().to_path_buf();
        out._dirs.push(dir);
        Ok(path)
    };
    match &m.spec.kind {
        MountKind::Bind { source, readwrite } => {
            let from = from.ok_or_else(|| anyhow!("a bind mount needs a source"))?;
            let src = source_path(&from, source)?;
            let (path, is_dir, filtered) = (src.path.clone(), src.is_dir, src.filtered());
            // Mount points for mounts inside this one must exist in what is mounted.
            let missing_points = is_dir
                && children
                    .iter()
                    .any(|(rel, _)| fs::symlink_metadata(path.join(rel)).is_err());
            if *readwrite || filtered || missing_points {
                // A writable bind gets a copy, its changes thrown away after the step; a
                // context directory with ignored files below gets a copy without them.
                let copy = throwaway(out, "bind-")?.join("tree");
                match (from.context(), &src.in_context) {
                    (Some(ctx), Some((m, true))) => copy_context_dir(ctx, m, &copy)?,
                    _ if is_dir => {
                        copy_tree(&path, &copy)?;
                    }
                    _ => {
                        fs::copy(&path, &copy)?;
                    }
                }
                if is_dir {
                    make_mount_points(&copy, children)?;
                }
                let readonly = !*readwrite;
                return Ok(Some((
                    MountSource::Bind {
                        path: copy,
                        readonly,
                    },
                    is_dir,
                )));
            }
            Ok(Some((
                MountSource::Bind {
                    path,
                    readonly: true,
                },
                is_dir,
            )))
        }
        MountKind::Cache {
            id,
            readonly,
            sharing,
            source,
            mode,
            uid,
            gid,
        } => {
            let dir = store.cache_mount_dir(id);
            // The same cache twice in one step shares the first mount's lock.
            let usable = match locks.get(&dir) {
                Some(Sharing::Shared) if *sharing == Sharing::Locked => bail!(
                    "cache {id:?} is mounted twice in this step, shared and locked; use one sharing mode"
                ),
                Some(_) => true,
                None => match lock_cache(&dir, *sharing, step.cancel)? {
                    Some(lock) => {
                        out._locks.push(lock);
                        locks.insert(dir.clone(), *sharing);
                        true
                    }
                    // `sharing=private` and another build has it.
                    None => false,
                },
            };
            let seed = from.as_ref();
            let path = if usable {
                // Leased before use, so a prune beside this build leaves it alone.
                store.note_cache_mount(&dir, id, None)?;
                if !dir.is_dir() {
                    create_cache(&dir, seed, source, *mode, *uid, *gid)?;
                }
                out.caches.push((dir.clone(), id.clone()));
                dir
            } else {
                // An empty one of our own, gone after the step.
                let own = throwaway(out, "cache-")?.join("cache");
                create_cache(&own, seed, source, *mode, *uid, *gid)?;
                own
            };
            Ok(Some((
                MountSource::Bind {
                    path,
                    readonly: *readonly,
                },
                true,
            )))
        }
        MountKind::Tmpfs { size } => Ok(Some((MountSource::Tmpfs { size: *size }, true))),
        MountKind::Secret {
            id,
            env,
            required,
            mode,
            uid,
            gid,
        } => {
            let Some(secret) = inputs.secrets.get(id) else {
                if *required {
                    bail!("secret {id:?} not given: pass --secret id={id},src=FILE (or env=VAR)");
                }
                return Ok(None);
            };
            let value = match secret {
                SecretSource::File(p) => fs::read(p)
                    .with_context(|| format!("cannot read secret {id:?} from {}", p.display()))?,
                SecretSource::Env(var) => std::env::var_os(var)
                    .ok_or_else(|| anyhow!("secret {id:?}: ${var} is not set"))?
                    .into_encoded_bytes(),
            };
            if let Some(var) = env {
                let text = String::from_utf8(value.clone())
                    .map_err(|_| anyhow!("secret {id:?} is not UTF-8, so it cannot be ${var}"))?;
                out.env.push(format!("{var}={text}"));
            }
            if m.spec.target.is_none() {
                return Ok(None);
            }
            let dir = throwaway(out, "secret-")?;
            let file = dir.join("secret");
            fs::write(&file, &value)?;
            std::os::unix::fs::chown(&file, Some(*uid), Some(*gid))
                .with_context(|| format!("cannot give secret {id:?} to {uid}:{gid}"))?;
            fs::set_permissions(&file, fs::Permissions::from_mode(*mode))?;
            Ok(Some((
                MountSource::Bind {
                    path: file,
                    readonly: true,
                },
                false,
            )))
        }
        MountKind::Ssh { id, required } => {
            let Some(socket) = inputs.ssh.get(id) else {
                if *required {
                    bail!("SSH agent {id:?} not given: pass --ssh {id}=SOCKET (or --ssh {id} with $SSH_AUTH_SOCK set)");
                }
                return Ok(None);
            };
            if let Some(t) = &m.spec.target {
                if !out.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    out.env.push(format!("SSH_AUTH_SOCK={t}"));
                }
            }
            Ok(Some((
                MountSource::Bind {
                    path: socket.clone(),
                    readonly: false,
                },
                false,
            )))
        }
    }
}

/// A mount's `source`, found in what it reads from.
struct Source {
    /// Where it is on the host.
    path: PathBuf,
    is_dir: bool,
    /// In a context: its match there, and whether `.dockerignore` excludes something
    /// below it (so that the directory on disk shows more than the build may see).
    in_context: Option<(SourceMatch, bool)>,
}

impl Source {
    /// True for a context directory the build may see only part of.
    fn filtered(&self) -> bool {
        matches!(self.in_context, Some((_, true)))
    }
}

fn source_path(from: &MountFrom<'_>, source: &str) -> Result<Source> {
    let ctx: &BuildContext = match from {
        MountFrom::Context(c) => c,
        MountFrom::Named(c) => c,
        MountFrom::Root(root) => {
            let r = resolve_in_root(root, &format!("/{source}"), true)?;
            let Some(kind) = r.kind() else {
                bail!("source {source:?} not found");
            };
            return Ok(Source {
                path: root.join(&r.rel),
                is_dir: kind == FileKind::Dir,
                in_context: None,
            });
        }
    };
    let mut found = ctx.resolve(if source.is_empty() { "." } else { source })?;
    if found.len() != 1 {
        bail!("source {source:?} matches more than one path");
    }
    let m = found.remove(0);
    let excluded = ctx.excludes_below(&m)?;
    Ok(Source {
        path: m.host_path.clone(),
        is_dir: m.kind == EntryKind::Dir,
        in_context: Some((m, excluded)),
    })
}

/// A copy of a directory matched in a context, without what `.dockerignore` excludes.
fn copy_context_dir(ctx: &BuildContext, m: &SourceMatch, to: &Path) -> Result<()> {
    fs::create_dir(to)?;
    for e in ctx.walk(m)? {
        let dest = to.join(&e.rel_path);
        let ft = e.metadata.file_type();
        if ft.is_dir() {
            fs::create_dir(&dest)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&e.host_path)?, &dest)?;
        } else if ft.is_file() {
            fs::copy(&e.host_path, &dest)?;
        }
    }
    Ok(())
}

/// Locks a cache directory for this step (the lock file sits beside it): shared for
/// `shared`, exclusive (waiting) for `locked`; for `private`, exclusive if free, else None.
fn lock_cache(dir: &Path, sharing: Sharing, cancel: &Cancel) -> Result<Option<Flock<File>>> {
    let parent = dir
        .parent()
        .ok_or_else(|| anyhow!("cache mount without a parent"))?;
    fs::create_dir_all(parent)?;
    let mut name = dir.as_os_str().to_os_string();
    name.push(".lock");
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(name))
        .context("cannot open the cache mount's lock")?;
    let op = match sharing {
        Sharing::Shared => FlockArg::LockSharedNonblock,
        Sharing::Locked | Sharing::Private => FlockArg::LockExclusiveNonblock,
    };
    // Not blocking in flock: a wait for another build must still end on Ctrl-C.
    loop {
        file = match Flock::lock(file, op) {
            Ok(locked) => return Ok(Some(locked)),
            Err((f, nix::errno::Errno::EINTR)) => f,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if sharing == Sharing::Private => {
                return Ok(None)
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if cancel.requested() {
                    bail!("cancelled while waiting for another build to release the cache");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
                f
            }
            Err((_, e)) => return Err(e).context("cannot lock the cache mount"),
        };
    }
}

/// Makes the mount points `children` (relative paths; directories, or files when false)
/// inside a copy that will be mounted read-only; a symlink on the way is an error.
fn make_mount_points(copy: &Path, children: &[(String, bool)]) -> Result<()> {
    let root = Root::open_dir(copy)?;
    for (rel, dir) in children {
        root.make(Path::new(rel), *dir)
            .with_context(|| format!("cannot mount at {rel} in the mounted tree"))?;
    }
    Ok(())
}

/// Makes a new cache directory (under a temporary name, then renamed, so a crash leaves no
/// half-made cache): seeded from `source` in `from` when given, with its mode and owner.
fn create_cache(
    dir: &Path,
    from: Option<&MountFrom<'_>>,
    source: &str,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<()> {
    let parent = dir
        .parent()
        .ok_or_else(|| anyhow!("cache mount without a parent"))?;
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(parent)?;
    let made = tmp.path().join("cache");
    match from {
        Some(from) => {
            let src = source_path(from, source)?;
            if !src.is_dir {
                bail!("the cache's source {source:?} is not a directory");
            }
            match (from.context(), &src.in_context) {
                // A context as the build may see it: without what .dockerignore excludes.
                (Some(ctx), Some((m, _))) => copy_context_dir(ctx, m, &made)?,
                _ => {
                    copy_tree(&src.path, &made)?;
                }
            }
        }
        None => fs::create_dir(&made)?,
    }
    std::os::unix::fs::chown(&made, Some(uid), Some(gid))
        .with_context(|| format!("cannot give the cache to {uid}:{gid}"))?;
    fs::set_permissions(&made, fs::Permissions::from_mode(mode))?;
    // Never over a cache another build made meanwhile (rename would replace an empty one
    // that build may be using): theirs is as good.
    let renamed = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        made.as_path(),
        nix::fcntl::AT_FDCWD,
        dir,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    if renamed.is_ok() || dir.is_dir() {
        return Ok(());
    }
    renamed.context("cannot create the cache mount")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_locks_are_shared_or_give_way() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("cache");
        let a = lock_cache(&dir, Sharing::Shared, &Cancel).unwrap();
        let b = lock_cache(&dir, Sharing::Shared, &Cancel).unwrap();
        assert!(a.is_some() && b.is_some(), "shared users hold it at once");
        assert!(
            lock_cache(&dir, Sharing::Private, &Cancel)
                .unwrap()
                .is_none(),
            "a private user gives way to users of the cache"
        );
        drop((a, b));
        let only = lock_cache(&dir, Sharing::Private, &Cancel).unwrap();
        assert!(only.is_some(), "free again once the others let go");
        assert!(lock_cache(&dir, Sharing::Private, &Cancel)
            .unwrap()
            .is_none());
    }

    #[test]
    fn mount_points_are_made_and_never_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        make_mount_points(t.path(), &[("a/b".into(), true), ("c/f".into(), false)]).unwrap();
        assert!(t.path().join("a/b").is_dir());
        assert!(t.path().join("c/f").is_file());
        std::os::unix::fs::symlink("/", t.path().join("out")).unwrap();
        assert!(make_mount_points(t.path(), &[("out/x".into(), true)]).is_err());
    }
}
