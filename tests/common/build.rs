//! Helpers for the RUN sandbox and offline tests (`tests/run.rs`, `tests/offline.rs`): the
//! generated busybox base, builds of a `testdata/run|offline/NAME/` case in a scratch
//! directory with a store of its own, reading what a build wrote (layer entries with their
//! raw tar headers, the final filesystem, plain progress output), `rbuild info`, a loopback
//! HTTP server, `/proc` scans for processes and mounts, and hand-made OCI archives (layers
//! with names no well-behaved tar writer produces).

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::case::copy_tree;
use super::image::{Files, OciImage};
use super::tree::{decompress, FsTree, Kind};
use super::{
    in_ci, rbuild_bin, rbuild_cmd, run_cmd, sha256_hex, testdata_dir, Ran, TestDir, RBUILD_TIMEOUT,
    TOOL_TIMEOUT,
};

// ------------------------------------------------------------------------ the busybox base

/// The busybox base image `scripts/make-busybox-base.sh` writes (`make base`).
pub struct Busybox {
    dir: PathBuf,
}

impl Busybox {
    /// `busybox-oci.tar`: OCI archive, named `busybox:latest`.
    pub fn oci_tar(&self) -> PathBuf {
        self.dir.join("busybox-oci.tar")
    }

    /// `busybox-docker.tar`: docker-archive, `busybox:latest`.
    pub fn docker_tar(&self) -> PathBuf {
        self.dir.join("busybox-docker.tar")
    }

    /// `busybox-layout/`: OCI layout directory, tag `latest`.
    pub fn layout(&self) -> PathBuf {
        self.dir.join("busybox-layout")
    }

    /// `rootfs.tar`: the root filesystem the image is made of.
    pub fn rootfs_tar(&self) -> PathBuf {
        self.dir.join("rootfs.tar")
    }

    /// The image's manifest digest (`sha256:...`), as the script recorded it.
    pub fn digest(&self) -> String {
        std::fs::read_to_string(self.dir.join("digest"))
            .expect("the busybox base has a digest file")
            .trim()
            .to_string()
    }

    /// The image read from its layout directory, every blob verified.
    pub fn image(&self) -> OciImage {
        let files = Files::from_dir(&self.layout()).expect("the busybox layout is readable");
        OciImage::read(&files, "busybox layout").expect("the busybox layout is a valid image")
    }
}

/// The generated busybox base under `<testdata>/generated/busybox/`. When it is missing the
/// test fails in CI (`CI=true`); elsewhere this prints `skipping: ...` and returns `None`,
/// and the caller returns early.
pub fn busybox(test: &str) -> Option<Busybox> {
    let dir = testdata_dir().join("generated/busybox");
    let needed = [
        "busybox-oci.tar",
        "busybox-docker.tar",
        "busybox-layout/index.json",
        "rootfs.tar",
        "digest",
    ];
    if let Some(missing) = needed.iter().find(|f| !dir.join(f).exists()) {
        let msg = format!(
            "the generated busybox base is missing ({} has no {missing}); make it with `make build base`",
            dir.display()
        );
        if in_ci() {
            panic!("{test}: {msg} (CI=true, so this is a failure)");
        }
        eprintln!("skipping: {msg} ({test})");
        return None;
    }
    Some(Busybox { dir })
}

// ------------------------------------------------------------------------------- builds

/// One build in a scratch directory: a copy of a case directory (`case/`, with its
/// `Dockerfile`), the build context (`case/context/` when the case has one, else an empty
/// `ctx/`), a store of its own (`cache/`) and an output directory (`out/`).
pub struct Build {
    /// The scratch directory (removed on drop).
    pub dir: TestDir,
    /// The copy of the case directory.
    pub case: PathBuf,
    /// The Dockerfile given with `-f`.
    pub dockerfile: PathBuf,
    /// The build context.
    pub ctx: PathBuf,
    /// The store (`--cache-dir`).
    pub cache: PathBuf,
    /// Where outputs go.
    pub out: PathBuf,
}

/// The directory of a case: `<testdata>/<group>/<name>/`.
pub fn case_dir(group: &str, name: &str) -> PathBuf {
    testdata_dir().join(group).join(name)
}

impl Build {
    /// Prepares a build of the case `<testdata>/<group>/<name>/`.
    pub fn case(group: &str, name: &str) -> Build {
        let src = case_dir(group, name);
        assert!(
            src.join("Dockerfile").is_file(),
            "{} has no Dockerfile",
            src.display()
        );
        let dir = TestDir::new(&format!("{group}-{name}"));
        let case = dir.join("case");
        copy_tree(&src, &case);
        let ctx = if case.join("context").is_dir() {
            case.join("context")
        } else {
            let ctx = dir.join("ctx");
            std::fs::create_dir(&ctx).expect("create the context directory");
            ctx
        };
        let out = dir.join("out");
        std::fs::create_dir(&out).expect("create the output directory");
        Build {
            dockerfile: case.join("Dockerfile"),
            cache: dir.join("cache"),
            case,
            ctx,
            out,
            dir,
        }
    }

    /// A scratch directory with an empty context and a store, for `rbuild image` commands
    /// (no Dockerfile).
    pub fn scratch(label: &str) -> Build {
        let dir = TestDir::new(label);
        let ctx = dir.join("ctx");
        let out = dir.join("out");
        for d in [&ctx, &out] {
            std::fs::create_dir(d).expect("create a scratch subdirectory");
        }
        Build {
            dockerfile: dir.join("Dockerfile"),
            case: dir.path().to_path_buf(),
            cache: dir.join("cache"),
            ctx,
            out,
            dir,
        }
    }

    /// The Dockerfile's text.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.dockerfile).expect("the Dockerfile is readable")
    }

    /// The 1-based number of the only Dockerfile line that starts with `start`.
    pub fn line_of(&self, start: &str) -> usize {
        let text = self.text();
        let found: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with(start))
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected one line starting with {start:?}",
            self.dockerfile.display()
        );
        found[0]
    }

    /// `rbuild image load --cache-dir CACHE [--name NAME] PATH`.
    pub fn load(&self, path: &Path, name: Option<&str>) -> Ran {
        let mut cmd = rbuild_cmd();
        cmd.current_dir(self.dir.path())
            .arg("image")
            .arg("load")
            .arg("--cache-dir")
            .arg(&self.cache);
        if let Some(n) = name {
            cmd.args(["--name", n]);
        }
        cmd.arg(path);
        run_cmd(&mut cmd, None, TOOL_TIMEOUT)
    }

    /// Loads the busybox OCI archive into the store (as `busybox:latest`), failing the test
    /// if that fails.
    pub fn load_busybox(&self, bb: &Busybox) {
        self.load(&bb.oci_tar(), None)
            .assert_ok("rbuild image load busybox-oci.tar");
    }

    /// `rbuild image SUBCOMMAND --cache-dir CACHE ARGS...`.
    pub fn image_cmd(&self, sub: &str, args: &[&str]) -> Ran {
        let mut cmd = rbuild_cmd();
        cmd.current_dir(self.dir.path())
            .args(["image", sub, "--cache-dir"])
            .arg(&self.cache)
            .args(args);
        run_cmd(&mut cmd, None, TOOL_TIMEOUT)
    }

    /// The arguments of a build of this case, after the program name:
    /// `build --cache-dir CACHE --progress=plain -f DOCKERFILE EXTRA... CONTEXT`.
    pub fn build_args(&self, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["build".into(), "--cache-dir".into()];
        args.push(self.cache.clone().into());
        args.push("--progress=plain".into());
        args.push("-f".into());
        args.push(self.dockerfile.clone().into());
        args.extend(extra.iter().map(OsString::from));
        args.push(self.ctx.clone().into());
        args
    }

    /// The build as a command (not yet run), in the scratch directory.
    pub fn build_cmd(&self, extra: &[&str]) -> Command {
        let mut cmd = rbuild_cmd();
        cmd.current_dir(self.dir.path())
            .args(self.build_args(extra));
        cmd
    }

    /// The build run through `wrapper` (e.g. `["unshare", "-n"]`): `WRAPPER... RBUILD
    /// build ...`, with the same cleaned environment as [`rbuild_cmd`].
    pub fn wrapped_cmd(&self, wrapper: &[&str], extra: &[&str]) -> Command {
        let mut cmd = Command::new(wrapper[0]);
        cmd.current_dir(self.dir.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("RBUILD_CACHE_DIR")
            .env_remove("XDG_CACHE_HOME")
            .args(&wrapper[1..])
            .arg(rbuild_bin())
            .args(self.build_args(extra));
        cmd
    }

    /// Runs the build with `extra` arguments and no outputs of its own beyond those.
    pub fn build(&self, extra: &[&str]) -> Ran {
        run_cmd(&mut self.build_cmd(extra), None, RBUILD_TIMEOUT)
    }

    /// The output arguments [`Built`] reads: an OCI layout directory and a filesystem tar.
    pub fn output_args(&self) -> Vec<String> {
        vec![
            "-o".into(),
            format!("type=oci,tar=false,dest={}", self.layout_out().display()),
            "-o".into(),
            format!("type=tar,dest={}", self.fs_out().display()),
        ]
    }

    /// Where [`Build::output_args`] writes the OCI layout.
    pub fn layout_out(&self) -> PathBuf {
        self.out.join("layout")
    }

    /// Where [`Build::output_args`] writes the filesystem tar.
    pub fn fs_out(&self) -> PathBuf {
        self.out.join("fs.tar")
    }

    /// Runs `cmd` (a build given [`Build::output_args`]) and returns what it did.
    pub fn run_built(&self, cmd: &mut Command) -> Built {
        self.run_built_within(cmd, RBUILD_TIMEOUT)
    }

    /// [`Build::run_built`] with a time limit of its own (the test fails when it is hit).
    pub fn run_built_within(&self, cmd: &mut Command, timeout: Duration) -> Built {
        let ran = run_cmd(cmd, None, timeout);
        Built {
            ran,
            layout: self.layout_out(),
            fs_tar: self.fs_out(),
        }
    }

    /// Runs the build with `extra` arguments and both outputs; fails the test unless it
    /// succeeds.
    pub fn build_ok(&self, extra: &[&str]) -> Built {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(self.output_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let built = self.run_built(&mut self.build_cmd(&args));
        built
            .ran
            .assert_ok(&format!("build of {}", self.case.display()));
        built
    }

    /// What is left in the store's `tmp/` (nothing is right).
    pub fn leftover_temp_files(&self) -> Vec<String> {
        super::leftover_temp_files(&self.cache)
    }
}

/// What a build with [`Build::output_args`] produced.
pub struct Built {
    /// The run.
    pub ran: Ran,
    /// The OCI layout directory.
    pub layout: PathBuf,
    /// The filesystem tar.
    pub fs_tar: PathBuf,
}

impl Built {
    /// The image of the OCI layout, every blob and diff_id verified.
    pub fn image(&self) -> OciImage {
        let files = Files::from_dir(&self.layout).unwrap_or_else(|e| panic!("layout: {e}"));
        OciImage::read(&files, "OCI layout output").unwrap_or_else(|e| panic!("{e}"))
    }

    /// The final filesystem, from the `type=tar` output.
    pub fn fs(&self) -> FsTree {
        let bytes = std::fs::read(&self.fs_tar).expect("the filesystem tar was written");
        FsTree::from_tar(&bytes).unwrap_or_else(|e| panic!("filesystem tar: {e}"))
    }

    /// The entries of every layer (raw tar headers), bottom layer first.
    pub fn layer_entries(&self) -> Vec<Vec<TarItem>> {
        self.image()
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| tar_items(l).unwrap_or_else(|e| panic!("layer {i}: {e}")))
            .collect()
    }
}

/// Content of a regular file of `fs`, if it is one.
pub fn file_content(fs: &FsTree, path: &str) -> Option<String> {
    fs.nodes
        .get(path)
        .filter(|n| n.kind == Kind::File)
        .and_then(|n| n.content.as_deref())
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

// ----------------------------------------------------------------------- layer entries

/// One entry of a tar stream, as its header says.
#[derive(Debug, Clone)]
pub struct TarItem {
    /// The path, without `./` and trailing `/`.
    pub path: String,
    /// Its type.
    pub kind: tar::EntryType,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Permission bits.
    pub mode: u32,
    /// Device numbers (major, minor), for device nodes.
    pub device: Option<(u32, u32)>,
    /// Size in bytes.
    pub size: u64,
    /// Extended attributes (PAX `SCHILY.xattr.NAME` records).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The entries of a tar stream (plain or gzip), whiteouts included.
pub fn tar_items(blob: &[u8]) -> Result<Vec<TarItem>, String> {
    let data = decompress(blob)?;
    let mut archive = tar::Archive::new(&data[..]);
    let mut out = Vec::new();
    for entry in archive.entries().map_err(|e| format!("not a tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let mut xattrs = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| format!("bad pax: {e}"))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| format!("bad pax record: {e}"))?;
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        let h = entry.header();
        out.push(TarItem {
            path,
            kind: h.entry_type(),
            uid: h.uid().map_err(|e| format!("bad uid: {e}"))?,
            gid: h.gid().map_err(|e| format!("bad gid: {e}"))?,
            mode: h.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777,
            device: match (h.device_major(), h.device_minor()) {
                (Ok(Some(a)), Ok(Some(b)))
                    if h.entry_type().is_character_special()
                        || h.entry_type().is_block_special() =>
                {
                    Some((a, b))
                }
                _ => None,
            },
            size: h.size().map_err(|e| format!("bad size: {e}"))?,
            xattrs,
        });
    }
    Ok(out)
}

// --------------------------------------------------------------------- progress output

/// The lines the step whose plain-progress header (`#N [stage 1/2] INSTRUCTION`) contains
/// `instruction` printed (`#N SECONDS TEXT`), as TEXT; an error when no header matches.
pub fn step_output(stderr: &str, instruction: &str) -> Result<Vec<String>, String> {
    let step = stderr
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix('#')?;
            let (n, rest) = rest.split_once(' ')?;
            (rest.starts_with('[') && rest.contains(instruction)).then(|| n.to_string())
        })
        .ok_or_else(|| format!("no step header containing {instruction:?} in:\n{stderr}"))?;
    let prefix = format!("#{step} ");
    Ok(stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (time, text) = rest.split_once(' ')?;
            time.parse::<f64>().ok().map(|_| text.to_string())
        })
        .collect())
}

// ------------------------------------------------------------------------- rbuild info

/// `rbuild info` run with `cmd` (an rbuild command, possibly wrapped); its stdout.
pub fn info_with(cmd: &mut Command) -> String {
    let ran = run_cmd(cmd, None, TOOL_TIMEOUT);
    ran.assert_ok("rbuild info");
    ran.stdout_text()
}

/// `rbuild info` as the current user.
pub fn info() -> String {
    let mut cmd = rbuild_cmd();
    cmd.arg("info");
    info_with(&mut cmd)
}

/// The value of the `rbuild info` line that starts with `key` (e.g. `id mapping:`).
pub fn info_line(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// `Some(the id mapping line)` when rbuild would map only the caller's own id into the
/// build's user namespace (`id mapping:` says `single id`), where files can belong to root
/// only; `None` when other ids can be used.
pub fn single_id_mode() -> Option<String> {
    let info = info();
    let mapping = info_line(&info, "id mapping:")
        .unwrap_or_else(|| panic!("rbuild info has no `id mapping:` line:\n{info}"));
    mapping.contains("single id").then_some(mapping)
}

// ------------------------------------------------------------------------------ tools

/// Whether `unshare ARGS... true` works here: `Ok(())`, or `Err(why not)`.
pub fn unshare_works(args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("unshare");
    cmd.args(args).arg("true");
    let ran = run_cmd(&mut cmd, None, TOOL_TIMEOUT);
    if ran.code == 0 {
        Ok(())
    } else {
        Err(format!(
            "`unshare {} true` is not permitted here: {}",
            args.join(" "),
            ran.stderr_text().trim()
        ))
    }
}

/// Skips a test for a reason its setup calls for (the unprivileged user has no sub-ids,
/// a root-only mount): prints `skipping: REASON (TEST)`.
pub fn skip(test: &str, reason: &str) {
    eprintln!("skipping: {reason} ({test})");
}

/// Skips a test whose real path needs what the CI machines provide (unprivileged user
/// namespaces): under `CI=true` that is a failure, never a pass.
pub fn needs(test: &str, reason: &str) {
    if super::in_ci() {
        panic!("{test}: {reason} (CI=true, so this is a failure)");
    }
    skip(test, reason);
}

// ------------------------------------------------------------------- a loopback server

/// An HTTP server on 127.0.0.1 that answers every request with `200 OK` and a fixed body,
/// counting requests. It stops when dropped, and after 60 s in any case.
pub struct HttpServer {
    /// The port it listens on.
    pub port: u16,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts the server.
    pub fn start(body: &'static str) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("make the listener nonblocking");
        let port = listener.local_addr().expect("local address").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        // Read the request head (up to the blank line), then answer.
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let response = format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(response.as_bytes());
                        h.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HttpServer {
            port,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// How many requests it answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------- /proc scans

/// A process, as `/proc/PID/stat` and `/proc/PID/cmdline` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Its start time (clock ticks after boot): with the pid, it names the process even
    /// after the pid is reused.
    pub start: u64,
    /// Its state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

/// Reads one process; `None` when it is gone (or unreadable).
pub fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    // Field 22 of stat (starttime) is the 20th after the comm.
    let start = fields.get(19)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(Proc {
        pid,
        ppid,
        start,
        state,
        cmdline,
    })
}

/// Every process this process can see.
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            out.extend(read_proc(pid));
        }
    }
    out
}

/// Every descendant of `root` (children, their children, ...), not `root` itself.
pub fn descendants(root: i32) -> Vec<Proc> {
    let all = processes();
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.ppid == p) {
            if !found.iter().any(|f| f.pid == c.pid) {
                frontier.push(c.pid);
                found.push(c.clone());
            }
        }
    }
    found
}

/// True while `p` (the same process: same pid and start time) exists and is not a zombie.
pub fn still_running(p: &Proc) -> bool {
    read_proc(p.pid).is_some_and(|now| now.start == p.start && now.state != 'Z')
}

/// Mount points of this process's mount namespace at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let dir = dir.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `reader` line by line in a thread, sending each line (without the newline) on the
/// returned channel, so a test can wait for a line with a time limit.
pub fn line_channel(reader: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

// ------------------------------------------------------------- hand-made OCI archives

/// An entry of a hand-made layer. Names and link targets are written into the tar header
/// exactly as given (absolute paths and `..` included), which is the point: these layers
/// are what a hostile image could contain.
#[derive(Debug, Clone)]
pub enum RawEntry {
    /// A directory (mode 0755).
    Dir(String),
    /// A regular file (mode 0644) with content.
    File(String, Vec<u8>),
    /// A symbolic link: name, target.
    Symlink(String, String),
    /// A hard link: name, target.
    HardLink(String, String),
}

/// Copies `value` into a fixed-size header field, which must leave room for a NUL.
fn set_field(field: &mut [u8], value: &str) {
    let b = value.as_bytes();
    assert!(
        b.len() < field.len(),
        "{value:?} does not fit a {}-byte tar header field",
        field.len()
    );
    field.fill(0);
    field[..b.len()].copy_from_slice(b);
}

/// A plain tar stream of `entries`, names verbatim, every entry owned 0:0 with mtime 0.
pub fn raw_layer(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_old();
        let (name, kind, mode, link, data): (&str, _, _, Option<&str>, &[u8]) = match e {
            RawEntry::Dir(n) => (n, tar::EntryType::Directory, 0o755, None, &[]),
            RawEntry::File(n, d) => (n, tar::EntryType::Regular, 0o644, None, d),
            RawEntry::Symlink(n, t) => (n, tar::EntryType::Symlink, 0o777, Some(t), &[]),
            RawEntry::HardLink(n, t) => (n, tar::EntryType::Link, 0o644, Some(t), &[]),
        };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        set_field(&mut h.as_old_mut().name, name);
        if let Some(t) = link {
            set_field(&mut h.as_old_mut().linkname, t);
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

/// A layer for [`oci_archive`]: the blob as stored, and the digest of its uncompressed tar.
#[derive(Debug, Clone)]
pub struct ArchiveLayer {
    /// The blob (gzip).
    pub blob: Vec<u8>,
    /// `sha256:...` of the uncompressed tar.
    pub diff_id: String,
}

impl ArchiveLayer {
    /// A gzip layer of `entries`.
    pub fn of(entries: &[RawEntry]) -> ArchiveLayer {
        let tar = raw_layer(entries);
        ArchiveLayer {
            diff_id: format!("sha256:{}", sha256_hex(&tar)),
            blob: gzip(&tar),
        }
    }

    /// `sha256:...` of the blob: the digest rbuild names the layer by.
    pub fn digest(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.blob))
    }
}

/// The OCI architecture name of the host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// An OCI archive (an OCI image layout as a tar) of one image for the host platform with
/// `layers` (bottom first), tagged `latest`; every blob named after its SHA-256.
pub fn oci_archive(layers: &[ArchiveLayer]) -> Vec<u8> {
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": layers.iter().map(|_| json!({"created_by": "rbuild test"})).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).expect("config JSON");
    let blob_desc = |media: &str, bytes: &[u8]| -> Value {
        json!({"mediaType": media, "digest": format!("sha256:{}", sha256_hex(bytes)), "size": bytes.len()})
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob_desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter()
            .map(|l| blob_desc("application/vnd.oci.image.layer.v1.tar+gzip", &l.blob))
            .collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest JSON");
    let mut mdesc = blob_desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    mdesc["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [mdesc],
    });
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".into(),
            serde_json::to_vec(&index).expect("index JSON"),
        ),
    ];
    for blob in [config, manifest]
        .into_iter()
        .chain(layers.iter().map(|l| l.blob.clone()))
    {
        files.push((format!("blobs/sha256/{}", sha256_hex(&blob)), blob));
    }
    tar_of_files(&files)
}

/// A tar archive of regular files (mode 0644, owned 0:0), with their directories.
pub fn tar_of_files(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for (name, data) in files {
        let mut parent = String::new();
        for c in name.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            parent.push_str(c);
            parent.push('/');
            if !dirs.contains(&parent) {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, &parent, std::io::empty())
                    .expect("tar in memory");
                dirs.push(parent.clone());
            }
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..])
            .expect("tar in memory");
    }
    b.into_inner().expect("tar in memory")
}

/// The regular files of a tar archive, in order, by name (directories dropped).
pub fn files_of_tar(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().expect("a tar archive") {
        let mut entry = entry.expect("a tar entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .expect("an entry path")
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry content");
        out.push((name, data));
    }
    out
}
