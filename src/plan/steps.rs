//! Expansion of one stage's instructions into steps: ARG/ENV scoping, word expansion,
//! flag validation, and the config each metadata instruction sets.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::chmod::Chmod;
use super::error::at_line;
use super::mounts::{parse_mount, MountKind, MountSpec};
use super::{check_flags, flag_value, flag_values, Plan, PREDEFINED_ARGS};
use crate::dockerfile::ast::{Args, CommandLine, Healthcheck, Heredoc, Instruction, Keyword};
use crate::dockerfile::expand::{expand_heredoc, expand_word, expand_words, Vars};
use crate::image::config::{Empty, HealthConfig, ImageConfig};

/// The shell used for shell-form commands when no SHELL instruction says otherwise.
pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// PATH given to RUN steps when the image defines none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A change to the image config made by a metadata instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigEdit {
    /// `ENV`: pairs, values expanded.
    Env(Vec<(String, String)>),
    /// `LABEL`.
    Label(Vec<(String, String)>),
    /// `MAINTAINER`.
    Maintainer(String),
    /// `EXPOSE`: normalised `port/proto` keys.
    Expose(Vec<String>),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `USER`.
    User(String),
    /// `WORKDIR`: absolute, cleaned.
    Workdir(String),
    /// `CMD`.
    Cmd(Vec<String>),
    /// `ENTRYPOINT`; `reset_cmd` when CMD was not set earlier in this stage.
    Entrypoint {
        /// The new entrypoint.
        argv: Vec<String>,
        /// Clear an inherited CMD.
        reset_cmd: bool,
    },
    /// `SHELL`.
    Shell(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(HealthConfig),
    /// `ONBUILD`: the trigger text.
    OnBuild(String),
    /// `ARG`: no config change, only a history entry.
    Arg,
}

impl ConfigEdit {
    /// Applies the change to `cfg`.
    pub fn apply(&self, cfg: &mut ImageConfig) {
        let c = &mut cfg.config;
        match self {
            ConfigEdit::Env(pairs) => {
                for (k, v) in pairs {
                    c.set_env(k, v);
                }
            }
            ConfigEdit::Label(pairs) => {
                for (k, v) in pairs {
                    c.labels.insert(k.clone(), v.clone());
                }
            }
            ConfigEdit::Maintainer(m) => cfg.author = Some(m.clone()),
            ConfigEdit::Expose(ports) => {
                for p in ports {
                    c.exposed_ports.insert(p.clone(), Empty {});
                }
            }
            ConfigEdit::Volume(vols) => {
                for v in vols {
                    c.volumes.insert(v.clone(), Empty {});
                }
            }
            ConfigEdit::User(u) => c.user = u.clone(),
            ConfigEdit::Workdir(w) => c.working_dir = w.clone(),
            ConfigEdit::Cmd(argv) => c.cmd = Some(argv.clone()),
            ConfigEdit::Entrypoint { argv, reset_cmd } => {
                c.entrypoint = Some(argv.clone());
                if *reset_cmd {
                    c.cmd = None;
                }
            }
            ConfigEdit::Shell(argv) => c.shell = argv.clone(),
            ConfigEdit::StopSignal(s) => c.stop_signal = s.clone(),
            ConfigEdit::Healthcheck(h) => c.healthcheck = Some(h.clone()),
            ConfigEdit::OnBuild(t) => c.on_build.push(t.clone()),
            ConfigEdit::Arg => {}
        }
    }
}

/// A `RUN --mount`, with its `from=` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    /// The parsed mount.
    pub spec: MountSpec,
    /// What a bind mount (always) or a seeded cache mount reads from.
    pub from: Option<CopyFrom>,
}

/// Where COPY (or a RUN mount) reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFrom {
    /// The build context.
    Context,
    /// An earlier stage's filesystem.
    Stage(usize),
    /// An image's filesystem (resolved by the image sources).
    Image(String),
}

/// One source of a COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A path (may contain wildcards), expanded.
    Path(String),
    /// A heredoc: file `name` with `content` (expanded when its delimiter was unquoted).
    Heredoc {
        /// The file name (the heredoc delimiter).
        name: String,
        /// The file content.
        content: String,
    },
    /// An `http(s)://` URL (ADD only).
    Url(String),
    /// A git repository (ADD only): its URL, the ref after `#` (branch, tag or commit;
    /// None: the default branch) and the subdirectory after `:` in the fragment.
    Git {
        /// The repository, without the fragment.
        url: String,
        /// Branch, tag or commit.
        reference: Option<String>,
        /// Only this directory of the repository.
        subdir: Option<String>,
    },
}

/// Whether an ADD source names a git repository, as BuildKit decides: `git://`,
/// `git@host:`, `ssh://`, or `http(s)://` ending in `.git` (before any `#fragment`).
pub fn is_git_url(s: &str) -> bool {
    let base = s.split('#').next().unwrap_or(s);
    s.starts_with("git://")
        || s.starts_with("git@")
        || s.starts_with("ssh://")
        || ((s.starts_with("http://") || s.starts_with("https://"))
            && base.trim_end_matches('/').ends_with(".git"))
}

/// Splits `URL#REF:SUBDIR` into a git source.
fn git_source(s: &str) -> CopySource {
    let (url, fragment) = match s.split_once('#') {
        Some((u, f)) => (u.to_string(), Some(f)),
        None => (s.to_string(), None),
    };
    let (reference, subdir) = match fragment {
        None => (None, None),
        Some(f) => match f.split_once(':') {
            Some((r, d)) => (Some(r.to_string()), Some(d.to_string())),
            None => (Some(f.to_string()), None),
        },
    };
    CopySource::Git {
        url,
        reference: reference.filter(|r| !r.is_empty()),
        subdir: subdir.filter(|d| !d.is_empty()),
    }
}

/// A COPY or ADD, fully expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyStep {
    /// ADD semantics (archive extraction, URLs).
    pub is_add: bool,
    /// Where the sources are.
    pub from: CopyFrom,
    /// The sources, in order.
    pub sources: Vec<CopySource>,
    /// Absolute destination, cleaned (`/` stays `/`).
    pub dest: String,
    /// The destination is a directory (written with a trailing `/`, `.`, or several sources).
    pub dest_is_dir: bool,
    /// `--chown` value.
    pub chown: Option<String>,
    /// `--chmod` value.
    pub chmod: Option<Chmod>,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// `--parents`: keep the sources' parent directories below the destination.
    pub parents: bool,
    /// `ADD --keep-git-dir`: a git source keeps its `.git` directory.
    pub keep_git_dir: bool,
}

/// A RUN, fully prepared for the sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStep {
    /// The command: exec form, or the SHELL plus the command text (heredocs included, for
    /// the shell to read; or the heredoc body itself when it is the whole command).
    pub argv: Vec<String>,
    /// A heredoc script with a shebang that is the whole command: (name, body), run as
    /// `/dev/pipes/<name>`.
    pub script: Option<(String, String)>,
    /// Environment: image ENV plus build args in scope (`KEY=value`).
    pub env: Vec<String>,
    /// `--network` value.
    pub network: Option<String>,
    /// The build's `--add-host` entries (`NAME:IP`).
    pub extra_hosts: Vec<String>,
    /// The build's `--ulimit` values (`NAME=SOFT[:HARD]`).
    pub ulimits: Vec<String>,
    /// `--mount`s, in the order given.
    pub mounts: Vec<RunMount>,
    /// `--security` value.
    pub security: Option<String>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Only changes the config.
    Config(ConfigEdit),
    /// WORKDIR: the config change plus the directory, created if missing.
    Workdir(String),
    /// COPY or ADD.
    Copy(CopyStep),
    /// RUN.
    Run(RunStep),
}

/// One executable step of a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The instruction's first line.
    pub line: usize,
    /// The instruction as written (for history and progress).
    pub text: String,
    /// What to do.
    pub kind: StepKind,
}

/// A stage's steps and the build args they consumed.
#[derive(Debug, Clone)]
pub struct ExpandedStage {
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Names of `--build-arg`s an ARG in the stage consumed.
    pub used_args: BTreeSet<String>,
}

/// The variables an instruction of a stage sees: ENV wins over ARG.
struct StageVars<'a> {
    cfg: &'a ImageConfig,
    args: &'a BTreeMap<String, String>,
}

impl Vars for StageVars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.cfg
            .config
            .env_var(name)
            .map(str::to_string)
            .or_else(|| self.args.get(name).cloned())
    }
}

/// Expands the instructions of stage `stage` on top of `base` (the config of what the stage
/// starts from). The config is evolved step by step, so later words see earlier ENVs.
pub fn expand_stage(plan: &Plan, stage: usize, base: &ImageConfig) -> Result<ExpandedStage> {
    let sp = &plan.stages[stage];
    let esc = plan.escape;
    let mut cfg = base.clone();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut used_args = BTreeSet::new();
    let mut cmd_set = false;
    let mut steps = Vec::new();
    let automatic = super::automatic_args(&plan.options.platform);
    // The base's ONBUILD triggers run first (as BuildKit does) and are not inherited.
    let triggers = onbuild_triggers(&std::mem::take(&mut cfg.config.on_build), sp.line)?;

    for inst in triggers.iter().chain(&sp.instructions) {
        let line = inst.span.start;
        let err = |e: &dyn std::fmt::Display| at_line(line, e);
        let vars = StageVars {
            cfg: &cfg,
            args: &args,
        };
        let word = |w: &str| expand_word(w, &vars, esc).map_err(|e| err(&e));
        let kind = match (&inst.keyword, &inst.args) {
            (Keyword::Arg, Args::Arg(pairs)) => {
                check_flags(inst, &[])?;
                let mut new_values = Vec::new();
                for (raw_name, default) in pairs {
                    // The name is a word too (`ARG ${NAME}=value`), as in BuildKit.
                    let name = &word(raw_name)?;
                    if name.is_empty() {
                        return Err(err(&format!("ARG {raw_name:?} names no variable")));
                    }
                    let value = if let Some(v) = plan.options.build_args.get(name) {
                        used_args.insert(name.clone());
                        Some(v.clone())
                    } else if let Some(d) = default {
                        Some(word(d)?)
                    } else if let Some(v) = plan.meta_args.get(name) {
                        Some(v.clone())
                    } else {
                        automatic.get(name).cloned()
                    };
                    new_values.push((name.clone(), value));
                }
                for (name, value) in new_values {
                    match value {
                        Some(v) => args.insert(name, v),
                        None => args.remove(&name),
                    };
                }
                StepKind::Config(ConfigEdit::Arg)
            }
            (Keyword::Env, Args::KeyValues(pairs)) => {
                check_flags(inst, &[])?;
                // Keys are words too (`ENV "KEY"=v` sets KEY), as in BuildKit.
                StepKind::Config(ConfigEdit::Env(expand_pairs(pairs, &word, inst)?))
            }
            (Keyword::Label, Args::KeyValues(pairs)) => {
                check_flags(inst, &[])?;
                StepKind::Config(ConfigEdit::Label(expand_pairs(pairs, &word, inst)?))
            }
            (Keyword::Maintainer, Args::Text(t)) => {
                check_flags(inst, &[])?;
                StepKind::Config(ConfigEdit::Maintainer(t.clone()))
            }
            (Keyword::Expose, Args::Words(words)) => {
                check_flags(inst, &[])?;
                let mut ports = Vec::new();
                for w in words {
                    for p in expand_words(w, &vars, esc).map_err(|e| err(&e))? {
                        ports.extend(parse_ports(&p).map_err(|e| err(&e))?);
                    }
                }
                StepKind::Config(ConfigEdit::Expose(ports))
            }
            (Keyword::Volume, Args::Words(words)) => {
                check_flags(inst, &[])?;
                let mut vols = Vec::new();
                for w in words {
                    let v = word(w)?;
                    if v.trim().is_empty() {
                        return Err(err(&"VOLUME specified can not be an empty string"));
                    }
                    vols.push(v);
                }
                StepKind::Config(ConfigEdit::Volume(vols))
            }
            (Keyword::User, Args::Text(t)) => {
                check_flags(inst, &[])?;
                let u = word(t)?;
                if u.is_empty() {
                    return Err(err(&"USER requires a user name or id"));
                }
                StepKind::Config(ConfigEdit::User(u))
            }
            (Keyword::Workdir, Args::Text(t)) => {
                check_flags(inst, &[])?;
                let w = word(t)?;
                if w.is_empty() {
                    return Err(err(&"WORKDIR requires a path"));
                }
                let dir = absolute(&cfg.config.working_dir, &w);
                StepKind::Workdir(dir)
            }
            (Keyword::Cmd, Args::Command { command, .. }) => {
                check_flags(inst, &[])?;
                cmd_set = true;
                StepKind::Config(ConfigEdit::Cmd(argv_of(command, &cfg)))
            }
            (Keyword::Entrypoint, Args::Command { command, .. }) => {
                check_flags(inst, &[])?;
                StepKind::Config(ConfigEdit::Entrypoint {
                    argv: argv_of(command, &cfg),
                    reset_cmd: !cmd_set,
                })
            }
            (Keyword::Shell, Args::Command { command, .. }) => {
                check_flags(inst, &[])?;
                match command {
                    CommandLine::Exec(argv) if !argv.is_empty() => {
                        StepKind::Config(ConfigEdit::Shell(argv.clone()))
                    }
                    _ => return Err(err(&"SHELL requires the arguments to be in JSON form")),
                }
            }
            (Keyword::Stopsignal, Args::Text(t)) => {
                check_flags(inst, &[])?;
                let s = word(t)?;
                validate_signal(&s).map_err(|e| err(&e))?;
                StepKind::Config(ConfigEdit::StopSignal(s))
            }
            (Keyword::Healthcheck, Args::Healthcheck(h)) => {
                StepKind::Config(ConfigEdit::Healthcheck(healthcheck(inst, h, &cfg)?))
            }
            (Keyword::Onbuild, Args::Onbuild(trigger)) => {
                check_flags(inst, &[])?;
                let text = inst
                    .original
                    .trim_start()
                    .get("ONBUILD".len()..)
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let text = if text.is_empty() {
                    trigger.original.clone()
                } else {
                    text
                };
                StepKind::Config(ConfigEdit::OnBuild(text))
            }
            (
                Keyword::Copy | Keyword::Add,
                Args::Copy {
                    sources,
                    dest,
                    heredocs,
                },
            ) => {
                let is_add = inst.keyword == Keyword::Add;
                StepKind::Copy(copy_step(
                    plan, stage, inst, is_add, sources, dest, heredocs, &cfg, &word, &vars,
                )?)
            }
            (Keyword::Run, Args::Command { command, heredocs }) => {
                check_flags(inst, &["mount", "network", "security"])?;
                let mut env = cfg.config.env.clone();
                for (k, v) in &args {
                    if cfg.config.env_var(k).is_none() {
                        env.push(format!("{k}={v}"));
                    }
                }
                for name in PREDEFINED_ARGS {
                    if let Some(v) = plan.options.build_args.get(*name) {
                        if !args.contains_key(*name) && cfg.config.env_var(name).is_none() {
                            env.push(format!("{name}={v}"));
                        }
                    }
                }
                if !env.iter().any(|e| e.starts_with("PATH=")) {
                    env.push(format!("PATH={DEFAULT_PATH}"));
                }
                // Heredoc bodies are left to the shell, which expands them at run time
                // (with the build args in its environment) unless the delimiter is quoted.
                let (argv, script) = run_command(command, heredocs, &cfg);
                StepKind::Run(RunStep {
                    argv,
                    script,
                    env,
                    // `default` (or none given) is the build's --network.
                    network: match flag_value(inst, "network") {
                        None => plan.options.default_network.clone(),
                        Some(n) if n == "default" => plan.options.default_network.clone(),
                        Some(n) => Some(n),
                    },
                    mounts: run_mounts(plan, stage, inst, &cfg, &word)?,
                    security: flag_value(inst, "security"),
                    extra_hosts: plan.options.extra_hosts.clone(),
                    ulimits: plan.options.ulimits.clone(),
                })
            }
            (Keyword::From, _) => unreachable_from(line)?,
            _ => return Err(err(&"malformed instruction")),
        };
        match &kind {
            StepKind::Config(edit) => edit.apply(&mut cfg),
            StepKind::Workdir(dir) => ConfigEdit::Workdir(dir.clone()).apply(&mut cfg),
            _ => {}
        }
        steps.push(Step {
            line,
            text: inst.original.clone(),
            kind,
        });
    }
    Ok(ExpandedStage { steps, used_args })
}

fn unreachable_from(line: usize) -> Result<StepKind> {
    Err(at_line(line, "FROM inside a stage"))
}

type WordFn<'a> = dyn Fn(&str) -> Result<String> + 'a;

fn expand_pairs(
    pairs: &[(String, String)],
    word: &WordFn<'_>,
    inst: &Instruction,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        let key = word(k)?;
        if key.is_empty() {
            return Err(at_line(inst.span.start, "empty key"));
        }
        out.push((key, word(v)?));
    }
    Ok(out)
}

/// The argv of a command: exec form as is, shell form through the stage's SHELL.
fn argv_of(command: &CommandLine, cfg: &ImageConfig) -> Vec<String> {
    match command {
        CommandLine::Exec(argv) => argv.clone(),
        CommandLine::Shell(text) => {
            let mut argv: Vec<String> = if cfg.config.shell.is_empty() {
                DEFAULT_SHELL.iter().map(|s| s.to_string()).collect()
            } else {
                cfg.config.shell.clone()
            };
            argv.push(text.clone());
            argv
        }
    }
}

/// Parses the base image's ONBUILD triggers into instructions placed at the FROM line.
fn onbuild_triggers(triggers: &[String], from_line: usize) -> Result<Vec<Instruction>> {
    let mut out = Vec::new();
    for t in triggers {
        let df = crate::dockerfile::parse(t.as_bytes()).map_err(|e| {
            at_line(
                from_line,
                format!("ONBUILD trigger {t:?} of the base: {}", e.message),
            )
        })?;
        for mut inst in df.instructions {
            if matches!(
                inst.keyword,
                Keyword::From | Keyword::Onbuild | Keyword::Maintainer
            ) {
                return Err(at_line(
                    from_line,
                    format!(
                        "ONBUILD trigger {t:?} of the base: {:?} is not allowed as a trigger",
                        inst.keyword
                    ),
                ));
            }
            inst.span.start = from_line;
            inst.span.end = from_line;
            out.push(inst);
        }
    }
    Ok(out)
}

/// The argv of a RUN and its heredoc script, if the command is one heredoc with a shebang.
fn run_command(
    command: &CommandLine,
    heredocs: &[Heredoc],
    cfg: &ImageConfig,
) -> (Vec<String>, Option<(String, String)>) {
    let CommandLine::Shell(text) = command else {
        return (argv_of(command, cfg), None);
    };
    if heredocs.is_empty() {
        return (argv_of(command, cfg), None);
    }
    let mut shell: Vec<String> = if cfg.config.shell.is_empty() {
        DEFAULT_SHELL.iter().map(|s| s.to_string()).collect()
    } else {
        cfg.config.shell.clone()
    };
    if let [only] = heredocs {
        let marker = text
            .trim()
            .trim_start_matches("<<")
            .trim_start_matches('-')
            .trim_matches(|c| c == '"' || c == '\'');
        if marker == only.name {
            if only.content.starts_with("#!") {
                let path = format!("/dev/pipes/{}", only.name);
                return (vec![path], Some((only.name.clone(), only.content.clone())));
            }
            shell.push(only.content.clone());
            return (shell, None);
        }
    }
    let mut full = text.clone();
    for h in heredocs {
        full.push('\n');
        full.push_str(&h.content);
        full.push_str(&h.name);
    }
    shell.push(full);
    (shell, None)
}

/// Joins a relative path onto `cwd` (default `/`) and cleans it.
pub fn absolute(cwd: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", if cwd.is_empty() { "/" } else { cwd }, path)
    };
    clean_path(&joined)
}

/// Cleans an absolute path lexically: no `.`, no `..` above `/`, no double or trailing slashes.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[allow(clippy::too_many_arguments)]
fn copy_step(
    plan: &Plan,
    stage: usize,
    inst: &Instruction,
    is_add: bool,
    sources: &[String],
    dest: &str,
    heredocs: &[Heredoc],
    cfg: &ImageConfig,
    word: &WordFn<'_>,
    vars: &dyn Vars,
) -> Result<CopyStep> {
    let line = inst.span.start;
    if is_add {
        check_flags(
            inst,
            &[
                "chown",
                "chmod",
                "link",
                "keep-git-dir",
                "checksum",
                "exclude",
                "unpack",
            ],
        )?;
    } else {
        check_flags(
            inst,
            &["from", "chown", "chmod", "link", "parents", "exclude"],
        )?;
    }
    let from = match flag_value(inst, "from") {
        None => CopyFrom::Context,
        Some(f) => {
            let meta = super::MetaVars {
                meta: &plan.meta_args,
                automatic: &super::automatic_args(&plan.options.platform),
            };
            let raw = f;
            let f = expand_word(&raw, &meta, plan.escape).map_err(|e| at_line(line, e))?;
            if f.is_empty() && raw.contains('$') {
                return Err(at_line(
                    line,
                    format!(
                        "COPY --from={raw}: variable expansion is not supported for --from (only global ARGs, declared before the first FROM, are seen here); define a stage with `FROM ${{NAME}} AS name` from a global ARG and copy --from that stage"
                    ),
                ));
            }
            if f.is_empty() {
                return Err(at_line(line, "COPY --from requires a stage name or image"));
            }
            match plan.stage_ref(stage, &f) {
                Some(i) => CopyFrom::Stage(i),
                None => CopyFrom::Image(f),
            }
        }
    };
    let mut out_sources = Vec::new();
    for s in sources {
        if let Some(name) = s.strip_prefix("<<") {
            let name = name.trim_start_matches('-').trim_matches(['"', '\'']);
            if let Some(h) = heredocs.iter().find(|h| h.name == name) {
                let content = if h.expand {
                    expand_heredoc(&h.content, vars, plan.escape).map_err(|e| at_line(line, e))?
                } else {
                    h.content.clone()
                };
                out_sources.push(CopySource::Heredoc {
                    name: h.name.clone(),
                    content,
                });
                continue;
            }
        }
        let s = word(s)?;
        if s.is_empty() {
            return Err(at_line(line, "empty source path"));
        }
        if is_git_url(&s) || s.starts_with("http://") || s.starts_with("https://") {
            if !is_add {
                return Err(at_line(
                    line,
                    format!("COPY does not support URLs ({s}); use ADD"),
                ));
            }
            out_sources.push(if is_git_url(&s) {
                git_source(&s)
            } else {
                CopySource::Url(s)
            });
        } else {
            out_sources.push(CopySource::Path(s));
        }
    }
    if out_sources.is_empty() {
        return Err(at_line(
            line,
            "COPY/ADD requires at least one source and a destination",
        ));
    }
    let raw_dest = word(dest)?;
    if raw_dest.is_empty() {
        return Err(at_line(line, "COPY/ADD destination is empty"));
    }
    let dest_is_dir = raw_dest.ends_with('/')
        || raw_dest == "."
        || raw_dest == ".."
        || raw_dest.ends_with("/.")
        || raw_dest.ends_with("/..");
    if out_sources.len() > 1 && !dest_is_dir {
        return Err(at_line(
            line,
            format!(
                "When using {} with more than one source file, the destination must be a directory and end with a /",
                if is_add { "ADD" } else { "COPY" }
            ),
        ));
    }
    let chown = match flag_value(inst, "chown") {
        Some(c) => Some(word(&c)?).filter(|c| !c.is_empty()),
        None => None,
    };
    let chmod = match flag_value(inst, "chmod") {
        Some(c) => {
            let c = word(&c)?;
            Some(Chmod::parse(&c).map_err(|e| at_line(line, e))?)
        }
        None => None,
    };
    let mut exclude = Vec::new();
    for e in flag_values(inst, "exclude") {
        exclude.push(word(&e)?);
    }
    let parents = match flag_value(inst, "parents").as_deref() {
        None | Some("false") => false,
        Some("" | "true") => true,
        Some(v) => return Err(at_line(line, format!("invalid --parents value {v:?}"))),
    };
    let keep_git_dir = match flag_value(inst, "keep-git-dir").as_deref() {
        None | Some("false") => false,
        Some("" | "true") => true,
        Some(v) => return Err(at_line(line, format!("invalid --keep-git-dir value {v:?}"))),
    };
    if keep_git_dir
        && !out_sources
            .iter()
            .any(|s| matches!(s, CopySource::Git { .. }))
    {
        return Err(at_line(line, "ADD --keep-git-dir needs a git source"));
    }
    if is_add {
        if let Some(c) = flag_value(inst, "checksum") {
            if !out_sources.iter().all(|s| matches!(s, CopySource::Url(_))) {
                return Err(at_line(
                    line,
                    format!("ADD --checksum={c} needs an http(s) source"),
                ));
            }
        }
    }
    Ok(CopyStep {
        is_add,
        from,
        sources: out_sources,
        dest: absolute(&cfg.config.working_dir, &raw_dest),
        dest_is_dir,
        chown,
        chmod,
        exclude,
        parents,
        keep_git_dir,
    })
}

/// Parses one EXPOSE word: `80`, `80/tcp`, `53/udp`, `8000-8002/tcp` (a range gives each port).
fn parse_ports(spec: &str) -> std::result::Result<Vec<String>, String> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto {proto:?} in EXPOSE {spec}"));
    }
    let bad = || format!("invalid port {spec:?} in EXPOSE");
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo == 0 || hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Accepts a signal number (1–64) or name (with or without `SIG`).
fn validate_signal(s: &str) -> std::result::Result<(), String> {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(())
        } else {
            Err(format!("invalid signal: {s}"))
        };
    }
    let name = s.to_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let rt = name
        .strip_prefix("RTMIN")
        .or_else(|| name.strip_prefix("RTMAX"))
        .is_some_and(|rest| rest.is_empty() || rest[1..].parse::<u32>().is_ok());
    if NAMES.contains(&name) || rt {
        Ok(())
    } else {
        Err(format!("invalid signal: {s}"))
    }
}

/// Parses a Go-style duration (`30s`, `1m30s`, `1.5h`, `100ms`) into nanoseconds.
pub fn parse_duration(s: &str) -> std::result::Result<i64, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += num * unit;
        rest = &rest[unit_len..];
    }
    Ok(total as i64)
}

fn healthcheck(inst: &Instruction, h: &Healthcheck, cfg: &ImageConfig) -> Result<HealthConfig> {
    let line = inst.span.start;
    match h {
        Healthcheck::None => {
            if !inst.flags.is_empty() {
                return Err(at_line(line, "HEALTHCHECK NONE takes no flags"));
            }
            Ok(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            })
        }
        Healthcheck::Cmd(command) => {
            check_flags(
                inst,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
            )?;
            let dur = |name: &str| -> Result<i64> {
                match flag_value(inst, name) {
                    None => Ok(0),
                    Some(v) => {
                        let d = parse_duration(&v)
                            .map_err(|e| at_line(line, format!("--{name}: {e}")))?;
                        if d != 0 && d < 1_000_000 {
                            return Err(at_line(line, format!("--{name} cannot be less than 1ms")));
                        }
                        Ok(d)
                    }
                }
            };
            let retries = match flag_value(inst, "retries") {
                None => 0,
                Some(v) => {
                    let r: i64 = v
                        .parse()
                        .map_err(|_| at_line(line, format!("invalid --retries value {v:?}")))?;
                    if r < 0 {
                        return Err(at_line(line, "--retries cannot be negative"));
                    }
                    r
                }
            };
            let test = match command {
                CommandLine::Exec(argv) => {
                    let mut t = vec!["CMD".to_string()];
                    t.extend(argv.iter().cloned());
                    t
                }
                CommandLine::Shell(text) => vec!["CMD-SHELL".to_string(), text.clone()],
            };
            let _ = cfg;
            Ok(HealthConfig {
                test,
                interval: dur("interval")?,
                timeout: dur("timeout")?,
                start_period: dur("start-period")?,
                start_interval: dur("start-interval")?,
                retries,
            })
        }
    }
}

/// The `--mount`s of a RUN: values expanded like the command's words, parsed, and
/// their `from=` resolved to an earlier stage or an image (or named context).
fn run_mounts(
    plan: &Plan,
    stage: usize,
    inst: &Instruction,
    cfg: &ImageConfig,
    word: &dyn Fn(&str) -> Result<String>,
) -> Result<Vec<RunMount>> {
    let line = inst.span.start;
    let mut out: Vec<RunMount> = Vec::new();
    for value in flag_values(inst, "mount") {
        let spec = parse_mount(&word(&value)?, &cfg.config.working_dir)
            .map_err(|e| at_line(line, format!("--mount={value}: {e}")))?;
        if let Some(t) = &spec.target {
            if out.iter().any(|m| m.spec.target.as_ref() == Some(t)) {
                return Err(at_line(line, format!("two mounts at {t}")));
            }
        }
        let from = match (&spec.from, &spec.kind) {
            (Some(f), _) => Some(match plan.stage_ref(stage, f) {
                Some(i) => CopyFrom::Stage(i),
                None => CopyFrom::Image(f.clone()),
            }),
            (None, MountKind::Bind { .. }) => Some(CopyFrom::Context),
            (None, _) => None,
        };
        out.push(RunMount { spec, from });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{Plan, PlanOptions, Platform};
    use super::*;
    use crate::dockerfile::parse;

    fn expand(src: &str, args: &[(&str, &str)]) -> Result<(Vec<Step>, ImageConfig)> {
        let df = parse(src.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let plan = Plan::new(
            &df,
            PlanOptions {
                build_args: args
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                target: None,
                platform: Platform::host(),
                default_network: None,
                extra_hosts: Vec::new(),
                ulimits: Vec::new(),
            },
        )?;
        let base = ImageConfig::default();
        let stage = plan.stages.len() - 1;
        let ex = expand_stage(&plan, stage, &base)?;
        let mut cfg = base;
        for s in &ex.steps {
            match &s.kind {
                StepKind::Config(e) => e.apply(&mut cfg),
                StepKind::Workdir(d) => ConfigEdit::Workdir(d.clone()).apply(&mut cfg),
                _ => {}
            }
        }
        Ok((ex.steps, cfg))
    }

    #[test]
    fn env_uses_values_from_before_the_instruction() {
        let (_, cfg) = expand("FROM scratch\nENV a=hi\nENV a=bye b=$a\nENV c=$a\n", &[]).unwrap();
        assert_eq!(cfg.config.env, vec!["a=bye", "b=hi", "c=bye"]);
    }

    #[test]
    fn arg_scoping() {
        let src = "ARG G=global\nARG H\nFROM scratch\nARG G\nARG L=${G}-local\nENV X=$G Y=$L Z=${H:-none}\nARG G=override\nENV G=env\nARG G=ignored\nENV W=$G\n";
        let (_, cfg) = expand(src, &[]).unwrap();
        assert_eq!(
            cfg.config.env,
            vec!["X=global", "Y=global-local", "Z=none", "G=env", "W=env"]
        );
        let (_, cfg) = expand(src, &[("G", "cli"), ("H", "h")]).unwrap();
        assert_eq!(&cfg.config.env[..3], &["X=cli", "Y=cli-local", "Z=none"]);
    }

    #[test]
    fn cmd_entrypoint_interplay() {
        let (_, cfg) = expand("FROM scratch\nCMD echo hi\nENTRYPOINT [\"/e\"]\n", &[]).unwrap();
        assert_eq!(
            cfg.config.cmd,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        let mut base = ImageConfig::default();
        base.config.cmd = Some(vec!["inherited".into()]);
        ConfigEdit::Entrypoint {
            argv: vec!["/e".into()],
            reset_cmd: true,
        }
        .apply(&mut base);
        assert_eq!(base.config.cmd, None);
        let (_, cfg) = expand(
            "FROM scratch\nSHELL [\"/bin/bash\",\"-xc\"]\nCMD run\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            cfg.config.cmd,
            Some(vec!["/bin/bash".into(), "-xc".into(), "run".into()])
        );
    }

    #[test]
    fn workdir_chain_and_copy_dest() {
        let (steps, cfg) = expand(
            "FROM scratch\nWORKDIR /a\nWORKDIR b/../c\nCOPY x .\nCOPY x y z/\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.config.working_dir, "/a/c");
        let StepKind::Copy(c) = &steps[2].kind else {
            panic!()
        };
        assert_eq!((c.dest.as_str(), c.dest_is_dir), ("/a/c", true));
        let StepKind::Copy(c) = &steps[3].kind else {
            panic!()
        };
        assert_eq!((c.dest.as_str(), c.dest_is_dir), ("/a/c/z", true));
        let e = expand("FROM scratch\nCOPY a b c\n", &[]).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn expose_healthcheck_signal() {
        let (_, cfg) = expand(
            "FROM scratch\nEXPOSE 80 53/UDP 8000-8001\nSTOPSIGNAL SIGKILL\nHEALTHCHECK --interval=1m30s --timeout=5s --retries=3 --start-period=1s --start-interval=500ms CMD [\"/check\"]\n",
            &[],
        )
        .unwrap();
        let keys: Vec<_> = cfg.config.exposed_ports.keys().cloned().collect();
        assert_eq!(keys, vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        let h = cfg.config.healthcheck.unwrap();
        assert_eq!(h.test, vec!["CMD", "/check"]);
        assert_eq!(h.interval, 90_000_000_000);
        assert_eq!(h.start_interval, 500_000_000);
        assert_eq!(h.retries, 3);
        assert!(expand("FROM scratch\nEXPOSE 99999\n", &[]).is_err());
        assert!(expand("FROM scratch\nSTOPSIGNAL SIGNOPE\n", &[]).is_err());
        assert!(expand("FROM scratch\nHEALTHCHECK --interval=5x CMD true\n", &[]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h2m3s").unwrap(), 3_723_000_000_000);
        assert_eq!(parse_duration("1.5s").unwrap(), 1_500_000_000);
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn clean_paths() {
        assert_eq!(absolute("", "a/b/"), "/a/b");
        assert_eq!(absolute("/x", "../../y"), "/y");
        assert_eq!(absolute("/x", "/abs/./p"), "/abs/p");
        assert_eq!(clean_path("/"), "/");
    }
}
