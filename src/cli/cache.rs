//! `rbuild du`, `rbuild prune` and `rbuild cache check`: what the cache holds, making it
//! smaller, and checking it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};

use super::{default_cache_dir, EXIT_BUILD_FAILED, EXIT_OK};
use crate::store::gc::{self, parse_duration, Filter, Policy, Space, Usage};
use crate::store::index::{now, RecordKind};
use crate::store::Store;

/// The GC knobs, shared by `build` and `prune` (flags, then env, then the cache
/// directory's `config.json`, then BuildKit's defaults for the automatic collection).
#[derive(Debug, Clone, Default, Args)]
pub struct GcArgs {
    /// Most space the cache may use (e.g. 20GB, 50%).
    #[arg(long = "max-used-space", value_name = "SIZE", env = "RBUILD_MAX_USED_SPACE",
          value_parser = parse_space)]
    pub max_used_space: Option<Space>,
    /// Space the cache keeps whatever the other limits say (a floor, never a cap).
    #[arg(long = "reserved-space", value_name = "SIZE", env = "RBUILD_RESERVED_SPACE",
          value_parser = parse_space)]
    pub reserved_space: Option<Space>,
    /// Free space to keep on the cache's filesystem.
    #[arg(long = "min-free-space", value_name = "SIZE", env = "RBUILD_MIN_FREE_SPACE",
          value_parser = parse_space)]
    pub min_free_space: Option<Space>,
    /// Keep what was used more recently than this (e.g. 48h).
    #[arg(long = "keep-duration", value_name = "DURATION", env = "RBUILD_KEEP_DURATION",
          value_parser = parse_keep)]
    pub keep_duration: Option<Duration>,
}

fn parse_space(s: &str) -> Result<Space, String> {
    Space::parse(s).map_err(|e| e.to_string())
}

fn parse_keep(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

impl GcArgs {
    /// The policy the flags (and env) give, filled from the cache's config file.
    pub fn policy(&self, store: &Store) -> Result<Policy> {
        Policy {
            max_used: self.max_used_space,
            reserved: self.reserved_space,
            min_free: self.min_free_space,
            keep_duration: self.keep_duration,
        }
        .with_config_file(store.root())
    }
}

/// `--cache-dir` of the commands that work on the store.
#[derive(Debug, Clone, Default, Args)]
pub struct CacheDirArg {
    /// Cache directory (default: $XDG_CACHE_HOME/rbuild or ~/.cache/rbuild).
    #[arg(
        long = "cache-dir",
        value_name = "DIR",
        env = "RBUILD_CACHE_DIR",
        global = true
    )]
    pub cache_dir: Option<PathBuf>,
}

impl CacheDirArg {
    /// Opens the store it names (or the default one).
    pub fn open(&self) -> Result<Store> {
        Store::open(&self.cache_dir.clone().unwrap_or_else(default_cache_dir))
    }
}

/// `rbuild du`: the cache's records and their sizes.
#[derive(Debug, Args)]
pub struct DuArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Show every field of every record.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// `type=regular|image|base-image|exec.cachemount` or `until=DURATION`; repeatable.
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
}

/// `rbuild prune`: removes cache records.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Base images (pulled or loaded) too.
    #[arg(long, short = 'a')]
    all: bool,
    /// `type=regular|image|base-image|exec.cachemount` or `until=DURATION`; repeatable.
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'f')]
    force: bool,
    /// List every removed record.
    #[arg(long, short = 'v')]
    verbose: bool,
    #[command(flatten)]
    gc: GcArgs,
}

/// `rbuild cache`: checks.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Verifies every blob's digest and every record; reports orphans.
    Check {
        /// Remove what is broken and index what is orphaned.
        #[arg(long)]
        repair: bool,
    },
}

/// Which of the cache commands.
pub enum Which {
    /// `rbuild du`.
    Du(DuArgs),
    /// `rbuild prune`.
    Prune(PruneArgs),
    /// `rbuild cache`.
    Cache(CacheArgs),
}

/// Runs `rbuild du|prune|cache …` and returns the exit code.
pub fn main(which: Which) -> i32 {
    let result = match which {
        Which::Du(a) => du(a),
        Which::Prune(a) => prune(a),
        Which::Cache(a) => cache(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            super::print_error(&e);
            EXIT_BUILD_FAILED
        }
    }
}

fn filter_of(raw: &[String], all: bool) -> Result<Filter> {
    let mut f = Filter {
        all,
        ..Filter::default()
    };
    for r in raw {
        f.add(r)?;
    }
    Ok(f)
}

fn du(args: DuArgs) -> Result<i32> {
    let filter = filter_of(&args.filters, true)?;
    let store = args.cache.open()?;
    let (rows, sum) = gc::usage(&store, &filter)?;
    let t = now();
    if args.verbose {
        for u in &rows {
            print_verbose(u, t);
        }
    } else {
        println!(
            "{:<48}\t{:<12}\t{:<12}\tLAST ACCESSED",
            "ID", "RECLAIMABLE", "SIZE"
        );
        for u in &rows {
            println!(
                "{:<48}\t{:<12}\t{:<12}\t{}",
                short_id(&u.record.id),
                u.reclaimable,
                human_size(u.private + u.shared),
                ago(t - u.record.last_used)
            );
        }
    }
    println!("Shared:\t\t{}", human_size(sum.shared));
    println!("Private:\t{}", human_size(sum.private));
    println!("Reclaimable:\t{}", human_size(sum.reclaimable));
    println!("Total:\t\t{}", human_size(sum.total));
    Ok(EXIT_OK)
}

fn print_verbose(u: &Usage, t: i64) {
    let r = &u.record;
    println!("ID:\t\t{}", r.id);
    if !u.parents.is_empty() {
        println!("Parents:");
        for p in &u.parents {
            println!(" - {p}");
        }
    }
    println!("Created at:\t{}", crate::solver::rfc3339(r.created));
    println!("Mutable:\t{}", r.kind == RecordKind::CacheMount);
    println!("Reclaimable:\t{}", u.reclaimable);
    println!("Shared:\t\t{}", u.shared > 0);
    println!("Size:\t\t{}", human_size(u.private + u.shared));
    if !r.description.is_empty() {
        println!("Description:\t{}", r.description);
    }
    println!("Usage count:\t{}", r.use_count);
    println!("Last used:\t{}", ago(t - r.last_used));
    println!("Type:\t\t{}", r.kind.as_str());
    println!();
}

fn prune(args: PruneArgs) -> Result<i32> {
    let filter = filter_of(&args.filters, args.all)?;
    if !args.force && !confirm(args.all)? {
        eprintln!("prune cancelled (--force skips the question)");
        return Ok(EXIT_OK);
    }
    enter_userns();
    let store = args.cache.open()?;
    let policy = args.gc.policy(&store)?;
    let report = gc::collect(&store, &policy, &filter, false, true)?;
    let freed: u64 = report.removed.iter().map(|(_, b)| *b).sum();
    for (id, bytes) in &report.removed {
        if args.verbose || !id.starts_with("sha256:") {
            println!("{:<48}\t{}", short_id(id), human_size(*bytes));
        }
    }
    println!("Total:\t{}", human_size(freed));
    Ok(EXIT_OK)
}

/// Asks on the terminal; without one, the answer is no (as buildx reads an empty line).
fn confirm(all: bool) -> Result<bool> {
    let what = if all {
        "all build cache, base images included"
    } else {
        "all dangling build cache"
    };
    eprint!("WARNING! This will remove {what}. Are you sure you want to continue? [y/N] ");
    let _ = std::io::stderr().flush();
    if !std::io::stdin().is_terminal() {
        eprintln!();
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Enters a user namespace (when not root) so files that builds made as other ids in
/// theirs (cache mounts) can be removed; without one, what cannot be removed stays for a
/// later collection.
fn enter_userns() {
    if !nix::unistd::geteuid().is_root() {
        let _ = crate::sandbox::userns::enter();
    }
}

fn cache(args: CacheArgs) -> Result<i32> {
    let CacheCommand::Check { repair } = args.command;
    enter_userns();
    let store = args.cache.open()?;
    let report = crate::store::check::check(&store, repair)?;
    for p in &report.problems {
        println!("{p}");
    }
    println!(
        "checked {} blobs and {} records: {}",
        report.blobs,
        report.records,
        match (report.problems.len(), repair) {
            (0, _) => "clean".to_string(),
            (n, true) => format!("{n} problems, repaired"),
            (n, false) => format!("{n} problems (--repair fixes them)"),
        }
    );
    Ok(if report.problems.is_empty() || repair {
        EXIT_OK
    } else {
        EXIT_BUILD_FAILED
    })
}

fn short_id(id: &str) -> String {
    let id = id.strip_prefix("step:").unwrap_or(id);
    if id.chars().count() > 48 {
        format!("{}…", id.chars().take(47).collect::<String>())
    } else {
        id.to_string()
    }
}

/// Sizes as buildx prints them (decimal units, four significant digits).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    let s = format!("{v:.4}");
    let digits = s.split('.').next().map_or(1, str::len);
    let shown = format!("{v:.prec$}", prec = 4usize.saturating_sub(digits));
    let shown = if shown.contains('.') {
        shown
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        shown
    };
    format!("{shown}{}", UNITS[unit])
}

/// "3 hours ago", as buildx says it.
fn ago(secs: i64) -> String {
    let s = secs.max(0);
    let text = match s {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    };
    format!("{text} ago")
}

/// Parses `--no-cache-filter` values (comma-separated, repeatable) into stage names.
pub fn no_cache_names(raw: &[String]) -> Vec<String> {
    raw.iter()
        .flat_map(|r| r.split(','))
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks that a `--no-cache-filter` name is a stage of the Dockerfile.
pub fn check_stage_name(name: &str, stages: &[Option<String>]) -> Result<usize> {
    stages
        .iter()
        .position(|s| s.as_deref() == Some(name))
        .ok_or_else(|| {
            anyhow!("--no-cache-filter {name}: the Dockerfile has no stage named {name:?}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_buildx() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(10_000_000_000), "10GB");
        assert_eq!(ago(0), "Less than a second ago");
        assert_eq!(ago(7300), "2 hours ago");
    }

    #[test]
    fn no_cache_filter_names() {
        assert_eq!(
            no_cache_names(&["a,B".into(), "c".into()]),
            vec!["a", "b", "c"]
        );
        let stages = vec![Some("a".to_string()), None];
        assert_eq!(check_stage_name("a", &stages).unwrap(), 0);
        assert!(check_stage_name("z", &stages).is_err());
    }
}
