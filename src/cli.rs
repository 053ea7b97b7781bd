//! The command line: buildx-compatible flags, output specs, exit codes, error display.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser};

use crate::cancel::Cancel;
use crate::context::BuildContext;
use crate::dockerfile::{self, ast::Dockerfile};
use crate::export::{
    export, Destination, ExportRequest, ExportTargets, ImageFormat, LayoutAnnotations, OutputKind,
};
use crate::image::reference::Reference;
use crate::image::{LayerCompression, LayerFormat};
use crate::plan::{LineError, Plan, PlanOptions, Platform};
use crate::progress::{printable, Mode, Progress, Status};
use crate::sandbox::seccomp::Filter;
use crate::snapshot::clone::Snapshotter;
use crate::solver::cache::CacheOptions;
use crate::solver::mounts::MountInputs;
use crate::solver::run::RunEnvironment;
use crate::solver::{build, BuildInputs};
use crate::source::registry::{Client, RegistryConfig, TransferEvent};
use crate::source::resolver::{NamedContext, PullPolicy, Puller, Resolver};
use crate::store::gc::{self, Disk, Policy};
use crate::store::Store;

mod cache;
mod images;
mod info;
mod secrets;

/// Exit code of a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit code of a failed build.
pub const EXIT_BUILD_FAILED: i32 = 1;
/// Exit code of a command-line usage error.
pub const EXIT_USAGE: i32 = 2;

const EXAMPLES: &str = "\
Examples:
  rbuild -f Dockerfile -o type=oci,dest=out.tar .        OCI image layout tarball
  rbuild build -t app:1.0 -o type=docker,dest=app.tar .  docker-archive for `docker load`
  rbuild -o type=oci,tar=false,dest=layout/ .             OCI layout directory
  rbuild -o type=local,dest=rootfs/ --target build .      final filesystem of a stage
  tar -c . | rbuild -o type=tar,dest=- - > fs.tar         context and output through pipes
  SOURCE_DATE_EPOCH=0 rbuild -o type=oci,dest=a.tar .     reproducible output";

/// `--network` of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    /// The host's network (as buildx's default for rootless builds).
    Default,
    /// The host's network.
    Host,
    /// An isolated loopback only.
    None,
}

/// The command line: a subcommand, or the build's flags and context (`build` is the
/// default command).
#[derive(Debug, Parser)]
#[command(
    name = "rbuild",
    version,
    about = "Rootless, daemonless, single-shot container image builder",
    after_help = EXAMPLES,
    override_usage = "rbuild [build] [OPTIONS] CONTEXT\n       rbuild <COMMAND> [OPTIONS]",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    build: BuildArgs,
}

/// rbuild's commands.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Build an image from a Dockerfile and a context (the default command).
    #[command(override_usage = "rbuild [build] [OPTIONS] CONTEXT", after_help = EXAMPLES)]
    Build(Box<BuildArgs>),
    /// Manage the images in rbuild's store.
    Image(images::ImageArgs),
    /// Show what the build cache holds.
    Du(cache::DuArgs),
    /// Remove build cache.
    Prune(cache::PruneArgs),
    /// Check the build cache.
    Cache(cache::CacheArgs),
    /// What rbuild found on this machine, what builds will use, and why.
    Info(info::InfoArgs),
    /// Print the version.
    Version,
    /// Print this help, or a command's (`rbuild help image`); or write the man pages.
    Help {
        /// The command.
        command: Vec<String>,
        /// Write man pages (rbuild.1, rbuild-build.1, rbuild-image-ls.1, ...) into DIR,
        /// from the same definitions as --help.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        man: Option<PathBuf>,
    },
}

/// `--progress` of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressArg {
    /// tty when stderr is a terminal, else plain.
    Auto,
    /// One line per event, numbered like BuildKit's.
    Plain,
    /// A live view redrawn in place.
    Tty,
    /// Nothing but errors.
    Quiet,
    /// One JSON document per line, buildx's `rawjson` shape.
    Rawjson,
}

impl ProgressArg {
    /// The renderer: `auto` picks tty when stderr is a terminal.
    fn mode(self) -> Mode {
        match self {
            ProgressArg::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            ProgressArg::Auto | ProgressArg::Plain => Mode::Plain,
            ProgressArg::Tty => Mode::Tty,
            ProgressArg::Quiet => Mode::Quiet,
            ProgressArg::Rawjson => Mode::RawJson,
        }
    }
}

/// `--load[=TARGET]`: where the image is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadTarget {
    /// rbuild's store.
    Store,
    /// podman's containers-storage, through `podman load`.
    Podman,
}

/// `--call`: what to do with the Dockerfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CallArg {
    /// Build it.
    Build,
    /// Run the build checks only.
    Check,
    /// List the stages that can be targets.
    Targets,
    /// List the build args the target reads, with their values.
    Outline,
}

/// `--isolation` of RUN steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    /// Namespaces; chroot when rbuild runs as root where namespaces cannot be made.
    Auto,
    /// User, mount, PID, IPC, UTS (and network) namespaces.
    #[value(alias = "oci", alias = "rootless")]
    Namespaces,
    /// chroot only (root, inside a container that already isolates).
    Chroot,
}

/// `--pull`: when base images are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullArg {
    /// Only when the store does not have the image.
    #[value(alias = "false")]
    Missing,
    /// Every time (`--pull` alone).
    #[value(alias = "true")]
    Always,
    /// Never: an image missing from the store is an error.
    Never,
}

/// The flags and context of `rbuild build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile); `-` reads it from stdin.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<String>,
    /// Name and optionally a tag (`name:tag`) for the image; repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Output destination: `type=oci|docker|local|tar[,dest=PATH|-][,tar=true|false][,name=NAME]`,
    /// `type=image,name=REF[,push=true]` (the store; push to the registry) or
    /// `type=registry,name=REF`; a bare PATH means `type=local,dest=PATH`, `-` means
    /// `type=tar,dest=-`. Repeatable.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Push the image to its registries under the `-t` names (`-o type=registry`).
    #[arg(long)]
    pub push: bool,
    /// Keep the image under the `-t` names: in rbuild's store (`--load`, `-o type=image`;
    /// also what `-t` without any output does), or in podman's (`--load=podman`).
    #[arg(long, value_name = "TARGET", value_enum, num_args = 0..=1, require_equals = true,
          default_missing_value = "store", hide_possible_values = true)]
    pub load: Option<LoadTarget>,
    /// Build-time variable `KEY=VALUE`, or `KEY` to take the value from the environment.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// Build this stage (and what it needs) instead of the last one.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Metadata label `KEY=VALUE` for the image; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Do not answer any step from the cache (results are still recorded).
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Do not answer the steps of these stages from the cache (comma-separated;
    /// repeatable).
    #[arg(long = "no-cache-filter", value_name = "STAGE[,STAGE]")]
    pub no_cache_filter: Vec<String>,
    /// Limits for the cache collection that ends every build.
    #[command(flatten)]
    pub gc: cache::GcArgs,
    /// Cache directory (default: $XDG_CACHE_HOME/rbuild or ~/.cache/rbuild).
    #[arg(long = "cache-dir", value_name = "DIR", env = "RBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Progress output: auto, plain, tty, quiet or rawjson.
    #[arg(
        long,
        value_name = "MODE",
        value_enum,
        default_value = "auto",
        hide_possible_values = true
    )]
    pub progress: ProgressArg,
    /// Write the image id (config digest) to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Write build result metadata (JSON) to this file.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Target platform; only the host platform can be built.
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Print only the image id on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// When to pull base images: missing (default; no network when the store has them),
    /// always (`--pull` alone), never.
    #[arg(long, value_name = "POLICY", num_args = 0..=1, require_equals = true, value_enum,
          default_value = "missing", default_missing_value = "always", hide_possible_values = true)]
    pub pull: PullArg,
    /// Extra named context `NAME=VALUE`: `docker-image://REF`, `oci-layout://DIR[:TAG|@DIGEST]`
    /// or a directory; `FROM NAME` and `COPY --from=NAME` use it. Repeatable.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// A secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR`;
    /// repeatable.
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    pub secrets: Vec<String>,
    /// An SSH agent socket for `RUN --mount=type=ssh`: `default` ($SSH_AUTH_SOCK) or
    /// `ID=SOCKET`; repeatable.
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// How registries are reached.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Pull-through mirror of docker.io, tried first; repeatable (env
    /// `RBUILD_REGISTRY_MIRROR`, comma-separated).
    #[arg(long = "registry-mirror", value_name = "HOST")]
    pub registry_mirrors: Vec<String>,
    /// How RUN steps are isolated: auto (namespaces; chroot when rbuild runs as root where
    /// namespaces cannot be made), namespaces, or chroot.
    #[arg(
        long,
        value_name = "MODE",
        value_enum,
        default_value = "auto",
        hide_possible_values = true
    )]
    pub isolation: IsolationArg,
    /// How RUN steps get their root and their layer: overlay (a kernel overlay of the
    /// cache's unpacked layers; the layer is read from the upper directory),
    /// fuse-overlayfs (the same, served by fuse-overlayfs), walk (in place; the layer is
    /// the difference from a record taken before the step), copy (a private copy of the
    /// root, reflinked where the filesystem can), or auto (overlay where it works here,
    /// else fuse-overlayfs, else walk).
    #[arg(
        long,
        value_name = "NAME",
        env = "RBUILD_SNAPSHOTTER",
        default_value = "auto",
        value_enum,
        hide_possible_values = true
    )]
    pub snapshotter: Snapshotter,
    /// The network of RUN steps without a `--network` of their own: default (the host's),
    /// host, or none (an isolated loopback).
    #[arg(long, value_name = "MODE", value_enum, default_value = "default")]
    pub network: NetworkMode,
    /// An /etc/hosts entry `NAME:IP` for every RUN step; repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_hosts: Vec<String>,
    /// A resource limit `NAME=SOFT[:HARD]` for every RUN step (nofile, nproc, core, ...;
    /// unprivileged, limits can be lowered, not raised); repeatable.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// An annotation `[manifest:]KEY=VALUE` of the image manifest; repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Size of /dev/shm in RUN steps (`64m`, `1g`, bytes; default 64m).
    #[arg(long = "shm-size", value_name = "SIZE", default_value = "64m",
          value_parser = |s: &str| crate::plan::mounts::parse_size(s).map_err(|e| e.to_string()))]
    pub shm_size: u64,
    /// Check the Dockerfile (parse, plan, BuildKit's build checks) and build nothing; exit 1
    /// when a check fails.
    #[arg(long)]
    pub check: bool,
    /// What to do with the Dockerfile: build (the default), check (as --check), targets
    /// (list the stages), or outline (the build args the target reads).
    #[arg(
        long,
        value_name = "METHOD",
        value_enum,
        default_value = "build",
        hide_possible_values = true
    )]
    pub call: CallArg,
    /// How many independent stages run at once (default: the number of CPUs, at least 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// The build context: a directory, or `-` for a tar stream on stdin.
    #[arg(value_name = "CONTEXT", required = true)]
    pub context: Option<String>,
}

/// How registries are reached: certificates, plain-HTTP hosts, credentials. Shared by
/// `build` and `image push`; pull-through mirrors are a build's own flag.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// Extra CA certificates (PEM) trusted for registries; repeatable.
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// Directory of per-registry certificates (`DIR/HOST[:PORT]/*.crt`, `*.cert` + `*.key`),
    /// searched instead of `~/.config/containers/certs.d`, `/etc/containers/certs.d` and
    /// `/etc/docker/certs.d`; repeatable.
    #[arg(long = "cert-dir", value_name = "DIR")]
    pub cert_dirs: Vec<PathBuf>,
    /// Registry (`host[:port]`) that may be reached over plain HTTP; repeatable
    /// (loopback registries always may).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Registry credentials file (docker `config.json` format; env `REGISTRY_AUTH_FILE`).
    #[arg(long = "authfile", value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

impl RegistryArgs {
    /// A registry client with these settings and `mirrors` (tried before docker.io, ahead
    /// of the environment's) over the environment's.
    pub fn client(&self, mirrors: &[String]) -> Result<Client> {
        let mut cfg = RegistryConfig::from_env();
        cfg.ca_files.extend(self.registry_ca.iter().cloned());
        if !self.cert_dirs.is_empty() {
            cfg.certs_dirs = self.cert_dirs.clone();
        }
        cfg.insecure
            .extend(self.insecure_registries.iter().cloned());
        cfg.mirrors.splice(0..0, mirrors.iter().cloned());
        if let Some(f) = &self.authfile {
            cfg.auth_file = Some(f.clone());
        }
        Client::new(cfg)
    }
}

impl BuildArgs {
    /// The context argument (required by the parser).
    fn context(&self) -> &str {
        self.context.as_deref().unwrap_or(".")
    }
}

/// Entry point: parses `argv`, runs, and returns the process exit code.
pub fn main_with_args(argv: Vec<OsString>) -> i32 {
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => return clap_exit(&e),
    };
    match cli.command {
        None => run_build(&cli.build),
        Some(Command::Build(args)) => run_build(&args),
        Some(Command::Image(args)) => images::main(args),
        Some(Command::Du(args)) => cache::main(cache::Which::Du(args)),
        Some(Command::Prune(args)) => cache::main(cache::Which::Prune(args)),
        Some(Command::Cache(args)) => cache::main(cache::Which::Cache(args)),
        Some(Command::Info(args)) => info::main(args),
        Some(Command::Version) => {
            println!("rbuild {}", env!("CARGO_PKG_VERSION"));
            EXIT_OK
        }
        Some(Command::Help { man: Some(dir), .. }) => match write_man_pages(&dir) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                print_error(&e);
                EXIT_BUILD_FAILED
            }
        },
        Some(Command::Help { command, .. }) => {
            let mut argv: Vec<String> = vec!["rbuild".into()];
            argv.extend(command);
            argv.push("--help".into());
            match Cli::try_parse_from(&argv) {
                Ok(_) => EXIT_OK,
                Err(e) => clap_exit(&e),
            }
        }
    }
}

/// `rbuild help --man DIR`: a man page per command, from the clap definitions.
fn write_man_pages(dir: &Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))
}

/// Prints a clap error (or the help or version it stands for); returns the exit code.
pub(crate) fn clap_exit(e: &clap::Error) -> i32 {
    let _ = e.print();
    if e.use_stderr() {
        EXIT_USAGE
    } else {
        EXIT_OK
    }
}

/// Runs a build; returns the exit code.
fn run_build(args: &BuildArgs) -> i32 {
    match run(args) {
        Ok(()) => EXIT_OK,
        Err(Failure::Usage(e)) => {
            print_error(&e);
            EXIT_USAGE
        }
        Err(Failure::Build(e, file, source)) => {
            print_build_error(&e, &file, source.as_deref());
            // Ended by a signal: the shell's code for it (130 for SIGINT, 143 for SIGTERM).
            crate::cancel::Cancel
                .signal()
                .map_or(EXIT_BUILD_FAILED, |sig| 128 + sig)
        }
    }
}

/// Why a run failed: bad usage (exit 2) or a failed build (exit 1), with the Dockerfile's
/// display name and text for pointing at lines.
enum Failure {
    Usage(anyhow::Error),
    Build(anyhow::Error, String, Option<Vec<u8>>),
}

fn usage(e: anyhow::Error) -> Failure {
    Failure::Usage(e)
}

/// Prints `error: ` and the error chain, control characters escaped (messages quote
/// input).
pub fn print_error(e: &anyhow::Error) {
    eprintln!("error: {}", printable(&format!("{e:#}")));
}

fn print_build_error(e: &anyhow::Error, file: &str, source: Option<&[u8]>) {
    if let Some(le) = e.downcast_ref::<LineError>() {
        eprintln!(
            "error: {}:{}: {}",
            printable(file),
            le.line,
            printable(&le.message)
        );
        if let Some(text) = source.and_then(|s| std::str::from_utf8(s).ok()) {
            if let Some(l) = text.lines().nth(le.line.saturating_sub(1)) {
                eprintln!("  {:>4} | {}", le.line, printable(l));
            }
        }
    } else {
        print_error(e);
    }
}

/// One parsed `-o` value.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    /// The exporter.
    pub kind: OutputKind,
    /// Where it writes.
    pub dest: Destination,
    /// `name=` values.
    pub names: Vec<String>,
    /// Layer compression and media types (image outputs).
    pub format: ImageFormat,
}

/// Parses a buildx-style `-o` value.
pub fn parse_output(spec: &str) -> Result<OutputSpec> {
    if spec == "-" {
        return Ok(OutputSpec {
            kind: OutputKind::Tar,
            dest: Destination::Stdout,
            names: Vec::new(),
            format: ImageFormat::default(),
        });
    }
    if !spec.contains('=') {
        return Ok(OutputSpec {
            kind: OutputKind::Local,
            dest: Destination::Path(PathBuf::from(spec)),
            names: Vec::new(),
            format: ImageFormat::default(),
        });
    }
    let mut fields = BTreeMap::new();
    let mut names = Vec::new();
    let parts =
        crate::csv_fields::csv_fields(spec).map_err(|e| anyhow!("invalid output {spec:?}: {e}"))?;
    for part in &parts {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid output {spec:?}: {part:?} is not key=value"))?;
        let k = k.trim().to_lowercase();
        if k == "name" {
            // buildx spelling: several names in one quoted field, `"name=a:1,a:2"`.
            names.extend(v.split(',').filter(|n| !n.is_empty()).map(String::from));
        } else if fields.insert(k.clone(), v.to_string()).is_some() {
            bail!("invalid output {spec:?}: {k} given twice");
        }
    }
    let ty = fields
        .remove("type")
        .ok_or_else(|| anyhow!("invalid output {spec:?}: type= is required"))?;
    let tar = match fields.remove("tar").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => bail!("invalid output {spec:?}: tar={v} (expected true or false)"),
    };
    let kind = match ty.as_str() {
        "oci" => OutputKind::Oci { tar },
        "docker" => OutputKind::Docker,
        "local" => OutputKind::Local,
        "tar" => OutputKind::Tar,
        "image" => OutputKind::Image {
            push: parse_bool(fields.remove("push").as_deref(), spec)?,
        },
        "registry" => {
            fields.remove("push");
            OutputKind::Image { push: true }
        }
        other => bail!(
            "unknown output type {other:?}: expected oci, docker, local, tar, image or registry"
        ),
    };
    if !tar && !matches!(kind, OutputKind::Oci { .. }) {
        bail!("invalid output {spec:?}: tar=false applies to type=oci only");
    }
    let dest = match fields.remove("dest").as_deref() {
        None if matches!(kind, OutputKind::Image { .. }) => Destination::Names,
        None | Some("") => bail!("invalid output {spec:?}: dest= is required"),
        Some("-") => {
            if matches!(kind, OutputKind::Local | OutputKind::Oci { tar: false }) {
                bail!("invalid output {spec:?}: a directory output cannot go to stdout");
            }
            Destination::Stdout
        }
        Some(p) => Destination::Path(PathBuf::from(p)),
    };
    let format = image_format(&mut fields, &kind, spec)?;
    if let Some(k) = fields.keys().next() {
        bail!("invalid output {spec:?}: unknown attribute {k:?}");
    }
    Ok(OutputSpec {
        kind,
        dest,
        names,
        format,
    })
}

/// The `compression=`, `compression-level=`, `force-compression=` and `oci-mediatypes=`
/// attributes of an image output (taken out of `fields`).
fn image_format(
    fields: &mut BTreeMap<String, String>,
    kind: &OutputKind,
    spec: &str,
) -> Result<ImageFormat> {
    let keys = [
        "compression",
        "compression-level",
        "force-compression",
        "oci-mediatypes",
    ];
    if matches!(kind, OutputKind::Local | OutputKind::Tar) {
        if let Some(k) = keys.iter().find(|k| fields.contains_key(**k)) {
            bail!("invalid output {spec:?}: {k}= applies to image outputs (oci, docker, image, registry)");
        }
        return Ok(ImageFormat::default());
    }
    let compression = match fields.remove("compression") {
        None => LayerCompression::Gzip,
        Some(c) => LayerCompression::parse(&c).ok_or_else(|| {
            anyhow!(
                "invalid output {spec:?}: compression={c} (expected gzip, zstd or uncompressed)"
            )
        })?,
    };
    let (levels, default) = compression.levels();
    let level = match fields.remove("compression-level") {
        None => default,
        Some(l) => l
            .parse::<i32>()
            .ok()
            .filter(|n| levels.contains(n))
            .ok_or_else(|| {
                anyhow!(
                    "invalid output {spec:?}: compression-level={l} (expected {} to {})",
                    levels.start(),
                    levels.end()
                )
            })?,
    };
    let force = parse_bool(fields.remove("force-compression").as_deref(), spec)?;
    let oci_mediatypes = match fields.remove("oci-mediatypes").as_deref() {
        None => true,
        v => parse_bool(v, spec)?,
    };
    if compression == LayerCompression::Zstd && !oci_mediatypes {
        bail!("invalid output {spec:?}: zstd layers have no Docker media type; keep oci-mediatypes=true");
    }
    Ok(ImageFormat {
        layers: LayerFormat { compression, level },
        force,
        oci_mediatypes,
    })
}

fn parse_bool(v: Option<&str>, spec: &str) -> Result<bool> {
    match v {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => bail!("invalid output {spec:?}: {other:?} is not true or false"),
    }
}

/// Resolves `--build-arg` values (`K` alone takes the value from the environment; unset
/// variables are skipped as docker does).
fn parse_build_args(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => bail!("invalid --build-arg {a:?}: empty name"),
            None if a.is_empty() => bail!("invalid --build-arg \"\": empty name"),
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// True when a stage the target needs has a RUN instruction.
fn plan_has_run(plan: &Plan) -> bool {
    plan.order.iter().any(|&i| {
        plan.stages[i]
            .instructions
            .iter()
            .any(|inst| inst.keyword == crate::dockerfile::ast::Keyword::Run)
    })
}

/// Enters the user namespace (unless root) and compiles the seccomp profile. Runs while
/// the process has one thread.
fn prepare_sandbox(
    args: &BuildArgs,
    mount_inputs: MountInputs,
    store: &Store,
    progress: &Progress,
) -> Result<RunEnvironment> {
    let (isolation, snapshotter, shm_size) = (args.isolation, args.snapshotter, args.shm_size);
    use crate::sandbox::run::Isolation;
    // Installed at the start of the build.
    let cancel = Cancel;
    let wanted = match isolation {
        IsolationArg::Auto => None,
        IsolationArg::Namespaces => Some(Isolation::Namespaces),
        IsolationArg::Chroot => Some(Isolation::Chroot),
    };
    // Without root, this forks: the parent only waits, the child builds.
    progress.pause();
    let mapping = crate::sandbox::userns::enter();
    progress.resume();
    let mapping = mapping?;
    if let crate::sandbox::userns::Mapping::SingleId { reason } = &mapping {
        progress.note(&format!(
            "warning: only your own user id is mapped into the build's user namespace ({reason}): files in RUN steps can belong to root only, and chown to other ids fails"
        ));
    }
    let isolation = match wanted {
        Some(i) => i,
        None if crate::sandbox::run::namespaces_work() => Isolation::Namespaces,
        None => {
            progress.note("warning: cannot create namespaces here; RUN steps use the chroot isolation (see README)");
            Isolation::Chroot
        }
    };
    let caps = crate::sandbox::caps::DEFAULT_CAPS
        .iter()
        .map(|c| c.to_string())
        .collect();
    let seccomp = Filter::default_profile(&caps, crate::sandbox::seccomp::kernel_version())?;
    let snapshotter = resolve_snapshotter(snapshotter, isolation, store)?;
    Ok(RunEnvironment {
        isolation,
        snapshotter,
        single_id: matches!(mapping, crate::sandbox::userns::Mapping::SingleId { .. }),
        mapping: id_maps(),
        mount_inputs,
        shm_size,
        seccomp,
        cancel,
    })
}

/// This process's id maps as the kernel shows them, whitespace normalised.
fn id_maps() -> String {
    ["uid_map", "gid_map"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!("/proc/self/{f}"))
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `auto` becomes overlay when the kernel overlay works here (the build then has a mount
/// namespace of its own), else fuse-overlayfs when that works, else walk; `overlay` and
/// `fuse-overlayfs` fail with the reason when they do not. What was tried is recorded in
/// the cache directory for `rbuild info`.
fn resolve_snapshotter(
    wanted: Snapshotter,
    isolation: crate::sandbox::run::Isolation,
    store: &Store,
) -> Result<Snapshotter> {
    use crate::snapshot::overlay::{self, Driver};
    let tried: &[Driver] = match wanted {
        Snapshotter::Walk | Snapshotter::Copy => return Ok(wanted),
        Snapshotter::Overlay => &[Driver::Kernel],
        Snapshotter::FuseOverlayfs => &[Driver::Fuse],
        Snapshotter::Auto => &[Driver::Kernel, Driver::Fuse],
    };
    let namespace = if isolation == crate::sandbox::run::Isolation::Chroot {
        Err(anyhow!(
            "RUN steps use the chroot isolation, which has no mount namespace"
        ))
    } else {
        overlay::private_mount_namespace()
    };
    let mut outcomes = Vec::new();
    for &driver in tried {
        let outcome = match &namespace {
            Ok(()) => overlay::probe(driver, &store.tmp_dir()),
            Err(e) => Err(anyhow!("{e:#}")),
        };
        let usable = outcome.is_ok();
        outcomes.push((driver, outcome));
        if usable {
            break;
        }
    }
    let recorded: Vec<(Driver, &Result<()>)> = outcomes.iter().map(|(d, o)| (*d, o)).collect();
    overlay::record_probe(store.root(), &recorded);
    match outcomes.pop() {
        Some((Driver::Kernel, Ok(()))) => Ok(Snapshotter::Overlay),
        Some((Driver::Fuse, Ok(()))) => Ok(Snapshotter::FuseOverlayfs),
        Some((driver, Err(e))) if wanted != Snapshotter::Auto => Err(e.context(format!(
            "--snapshotter={}: it cannot be used here",
            driver.name()
        ))),
        _ => Ok(Snapshotter::Walk),
    }
}

/// Parses `--build-context NAME=VALUE` values.
fn parse_build_contexts(raw: &[String]) -> Result<BTreeMap<String, NamedContext>> {
    let mut out = BTreeMap::new();
    for c in raw {
        let (name, value) = c
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| anyhow!("invalid --build-context {c:?}: expected NAME=VALUE"))?;
        let ctx =
            NamedContext::parse(value).with_context(|| format!("invalid --build-context {c:?}"))?;
        out.insert(name.to_string(), ctx);
    }
    Ok(out)
}

fn parse_labels(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow!("invalid --label {l:?}: expected KEY=VALUE")),
        })
        .collect()
}

/// The cache directory used when neither `--cache-dir` nor `RBUILD_CACHE_DIR` names one.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("rbuild");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".cache/rbuild");
    }
    std::env::temp_dir().join("rbuild-cache")
}

/// Fails early when an output's destination cannot be written.
fn check_dest(dest: &Destination) -> Result<()> {
    let Destination::Path(p) = dest else {
        return Ok(());
    };
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            p.display(),
            parent.display()
        );
    }
    nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).map_err(|_| {
        anyhow!(
            "cannot write {}: directory {} is not writable",
            p.display(),
            parent.display()
        )
    })?;
    Ok(())
}

fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        _ => Ok(None),
    }
}

fn run(args: &BuildArgs) -> Result<(), Failure> {
    // Everything that can be a usage error is checked before any work.
    let mut outputs = Vec::new();
    for o in &args.outputs {
        outputs.push(parse_output(o).map_err(usage)?);
    }
    // --push, --load, and -t alone: the image under the -t names, as buildx has them.
    let under_tags = |push: bool| OutputSpec {
        kind: OutputKind::Image { push },
        dest: Destination::Names,
        names: Vec::new(),
        format: ImageFormat::default(),
    };
    if (args.push || args.load.is_some()) && args.tags.is_empty() {
        return Err(usage(anyhow!(
            "--push and --load need a name: give one with -t NAME"
        )));
    }
    let tags_only = outputs.is_empty() && !args.tags.is_empty();
    if args.push {
        outputs.push(under_tags(true));
    }
    if args.load == Some(LoadTarget::Store) || tags_only {
        outputs.push(under_tags(false));
    }
    if args.load == Some(LoadTarget::Podman) {
        outputs.push(OutputSpec {
            kind: OutputKind::Podman,
            dest: Destination::Names,
            names: Vec::new(),
            format: ImageFormat::default(),
        });
    }
    for name in args
        .tags
        .iter()
        .chain(outputs.iter().flat_map(|o| o.names.iter()))
    {
        Reference::parse(name).map_err(usage)?;
    }
    let stdout_outputs = outputs
        .iter()
        .filter(|o| o.dest == Destination::Stdout)
        .count();
    if stdout_outputs > 1 || (stdout_outputs == 1 && args.quiet) {
        return Err(usage(anyhow!(
            "only one output can go to stdout, and not with -q"
        )));
    }
    let paths: Vec<&PathBuf> = outputs
        .iter()
        .filter_map(|o| match &o.dest {
            Destination::Path(p) => Some(p),
            _ => None,
        })
        .collect();
    if let Some(twice) = paths
        .iter()
        .enumerate()
        .find_map(|(i, p)| paths[..i].contains(p).then_some(p))
    {
        return Err(usage(anyhow!(
            "two outputs write to {}: give each its own dest",
            twice.display()
        )));
    }
    if stdout_outputs == 1 && std::io::stdout().is_terminal() {
        return Err(usage(anyhow!(
            "refusing to write an archive to a terminal: redirect stdout or give dest=PATH"
        )));
    }
    let platform = match &args.platform {
        None => Platform::host(),
        Some(p) => {
            let p = Platform::parse(p).map_err(usage)?;
            if !p.matches_host() {
                return Err(usage(anyhow!(
                    "--platform={p}: only the host platform ({}) can be built; emulation is not supported",
                    Platform::host()
                )));
            }
            p
        }
    };
    let mode = if args.quiet {
        Mode::Quiet
    } else {
        args.progress.mode()
    };
    if args.context() == "-" && args.file.as_deref() == Some("-") {
        return Err(usage(anyhow!(
            "the context and the Dockerfile cannot both be read from stdin"
        )));
    }
    let build_args = parse_build_args(&args.build_args).map_err(usage)?;
    for h in &args.add_hosts {
        crate::solver::run::host_entry(h).map_err(usage)?;
    }
    for u in &args.ulimits {
        crate::solver::run::parse_ulimit(u).map_err(usage)?;
    }
    let pull = match args.pull {
        PullArg::Missing => PullPolicy::Missing,
        PullArg::Always => PullPolicy::Always,
        PullArg::Never => PullPolicy::Never,
    };
    let named = parse_build_contexts(&args.build_contexts).map_err(usage)?;
    let labels = parse_labels(&args.labels).map_err(usage)?;
    let (annotations, layout_annotations) = parse_annotations(&args.annotations).map_err(usage)?;
    let mount_inputs = secrets::mount_inputs(&args.secrets, &args.ssh, |v| {
        std::env::var(v).ok().filter(|v| !v.is_empty())
    })
    .map_err(usage)?;
    let epoch = source_date_epoch().map_err(usage)?;
    let build_failed = |e: anyhow::Error| Failure::Build(e, "Dockerfile".into(), None);
    for o in &outputs {
        check_dest(&o.dest).map_err(build_failed)?;
    }

    // SIGINT/SIGTERM end any build the way Ctrl-C does: long loops check the flag.
    Cancel::install();
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let store = Store::open(&cache_dir).map_err(build_failed)?;
    let gc_policy = args.gc.policy(&store).map_err(build_failed)?;
    let progress = Progress::new(mode);

    // Context and Dockerfile: naming ones that do not exist is a usage error.
    check_inputs_exist(args).map_err(usage)?;
    let (context, df_name, df_bytes) = {
        let name = args
            .file
            .as_deref()
            .and_then(|f| Path::new(f).file_name())
            .map_or_else(|| "Dockerfile".into(), |n| n.to_string_lossy());
        let h = progress.start(format!("[internal] load build definition from {name}"));
        match load_inputs(args, &store, &progress) {
            Ok(inputs) => {
                progress.status(&h, &transferred("transferring dockerfile", inputs.2.len()));
                progress.done(h, false);
                inputs
            }
            Err(e) => {
                progress.failed(h);
                return Err(build_failed(e));
            }
        }
    };
    let fail = |e: anyhow::Error| Failure::Build(e, df_name.clone(), Some(df_bytes.clone()));
    let df: Dockerfile = dockerfile::parse(&df_bytes).map_err(|e| {
        fail(if e.line > 0 {
            anyhow::Error::new(LineError {
                line: e.line,
                message: e.message.clone(),
            })
        } else {
            anyhow!("{df_name}: {}", e.message)
        })
    })?;
    let plan = Plan::new(
        &df,
        PlanOptions {
            build_args,
            target: args.target.clone(),
            platform,
            default_network: match args.network {
                NetworkMode::Default | NetworkMode::Host => None,
                NetworkMode::None => Some("none".into()),
            },
            extra_hosts: args.add_hosts.clone(),
            ulimits: args.ulimits.clone(),
        },
    )
    .map_err(fail)?;
    match (args.check, args.call) {
        (true, CallArg::Build | CallArg::Check) | (false, CallArg::Check) => {
            return run_checks(&df).map_err(fail)
        }
        (true, _) => return Err(usage(anyhow!("--check is --call=check: give one of them"))),
        (false, CallArg::Targets) => {
            print_targets(&plan);
            return Ok(());
        }
        (false, CallArg::Outline) => {
            print_outline(&plan);
            return Ok(());
        }
        (false, CallArg::Build) => {}
    }
    let stage_names: Vec<Option<String>> = plan.stages.iter().map(|s| s.name.clone()).collect();
    let mut cache_options = CacheOptions {
        disabled: args.no_cache,
        ..CacheOptions::default()
    };
    for name in cache::no_cache_names(&args.no_cache_filter) {
        let index = cache::check_stage_name(&name, &stage_names).map_err(usage)?;
        cache_options.no_cache_stages.insert(index);
    }
    let run_env = if plan_has_run(&plan) {
        Some(prepare_sandbox(args, mount_inputs, &store, &progress).map_err(build_failed)?)
    } else {
        None
    };
    let client = args
        .registry
        .client(&args.registry_mirrors)
        .map_err(build_failed)?;
    let resolver = Resolver::new(
        &store,
        plan.options.platform.clone(),
        pull,
        named,
        Some(&client as &dyn Puller),
    );
    let output = build(&BuildInputs {
        plan: &plan,
        context: &context,
        store: &store,
        progress: &progress,
        epoch,
        labels: &labels,
        images: &resolver,
        run: run_env.as_ref(),
        cache: &cache_options,
        jobs: args.jobs.map_or_else(default_jobs, |j| j as usize),
        annotations: &annotations,
        // New layers are compressed once, as the first image output asks.
        layer_format: outputs
            .iter()
            .find(|o| !matches!(o.kind, OutputKind::Local | OutputKind::Tar))
            .map_or_else(LayerFormat::default, |o| o.format.layers),
    })
    .map_err(fail)?;
    if !output.unused_build_args.is_empty() {
        progress.note(&format!(
            "warning: build-args not consumed by any ARG: {}",
            output.unused_build_args.join(", ")
        ));
    }
    let image = &output.image;
    if outputs.is_empty() {
        progress.note("warning: no output specified (-o); the result stays in the cache only");
    }
    let base_refs: Vec<Reference> = resolver
        .used()
        .iter()
        .filter_map(|(name, _)| Reference::parse(name).ok())
        .collect();
    let mut pushed = Vec::new();
    for o in &outputs {
        let mut names = args.tags.clone();
        names.extend(o.names.iter().cloned());
        let handle = progress.start(format!("exporting to {}", describe(o)));
        let req = ExportRequest {
            annotations: layout_annotations.clone(),
            kind: o.kind.clone(),
            format: o.format,
            dest: o.dest.clone(),
            names,
        };
        let report =
            |e: &TransferEvent| progress.status(&handle, &Status::of_transfer(e, "", "pushing "));
        let targets = ExportTargets {
            store: &store,
            registry: &client,
            mount_from: &base_refs,
            push_progress: Some(&report),
        };
        match export(&targets, image, &req, epoch) {
            Ok(p) => {
                for (name, digest) in &p {
                    progress.note(&format!("pushed {name}@{digest}"));
                }
                pushed.extend(p);
            }
            Err(e) => {
                progress.failed(handle);
                return Err(build_failed(e));
            }
        }
        progress.done(handle, false);
    }
    let image_id = format!("{}", image.config_digest);
    if let Some(f) = &args.iidfile {
        write_atomic(f, image_id.as_bytes()).map_err(build_failed)?;
    }
    if let Some(f) = &args.metadata_file {
        let meta = serde_json::json!({
            "containerimage.digest": image.manifest_digest.to_string(),
            "containerimage.config.digest": image.config_digest.to_string(),
            "containerimage.descriptor": {
                "mediaType": crate::image::MEDIA_TYPE_MANIFEST,
                "digest": image.manifest_digest.to_string(),
                "size": image.manifest.len(),
            },
            "image.name": image_names(&args.tags, &outputs).join(","),
            "rbuild.pushed": pushed
                .iter()
                .map(|(name, digest)| serde_json::json!({ "name": name, "digest": digest.to_string() }))
                .collect::<Vec<_>>(),
            "rbuild.base-images": resolver
                .used()
                .iter()
                .map(|(name, digest)| serde_json::json!({ "name": name, "digest": digest.to_string() }))
                .collect::<Vec<_>>(),
        });
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| build_failed(e.into()))?;
        write_atomic(f, &text).map_err(build_failed)?;
    }
    collect_garbage(&store, gc_policy, &progress);
    progress.finish(true);
    if args.quiet {
        println!("{image_id}");
    } else {
        progress.note(&format!(
            "built {image_id} in {:.1}s",
            progress.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// The collection that ends every build: BuildKit's default limits where none is set;
/// skipped when another process is collecting. A failure is only a warning.
fn collect_garbage(store: &Store, policy: Policy, progress: &Progress) {
    let result = Disk::of(store.root()).and_then(|disk| {
        gc::collect(
            store,
            &policy.with_defaults(disk),
            &gc::Filter::default(),
            true,
            false,
        )
    });
    match result {
        // Garbage blobs (manifests of unnamed builds) go every time: not worth a line.
        Ok(r) if r.removed.iter().any(|(id, _)| !id.starts_with("sha256:")) => {
            progress.note(&format!(
                "cache: removed {} records, {} in use (was {})",
                r.removed.len(),
                cache::human_size(r.after),
                cache::human_size(r.before)
            ))
        }
        Ok(_) => {}
        Err(e) => progress.note(&format!("warning: cache collection failed: {e:#}")),
    }
}

fn describe(o: &OutputSpec) -> String {
    let kind = match o.kind {
        OutputKind::Oci { tar: true } => "oci",
        OutputKind::Oci { tar: false } => "oci directory",
        OutputKind::Docker => "docker-archive",
        OutputKind::Local => "local directory",
        OutputKind::Tar => "tar",
        OutputKind::Image { push: false } => "image",
        OutputKind::Image { push: true } => "registry",
        OutputKind::Podman => "podman",
    };
    match &o.dest {
        Destination::Stdout => format!("{kind} on stdout"),
        Destination::Path(p) => format!("{kind} {}", p.display()),
        Destination::Names => format!("{kind} {}", o.names.join(", ")),
    }
}

/// The context directory and the `-f` file (or the context's `Dockerfile`) exist.
fn check_inputs_exist(args: &BuildArgs) -> Result<()> {
    if args.context() == "-" {
        return Ok(());
    }
    let dir = Path::new(args.context());
    if !dir.is_dir() {
        bail!("context {:?} is not a directory", args.context());
    }
    match args.file.as_deref() {
        Some("-") => Ok(()),
        Some(f) if !Path::new(f).exists() => bail!("Dockerfile {f:?} does not exist"),
        None if !dir.join("Dockerfile").exists() => bail!(
            "no Dockerfile in the context {:?} (name one with -f)",
            args.context()
        ),
        _ => Ok(()),
    }
}

/// A finished status of `bytes` bytes.
fn transferred(what: &str, bytes: usize) -> Status {
    Status {
        id: what.into(),
        current: bytes as u64,
        total: None,
        completed: true,
    }
}

/// Reads the context and the Dockerfile; a context on stdin shows as its own step
/// (`[internal] load build context`, with its bytes).
fn load_inputs(
    args: &BuildArgs,
    store: &Store,
    progress: &Progress,
) -> Result<(BuildContext, String, Vec<u8>)> {
    if args.context() == "-" {
        let h = progress.start("[internal] load build context".into());
        let mut counted = CountingReader {
            inner: std::io::stdin().lock(),
            count: 0,
        };
        let ctx = BuildContext::from_tar(&mut counted, &store.tmp_dir(), args.file.as_deref())
            .context("cannot read the build context from stdin");
        let ctx = match ctx {
            Ok(c) => {
                progress.status(&h, &transferred("transferring context", counted.count));
                progress.done(h, false);
                c
            }
            Err(e) => {
                progress.failed(h);
                return Err(e);
            }
        };
        let name = args.file.clone().unwrap_or_else(|| "Dockerfile".into());
        // Resolved like a COPY source: a symlinked Dockerfile cannot lead outside.
        let found = ctx
            .resolve(&name)
            .with_context(|| format!("cannot read {name} from the context on stdin"))?;
        let path = match found.as_slice() {
            [m] if m.kind == crate::context::EntryKind::File => m.host_path.clone(),
            _ => bail!("{name} in the context on stdin is not a regular file"),
        };
        let bytes = read_dockerfile(std::fs::File::open(&path), &name)
            .with_context(|| format!("cannot read {name} from the context on stdin"))?;
        return Ok((ctx, name, bytes));
    }
    let dir = Path::new(args.context());
    if !dir.is_dir() {
        bail!("context {:?} is not a directory", args.context());
    }
    match args.file.as_deref() {
        Some("-") => {
            let bytes = read_dockerfile(Ok(std::io::stdin().lock()), "the Dockerfile on stdin")
                .context("cannot read the Dockerfile from stdin")?;
            Ok((
                BuildContext::from_dir(dir, None)?,
                "Dockerfile".into(),
                bytes,
            ))
        }
        file => {
            let path = match file {
                Some(f) => PathBuf::from(f),
                None => dir.join("Dockerfile"),
            };
            let bytes = read_dockerfile(std::fs::File::open(&path), &path.display().to_string())
                .with_context(|| format!("cannot read Dockerfile {}", path.display()))?;
            let name = file.unwrap_or("Dockerfile").to_string();
            Ok((BuildContext::from_dir(dir, Some(&path))?, name, bytes))
        }
    }
}

/// A reader that counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    count: usize,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n;
        Ok(n)
    }
}

/// `--annotation [manifest:]KEY=VALUE` values (buildx's default level, the manifest).
fn parse_annotations(raw: &[String]) -> Result<(BTreeMap<String, String>, LayoutAnnotations)> {
    let mut manifest = BTreeMap::new();
    let mut layout = LayoutAnnotations::default();
    for a in raw {
        let (kv, level) = match a.split_once(':') {
            Some((level, rest)) if !level.contains('=') => (rest, level),
            _ => (a.as_str(), "manifest"),
        };
        // `level[os/arch]`: this build's platform is the host's.
        let level = match level.split_once('[') {
            Some((l, p)) => {
                let p = Platform::parse(p.trim_end_matches(']'))?;
                if !p.matches_host() {
                    bail!(
                        "--annotation {a:?}: this build makes {} only",
                        Platform::host()
                    );
                }
                l
            }
            None => level,
        };
        let map = match level {
            "manifest" => &mut manifest,
            "index" => &mut layout.index,
            "manifest-descriptor" => &mut layout.manifest_descriptor,
            "index-descriptor" => bail!(
                "--annotation {a:?}: rbuild writes one manifest, so no index descriptor; use index: or manifest-descriptor:"
            ),
            other => bail!(
                "--annotation {a:?}: unknown level {other:?} (manifest, index, manifest-descriptor)"
            ),
        };
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                map.insert(k.to_string(), v.to_string());
            }
            _ => bail!("invalid --annotation {a:?}: expected [LEVEL:]KEY=VALUE"),
        }
    }
    Ok((manifest, layout))
}

/// `--call=targets`: the stages that can be targets, the default one marked.
fn print_targets(plan: &Plan) {
    println!("TARGET");
    let last = plan.stages.len().saturating_sub(1);
    for s in &plan.stages {
        let name = s.name.clone().unwrap_or_else(|| s.index.to_string());
        let default = if s.index == last { " (default)" } else { "" };
        println!("{}{default}", printable(&name));
    }
}

/// `--call=outline`: the target and the build args its stages read, with their values.
fn print_outline(plan: &Plan) {
    let target = &plan.stages[plan.target];
    println!("TARGET:\t{}", printable(&target.label()));
    println!();
    println!("BUILD ARG\tVALUE");
    // A `--build-arg` wins, then a global ARG's value, then the stage ARG's default.
    let row = |name: &String, default: Option<&String>| {
        let value = (plan.options.build_args.get(name))
            .or(plan.meta_args.get(name))
            .or(default)
            .map_or("", String::as_str);
        println!("{}\t{}", printable(name), printable(value));
    };
    let mut seen = BTreeSet::new();
    for name in &plan.meta_declared {
        seen.insert(name.clone());
        row(name, None);
    }
    for &i in &plan.order {
        for inst in &plan.stages[i].instructions {
            let crate::dockerfile::ast::Args::Arg(args) = &inst.args else {
                continue;
            };
            for (name, default) in args {
                if seen.insert(name.clone()) {
                    row(name, default.as_ref());
                }
            }
        }
    }
}

/// `--check`: prints what the build checks found, as buildx does; an error when any did.
fn run_checks(df: &Dockerfile) -> Result<()> {
    let warnings = crate::plan::lint::check(df);
    if warnings.is_empty() {
        println!("Check complete, no warnings found.");
        return Ok(());
    }
    let n = warnings.len();
    println!(
        "Check complete, {n} warning{} found!",
        if n == 1 { " has been" } else { "s have been" }
    );
    for w in &warnings {
        println!("\nWARN: {} - {}", w.rule, w.url());
        println!("{} (line {})", printable(&w.message), w.line);
    }
    bail!(
        "{n} build check warning{} (see above)",
        if n == 1 { "" } else { "s" }
    )
}

/// Every name the image gets, from `-t` and the outputs' `name=`, once each.
fn image_names(tags: &[String], outputs: &[OutputSpec]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for n in tags
        .iter()
        .chain(outputs.iter().flat_map(|o| o.names.iter()))
    {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Stages run at once by default: the number of CPUs, and at least 4 (a stage often waits
/// on a network or a disk rather than a CPU).
fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(4)
}

/// Reads a Dockerfile, refusing one larger than the parser takes (`-f /dev/zero` must not
/// fill memory).
fn read_dockerfile(opened: std::io::Result<impl Read>, name: &str) -> Result<Vec<u8>> {
    let limit = crate::dockerfile::MAX_FILE;
    let mut bytes = Vec::new();
    opened?.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        bail!("{name} is larger than {} MiB", limit >> 20);
    }
    Ok(bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        let o = parse_output("type=oci,dest=out.tar").unwrap();
        assert_eq!(o.kind, OutputKind::Oci { tar: true });
        let o = parse_output("type=oci,tar=false,dest=d,name=a:1").unwrap();
        assert_eq!(o.kind, OutputKind::Oci { tar: false });
        assert_eq!(o.names, vec!["a:1"]);
        let o = parse_output(r#"type=registry,"name=r.io/a:1,r.io/a:latest""#).unwrap();
        assert_eq!(o.kind, OutputKind::Image { push: true });
        assert_eq!(o.names, vec!["r.io/a:1", "r.io/a:latest"]);
        assert_eq!(parse_output("-").unwrap().dest, Destination::Stdout);
        assert_eq!(parse_output("outdir").unwrap().kind, OutputKind::Local);
        for bad in [
            "type=zip,dest=x",
            "dest=x",
            "type=oci",
            "type=oci,dest=x,bogus=1",
            "type=local,dest=-",
            "type=docker,tar=false,dest=x",
            "type=oci,tar=maybe,dest=x",
            r#"type=oci,"dest=x"#,
        ] {
            assert!(parse_output(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn build_args_from_env() {
        std::env::set_var("RBUILD_TEST_ARG", "v");
        let a = parse_build_args(&[
            "RBUILD_TEST_ARG".into(),
            "X=1".into(),
            "UNSET_RBUILD_ARG".into(),
        ])
        .unwrap();
        assert_eq!(a.get("RBUILD_TEST_ARG").map(String::as_str), Some("v"));
        assert_eq!(a.get("X").map(String::as_str), Some("1"));
        assert!(!a.contains_key("UNSET_RBUILD_ARG"));
        assert!(parse_build_args(&["=x".into()]).is_err());
        assert!(parse_build_args(&["".into()]).is_err());
    }
}
