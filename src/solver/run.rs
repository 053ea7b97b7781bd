//! RUN: the command executed in the sandbox on the stage's own root, and the change it
//! made turned into layer entries.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::resource::Resource;

use super::mounts::{prepare as prepare_mounts, MountFrom, MountInputs, PreparedMounts};
use super::rootfs::{read_image_file, resolve_in_root, RootKind};
use super::users::resolve_run_user;
use crate::cancel::Cancel;
use crate::image::config::ImageConfig;
use crate::inroot::{FileKind, Missing, Root, Rules};
use crate::plan::steps::{RunStep, DEFAULT_PATH};
use crate::sandbox::run::{mount_points, run, Credentials, Isolation, Network, Outcome, RunSpec};
use crate::sandbox::seccomp::Filter;
use crate::snapshot::clone::Snapshotter;
use crate::snapshot::walk::{MountPoints, TreeState};
use crate::snapshot::LayerEntry;
use crate::store::Store;

/// How RUN steps are executed in this build.
pub struct RunEnvironment {
    /// Namespaces or chroot.
    pub isolation: Isolation,
    /// How a step's root is prepared and its layer found (never `Auto`: resolved).
    pub snapshotter: Snapshotter,
    /// Only the caller's own id is mapped: files on disk all belong to root, so results
    /// differ from a full mapping's (part of every step key).
    pub single_id: bool,
    /// The id mapping as the kernel shows it (`/proc/self/uid_map`, `gid_map`).
    pub mapping: String,
    /// Secrets and SSH agents for `RUN --mount`.
    pub mount_inputs: MountInputs,
    /// Size of every step's `/dev/shm` in bytes (`--shm-size`).
    pub shm_size: u64,
    /// The compiled seccomp profile.
    pub seccomp: Filter,
    /// Cancellation.
    pub cancel: Cancel,
}

impl RunEnvironment {
    /// How stage roots are kept for this snapshotter.
    pub fn root_kind(&self) -> RootKind<'_> {
        match self.snapshotter.driver() {
            Some(driver) => RootKind::Overlay {
                mapping: &self.mapping,
                driver,
            },
            None => RootKind::Dir,
        }
    }
}

/// The hostname RUN steps see (BuildKit uses a random id; a fixed name keeps builds
/// reproducible).
const HOSTNAME: &str = "rbuild";

/// What a RUN step works with besides its own root.
pub struct StepInputs<'a> {
    /// The store (cache mounts live in it).
    pub store: &'a Store,
    /// The build's scratch directory (outside every root).
    pub scratch: &'a Path,
    /// What each `--mount` of the step reads from, in order.
    pub mount_from: Vec<Option<MountFrom<'a>>>,
}

/// How a step's changes are found.
pub enum Differ<'a> {
    /// Record the tree before the step, compare after (walk and copy snapshotters).
    Walk,
    /// Read the overlay's upper directory, with a view of the layers below.
    Upper(&'a crate::snapshot::overlay::StepDirs),
}

/// Runs `step` on `root` with the stage's `config`; `log` receives output lines. Returns
/// the entries of the layer (empty when the step changed nothing).
pub fn run_command(
    env: &RunEnvironment,
    root: &Path,
    differ: Differ<'_>,
    config: &ImageConfig,
    step: &RunStep,
    inputs: StepInputs<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<LayerEntry>> {
    let scratch = inputs.scratch;
    let network = match step.network.as_deref() {
        None | Some("default") | Some("host") => Network::Host,
        Some("none") => Network::None,
        Some(other) => bail!("RUN --network={other}: expected default, none or host"),
    };
    match step.security.as_deref() {
        None | Some("sandbox") => {}
        Some(other) => {
            bail!("RUN --security={other} is not allowed (rbuild grants no extra privileges)")
        }
    }
    for dir in ["proc", "dev", "sys", "etc"] {
        if let Ok(m) = root.join(dir).symlink_metadata() {
            if m.file_type().is_symlink() {
                bail!("/{dir} in the image is a symlink; RUN needs it to be a directory");
            }
        }
    }
    let user = resolve_run_user(
        &config.config.user,
        read_image_file(root, "/etc/passwd").as_deref(),
        read_image_file(root, "/etc/group").as_deref(),
    )?;
    crate::sandbox::userns::check_mapped(user.uid, user.gid, &user.groups).with_context(|| {
        format!(
            "cannot run as user {:?} (uid {}, gid {})",
            config.config.user, user.uid, user.gid
        )
    })?;
    let mut environ = step.env.clone();
    if !environ.iter().any(|e| e.starts_with("HOME=")) {
        environ.push(format!("HOME={}", user.home));
    }
    if !environ.iter().any(|e| e.starts_with("HOSTNAME=")) {
        environ.push(format!("HOSTNAME={HOSTNAME}"));
    }
    let cwd = if config.config.working_dir.is_empty() {
        "/".to_string()
    } else {
        config.config.working_dir.clone()
    };

    let program = find_program(root, &step.argv, &environ)?;
    let rlimits = step
        .ulimits
        .iter()
        .map(|u| parse_ulimit(u))
        .collect::<Result<Vec<_>>>()?;
    // The wait for the clock to pass the record happens in the step, before its command.
    let record = match differ {
        Differ::Walk => Some(TreeState::capture(root)?),
        Differ::Upper(_) => None,
    };
    ensure_workdir(root, &cwd)?;
    // Where the image's /etc/NAME really is (resolv.conf is often a symlink); never over a
    // directory or into the sandbox's own mounts.
    let etc: Vec<(String, String)> = etc_files(network, &step.extra_hosts)?
        .into_iter()
        .filter_map(|(name, contents)| {
            let r = resolve_in_root(root, &format!("/etc/{name}"), true).ok()?;
            let rel = r.rel_str().ok()?;
            let first = rel.split('/').next().unwrap_or("");
            let usable = r.kind() != Some(FileKind::Dir)
                && !rel.is_empty()
                && !matches!(first, "proc" | "dev" | "sys");
            usable.then(|| (rel.to_string(), contents))
        })
        .collect();
    let mut points = MountPoints::default();
    let made = (|| -> Result<PreparedMounts> {
        for (rel, dir) in mount_points(&etc) {
            points.ensure(root, &rel, dir)?;
        }
        prepare_mounts(
            &step.mounts,
            inputs.mount_from,
            &env.mount_inputs,
            inputs.store,
            root,
            scratch,
            &env.cancel,
            &mut points,
        )
    })();
    let mounts = match made {
        Ok(m) => m,
        Err(e) => {
            points.remove();
            return Err(e);
        }
    };
    // Mount variables (SSH_AUTH_SOCK, secrets as env=) win over the image's.
    for var in &mounts.env {
        let key = var.split('=').next().unwrap_or_default();
        environ.retain(|e| e.split('=').next() != Some(key));
        environ.push(var.clone());
    }
    let creds = Credentials {
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
    };
    let spec = RunSpec {
        rootfs: root,
        argv: &step.argv,
        program: &program,
        env: &environ,
        cwd: &cwd,
        user: &creds,
        network,
        isolation: env.isolation,
        etc_files: &etc,
        script: step.script.as_ref().map(|(n, b)| (n.as_str(), b.as_str())),
        seccomp: Some(&env.seccomp),
        hostname: HOSTNAME,
        mounts: &mounts.mounts,
        start_after: record.as_ref().map(|(_, settled)| *settled),
        rlimits: &rlimits,
        shm_size: env.shm_size,
    };
    let mut pending = Vec::new();
    let outcome = run(&spec, &env.cancel, |bytes| {
        pending.extend_from_slice(bytes);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            log(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref());
        }
    });
    if !pending.is_empty() {
        log(String::from_utf8_lossy(&pending).as_ref());
    }
    points.remove();
    for (dir, id) in &mounts.caches {
        inputs
            .store
            .note_cache_mount(dir, id, Some(crate::store::gc::tree_size(dir)))?;
    }
    let shown = show_command(&step.argv);
    match outcome? {
        Outcome::Exited(0) => {}
        Outcome::Exited(code) => {
            bail!("process {shown} did not complete successfully: exit code: {code}")
        }
        Outcome::Signaled(sig) => {
            bail!("process {shown} did not complete successfully: killed by signal {sig}")
        }
    }
    match (record, differ) {
        (Some((before, _)), _) => before.diff(root),
        (None, Differ::Upper(dirs)) => {
            crate::snapshot::overlay::diff_upper(dirs, &crate::snapshot::walk::skipped)
        }
        (None, Differ::Walk) => unreachable!("the walk differ always records"),
    }
}

/// `argv[0]` as the step will exec it: as given when it holds a `/`, else the first
/// executable file of that name on the step's PATH, looked up inside its root.
fn find_program(root: &Path, argv: &[String], env: &[String]) -> Result<String> {
    let first = argv
        .first()
        .ok_or_else(|| anyhow!("RUN has an empty command"))?;
    if first.contains('/') {
        return Ok(first.clone());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let executable = |p: &str| {
        resolve_in_root(root, p, true).is_ok_and(|r| {
            r.kind() == Some(FileKind::File) && r.stat.is_some_and(|st| st.st_mode & 0o111 != 0)
        })
    };
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}/{first}", d.trim_end_matches('/')))
        .find(|p| executable(p))
        .ok_or_else(|| anyhow!("exec: \"{first}\": executable file not found in $PATH"))
}

fn show_command(argv: &[String]) -> String {
    format!("{:?}", argv.join(" "))
}

/// Creates the working directory (and its parents) if missing, as root, mode 0755.
fn ensure_workdir(root: &Path, cwd: &str) -> Result<()> {
    let rules = Rules {
        missing: Missing::MakeDirs,
        ..Rules::chroot(true)
    };
    let r = Root::open_dir(root)?
        .resolve(Path::new(cwd), rules)
        .with_context(|| format!("cannot create the working directory {cwd}"))?;
    if r.kind() != Some(FileKind::Dir) {
        bail!("the working directory {cwd} is not a directory");
    }
    Ok(())
}

/// The generated /etc files (name, contents), which the sandbox mounts over the image's;
/// `extra_hosts` are the build's `--add-host` entries.
fn etc_files(network: Network, extra_hosts: &[String]) -> Result<Vec<(String, String)>> {
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{HOSTNAME}\n"
    );
    for h in extra_hosts {
        hosts.push_str(&host_entry(h)?);
    }
    let resolv = match network {
        Network::None => String::new(),
        Network::Host => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    Ok(vec![
        ("hosts".to_string(), hosts),
        ("hostname".to_string(), format!("{HOSTNAME}\n")),
        ("resolv.conf".to_string(), resolv),
    ])
}

/// An `--add-host NAME:IP` (or `NAME=IP`) value as an /etc/hosts line.
pub fn host_entry(spec: &str) -> Result<String> {
    let (name, ip) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| anyhow!("invalid --add-host {spec:?}: expected NAME:IP"))?;
    let ip: std::net::IpAddr = ip
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| anyhow!("invalid --add-host {spec:?}: {ip:?} is not an IP address"))?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!("invalid --add-host {spec:?}: bad host name");
    }
    Ok(format!("{ip}\t{name}\n"))
}

/// An `--ulimit NAME=SOFT[:HARD]` value (`-1` or `unlimited` for no limit; HARD defaults
/// to SOFT), as Docker spells the names.
pub fn parse_ulimit(spec: &str) -> Result<(Resource, u64, u64)> {
    let (name, values) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("invalid --ulimit {spec:?}: expected NAME=SOFT[:HARD]"))?;
    let resource = match name {
        "core" => Resource::RLIMIT_CORE,
        "cpu" => Resource::RLIMIT_CPU,
        "data" => Resource::RLIMIT_DATA,
        "fsize" => Resource::RLIMIT_FSIZE,
        "locks" => Resource::RLIMIT_LOCKS,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "msgqueue" => Resource::RLIMIT_MSGQUEUE,
        "nice" => Resource::RLIMIT_NICE,
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "rss" => Resource::RLIMIT_RSS,
        "rtprio" => Resource::RLIMIT_RTPRIO,
        "rttime" => Resource::RLIMIT_RTTIME,
        "sigpending" => Resource::RLIMIT_SIGPENDING,
        "stack" => Resource::RLIMIT_STACK,
        "as" => Resource::RLIMIT_AS,
        other => bail!("invalid --ulimit {spec:?}: unknown limit {other:?}"),
    };
    let value = |v: &str| -> Result<u64> {
        match v {
            "-1" | "unlimited" => Ok(libc::RLIM_INFINITY),
            _ => v
                .parse()
                .map_err(|_| anyhow!("invalid --ulimit {spec:?}: {v:?} is not a number")),
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (value(s)?, value(h)?),
        None => (value(values)?, value(values)?),
    };
    if soft > hard {
        bail!("invalid --ulimit {spec:?}: the soft limit is above the hard one");
    }
    Ok((resource, soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_steps_path_inside_its_root() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("usr/bin")).unwrap();
        fs::create_dir_all(t.path().join("bin")).unwrap();
        fs::write(t.path().join("usr/bin/tool"), b"").unwrap();
        fs::set_permissions(
            t.path().join("usr/bin/tool"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        fs::write(t.path().join("bin/data"), b"").unwrap();
        let argv = |s: &str| vec![s.to_string()];
        let env = vec!["PATH=/bin:/usr/bin".to_string()];
        assert_eq!(
            find_program(t.path(), &argv("tool"), &env).unwrap(),
            "/usr/bin/tool"
        );
        // Not executable, not there: the error Docker gives.
        let e = find_program(t.path(), &argv("data"), &env).unwrap_err();
        assert!(
            e.to_string().contains("executable file not found in $PATH"),
            "{e}"
        );
        assert_eq!(find_program(t.path(), &argv("./x"), &env).unwrap(), "./x");
        assert!(find_program(t.path(), &[], &env).is_err());
    }

    #[test]
    fn etc_files_and_command_display() {
        let none = etc_files(Network::None, &["db:10.0.0.5".to_string()]).unwrap();
        let names: Vec<&str> = none.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["hosts", "hostname", "resolv.conf"]);
        assert_eq!(none[1].1, format!("{HOSTNAME}\n"));
        assert!(none[2].1.is_empty(), "no resolver without a network");
        assert!(none[0].1.contains("127.0.0.1\tlocalhost"));
        assert!(none[0].1.ends_with("10.0.0.5\tdb\n"), "{}", none[0].1);
        assert_eq!(host_entry("v6=::1").unwrap(), "::1\tv6\n");
        assert!(host_entry("nohost").is_err() && host_entry("a:not-ip").is_err());
        let (r, soft, hard) = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((r, soft, hard), (Resource::RLIMIT_NOFILE, 1024, 2048));
        assert_eq!(parse_ulimit("core=-1").unwrap().1, libc::RLIM_INFINITY);
        assert!(parse_ulimit("bogus=1").is_err() && parse_ulimit("nofile=9:1").is_err());
        assert_eq!(
            show_command(&["sh".into(), "-c".into(), "x \"y\"".into()]),
            r#""sh -c x \"y\"""#
        );
    }
}
