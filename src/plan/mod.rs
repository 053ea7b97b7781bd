//! The build plan: stages, what each depends on, which must be built for the target, and
//! (in [`steps`]) each stage's instructions expanded into executable steps.
//!
//! Planning never touches the disk: it needs only the parsed Dockerfile, the build options
//! and, for [`steps::expand_stage`], the config of the stage's base.

pub mod chmod;
pub mod error;
pub mod lint;
pub mod mounts;
pub mod platform;
pub mod steps;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use crate::dockerfile::ast::{Args, Dockerfile, Instruction, Keyword};
use crate::dockerfile::expand::{expand_word, Vars};
pub use error::{at_line, with_line, LineError};
pub use platform::Platform;

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An earlier stage of this Dockerfile, by index.
    Stage(usize),
    /// An image reference (resolved by the image sources).
    Image(String),
}

/// One `FROM` section of the Dockerfile.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Position among the stages, from 0.
    pub index: usize,
    /// The `AS` name, lowercased.
    pub name: Option<String>,
    /// What it starts from.
    pub base: Base,
    /// The FROM instruction's line.
    pub line: usize,
    /// `FROM --platform=` after expansion, if given.
    pub platform: Option<String>,
    /// The instructions after FROM, unexpanded.
    pub instructions: Vec<Instruction>,
    /// Stages this one reads from (FROM and COPY --from), by index.
    pub deps: BTreeSet<usize>,
}

impl StagePlan {
    /// A label for progress output: the name, or the index.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

/// Inputs of planning that come from the command line.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// The platform being built (the host's).
    pub platform: Platform,
    /// `--network`: the network of RUN steps without one of their own (None: the host's).
    pub default_network: Option<String>,
    /// `--add-host NAME:IP` entries every RUN step's /etc/hosts gets.
    pub extra_hosts: Vec<String>,
    /// `--ulimit NAME=SOFT[:HARD]` limits every RUN step runs with.
    pub ulimits: Vec<String>,
}

/// A whole build: the stages and the order to build the needed ones in.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every stage of the Dockerfile.
    pub stages: Vec<StagePlan>,
    /// Index of the stage whose result is the image.
    pub target: usize,
    /// Stages to build, dependencies first; stages the target does not need are absent.
    pub order: Vec<usize>,
    /// Global ARGs (declared before the first FROM) with their values.
    pub meta_args: BTreeMap<String, String>,
    /// Names of all global ARGs, including those without a value.
    pub meta_declared: BTreeSet<String>,
    /// The options the plan was made with.
    pub options: PlanOptions,
    /// The escape character of the Dockerfile.
    pub escape: char,
}

/// Build arguments every build defines without an ARG (BuildKit's predefined proxy args).
pub const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

impl Plan {
    /// Splits the Dockerfile into stages, resolves FROM and `COPY --from` references, and
    /// picks the stages the target needs.
    pub fn new(df: &Dockerfile, options: PlanOptions) -> Result<Plan> {
        // Everything this Dockerfile's words expand to, from here on, is bounded.
        crate::dockerfile::expand::set_budget(crate::dockerfile::expand::MAX_TOTAL);
        let mut meta_args = BTreeMap::new();
        let mut meta_declared = BTreeSet::new();
        let automatic: BTreeMap<String, String> = automatic_args(&options.platform);
        let mut stages: Vec<StagePlan> = Vec::new();

        for inst in &df.instructions {
            if inst.keyword == Keyword::From {
                let Args::From { image, alias } = &inst.args else {
                    return Err(at_line(inst.span.start, "malformed FROM"));
                };
                let vars = MetaVars {
                    meta: &meta_args,
                    automatic: &automatic,
                };
                let image = expand_word(image, &vars, df.escape)
                    .map_err(|e| at_line(inst.span.start, e))?;
                if image.is_empty() {
                    return Err(at_line(
                        inst.span.start,
                        "base name should not be blank (an ARG used in FROM has no value)",
                    ));
                }
                let platform = match flag_value(inst, "platform") {
                    Some(p) => Some(
                        expand_word(&p, &vars, df.escape)
                            .map_err(|e| at_line(inst.span.start, e))?,
                    ),
                    None => None,
                };
                check_flags(inst, &["platform"])?;
                let name = match alias {
                    Some(a) => {
                        let a = a.to_lowercase();
                        validate_stage_name(&a).map_err(|e| at_line(inst.span.start, e))?;
                        // A name used twice is allowed (BuildKit warns, and builds): a
                        // reference means the latest stage of that name before it.
                        Some(a)
                    }
                    None => None,
                };
                let base = if image.eq_ignore_ascii_case("scratch") {
                    Base::Scratch
                } else if let Some(i) = find_stage(&stages, &image) {
                    Base::Stage(i)
                } else {
                    Base::Image(image)
                };
                let mut deps = BTreeSet::new();
                if let Base::Stage(i) = base {
                    deps.insert(i);
                }
                stages.push(StagePlan {
                    index: stages.len(),
                    name,
                    base,
                    line: inst.span.start,
                    platform,
                    instructions: Vec::new(),
                    deps,
                });
                continue;
            }
            match stages.last_mut() {
                Some(stage) => stage.instructions.push(inst.clone()),
                None => {
                    let Args::Arg(pairs) = &inst.args else {
                        return Err(at_line(
                            inst.span.start,
                            format!(
                                "{} before the first FROM: only ARG may come before FROM",
                                inst.original.split_whitespace().next().unwrap_or("")
                            ),
                        ));
                    };
                    for (name, default) in pairs {
                        meta_declared.insert(name.clone());
                        let value = match options.build_args.get(name) {
                            Some(v) => Some(v.clone()),
                            None => match default {
                                Some(d) => {
                                    let vars = MetaVars {
                                        meta: &meta_args,
                                        automatic: &automatic,
                                    };
                                    Some(
                                        expand_word(d, &vars, df.escape)
                                            .map_err(|e| at_line(inst.span.start, e))?,
                                    )
                                }
                                None => automatic.get(name).cloned(),
                            },
                        };
                        match value {
                            Some(v) => {
                                meta_args.insert(name.clone(), v);
                            }
                            None => {
                                meta_args.remove(name);
                            }
                        }
                    }
                }
            }
        }
        if stages.is_empty() {
            return Err(at_line(
                df.instructions.last().map_or(1, |i| i.span.start),
                "the Dockerfile has no FROM instruction: no build stage",
            ));
        }

        // COPY --from references, expanded with the global ARGs as BuildKit does.
        for i in 0..stages.len() {
            let mut deps = BTreeSet::new();
            for inst in &stages[i].instructions {
                let vars = MetaVars {
                    meta: &meta_args,
                    automatic: &automatic,
                };
                let expand = |w: &str| {
                    expand_word(w, &vars, df.escape).map_err(|e| at_line(inst.span.start, e))
                };
                // COPY --from=X and RUN --mount=...,from=X name what they read.
                let (what, froms) = match inst.keyword {
                    Keyword::Copy => (
                        "COPY --from",
                        flag_value(inst, "from")
                            .map(|f| expand(&f))
                            .transpose()?
                            .into_iter()
                            .collect(),
                    ),
                    Keyword::Run => {
                        let mut froms = Vec::new();
                        for m in flag_values(inst, "mount") {
                            // Errors in the value are reported with the stage's own
                            // variables when its steps are expanded.
                            let spec = expand(&m)
                                .ok()
                                .and_then(|v| mounts::parse_mount(&v, "/").ok());
                            froms.extend(spec.and_then(|s| s.from));
                        }
                        ("RUN --mount from", froms)
                    }
                    _ => continue,
                };
                for from in froms {
                    if let Some(dep) = resolve_stage_ref(&stages[..i], &from) {
                        deps.insert(dep);
                    } else if find_stage(&stages, &from).is_some() || from.parse::<usize>().is_ok()
                    {
                        return Err(at_line(
                            inst.span.start,
                            format!("{what}={from}: a stage can only read from an earlier stage"),
                        ));
                    } else if let Some(close) = closest_stage(&stages, &from) {
                        // A bare name one or two letters from a stage's is a typo, not an
                        // image to fetch.
                        return Err(at_line(
                            inst.span.start,
                            format!(
                                "{what}={from}: there is no stage named {from:?}; did you mean {close:?}? (to use the image, name it in full: docker.io/library/{from})"
                            ),
                        ));
                    }
                }
            }
            stages[i].deps.extend(deps);
        }

        let target = match &options.target {
            None => stages.len() - 1,
            Some(t) => find_stage(&stages, &t.to_lowercase()).ok_or_else(|| {
                anyhow::anyhow!("target stage {t:?} could not be found in the Dockerfile")
            })?,
        };
        let mut needed = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(s) = todo.pop() {
            if needed.insert(s) {
                todo.extend(stages[s].deps.iter().copied());
            }
        }
        Ok(Plan {
            order: needed.into_iter().collect(),
            stages,
            target,
            meta_args,
            meta_declared,
            options,
            escape: df.escape,
        })
    }

    /// Resolves a `COPY --from` value against the stages before `stage`.
    pub fn stage_ref(&self, stage: usize, name: &str) -> Option<usize> {
        resolve_stage_ref(&self.stages[..stage], name)
    }

    /// Build args given on the command line that no ARG consumed (for a warning).
    pub fn unused_build_args(&self, used: &BTreeSet<String>) -> Vec<String> {
        self.options
            .build_args
            .keys()
            .filter(|k| {
                !used.contains(*k)
                    && !self.meta_declared.contains(*k)
                    && !PREDEFINED_ARGS.contains(&k.as_str())
            })
            .cloned()
            .collect()
    }
}

fn resolve_stage_ref(stages: &[StagePlan], name: &str) -> Option<usize> {
    if let Ok(i) = name.parse::<usize>() {
        return (i < stages.len()).then_some(i);
    }
    find_stage(stages, &name.to_lowercase())
}

/// The stage name `name` is most likely a typo of: a bare name (no registry, tag or
/// digest) of four letters or more, one edit from a stage's (two from a name of six
/// letters or more), and not one itself. (`COPY --from` only: `FROM python` beside a
/// stage `python3` is an image.)
fn closest_stage(stages: &[StagePlan], name: &str) -> Option<String> {
    if name.contains(['/', ':', '@', '.']) || name.chars().count() < 4 {
        return None;
    }
    let name = name.to_lowercase();
    let limit = if name.chars().count() >= 6 { 2 } else { 1 };
    stages
        .iter()
        .filter_map(|s| s.name.as_deref())
        .filter(|s| *s != name)
        .map(|s| (edit_distance(s, &name), s))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, s)| s.to_string())
}

/// Edits between two short strings: insertions, deletions, substitutions and swaps of
/// two neighbours (`biuld` is one edit from `build`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The latest of `stages` named `name` (case-insensitive).
fn find_stage(stages: &[StagePlan], name: &str) -> Option<usize> {
    let name = name.to_lowercase();
    stages
        .iter()
        .rposition(|s| s.name.as_deref() == Some(name.as_str()))
}

fn validate_stage_name(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid stage name {name:?}: must start with a letter and contain only letters, digits, '-', '_' and '.'"
        ))
    }
}

/// The value of flag `name` of an instruction, if given (the last one wins).
pub fn flag_value(inst: &Instruction, name: &str) -> Option<String> {
    inst.flags
        .iter()
        .rev()
        .find(|f| f.name == name)
        .map(|f| f.value.clone().unwrap_or_default())
}

/// Every value of a repeatable flag.
pub fn flag_values(inst: &Instruction, name: &str) -> Vec<String> {
    inst.flags
        .iter()
        .filter(|f| f.name == name)
        .map(|f| f.value.clone().unwrap_or_default())
        .collect()
}

/// Fails on a flag the instruction does not take.
pub fn check_flags(inst: &Instruction, allowed: &[&str]) -> Result<()> {
    for f in &inst.flags {
        if !allowed.contains(&f.name.as_str()) {
            let keyword = inst.original.split_whitespace().next().unwrap_or("");
            return Err(at_line(
                inst.span.start,
                format!("unknown flag: --{} for {keyword}", f.name),
            ));
        }
    }
    Ok(())
}

/// The automatic platform args (`TARGETPLATFORM`, `BUILDARCH`, ...).
pub fn automatic_args(platform: &Platform) -> BTreeMap<String, String> {
    let mut args: BTreeMap<String, String> = platform.args("TARGET").into_iter().collect();
    args.extend(Platform::host().args("BUILD"));
    args
}

/// Variables visible in FROM lines and in global ARG defaults.
struct MetaVars<'a> {
    meta: &'a BTreeMap<String, String>,
    automatic: &'a BTreeMap<String, String>,
}

impl Vars for MetaVars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.meta
            .get(name)
            .or_else(|| self.automatic.get(name))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn plan(src: &str, args: &[(&str, &str)], target: Option<&str>) -> Result<Plan> {
        let df = parse(src.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Plan::new(
            &df,
            PlanOptions {
                build_args: args
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                target: target.map(Into::into),
                platform: Platform::host(),
                default_network: None,
                extra_hosts: Vec::new(),
                ulimits: Vec::new(),
            },
        )
    }

    #[test]
    fn run_mount_from_makes_a_dependency() {
        let src = "FROM scratch AS tools\nFROM scratch AS unused\nFROM busybox\nRUN --mount=from=tools,target=/t true\n";
        let p = plan(src, &[], None).unwrap();
        assert_eq!(
            p.order,
            vec![0, 2],
            "tools is built for the mount, unused is not"
        );
        let e = plan(
            "FROM busybox\nRUN --mount=type=bind,from=later,target=/t true\nFROM scratch AS later\n",
            &[],
            Some("0"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("RUN --mount from=later: a stage can only read from an earlier stage"),
            "{e}"
        );
    }

    #[test]
    fn target_prunes_unneeded_stages() {
        let p = plan(
            "FROM scratch AS a\nFROM scratch AS b\nCOPY --from=a x y\nFROM scratch AS c\nFROM b\n",
            &[],
            None,
        )
        .unwrap();
        assert_eq!(p.order, vec![0, 1, 3]);
        assert_eq!(p.stages[3].base, Base::Stage(1));
        let p = plan("FROM scratch AS a\nFROM scratch AS b\n", &[], Some("A")).unwrap();
        assert_eq!(p.order, vec![0]);
        assert!(plan("FROM scratch AS a\n", &[], Some("zz")).is_err());
    }

    #[test]
    fn meta_args_expand_in_from() {
        let src = "ARG BASE=one\nFROM scratch AS one\nFROM ${BASE} AS two\n";
        let p = plan(src, &[], None).unwrap();
        assert_eq!(p.stages[1].base, Base::Stage(0));
        let p = plan(src, &[("BASE", "busybox")], None).unwrap();
        assert_eq!(p.stages[1].base, Base::Image("busybox".into()));
        let e = plan("ARG X\nFROM $X\n", &[], None).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn a_stage_name_typo_is_not_an_image() {
        let e = plan(
            "FROM scratch AS build\nFROM scratch\nCOPY --from=biuld /x /x\n",
            &[],
            None,
        )
        .unwrap_err();
        assert_eq!(e.downcast_ref::<LineError>().unwrap().line, 3);
        assert!(e.to_string().contains("did you mean \"build\""), "{e}");
        // Far from every stage name, or a full reference: an image.
        plan(
            "FROM scratch AS build\nFROM scratch\nCOPY --from=alpine /x /x\n",
            &[],
            None,
        )
        .unwrap();
        plan(
            "FROM scratch AS build\nFROM scratch\nCOPY --from=biuld:1 /x /x\n",
            &[],
            None,
        )
        .unwrap();
        assert_eq!(edit_distance("build", "biuld"), 1);
        assert_eq!(edit_distance("build", "bild"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    #[test]
    fn errors_point_at_lines() {
        let e = plan("ENV a=b\nFROM scratch\n", &[], None).unwrap_err();
        assert_eq!(e.downcast_ref::<LineError>().unwrap().line, 1);
        // A name used twice builds; references mean the latest one (BuildKit).
        let p = plan("FROM scratch AS a\nFROM scratch AS a\nFROM a\n", &[], None).unwrap();
        assert_eq!(p.stages[2].base, Base::Stage(1));
        let e = plan(
            "FROM scratch\nCOPY --from=later a b\nFROM scratch AS later\n",
            &[],
            None,
        )
        .unwrap_err();
        assert_eq!(e.downcast_ref::<LineError>().unwrap().line, 2);
        let e = plan("FROM --foo=1 scratch\n", &[], None).unwrap_err();
        assert!(e.to_string().contains("unknown flag"), "{e}");
    }

    #[test]
    fn copy_from_index_and_image() {
        let p = plan(
            "FROM scratch\nFROM scratch\nCOPY --from=0 a b\nCOPY --from=alpine a b\n",
            &[],
            None,
        )
        .unwrap();
        assert_eq!(p.order, vec![0, 1]);
        assert_eq!(p.stage_ref(1, "0"), Some(0));
        assert_eq!(p.stage_ref(1, "alpine"), None);
    }
}
