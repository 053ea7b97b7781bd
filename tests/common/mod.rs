//! Helpers shared by the integration tests: where the binary and the test data are, tool
//! checks, scratch directories, running commands with a time limit, and (in the submodules)
//! reading images with independent tools and checking a case's expectations.
//!
//! Every test crate includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod build;
pub mod case;
pub mod image;
pub mod tree;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Time limit for one rbuild run.
pub const RBUILD_TIMEOUT: Duration = Duration::from_secs(180);
/// Time limit for one run of a checking tool (skopeo, umoci, podman, tar, ...).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long output is still collected after a command exits.
const PIPE_GRACE: Duration = Duration::from_secs(10);

/// The rbuild binary under test: `$RBUILD_BIN` when set (made absolute), else the binary
/// cargo built for this package.
pub fn rbuild_bin() -> PathBuf {
    match std::env::var_os("RBUILD_BIN") {
        Some(p) if !p.is_empty() => absolute(Path::new(&p)),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_rbuild")),
    }
}

/// The test data directory: `$RBUILD_TESTDATA` when set, else `testdata/` of the package.
pub fn testdata_dir() -> PathBuf {
    match std::env::var_os("RBUILD_TESTDATA") {
        Some(p) if !p.is_empty() => absolute(Path::new(&p)),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata"),
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .expect("the current directory is readable")
            .join(p)
    }
}

/// True when the tests run in CI (`CI=true`), where a missing tool is a failure.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// True when the tests run as root (ownership can then be checked on disk too).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Finds `tool` on `PATH`.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Checks that every tool is installed. When one is missing the test fails in CI
/// (`CI=true`); elsewhere this prints `skipping: <tool> not installed` and returns false, and
/// the caller returns early.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        if find_tool(tool).is_none() {
            if in_ci() {
                panic!("{test}: required tool {tool} is not installed (CI=true, so this is a failure; run scripts/test.sh to install it)");
            }
            eprintln!("skipping: {tool} not installed ({test})");
            return false;
        }
    }
    true
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A scratch directory removed when dropped (unless `RBUILD_TEST_KEEP=1`, which keeps it and
/// prints where it is). Removal first makes every directory writable, so trees with
/// read-only directories (as images often have) go away too.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A new empty directory under the system temp dir, named after `label`.
    pub fn new(label: &str) -> TestDir {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("rbuild-test-{label}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        TestDir { path: dir.keep() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var("RBUILD_TEST_KEEP").as_deref() == Ok("1") {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        remove_tree(&self.path);
    }
}

/// Removes a directory tree, making read-only directories writable first; errors are
/// ignored (this is cleanup).
pub fn remove_tree(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o755));
        }
    }
    let _ = std::fs::remove_dir_all(path);
}

/// The result of running a command.
#[derive(Debug, Clone)]
pub struct Ran {
    /// What was run, for messages.
    pub what: String,
    /// The exit code (`128 + signal` when killed by a signal).
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

impl Ran {
    /// stdout as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// A one-paragraph summary: command, exit code and stderr.
    pub fn summary(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stderr ---\n{}--------------",
            self.what,
            self.code,
            self.stderr_text()
        )
    }

    /// Panics with the summary unless the command exited 0.
    pub fn assert_ok(&self, context: &str) -> &Ran {
        assert_eq!(self.code, 0, "{context}: {}", self.summary());
        self
    }
}

/// Describes a command line for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with `stdin` (or nothing) as standard input and returns what it did. A command
/// still running after `timeout` is killed and the test fails, so a hang cannot stall CI.
pub fn run_cmd(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Ran {
    let what = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let writer = stdin.map(|bytes| {
        let bytes = bytes.to_vec();
        let mut pipe = child.stdin.take().expect("stdin is piped");
        std::thread::spawn(move || {
            // The command may exit without reading everything; that is its business.
            let _ = pipe.write_all(&bytes);
        })
    });
    // Output is collected by threads that report through channels, so a grandchild that
    // keeps a pipe open after the command exits cannot hang the test.
    let reader = |r: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{what}` did not finish within {}s and was killed",
                    timeout.as_secs()
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for `{what}`: {e}"),
        }
    };
    // The stdin writer is not waited for: the command may have exited without reading.
    drop(writer);
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    Ran {
        what,
        code,
        stdout: out.recv_timeout(PIPE_GRACE).unwrap_or_default(),
        stderr: err.recv_timeout(PIPE_GRACE).unwrap_or_default(),
    }
}

/// A command for the rbuild binary under test, with the variables that change its behaviour
/// (`SOURCE_DATE_EPOCH`, `RBUILD_CACHE_DIR`) removed from the inherited environment.
pub fn rbuild_cmd() -> Command {
    let mut cmd = Command::new(rbuild_bin());
    cmd.env_remove("SOURCE_DATE_EPOCH")
        .env_remove("RBUILD_CACHE_DIR")
        .env_remove("XDG_CACHE_HOME");
    cmd
}

/// Runs rbuild with `args` in `cwd`, feeding `stdin` if given.
pub fn rbuild<S: AsRef<OsStr>>(cwd: &Path, args: &[S], stdin: Option<&[u8]>) -> Ran {
    let mut cmd = rbuild_cmd();
    cmd.current_dir(cwd).args(args);
    run_cmd(&mut cmd, stdin, RBUILD_TIMEOUT)
}

/// Runs a checking tool and returns its stdout, or an error naming the command.
pub fn tool(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let ran = run_cmd(cmd, None, TOOL_TIMEOUT);
    if ran.code == 0 {
        Ok(ran.stdout)
    } else {
        Err(ran.summary())
    }
}

/// Names of the entries of a directory (empty when it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// What is left in the store's `tmp/` directory under `cache` (nothing, or no directory at
/// all, is right: a build, failed or not, must not leave temporary files behind).
pub fn leftover_temp_files(cache: &Path) -> Vec<String> {
    dir_entries(&cache.join("tmp"))
}
