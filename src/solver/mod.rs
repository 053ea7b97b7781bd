//! Runs a plan: builds the needed stages in order, step by step, turning each filesystem
//! change into a layer in the store, and assembles the target stage into an image.

pub mod cache;
pub mod copy;
pub mod mounts;
mod overlay_root;
pub mod rootfs;
pub mod run;
pub mod users;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};

use crate::context::digest::MapMemo;
use crate::context::BuildContext;
use crate::image::config::{History, ImageConfig};
use crate::image::oci::{Descriptor, ImageManifest};
use crate::image::{BuiltImage, Layer, MEDIA_TYPE_CONFIG};
use crate::inroot::FileKind;
use crate::plan::steps::{expand_stage, ConfigEdit, CopyFrom, Step, StepKind, DEFAULT_PATH};
use crate::plan::{at_line, with_line, Base, Plan, Platform};
use crate::progress::{Progress, Status, StepHandle};
use crate::snapshot::clone::Snapshotter;
use crate::snapshot::{write_layer, EntryKind, LayerEntry, LayerOptions};
use crate::source::image::BaseImage;
use crate::source::registry::TransferEvent;
use crate::source::resolver::Resolver;
use crate::store::{Digest, Store};
use cache::{chain_id, from_result, step_key, to_result, CacheOptions, KeyBase};
use copy::{copy_entries, CopyInputs};
use mounts::MountFrom;
use rootfs::{read_image_file, resolve_in_root, RootKind, Rootfs};
use run::{run_command, Differ, RunEnvironment, StepInputs};
use users::resolve_owner;

/// What a build needs besides the plan.
pub struct BuildInputs<'a> {
    /// The plan to run.
    pub plan: &'a Plan,
    /// The build context.
    pub context: &'a BuildContext,
    /// The content store layers are written to.
    pub store: &'a Store,
    /// Progress output.
    pub progress: &'a Progress,
    /// SOURCE_DATE_EPOCH, if set: the image's `created` and the clamp for file mtimes.
    pub epoch: Option<i64>,
    /// `--label`s added to the image config.
    pub labels: &'a BTreeMap<String, String>,
    /// Where `FROM <image>` and `COPY --from=<image>` find their images.
    pub images: &'a Resolver<'a>,
    /// How RUN steps execute (None: the build has none, so no sandbox was prepared).
    pub run: Option<&'a RunEnvironment>,
    /// Which steps the cache may answer.
    pub cache: &'a CacheOptions,
    /// How many stages may run at once (`--jobs`; at least 1).
    pub jobs: usize,
    /// Annotations of the image manifest (`--annotation`).
    pub annotations: &'a BTreeMap<String, String>,
    /// How new layers are compressed.
    pub layer_format: crate::image::LayerFormat,
}

impl BuildInputs<'_> {
    /// How stage roots are kept: an overlay when RUN steps use the overlay snapshotter.
    fn root_kind(&self) -> RootKind<'_> {
        self.run.map_or(RootKind::Dir, RunEnvironment::root_kind)
    }
}

/// The result of a build.
pub struct BuildOutput {
    /// The image, all of whose blobs are in the store.
    pub image: BuiltImage,
    /// `--build-arg`s no ARG consumed.
    pub unused_build_args: Vec<String>,
}

/// A built (or building) stage.
struct StageState {
    config: ImageConfig,
    layers: Vec<Layer>,
    rootfs: Option<Rootfs>,
}

impl StageState {
    fn rootfs(&mut self, store: &Store, kind: RootKind<'_>) -> Result<&std::path::Path> {
        if self.rootfs.is_none() {
            self.rootfs = Some(Rootfs::new(store, kind)?);
        }
        let rootfs = self.rootfs.as_mut().expect("rootfs was just created");
        rootfs.sync(store, &self.layers)
    }
}

/// A stage's state once other stages may read it (its filesystem is materialised on
/// first use, under the lock).
type SharedState = Arc<Mutex<StageState>>;

/// What the stages of one build share while they run.
struct Shared {
    /// Finished stages, by index.
    done: BTreeMap<usize, SharedState>,
    /// Stages started (running or finished).
    started: BTreeSet<usize>,
    /// The first failure; the other stages are then cancelled.
    failure: Option<anyhow::Error>,
    /// Build args some stage used.
    used_args: BTreeSet<String>,
}

/// What every stage of the build reads and writes besides its own state.
struct BuildShared<'s> {
    scratch: &'s std::path::Path,
    now: i64,
    created: i64,
    images: Mutex<BTreeMap<String, SharedState>>,
    memo: Mutex<MapMemo>,
}

/// Builds the plan's target stage and stores the resulting image. Stages whose
/// dependencies are built run at once, up to `inp.jobs` of them; the first failure
/// cancels the others (their steps are killed, their mounts and temp dirs removed).
pub fn build(inp: &BuildInputs<'_>) -> Result<BuildOutput> {
    let plan = inp.plan;
    let now = unix_now();
    let created = inp.epoch.unwrap_or(now);
    let scratch = ScratchDir(inp.store.temp_dir("build-")?);
    let bs = BuildShared {
        scratch: scratch.path(),
        now,
        created,
        images: Mutex::new(BTreeMap::new()),
        memo: Mutex::new(MapMemo::new(inp.store.file_digests().unwrap_or_default())),
    };
    let shared = Mutex::new(Shared {
        done: BTreeMap::new(),
        started: BTreeSet::new(),
        failure: None,
        used_args: BTreeSet::new(),
    });
    let wake = Condvar::new();
    let workers = inp.jobs.clamp(1, plan.order.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| worker(inp, &bs, &shared, &wake));
        }
    });
    save_memo(inp.store, &lock(&bs.memo));
    let mut shared = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = shared.failure.take() {
        return Err(e);
    }
    let target = shared
        .done
        .remove(&plan.target)
        .ok_or_else(|| anyhow!("target stage was not built"))?;
    let used_args = std::mem::take(&mut shared.used_args);
    drop(shared);
    let target = Arc::try_unwrap(target)
        .map_err(|_| anyhow!("the target stage is still in use"))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let image = assemble(inp, target, created)?;
    Ok(BuildOutput {
        image,
        unused_build_args: plan.unused_build_args(&used_args),
    })
}

/// Locks a mutex, whatever a panicking holder left.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One worker: runs stages whose dependencies are done, in plan order, until every stage
/// is done or one failed. It stays until then (fuse-overlayfs daemons it started die with
/// it, and later stages may read the filesystems they serve).
fn worker(inp: &BuildInputs<'_>, bs: &BuildShared<'_>, shared: &Mutex<Shared>, wake: &Condvar) {
    // Expansion is bounded per thread (see `expand::set_budget`).
    crate::dockerfile::expand::set_budget(crate::dockerfile::expand::MAX_TOTAL);
    let plan = inp.plan;
    let mut g = lock(shared);
    loop {
        if g.failure.is_some() || g.done.len() == plan.order.len() {
            wake.notify_all();
            return;
        }
        let ready = plan.order.iter().copied().find(|i| {
            !g.started.contains(i) && plan.stages[*i].deps.iter().all(|d| g.done.contains_key(d))
        });
        let Some(index) = ready else {
            g = wake.wait(g).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        g.started.insert(index);
        let deps: BTreeMap<usize, SharedState> = plan.stages[index]
            .deps
            .iter()
            .filter_map(|d| g.done.get(d).map(|st| (*d, Arc::clone(st))))
            .collect();
        drop(g);
        let outcome = run_stage(inp, bs, index, &deps);
        g = lock(shared);
        match outcome {
            Ok((state, used)) => {
                g.used_args.extend(used);
                g.done.insert(index, Arc::new(Mutex::new(state)));
                free_unread_roots(plan, &g);
            }
            Err(e) => {
                if g.failure.is_none() {
                    g.failure = Some(e);
                    // The stages still running stop at once.
                    crate::cancel::Cancel.abort();
                }
            }
        }
        wake.notify_all();
    }
}

/// Drops the filesystems of finished stages that no unfinished stage reads.
fn free_unread_roots(plan: &Plan, g: &Shared) {
    let later: BTreeSet<usize> = plan
        .order
        .iter()
        .filter(|s| !g.done.contains_key(s))
        .flat_map(|&s| plan.stages[s].deps.iter().copied())
        .collect();
    for (i, st) in &g.done {
        if !later.contains(i) && *i != plan.target {
            if let Ok(mut st) = st.try_lock() {
                st.rootfs = None;
            }
        }
    }
}

/// Runs one stage on top of its base; `deps` are the finished stages it reads.
fn run_stage(
    inp: &BuildInputs<'_>,
    bs: &BuildShared<'_>,
    index: usize,
    deps: &BTreeMap<usize, SharedState>,
) -> Result<(StageState, BTreeSet<String>)> {
    let plan = inp.plan;
    let sp = &plan.stages[index];
    if let Some(p) = &sp.platform {
        let wanted = Platform::parse(p).map_err(|e| at_line(sp.line, e))?;
        if !wanted.matches_host() {
            return Err(at_line(
                sp.line,
                format!(
                    "FROM --platform={wanted}: only the host platform ({}) can be built",
                    Platform::host()
                ),
            ));
        }
    }
    let mut from_step = None;
    let mut state = match &sp.base {
        Base::Scratch => StageState {
            config: scratch_config(&plan.options.platform),
            layers: Vec::new(),
            rootfs: None,
        },
        Base::Stage(i) => {
            let base = deps
                .get(i)
                .ok_or_else(|| anyhow!("stage {i} was not built"))?;
            let base = lock(base);
            StageState {
                config: base.config.clone(),
                layers: base.layers.clone(),
                rootfs: None,
            }
        }
        Base::Image(r) => {
            let (base, pulled) = load_base(inp, r).map_err(|e| at_line(sp.line, e))?;
            from_step = Some((format!("{}@{}", base.name, base.digest), pulled));
            StageState {
                config: base.config,
                layers: base.layers,
                rootfs: None,
            }
        }
    };
    let expanded = expand_stage(plan, index, &state.config)?;
    // The base's ONBUILD triggers became this stage's first steps; they are not inherited.
    state.config.config.on_build.clear();
    // An image base is step 1, as BuildKit numbers them.
    let first = usize::from(from_step.is_some());
    let total = expanded.steps.len() + first;
    if let Some((name, pulled)) = from_step {
        let h = inp
            .progress
            .start(format!("[{} 1/{total}] FROM {name}", sp.label()));
        inp.progress.done(h, !pulled && inp.cache.reads(index));
    }
    // A metadata step is CACHED when the stage's layer steps so far were (and there
    // was one).
    let mut all_cached = false;
    let others = Others {
        stages: deps,
        images: &bs.images,
    };
    for (n, step) in expanded.steps.iter().enumerate() {
        crate::cancel::Cancel.check()?;
        let handle = inp.progress.start(format!(
            "[{} {}/{}] {}",
            sp.label(),
            n + 1 + first,
            total,
            step.text
        ));
        let mut ctx = StepContext {
            inp,
            others: &others,
            scratch: bs.scratch,
            now: bs.now,
            handle: &handle,
            memo: &bs.memo,
        };
        let result =
            cached_or_run(&mut ctx, &mut state, index, step).map_err(|e| with_line(step.line, e));
        let (layer, cached) = match result {
            Ok((layer, cached)) => {
                let cached = match step.kind {
                    StepKind::Config(_) => all_cached,
                    _ => {
                        all_cached = cached;
                        cached
                    }
                };
                (layer, cached)
            }
            Err(e) => {
                inp.progress.failed(handle);
                return Err(e);
            }
        };
        state.config.history.push(History {
            created: Some(rfc3339(bs.created)),
            created_by: Some(step.text.clone()),
            comment: Some("rbuild.dockerfile.v0".into()),
            empty_layer: layer.is_none(),
        });
        if let Some(layer) = layer {
            state.config.rootfs.diff_ids.push(layer.diff_id.to_string());
            state.layers.push(layer);
        }
        inp.progress.done(handle, cached);
    }
    Ok((state, expanded.used_args))
}

/// Resolves base image `r` under an `[internal] load metadata` step that shows a pull's
/// bytes; also says whether anything was downloaded.
fn load_base(inp: &BuildInputs<'_>, r: &str) -> Result<(BaseImage, bool)> {
    let handle = inp
        .progress
        .start(format!("[internal] load metadata for {r}"));
    let pulled = AtomicBool::new(false);
    let report = |e: &TransferEvent| {
        if matches!(e, TransferEvent::Moved { .. }) {
            pulled.store(true, Ordering::Relaxed);
        }
        inp.progress.status(&handle, &Status::of_transfer(e, r, ""));
    };
    match inp.images.image_reporting(r, Some(&report)) {
        Ok(base) => {
            let pulled = pulled.load(Ordering::Relaxed);
            inp.progress.done(handle, false);
            Ok((base, pulled))
        }
        Err(e) => {
            inp.progress.failed(handle);
            Err(e)
        }
    }
}

/// A scratch directory removed (even when read-only trees were unpacked into it) on drop.
struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        crate::store::make_removable(self.0.path());
    }
}

/// The filesystems a step can copy from besides its own stage's.
struct Others<'s> {
    /// The finished stages this stage reads.
    stages: &'s BTreeMap<usize, SharedState>,
    /// Images named by `COPY --from` and mounts, resolved on first use.
    images: &'s Mutex<BTreeMap<String, SharedState>>,
}

/// What a COPY --from or a RUN mount reads, besides the build context.
enum FromRoot {
    /// A directory given with `--build-context NAME=DIR` (its `.dockerignore` applies).
    Dir(std::path::PathBuf),
    /// The root filesystem of a stage or an image, materialised, and its state.
    Filesystem(std::path::PathBuf, SharedState),
}

/// Finds what `from` names: None for the build context; a stage's or image's filesystem
/// (resolving and materialising the image if needed); a named context directory.
fn from_root(
    inp: &BuildInputs<'_>,
    others: &Others<'_>,
    from: &CopyFrom,
) -> Result<Option<FromRoot>> {
    let st = match from {
        CopyFrom::Context => return Ok(None),
        CopyFrom::Stage(i) => Arc::clone(
            others
                .stages
                .get(i)
                .ok_or_else(|| anyhow!("stage {i} was not built"))?,
        ),
        CopyFrom::Image(r) => {
            if let Some(dir) = inp.images.local_dir(r) {
                return Ok(Some(FromRoot::Dir(dir.to_path_buf())));
            }
            image_state(inp, others.images, r)?
        }
    };
    let root = lock(&st).rootfs(inp.store, inp.root_kind())?.to_path_buf();
    Ok(Some(FromRoot::Filesystem(root, st)))
}

/// The state of image `r` (resolved, not materialised), resolving it on first use.
fn image_state(
    inp: &BuildInputs<'_>,
    images: &Mutex<BTreeMap<String, SharedState>>,
    r: &str,
) -> Result<SharedState> {
    let mut images = lock(images);
    if let Some(st) = images.get(r) {
        return Ok(Arc::clone(st));
    }
    let base = inp.images.image(r)?;
    let st = Arc::new(Mutex::new(StageState {
        config: base.config,
        layers: base.layers,
        rootfs: None,
    }));
    images.insert(r.to_string(), Arc::clone(&st));
    Ok(st)
}

/// What a step runs with besides its stage.
struct StepContext<'c, 'a, 's> {
    inp: &'c BuildInputs<'a>,
    others: &'c Others<'s>,
    scratch: &'c std::path::Path,
    now: i64,
    handle: &'c StepHandle,
    memo: &'c Mutex<MapMemo>,
}

/// Answers a step from the cache, or runs it and records its result. Returns the layer
/// and whether it came from the cache.
fn cached_or_run(
    ctx: &mut StepContext<'_, '_, '_>,
    state: &mut StageState,
    stage: usize,
    step: &Step,
) -> Result<(Option<Layer>, bool)> {
    let inp = ctx.inp;
    // A step whose inputs cannot be read is run, and reports that itself.
    let key = step_key_for(ctx, state, &step.kind).unwrap_or(None);
    if let Some(k) = &key {
        if inp.cache.reads(stage) {
            if let Some(result) = inp.store.step_result(k)? {
                if let StepKind::Workdir(dir) = &step.kind {
                    ConfigEdit::Workdir(dir.clone()).apply(&mut state.config);
                }
                return Ok((from_result(&result)?, true));
            }
        }
    }
    let layer = run_step(
        inp,
        ctx.others,
        state,
        &step.kind,
        ctx.scratch,
        ctx.now,
        ctx.handle,
    )?;
    if let Some(k) = &key {
        let label = inp.plan.stages[stage].label();
        inp.store.put_step_result(
            k,
            &to_result(layer.as_ref()),
            &format!("[{label}] {}", step.text),
        )?;
    }
    Ok((layer, false))
}

/// The cache key of a step on top of `state`.
fn step_key_for(
    ctx: &mut StepContext<'_, '_, '_>,
    state: &StageState,
    kind: &StepKind,
) -> Result<Option<Digest>> {
    let inp = ctx.inp;
    let platform = inp.plan.options.platform.to_string();
    let base = KeyBase {
        platform: &platform,
        single_id: inp.run.is_some_and(|e| e.single_id),
        epoch: inp.epoch,
        parent: &state.layers,
        config: &state.config,
    };
    let others = ctx.others;
    let memo = ctx.memo;
    let mut input = |from: &CopyFrom, paths: &[String]| -> Result<String> {
        Ok(match from {
            CopyFrom::Context => inp
                .context
                .digest_sources(paths, &mut *lock(memo))?
                .to_string(),
            CopyFrom::Stage(i) => chain_id(
                &lock(
                    others
                        .stages
                        .get(i)
                        .ok_or_else(|| anyhow!("stage {i} was not built"))?,
                )
                .layers,
            ),
            CopyFrom::Image(r) => match inp.images.local_dir(r) {
                Some(dir) => BuildContext::from_dir(dir, None)?
                    .digest_sources(paths, &mut *lock(memo))?
                    .to_string(),
                None => chain_id(&lock(&*image_state(inp, others.images, r)?).layers),
            },
        })
    };
    step_key(kind, &base, &mut input)
}

/// Saves the context file digests found by this build (best effort: they only save
/// reading files again).
fn save_memo(store: &Store, memo: &MapMemo) {
    let _ = store.put_file_digests(&memo.found);
}

/// Runs one step; returns the layer it made, if any.
fn run_step(
    inp: &BuildInputs<'_>,
    others: &Others<'_>,
    state: &mut StageState,
    kind: &StepKind,
    scratch: &std::path::Path,
    now: i64,
    handle: &StepHandle,
) -> Result<Option<Layer>> {
    let opts = LayerOptions {
        clamp_mtime: inp.epoch,
        format: inp.layer_format,
    };
    match kind {
        StepKind::Config(edit) => {
            edit.apply(&mut state.config);
            Ok(None)
        }
        StepKind::Workdir(dir) => {
            ConfigEdit::Workdir(dir.clone()).apply(&mut state.config);
            let user = state.config.config.user.clone();
            let root = state.rootfs(inp.store, inp.root_kind())?;
            let owner = if user.is_empty() {
                users::Owner { uid: 0, gid: 0 }
            } else {
                resolve_owner(
                    &user,
                    read_image_file(root, "/etc/passwd").as_deref(),
                    read_image_file(root, "/etc/group").as_deref(),
                )?
            };
            let entries = missing_dirs(root, dir, owner, clamp(now, inp.epoch))?;
            if entries.is_empty() {
                return Ok(None);
            }
            Ok(Some(write_layer(inp.store, entries, &opts)?))
        }
        StepKind::Copy(c) => {
            let dest_root = state.rootfs(inp.store, inp.root_kind())?.to_path_buf();
            let owner = match &c.chown {
                Some(spec) => Some(resolve_owner(
                    spec,
                    read_image_file(&dest_root, "/etc/passwd").as_deref(),
                    read_image_file(&dest_root, "/etc/group").as_deref(),
                )?),
                None => None,
            };
            let stage_view;
            let from_state;
            let from_guard;
            let (source, preserve_owner) = match from_root(inp, others, &c.from)? {
                None => (inp.context, None),
                Some(FromRoot::Dir(dir)) => {
                    stage_view = BuildContext::from_dir(&dir, None)?;
                    (&stage_view, None)
                }
                Some(FromRoot::Filesystem(root, st)) => {
                    stage_view = BuildContext::unfiltered(&root)?;
                    // Held while copying: the owners it records, and no one frees it.
                    from_state = st;
                    from_guard = lock(&from_state);
                    (&stage_view, from_guard.rootfs.as_ref())
                }
            };
            let entries = copy_entries(
                c,
                &CopyInputs {
                    source,
                    preserve_owner,
                    dest_root: &dest_root,
                    owner,
                    now,
                    epoch: inp.epoch,
                    scratch,
                },
            )?;
            Ok(Some(write_layer(inp.store, entries, &opts)?))
        }
        StepKind::Run(r) => {
            let env = inp.run.ok_or_else(|| {
                anyhow!("RUN needs the sandbox, which this build did not prepare")
            })?;
            let root = state.rootfs(inp.store, inp.root_kind())?.to_path_buf();
            // The copy snapshotter runs the step on a private copy; the walk one in place.
            let copy = match (env.snapshotter, &state.rootfs) {
                (Snapshotter::Copy, Some(parent)) => Some(parent.private_copy(inp.store)?),
                _ => None,
            };
            let step_root = copy.as_ref().map_or(root, |c| c.path().to_path_buf());
            // An overlay root: the step's changes are read from its upper directory.
            let overlay_dirs = match (&copy, state.rootfs.as_mut()) {
                (None, Some(r)) => r.step_dirs()?,
                _ => None,
            };
            let differ = match &overlay_dirs {
                Some(dirs) => Differ::Upper(dirs),
                None => Differ::Walk,
            };
            let mut mount_from = Vec::new();
            for m in &r.mounts {
                mount_from.push(match &m.from {
                    None => None,
                    Some(from) => Some(match from_root(inp, others, from)? {
                        None => MountFrom::Context(inp.context),
                        Some(FromRoot::Dir(d)) => {
                            MountFrom::Named(BuildContext::from_dir(&d, None)?)
                        }
                        Some(FromRoot::Filesystem(d, _)) => MountFrom::Root(d),
                    }),
                });
            }
            let step_inputs = StepInputs {
                store: inp.store,
                scratch,
                mount_from,
            };
            let result = run_command(
                env,
                &step_root,
                differ,
                &state.config,
                r,
                step_inputs,
                &mut |line| inp.progress.log(handle, line),
            );
            let entries = match result {
                Ok(e) => e,
                Err(e) => {
                    if copy.is_none() {
                        // The tree may be half-changed: rebuild it from the layers if needed.
                        state.rootfs = None;
                    }
                    return Err(e);
                }
            };
            if let Some(copy) = copy {
                // The copy is the stage's root from now on; the parent goes.
                state.rootfs = Some(copy);
            }
            if entries.is_empty() {
                if let Some(r) = state.rootfs.as_mut() {
                    r.step_empty();
                }
                return Ok(None);
            }
            let layer = write_layer(inp.store, entries, &opts)?;
            if let Some(r) = state.rootfs.as_mut() {
                // The tree already holds this layer's changes.
                let mut with = state.layers.clone();
                with.push(layer.clone());
                r.step_done(inp.store, &with)?;
            }
            Ok(Some(layer))
        }
    }
}

/// Directory entries for the components of absolute `dir` that do not exist in `root`.
fn missing_dirs(
    root: &std::path::Path,
    dir: &str,
    owner: users::Owner,
    mtime: i64,
) -> Result<Vec<LayerEntry>> {
    let resolved = resolve_in_root(root, dir, true)?;
    match resolved.kind() {
        Some(FileKind::Dir) => return Ok(Vec::new()),
        Some(_) => {
            return Err(anyhow!(
                "WORKDIR {dir}: the path exists and is not a directory"
            ))
        }
        None => {}
    }
    let parts: Vec<&str> = resolved.rel_str()?.split('/').collect();
    Ok((resolved.existing..parts.len())
        .map(|i| LayerEntry {
            path: parts[..=i].join("/"),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: owner.uid,
            gid: owner.gid,
            mtime,
            xattrs: Vec::new(),
        })
        .collect())
}

/// The config a `FROM scratch` stage starts with (BuildKit's: a default PATH, WorkingDir /).
fn scratch_config(platform: &Platform) -> ImageConfig {
    let mut cfg = ImageConfig {
        architecture: platform.arch.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        ..Default::default()
    };
    cfg.config.set_env("PATH", DEFAULT_PATH);
    cfg.config.working_dir = "/".into();
    cfg
}

/// Writes the target's config and manifest into the store.
fn assemble(inp: &BuildInputs<'_>, target: StageState, created: i64) -> Result<BuiltImage> {
    // A base layer no step applied is checked against its diff_id here, before an image
    // names it.
    crate::snapshot::verify_layers(inp.store, &target.layers)?;
    let mut cfg = target.config;
    for (k, v) in inp.labels {
        cfg.config.labels.insert(k.clone(), v.clone());
    }
    let platform = &inp.plan.options.platform;
    cfg.architecture = platform.arch.clone();
    cfg.os = platform.os.clone();
    cfg.variant = platform.variant.clone();
    cfg.created = Some(rfc3339(created));
    cfg.rootfs.diff_ids = target
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect();
    let config = serde_json::to_vec(&cfg).context("cannot serialise the image config")?;
    let config_digest = inp.store.write_blob(&config)?;
    let mut manifest = ImageManifest::new(
        Descriptor::new(MEDIA_TYPE_CONFIG, &config_digest, config.len() as u64),
        target
            .layers
            .iter()
            .map(|l| Descriptor::new(&l.media_type, &l.digest, l.size))
            .collect(),
    );
    manifest.annotations = inp.annotations.clone();
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = inp.store.write_blob(&manifest)?;
    Ok(BuiltImage {
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers: target.layers,
    })
}

fn clamp(t: i64, epoch: Option<i64>) -> i64 {
    epoch.map_or(t, |e| t.min(e))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub use crate::progress::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
