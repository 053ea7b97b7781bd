//! COPY and ADD: which files go where, with which owner and mode, as layer entries.
//!
//! Sources are read from the build context or from an earlier stage's filesystem; the
//! destination is resolved against the current stage's filesystem (symlinks followed inside
//! it, existing directories copied into). Nothing here writes to the stage: the entries
//! become a layer, and the layer is applied when something needs the files.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::rootfs::{resolve_in_root, Rootfs};
use super::users::Owner;
use crate::context::{self, BuildContext, Device};
use crate::inroot::FileKind;
use crate::plan::steps::{CopySource, CopyStep};
use crate::snapshot::compression::{decompressing_reader, looks_like_tar};
use crate::snapshot::{apply_layer, ApplyOptions, Content, EntryKind, LayerEntry};

/// Everything a COPY/ADD needs besides the step itself.
pub struct CopyInputs<'a> {
    /// Where sources are read from (the context, or a view of a stage's filesystem).
    pub source: &'a BuildContext,
    /// Keep the sources' owners (COPY --from, with the stage's filesystem, whose recorded
    /// owners win over the disk's); otherwise files belong to 0:0.
    pub preserve_owner: Option<&'a Rootfs>,
    /// The destination stage's filesystem before this step.
    pub dest_root: &'a Path,
    /// The resolved `--chown`, if given.
    pub owner: Option<Owner>,
    /// Modification time for directories the step creates.
    pub now: i64,
    /// SOURCE_DATE_EPOCH: clamp for every mtime.
    pub epoch: Option<i64>,
    /// Scratch space for archive extraction; must outlive the returned entries.
    pub scratch: &'a Path,
}

/// Collects the layer entries of a COPY/ADD. Later entries for the same path replace earlier
/// ones; directories the destination needs and that do not exist are included.
pub fn copy_entries(step: &CopyStep, inp: &CopyInputs<'_>) -> Result<Vec<LayerEntry>> {
    let dest = resolve_in_root(inp.dest_root, &step.dest, true)?;
    let dest_kind = dest.kind();
    let dest = dest.rel_str()?.to_string();
    let mut out = Entries::default();

    // What the sources are, before deciding whether the destination is a directory.
    let mut matches = Vec::new();
    for src in &step.sources {
        match src {
            CopySource::Path(p) => {
                let found = inp.source.resolve_some(p)?;
                let pivot = parents_pivot(p);
                for m in found {
                    matches.push(Found::Path(m, pivot.clone()));
                }
            }
            CopySource::Heredoc { name, content } => matches.push(Found::Heredoc(name, content)),
            CopySource::Url(u) => bail!(
                "ADD {u}: fetching URLs needs the network support of the image sources, which this build of rbuild does not have yet"
            ),
            CopySource::Git {
                url,
                reference,
                subdir,
            } => {
                let into = tempfile::Builder::new()
                    .prefix("git-")
                    .tempdir_in(inp.scratch)?
                    .keep()
                    .join("repo");
                let root = crate::source::git::fetch(
                    url,
                    reference.as_deref(),
                    subdir.as_deref(),
                    step.keep_git_dir,
                    &into,
                )?;
                let view = BuildContext::unfiltered(&root)?;
                let top = view.resolve(".")?.remove(0);
                matches.push(Found::Repo(view, top));
            }
        }
    }
    if matches.is_empty() {
        // Every source was a wildcard that matched nothing (BuildKit's words).
        bail!("no source files were specified");
    }
    // One wildcard matching several files copies each to a destination without a trailing
    // slash in turn, the last one winning (BuildKit: moby#47064); several sources need a
    // directory.
    let into_dir = step.dest_is_dir
        || dest_kind == Some(FileKind::Dir)
        || step.sources.len() > 1
        || matches.iter().any(|m| match m {
            Found::Path(p, _) => p.kind == context::EntryKind::Dir,
            Found::Repo(..) => true,
            Found::Heredoc(..) => false,
        });

    if into_dir {
        out.ensure_dir(inp, &dest)?;
    } else if let Some(parent) = parent_of(&dest) {
        out.ensure_dir(inp, parent)?;
    }

    for m in &matches {
        match m {
            Found::Heredoc(name, content) => {
                let path = if into_dir {
                    join(&dest, name)
                } else {
                    dest.clone()
                };
                let mode = step.chmod.as_ref().map_or(0o644, |c| c.apply(0o644, false));
                let owner = inp.owner.unwrap_or(Owner { uid: 0, gid: 0 });
                out.push(LayerEntry {
                    path,
                    kind: EntryKind::File {
                        size: content.len() as u64,
                        source: Content::Bytes(content.as_bytes().to_vec()),
                    },
                    mode,
                    uid: owner.uid,
                    gid: owner.gid,
                    mtime: clamp(inp.now, inp.epoch),
                    xattrs: Vec::new(),
                });
            }
            Found::Repo(view, top) => {
                // The repository's content, into the destination directory.
                for e in view.walk(top)? {
                    if excluded(&step.exclude, &e.rel_path)? {
                        continue;
                    }
                    let path = join(&dest, &e.rel_path);
                    if let Some(entry) =
                        entry_from_disk(&path, &e.host_path, &e.metadata, step, inp)?
                    {
                        out.push(entry);
                    }
                }
            }
            Found::Path(m, pivot) => match m.kind {
                context::EntryKind::Dir => {
                    for e in inp.source.walk(m)? {
                        if excluded(&step.exclude, &e.rel_path)? {
                            continue;
                        }
                        let rel = if step.parents {
                            below_pivot(&join(&m.rel_path, &e.rel_path), pivot)
                        } else {
                            e.rel_path.clone()
                        };
                        if step.parents {
                            out.ensure_parents_below(inp, &dest, &rel)?;
                        }
                        if let Some(entry) = entry_from_disk(
                            &join(&dest, &rel),
                            &e.host_path,
                            &e.metadata,
                            step,
                            inp,
                        )? {
                            out.push(entry);
                        }
                    }
                }
                _ => {
                    let name = m.rel_path.rsplit('/').next().unwrap_or(&m.rel_path);
                    if excluded(&step.exclude, name)? {
                        continue;
                    }
                    let target = if step.parents && into_dir {
                        let kept = below_pivot(&m.rel_path, pivot);
                        out.ensure_parents_below(inp, &dest, &kept)?;
                        join(&dest, &kept)
                    } else if into_dir {
                        join(&dest, name)
                    } else {
                        dest.clone()
                    };
                    if step.is_add
                        && m.kind == context::EntryKind::File
                        && is_archive(&m.host_path)?
                    {
                        let base = if into_dir {
                            dest.clone()
                        } else {
                            target.clone()
                        };
                        if !into_dir {
                            out.ensure_dir(inp, &base)?;
                        }
                        extract_archive(&m.host_path, &base, step, inp, &mut out)?;
                        continue;
                    }
                    let meta = fs::metadata(&m.host_path)
                        .with_context(|| format!("cannot read {}", m.rel_path))?;
                    if let Some(entry) = entry_from_disk(&target, &m.host_path, &meta, step, inp)? {
                        out.push(entry);
                    }
                }
            },
        }
    }
    Ok(out.finish())
}

enum Found<'a> {
    /// A match, and (for `--parents`) the part of its path before the source's `/./`
    /// pivot, which the destination does not keep.
    Path(context::SourceMatch, String),
    Heredoc(&'a str, &'a str),
    /// A git repository fetched for ADD (or the directory of it asked for).
    Repo(BuildContext, context::SourceMatch),
}

/// The cleaned path before the first `/./` of a source (`x` in `./x/./y/*`), which
/// `COPY --parents` leaves out of the destination, as BuildKit's reference documents.
fn parents_pivot(src: &str) -> String {
    let src = src.strip_prefix("./").unwrap_or(src);
    match src.split_once("/./") {
        Some((before, _)) => before
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect::<Vec<_>>()
            .join("/"),
        None => String::new(),
    }
}

/// `rel` without the leading `pivot` directories.
fn below_pivot(rel: &str, pivot: &str) -> String {
    if pivot.is_empty() {
        return rel.to_string();
    }
    rel.strip_prefix(pivot)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(rel)
        .to_string()
}

/// Entries keyed by path: the last one for a path wins, directories created on the way are
/// remembered so they are made once.
#[derive(Default)]
struct Entries {
    by_path: BTreeMap<String, LayerEntry>,
    /// Destination prefixes already found to be directories in the destination filesystem
    /// (each is resolved once per step, not once per copied file).
    dest_dirs: HashSet<String>,
}

impl Entries {
    fn push(&mut self, e: LayerEntry) {
        self.by_path.insert(e.path.clone(), e);
    }

    /// Adds `rel` and its missing parents as directories, unless they exist in the
    /// destination filesystem or are already entries.
    fn ensure_dir(&mut self, inp: &CopyInputs<'_>, rel: &str) -> Result<()> {
        if rel.is_empty() {
            return Ok(());
        }
        let mut prefix = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts {
            prefix = join(&prefix, part);
            if self.by_path.contains_key(&prefix) || self.dest_dirs.contains(&prefix) {
                continue;
            }
            let r = resolve_in_root(inp.dest_root, &format!("/{prefix}"), true)?;
            match r.kind() {
                Some(FileKind::Dir) => {
                    self.dest_dirs.insert(prefix.clone());
                    continue;
                }
                Some(_) if r.rel == Path::new(&prefix) => {
                    bail!("cannot copy to /{rel}: /{prefix} exists and is not a directory")
                }
                _ => {}
            }
            // Missing destination directories are 0755 whatever --chmod says (BuildKit's
            // MkdirAll); --chmod applies to what is copied.
            let mode = 0o755;
            let owner = inp.owner.unwrap_or(Owner { uid: 0, gid: 0 });
            self.push(LayerEntry {
                path: prefix.clone(),
                kind: EntryKind::Dir,
                mode,
                uid: owner.uid,
                gid: owner.gid,
                mtime: clamp(inp.now, inp.epoch),
                xattrs: Vec::new(),
            });
        }
        Ok(())
    }

    /// With `--parents`: the directories between the destination and `rel`'s parent.
    fn ensure_parents_below(&mut self, inp: &CopyInputs<'_>, dest: &str, rel: &str) -> Result<()> {
        if let Some(parent) = parent_of(rel) {
            self.ensure_dir(inp, &join(dest, parent))?;
        }
        Ok(())
    }

    fn finish(self) -> Vec<LayerEntry> {
        self.by_path.into_values().collect()
    }
}

fn parent_of(rel: &str) -> Option<&str> {
    rel.rsplit_once('/').map(|(p, _)| p)
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

fn clamp(t: i64, epoch: Option<i64>) -> i64 {
    match epoch {
        Some(e) if t > e => e,
        _ => t,
    }
}

fn excluded(patterns: &[String], rel: &str) -> Result<bool> {
    for p in patterns {
        let p = p.trim_start_matches('/');
        let hit = context::dockerignore::glob_match(p, rel)?
            || rel
                .match_indices('/')
                .any(|(i, _)| context::dockerignore::glob_match(p, &rel[..i]).unwrap_or(false));
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A layer entry for a file found on disk at `host`, to be placed at `path`.
fn entry_from_disk(
    path: &str,
    host: &Path,
    meta: &fs::Metadata,
    step: &CopyStep,
    inp: &CopyInputs<'_>,
) -> Result<Option<LayerEntry>> {
    let ft = meta.file_type();
    let declared = inp.source.declared(host);
    let kind = match declared.and_then(|d| d.device) {
        Some(Device::Char(major, minor)) => EntryKind::CharDevice(major, minor),
        Some(Device::Block(major, minor)) => EntryKind::BlockDevice(major, minor),
        None => match EntryKind::of_disk(host, meta)? {
            Some(kind) => kind,
            // A socket: an empty file with its permissions, as BuildKit copies one.
            None => EntryKind::File {
                size: 0,
                source: Content::Bytes(Vec::new()),
            },
        },
    };
    let is_dir = ft.is_dir();
    let mut mode = declared.map_or(meta.mode() & 0o7777, |d| d.mode);
    if !ft.is_symlink() {
        if let Some(c) = &step.chmod {
            mode = c.apply(mode, is_dir);
        }
    }
    let (uid, gid) = match (inp.owner, inp.preserve_owner) {
        (Some(o), _) => (o.uid, o.gid),
        (None, Some(stage)) => host
            .strip_prefix(stage.path())
            .ok()
            .and_then(|rel| stage.recorded_owner(&rel.to_string_lossy()))
            .unwrap_or((meta.uid(), meta.gid())),
        (None, None) => (0, 0),
    };
    Ok(Some(LayerEntry {
        path: path.to_string(),
        kind,
        mode,
        uid,
        gid,
        mtime: clamp(meta.mtime(), inp.epoch),
        // As BuildKit copies them: file capabilities and user attributes.
        xattrs: if ft.is_symlink() {
            Vec::new()
        } else {
            crate::xattrs::kept(host)
        },
    }))
}

/// True if the file is a (possibly compressed) tar archive, judged by its content.
fn is_archive(path: &Path) -> Result<bool> {
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let Ok((_, mut reader)) = decompressing_reader(BufReader::new(file)) else {
        return Ok(false);
    };
    let mut block = vec![0u8; 512];
    let mut filled = 0;
    while filled < block.len() {
        match reader.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(_) => return Ok(false),
        }
    }
    Ok(filled == 512 && looks_like_tar(&block))
}

/// ADD's archive extraction: unpacks safely into scratch space, then lists what came out
/// under `base`, with owners as the archive recorded them (or `--chown`).
fn extract_archive(
    archive: &Path,
    base: &str,
    step: &CopyStep,
    inp: &CopyInputs<'_>,
    out: &mut Entries,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("add-")
        .tempdir_in(inp.scratch)?
        .keep();
    let label = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let open = || -> Result<Box<dyn Read>> {
        let f = fs::File::open(archive)?;
        let (_, r) = decompressing_reader(BufReader::with_capacity(1 << 20, f))?;
        Ok(r)
    };
    apply_layer(
        open()?,
        &dir,
        &label,
        &ApplyOptions {
            set_owners: false,
            whiteouts: false,
        },
    )
    .with_context(|| format!("cannot extract {label}"))?;
    // Owners as recorded in the archive (they cannot be set on disk unprivileged), and
    // device nodes (which cannot be made unprivileged: kept as the archive says them).
    let mut owners: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut devices: BTreeMap<String, (EntryKind, u32, i64)> = BTreeMap::new();
    let mut tar = tar::Archive::new(open()?);
    for entry in tar.entries()? {
        let entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let h = entry.header();
        owners.insert(path.clone(), (h.uid()? as u32, h.gid()? as u32));
        let numbers = || {
            (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            )
        };
        let kind = match h.entry_type() {
            tar::EntryType::Char => Some(EntryKind::CharDevice(numbers().0, numbers().1)),
            tar::EntryType::Block => Some(EntryKind::BlockDevice(numbers().0, numbers().1)),
            _ => None,
        };
        match kind {
            Some(k) => {
                let mtime = h.mtime().unwrap_or(0) as i64;
                devices.insert(path, (k, h.mode()? & 0o7777, mtime));
            }
            None => {
                devices.remove(&path);
            }
        }
    }
    for (rel, (kind, mode, mtime)) in devices {
        if fs::symlink_metadata(dir.join(&rel)).is_ok() {
            continue; // made on disk (privileged): listed below like any entry
        }
        let (uid, gid) = owners.get(&rel).copied().unwrap_or((0, 0));
        out.push(LayerEntry {
            path: join(base, &rel),
            kind,
            mode: step.chmod.as_ref().map_or(mode, |c| c.apply(mode, false)),
            uid,
            gid,
            mtime: clamp(mtime, inp.epoch),
            xattrs: Vec::new(),
        });
    }
    for e in walkdir::WalkDir::new(&dir).min_depth(1).sort_by_file_name() {
        let e = e?;
        let rel = e
            .path()
            .strip_prefix(&dir)
            .map_err(|_| anyhow!("extraction escaped its directory"))?
            .to_string_lossy()
            .into_owned();
        let meta = e.path().symlink_metadata()?;
        if let Some(mut entry) = entry_from_disk(&join(base, &rel), e.path(), &meta, step, inp)? {
            // The archive's own owners, --chown or not (BuildKit: --chown does not apply
            // to what an archive holds).
            let (uid, gid) = owners.get(&rel).copied().unwrap_or((0, 0));
            entry.uid = uid;
            entry.gid = gid;
            out.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_times_and_excludes() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", ""), "a");
        assert_eq!(join("a", "b"), "a/b");
        assert_eq!(parent_of("a/b/c"), Some("a/b"));
        assert_eq!(parent_of("a"), None);
        assert_eq!(clamp(10, Some(5)), 5);
        assert_eq!(clamp(3, Some(5)), 3);
        assert_eq!(clamp(10, None), 10);
        assert_eq!(parents_pivot("./x/./y/*"), "x");
        assert_eq!(parents_pivot("a/b/./c"), "a/b");
        assert_eq!(parents_pivot("./x/y"), "");
        assert_eq!(below_pivot("x/y/a.txt", "x"), "y/a.txt");
        assert_eq!(below_pivot("x/y/a.txt", ""), "x/y/a.txt");
        let ex = vec!["*.log".to_string(), "/cache".to_string()];
        assert!(excluded(&ex, "a.log").unwrap());
        assert!(
            excluded(&ex, "cache/x/y").unwrap(),
            "below an excluded directory"
        );
        assert!(!excluded(&ex, "src/main.rs").unwrap());
    }
}
