//! Garbage collection: keeps the cache directory within its size, least recently used
//! first, and reports what it holds (`rbuild du`).
//!
//! The unit of eviction is a *root* record (a step result, a built image name, a cache
//! mount, a base image name). Removing a root frees each blob that no other record
//! references any more; a blob nobody references is garbage and goes first. Records
//! leased by a live build are never removed. Named images (base images pulled or loaded,
//! and images built into the store with `-o type=image`) are their own class: removed only
//! after every other root (automatic GC), or when asked (`prune --all`, `--filter
//! type=base-image|image`).
//!
//! Sizes (BuildKit's semantics under buildx's names): `max_used` is a ceiling,
//! `reserved` a floor GC never goes below, `min_free` the free space to keep on the cache's
//! filesystem. Target = max(min(max_used, used − (min_free − free)), reserved). With no
//! size at all, every matching root is removed (`prune`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{params, OptionalExtension};

use super::index::{now, Record, RecordKind};
use super::{remove_tree, Store};

/// Remembered context file digests are forgotten after this many days (a file unchanged
/// for longer is read once more).
const FILE_DIGEST_DAYS: i64 = 30;

/// BuildKit's Unix default caps for the reserved and max-used space.
const RESERVED_CAP: u64 = 10_000_000_000;
const MAX_USED_CAP: u64 = 100_000_000_000;

/// A size given as bytes or as a share of the cache's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Bytes.
    Bytes(u64),
    /// Percent of the filesystem's size.
    Percent(u8),
}

impl Space {
    /// Parses `10GB`, `512MiB`, `1.5g`, `123` (bytes) or `20%`. Units are binary, as
    /// buildx reads them (`KB` = `KiB` = 1024).
    pub fn parse(s: &str) -> Result<Space> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let n: u8 = p
                .trim()
                .parse()
                .ok()
                .filter(|n| *n <= 100)
                .with_context(|| format!("invalid size {s:?}: a percentage is 0% to 100%"))?;
            return Ok(Space::Percent(n));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n >= 0.0)
            .with_context(|| format!("invalid size {s:?}: expected e.g. 10GB, 512MB or 20%"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => bail!("invalid size {s:?}: unknown unit {unit:?}"),
        };
        Ok(Space::Bytes((num * mult as f64) as u64))
    }

    /// Bytes, for a filesystem of `disk_total` bytes.
    pub fn bytes(self, disk_total: u64) -> u64 {
        match self {
            Space::Bytes(b) => b,
            Space::Percent(p) => disk_total / 100 * u64::from(p),
        }
    }
}

/// Parses a duration as buildx does for `until=` and `--keep-duration`: `90s`, `30m`,
/// `24h`, `7d`, or combinations like `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .with_context(|| format!("invalid duration {s:?}: expected e.g. 24h or 30m"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => bail!("invalid duration {s:?}: unknown unit {c:?} (s, m, h or d)"),
        };
        any = true;
    }
    if !num.is_empty() || !any {
        bail!("invalid duration {s:?}: expected e.g. 24h or 30m");
    }
    Ok(Duration::from_secs(total))
}

/// The size limits of one collection; None fields are not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Ceiling.
    pub max_used: Option<Space>,
    /// Floor.
    pub reserved: Option<Space>,
    /// Free space to keep on the filesystem.
    pub min_free: Option<Space>,
    /// Roots used more recently than this are kept.
    pub keep_duration: Option<Duration>,
}

impl Policy {
    /// BuildKit's Unix defaults: reserved min(10%, 10 GB), max-used min(80%, 100 GB),
    /// min-free 20%, each measured on the cache's filesystem; unset fields of `self` take
    /// them. A default floor never lifts a ceiling that was given: it is cut to it.
    pub fn with_defaults(self, disk: Disk) -> Policy {
        let default_reserved = Space::Percent(10).bytes(disk.total).min(RESERVED_CAP);
        let given_max = self.max_used.map_or(u64::MAX, |m| m.bytes(disk.total));
        Policy {
            max_used: self.max_used.or(Some(Space::Bytes(
                Space::Percent(80).bytes(disk.total).min(MAX_USED_CAP),
            ))),
            reserved: self
                .reserved
                .or(Some(Space::Bytes(default_reserved.min(given_max)))),
            min_free: self.min_free.or(Some(Space::Percent(20))),
            keep_duration: self.keep_duration,
        }
    }

    /// Fills the unset fields from the cache directory's `config.json`
    /// (`{"gc": {"max-used-space": "20GB", "reserved-space": …, "min-free-space": …,
    /// "keep-duration": "48h"}}`); a missing file changes nothing.
    pub fn with_config_file(self, root: &Path) -> Result<Policy> {
        let path = root.join("config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        struct Gc {
            max_used_space: Option<String>,
            reserved_space: Option<String>,
            min_free_space: Option<String>,
            keep_duration: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct File {
            gc: Option<Gc>,
        }
        let file: File =
            serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        let Some(gc) = file.gc else {
            return Ok(self);
        };
        let space = |v: Option<String>| v.as_deref().map(Space::parse).transpose();
        let within = |r: Result<Option<Space>>| r.with_context(|| format!("in {}", path.display()));
        Ok(Policy {
            max_used: self.max_used.or(within(space(gc.max_used_space))?),
            reserved: self.reserved.or(within(space(gc.reserved_space))?),
            min_free: self.min_free.or(within(space(gc.min_free_space))?),
            keep_duration: match self.keep_duration {
                Some(k) => Some(k),
                None => gc
                    .keep_duration
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .with_context(|| format!("in {}", path.display()))?,
            },
        })
    }

    /// True when no size is set (a prune of everything that matches).
    pub fn is_unbounded(&self) -> bool {
        self.max_used.is_none() && self.reserved.is_none() && self.min_free.is_none()
    }

    /// How many bytes may stay, for `used` bytes on a filesystem like `disk`; None when
    /// no size is set.
    pub fn target(&self, used: u64, disk: Disk) -> Option<u64> {
        if self.is_unbounded() {
            return None;
        }
        let mut t = self.max_used.map_or(u64::MAX, |m| m.bytes(disk.total));
        if let Some(mf) = self.min_free {
            let want = mf.bytes(disk.total);
            if disk.free < want {
                t = t.min(used.saturating_sub(want - disk.free));
            }
        }
        Some(t.max(self.reserved.map_or(0, |r| r.bytes(disk.total))))
    }
}

/// Size and free space of the cache's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    /// Bytes in all.
    pub total: u64,
    /// Bytes available to unprivileged users.
    pub free: u64,
}

impl Disk {
    /// Measures the filesystem holding `path`.
    pub fn of(path: &Path) -> Result<Disk> {
        let s = nix::sys::statvfs::statvfs(path)
            .with_context(|| format!("cannot measure the filesystem of {}", path.display()))?;
        let frag = s.fragment_size();
        Ok(Disk {
            total: s.blocks() * frag,
            free: s.blocks_available() * frag,
        })
    }
}

/// Which roots a collection may remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these kinds (empty: every kind but base images).
    pub types: Vec<RecordKind>,
    /// Only roots unused for at least this long.
    pub until: Option<Duration>,
    /// Base images too.
    pub all: bool,
}

impl Filter {
    /// Parses buildx's `--filter` values: `type=KIND`, `until=DURATION`.
    pub fn add(&mut self, f: &str) -> Result<()> {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("invalid filter {f:?}: expected KEY=VALUE"))?;
        match k.trim() {
            "type" => self
                .types
                .push(RecordKind::parse(v.trim()).with_context(|| {
                    format!(
                    "invalid filter {f:?}: types are regular, image, base-image, exec.cachemount, snapshot"
                )
                })?),
            "until" => self.until = Some(parse_duration(v)?),
            other => bail!("invalid filter {f:?}: unknown key {other:?} (type or until)"),
        }
        Ok(())
    }

    fn admits(&self, rec: &Record, now: i64, auto: bool) -> bool {
        if let Some(u) = self.until {
            if rec.last_used > now - u.as_secs() as i64 {
                return false;
            }
        }
        if !self.types.is_empty() {
            return self.types.contains(&rec.kind);
        }
        !rec.kind.is_named_image() || self.all || auto
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Removed records (id, bytes freed by removing it and what only it held).
    pub removed: Vec<(String, u64)>,
    /// Bytes in use before.
    pub before: u64,
    /// Bytes in use after.
    pub after: u64,
}

/// The whole index in memory: records, edges, leases.
struct Graph {
    records: BTreeMap<String, Record>,
    children: BTreeMap<String, Vec<String>>,
    incoming: BTreeMap<String, usize>,
    leased: BTreeSet<String>,
    /// The index's own files.
    overhead: u64,
}

impl Graph {
    fn load(store: &Store) -> Result<Graph> {
        let records: BTreeMap<String, Record> = store
            .records()?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut incoming: BTreeMap<String, usize> = BTreeMap::new();
        for (p, c) in store.refs()? {
            if records.contains_key(&p) {
                *incoming.entry(c.clone()).or_default() += 1;
                children.entry(p).or_default().push(c);
            }
        }
        Ok(Graph {
            records,
            children,
            incoming,
            leased: store.leased_ids()?,
            overhead: store.index_size(),
        })
    }

    fn used(&self) -> u64 {
        self.records.values().map(|r| r.size).sum::<u64>() + self.overhead
    }

    /// Blobs reachable from `id` (itself included when it holds space).
    fn reach(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![id.to_string()];
        while let Some(x) = todo.pop() {
            if !seen.insert(x.clone()) {
                continue;
            }
            if let Some(cs) = self.children.get(&x) {
                todo.extend(cs.iter().cloned());
            }
        }
        seen
    }
}

/// Runs a collection under the cache's GC lock (waiting for another collection to end
/// when `wait`, else skipping). `auto` is the end-of-build collection: base images are
/// removed only once nothing else is left to remove.
pub fn collect(
    store: &Store,
    policy: &Policy,
    filter: &Filter,
    auto: bool,
    wait: bool,
) -> Result<Report> {
    let Some(_lock) = gc_lock(store.root(), wait)? else {
        return Ok(Report::default());
    };
    store.collect_dead()?;
    store.sweep_snapshot_orphans()?;
    let disk = Disk::of(store.root())?;
    let graph = Graph::load(store)?;
    let before = graph.used();
    let mut report = Report {
        before,
        after: before,
        ..Report::default()
    };
    let target = policy.target(before, disk);
    let t = now();
    let keep = |r: &Record| {
        policy
            .keep_duration
            .is_some_and(|k| r.last_used > t - k.as_secs() as i64)
    };
    // Garbage first, then roots least recently used first (fewest uses first on ties),
    // base images last.
    let mut order: Vec<&Record> = graph
        .records
        .values()
        .filter(|r| r.kind == RecordKind::Blob && !graph.incoming.contains_key(&r.id))
        .collect();
    let mut roots: Vec<&Record> = graph
        .records
        .values()
        .filter(|r| r.kind != RecordKind::Blob && filter.admits(r, t, auto) && !keep(r))
        .collect();
    roots.sort_by_key(|r| (r.kind.is_named_image(), r.last_used, r.use_count));
    let garbage = order.len();
    order.extend(roots);
    for (i, rec) in order.into_iter().enumerate() {
        let is_garbage = i < garbage;
        if !is_garbage && target.is_some_and(|t| report.after <= t) {
            break;
        }
        if graph.leased.contains(&rec.id) {
            continue;
        }
        if let Some(bytes) = store.remove_cascade(&rec.id)? {
            report.after = report.after.saturating_sub(bytes);
            report.removed.push((rec.id.clone(), bytes));
        }
    }
    store.forget_file_digests(t - FILE_DIGEST_DAYS * 86_400)?;
    if !report.removed.is_empty() {
        store.checkpoint();
    }
    Ok(report)
}

fn gc_lock(root: &Path, wait: bool) -> Result<Option<Flock<File>>> {
    let path = root.join("gc.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(file, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

impl Store {
    /// Removes record `id` unless it is leased (or, for a blob, still referenced), then
    /// every blob that only it held. Returns the bytes freed, or None when `id` stayed.
    fn remove_cascade(&self, id: &str) -> Result<Option<u64>> {
        let mut trash: Vec<(std::path::PathBuf, std::path::PathBuf)> = Vec::new();
        let freed = self.write_tx(|tx| {
            let mut todo = vec![id.to_string()];
            let mut freed = 0u64;
            let mut first = true;
            while let Some(x) = todo.pop() {
                let leased: bool = tx
                    .query_row("SELECT 1 FROM leased WHERE record = ?1", params![x], |_| {
                        Ok(())
                    })
                    .optional()?
                    .is_some();
                let referenced: bool = tx
                    .query_row(
                        "SELECT 1 FROM refs r JOIN records p ON p.id = r.parent WHERE r.child = ?1",
                        params![x],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                let Some(rec) = self.record_in(tx, &x)? else {
                    continue;
                };
                if leased || referenced {
                    if first {
                        return Ok(None);
                    }
                    continue;
                }
                first = false;
                let mut st = tx.prepare("SELECT child FROM refs WHERE parent = ?1")?;
                let kids: Vec<String> = st
                    .query_map(params![x], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                tx.execute("DELETE FROM refs WHERE parent = ?1", params![x])?;
                tx.execute("DELETE FROM records WHERE id = ?1", params![x])?;
                freed += rec.size;
                // Moved aside inside the transaction (nobody can lease it between), removed
                // after the commit; a process killed before the commit leaves it in its
                // directory, where the next start puts it back.
                let aside = match rec.kind {
                    RecordKind::Blob => x.parse::<super::Digest>().ok().map(|d| {
                        (
                            self.blob_path(&d),
                            self.tmp_dir().join(format!("gc-{}", d.hex())),
                        )
                    }),
                    RecordKind::CacheMount => {
                        let name = x.trim_start_matches("mount:");
                        Some((
                            self.root().join("mounts").join(name),
                            self.tmp_dir().join(format!("gc-mount-{name}")),
                        ))
                    }
                    RecordKind::Snapshot => {
                        let key = x.trim_start_matches("snapshot:");
                        Some((
                            self.snapshot_dir(key),
                            self.tmp_dir().join(format!("gc-snap-{key}")),
                        ))
                    }
                    _ => None,
                };
                if let Some((from, to)) = aside {
                    if std::fs::rename(&from, &to).is_ok() {
                        trash.push((from, to));
                    }
                }
                todo.extend(kids);
            }
            Ok(if first { None } else { Some(freed) })
        });
        match freed {
            Ok(freed) => {
                for (_, t) in trash {
                    remove_tree(&t);
                }
                Ok(freed)
            }
            Err(e) => {
                // The rows stayed: so does what they describe.
                for (from, to) in trash {
                    let _ = std::fs::rename(&to, &from);
                }
                Err(e)
            }
        }
    }
}

/// Bytes in the files below `dir` (apparent sizes, as `du -sb` counts them).
pub fn tree_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// One root as `rbuild du` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The record.
    pub record: Record,
    /// Bytes it holds that no other root holds.
    pub private: u64,
    /// Bytes it holds that other roots hold too.
    pub shared: u64,
    /// Whether a collection could remove it now.
    pub reclaimable: bool,
    /// The blobs it references directly.
    pub parents: Vec<String>,
}

/// `rbuild du`'s summary: bytes of the records shown, each blob counted once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Held by more than one root.
    pub shared: u64,
    /// Held by one root.
    pub private: u64,
    /// What a collection could free now (private bytes of roots no live build leases).
    pub reclaimable: u64,
    /// Shared + private, plus the index's own files when nothing is filtered out.
    pub total: u64,
}

/// What the cache holds, root by root (oldest use first), and the summary.
pub fn usage(store: &Store, filter: &Filter) -> Result<(Vec<Usage>, Summary)> {
    let graph = Graph::load(store)?;
    let t = now();
    let mut holders: BTreeMap<String, usize> = BTreeMap::new();
    let mut reach = BTreeMap::new();
    for r in graph.records.values() {
        let is_root = r.kind != RecordKind::Blob || !graph.incoming.contains_key(&r.id);
        if is_root {
            let set = graph.reach(&r.id);
            for b in &set {
                *holders.entry(b.clone()).or_default() += 1;
            }
            reach.insert(r.id.clone(), set);
        }
    }
    let size_of = |id: &str| graph.records.get(id).map_or(0, |r| r.size);
    let mut out = Vec::new();
    for (id, set) in &reach {
        let rec = &graph.records[id];
        if !filter.types.is_empty() && !filter.types.contains(&rec.kind) {
            continue;
        }
        if filter
            .until
            .is_some_and(|u| rec.last_used > t - u.as_secs() as i64)
        {
            continue;
        }
        let (mut private, mut shared) = (0, 0);
        for b in set {
            if holders.get(b).copied().unwrap_or(0) > 1 {
                shared += size_of(b);
            } else {
                private += size_of(b);
            }
        }
        out.push(Usage {
            record: rec.clone(),
            private,
            shared,
            reclaimable: !graph.leased.contains(id),
            parents: graph.children.get(id).cloned().unwrap_or_default(),
        });
    }
    out.sort_by_key(|u| (u.record.last_used, u.record.use_count));
    let mut shown = BTreeSet::new();
    let mut sum = Summary::default();
    for u in &out {
        for b in &reach[&u.record.id] {
            if !shown.insert(b.clone()) {
                continue;
            }
            if holders.get(b).copied().unwrap_or(0) > 1 {
                sum.shared += size_of(b);
            } else {
                sum.private += size_of(b);
                if u.reclaimable {
                    sum.reclaimable += size_of(b);
                }
            }
        }
    }
    sum.total = sum.shared + sum.private;
    if filter.types.is_empty() && filter.until.is_none() {
        sum.total = graph.used();
    }
    Ok((out, sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_like_buildx() {
        assert_eq!(Space::parse("10GB").unwrap(), Space::Bytes(10 << 30));
        assert_eq!(Space::parse("512mb").unwrap(), Space::Bytes(512 << 20));
        assert_eq!(Space::parse("1.5k").unwrap(), Space::Bytes(1536));
        assert_eq!(Space::parse("123").unwrap(), Space::Bytes(123));
        assert_eq!(Space::parse("20%").unwrap(), Space::Percent(20));
        for bad in ["", "x", "10XB", "120%", "-1"] {
            assert!(Space::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn the_config_file_fills_what_flags_left_unset() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Policy {
            max_used: Some(Space::Bytes(5)),
            ..Policy::default()
        };
        assert_eq!(flags.with_config_file(dir.path()).unwrap(), flags);
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"gc": {"max-used-space": "1GB", "reserved-space": "10%", "keep-duration": "1h"}}"#,
        )
        .unwrap();
        let p = flags.with_config_file(dir.path()).unwrap();
        assert_eq!(p.max_used, Some(Space::Bytes(5)));
        assert_eq!(p.reserved, Some(Space::Percent(10)));
        assert_eq!(p.keep_duration, Some(Duration::from_secs(3600)));
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"gc": {"max-used": "1GB"}}"#,
        )
        .unwrap();
        assert!(flags.with_config_file(dir.path()).is_err());
    }

    #[test]
    fn target_follows_buildkit() {
        let disk = Disk {
            total: 1000,
            free: 500,
        };
        let p = Policy {
            max_used: Some(Space::Bytes(300)),
            reserved: Some(Space::Bytes(100)),
            min_free: Some(Space::Bytes(600)),
            keep_duration: None,
        };
        // 100 short of min-free: 400 used may keep 300, capped by max-used 300.
        assert_eq!(p.target(400, disk), Some(300));
        // 250 used, min-free wants 150 of it gone, but reserved keeps 100.
        assert_eq!(p.target(250, disk), Some(150));
        assert_eq!(p.target(150, disk), Some(100));
        assert_eq!(Policy::default().target(5, disk), None);
        let d = Policy::default().with_defaults(Disk {
            total: 1 << 40,
            free: 1 << 39,
        });
        assert_eq!(d.reserved, Some(Space::Bytes(RESERVED_CAP)));
        assert_eq!(d.max_used, Some(Space::Bytes(MAX_USED_CAP)));
        let small = Policy {
            max_used: Some(Space::Bytes(1000)),
            ..Policy::default()
        }
        .with_defaults(Disk {
            total: 1 << 40,
            free: 1 << 39,
        });
        assert_eq!(small.reserved, Some(Space::Bytes(1000)));
    }

    fn blob(store: &Store, bytes: &[u8]) -> crate::store::Digest {
        store.write_blob(bytes).unwrap()
    }

    #[test]
    fn lru_roots_go_first_and_shared_blobs_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        const K: u64 = 100_000;
        let shared = blob(&store, &[1u8; K as usize]);
        let a = blob(&store, &[2u8; K as usize]);
        let b = blob(&store, &[3u8; K as usize]);
        let key = |s: &str| crate::store::Digest::of(s.as_bytes());
        let result = |d: &crate::store::Digest| super::super::index::StepResult {
            layer: Some(super::super::index::LayerRef {
                digest: d.to_string(),
                diff_id: d.to_string(),
                size: 1000,
                media_type: "x".into(),
            }),
        };
        store
            .put_step_result(&key("s"), &result(&shared), "s")
            .unwrap();
        store.put_step_result(&key("a"), &result(&a), "a").unwrap();
        store.put_step_result(&key("b"), &result(&b), "b").unwrap();
        store
            .put_step_result(&key("s2"), &result(&shared), "s2")
            .unwrap();
        // Leased by this process: nothing can go.
        let r = collect(&store, &Policy::default(), &Filter::default(), false, true).unwrap();
        assert!(r.removed.is_empty(), "{r:?}");
        // Drop this process's lease rows (as if its build had ended) and age "a".
        store
            .drop_lease_rows(&[store.shared.lease.id().to_string()])
            .unwrap();
        store
            .write_tx(|tx| {
                tx.execute(
                    "UPDATE records SET last_used = 1 WHERE id = ?1",
                    params![format!("step:{}", key("a").hex())],
                )?;
                Ok(())
            })
            .unwrap();
        let (usage_before, sum) = usage(&store, &Filter::default()).unwrap();
        assert_eq!(sum.total - store.index_size(), 3 * K);
        assert_eq!((sum.shared, sum.private), (K, 2 * K));
        assert_eq!(usage_before[0].record.description, "a");
        // Room for two blobs and a half (the index's own files count too).
        let p = Policy {
            max_used: Some(Space::Bytes(store.index_size() + 5 * K / 2)),
            ..Policy::default()
        };
        let freed = |r: &Report| r.removed.iter().map(|(_, b)| b).sum::<u64>();
        let r = collect(&store, &p, &Filter::default(), false, true).unwrap();
        assert_eq!(freed(&r), K, "{r:?}");
        assert!(!store.blob_path(&a).exists());
        assert!(store.blob_path(&b).exists() && store.blob_path(&shared).exists());
        // Removing one holder of the shared blob frees nothing; removing both frees it.
        let r = collect(&store, &Policy::default(), &Filter::default(), false, true).unwrap();
        assert_eq!(freed(&r), 2 * K, "{r:?}");
        assert!(!store.blob_path(&shared).exists());
    }
}
