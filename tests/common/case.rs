//! The cases under `testdata/cases/` (format: `testdata/README.md`): loading and validating
//! `expect.json`, preparing a scratch work directory, building every output type with
//! rbuild, and checking every output, through independent readers and tools, against the
//! same expectations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use super::image::{
    layers_tree, skopeo, skopeo_copy_layout, skopeo_json, umoci_unpack, DockerArchive, Files,
    OciImage, Podman,
};
use super::tree::{normalize, FsTree};
use super::{
    dir_entries, is_root, leftover_temp_files, rbuild_cmd, require_tools, run_cmd, sha256_hex,
    testdata_dir, Ran, TestDir, RBUILD_TIMEOUT, TOOL_TIMEOUT,
};

/// Tools every successful case is checked with.
pub const CHECK_TOOLS: &[&str] = &["skopeo", "umoci", "podman"];

/// Config fields that survive every round trip (OCI parsing by skopeo, podman's inspect);
/// the others (`Healthcheck`, `Shell`, `OnBuild`) are Docker extensions checked in the raw
/// config only.
pub const PORTABLE_FIELDS: &[&str] = &[
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
];

/// What one path of the final filesystem must be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExpect {
    /// `file`, `dir`, `symlink`, `fifo`, `chardev` or `blockdev`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Permission bits in octal (`"0644"`, `"4755"`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Owner uid (checked where the output records owners).
    #[serde(default)]
    pub uid: Option<u64>,
    /// Owner gid.
    #[serde(default)]
    pub gid: Option<u64>,
    /// Exact content (UTF-8).
    #[serde(default)]
    pub content: Option<String>,
    /// Exact content: that of this file of the work directory (e.g. `ctx/a.tar.gz`).
    #[serde(default)]
    pub content_file: Option<String>,
    /// Hex SHA-256 of the content.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Symlink target, as written.
    #[serde(default)]
    pub target: Option<String>,
    /// Another path this file is hard-linked with.
    #[serde(default)]
    pub hardlink: Option<String>,
    /// Modification time, seconds since the epoch.
    #[serde(default)]
    pub mtime: Option<u64>,
}

/// A case's `expect.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// What the case shows (required).
    #[serde(default)]
    pub description: String,
    /// Extra command-line arguments; `{work}` and `{ctx}` are replaced by the work and
    /// context directories.
    #[serde(default)]
    pub args: Vec<String>,
    /// `--build-arg`s: `"K": "V"` gives `K=V`, `"K": null` gives `K` (value from the
    /// environment).
    #[serde(default)]
    pub build_args: BTreeMap<String, Option<String>>,
    /// `--target`.
    #[serde(default)]
    pub target: Option<String>,
    /// `-t` names; they must show up in the OCI index, the docker-archive and podman.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Environment variables for rbuild.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Put the Dockerfile at the context root and give no `-f`.
    #[serde(default)]
    pub dockerfile_in_context: bool,
    /// Tools the case needs besides the checking tools (e.g. `xz` for its setup).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Expected exit code: 0, 1 (build failed) or 2 (usage error).
    #[serde(default)]
    pub exit: i32,
    /// Substrings stderr must contain.
    #[serde(default)]
    pub stderr: Vec<String>,
    /// Paths of the final filesystem and what they must be.
    #[serde(default)]
    pub files: BTreeMap<String, FileExpect>,
    /// Paths that must not exist.
    #[serde(default)]
    pub absent: Vec<String>,
    /// The filesystem has exactly the paths of `files`, nothing else.
    #[serde(default)]
    pub exact: bool,
    /// Fields of the config's `config` object (`null` = absent).
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    /// Top-level fields of the image config (`author`, `created`, ...).
    #[serde(default)]
    pub image: BTreeMap<String, Value>,
    /// Number of layers.
    #[serde(default)]
    pub layers: Option<usize>,
    /// Number of history entries.
    #[serde(default)]
    pub history: Option<usize>,
}

/// A loaded case.
#[derive(Debug)]
pub struct Case {
    /// Directory name.
    pub name: String,
    /// The case directory.
    pub dir: PathBuf,
    /// Its expectations.
    pub expect: Expect,
}

/// The cases directory.
pub fn cases_dir() -> PathBuf {
    testdata_dir().join("cases")
}

/// Names of every case directory.
pub fn case_names() -> Vec<String> {
    let dir = cases_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Fails unless the test list and the case directories are the same set.
pub fn check_case_list(listed: &[&str]) {
    let listed: BTreeSet<String> = listed.iter().map(|s| s.to_string()).collect();
    let on_disk: BTreeSet<String> = case_names().into_iter().collect();
    let untested: Vec<_> = on_disk.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        untested.is_empty() && missing.is_empty(),
        "case directories without a test: {untested:?}; tests without a directory: {missing:?}"
    );
}

/// Parses an octal mode from an expectation.
fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("mode {s:?} is not octal"))
}

impl FileExpect {
    fn validate(&self, path: &str) -> Result<(), String> {
        let kinds = ["file", "dir", "symlink", "fifo", "chardev", "blockdev"];
        if !kinds.contains(&self.kind.as_str()) {
            return Err(format!(
                "{path}: type {:?} is not one of {kinds:?}",
                self.kind
            ));
        }
        if let Some(m) = &self.mode {
            parse_mode(m).map_err(|e| format!("{path}: {e}"))?;
            if self.kind == "symlink" {
                return Err(format!("{path}: symlinks have no meaningful mode"));
            }
        }
        let contents = [
            self.content.is_some(),
            self.content_file.is_some(),
            self.sha256.is_some(),
        ];
        if contents.iter().filter(|b| **b).count() > 1 {
            return Err(format!("{path}: give one of content, content_file, sha256"));
        }
        let content_like = contents.iter().any(|b| *b) || self.size.is_some();
        if content_like && self.kind != "file" {
            return Err(format!("{path}: content checks need type file"));
        }
        if self.target.is_some() && self.kind != "symlink" {
            return Err(format!("{path}: target needs type symlink"));
        }
        if self.mtime.is_some() && self.kind == "symlink" {
            return Err(format!("{path}: symlink mtimes are not checked"));
        }
        if self.hardlink.is_some() && self.kind != "file" {
            return Err(format!("{path}: hardlink needs type file"));
        }
        Ok(())
    }
}

impl Expect {
    /// Rejects expectation files that could not fail or do not say what they test.
    fn validate(&self) -> Result<(), String> {
        if self.description.trim().is_empty() {
            return Err("description is required".into());
        }
        if ![0, 1, 2].contains(&self.exit) {
            return Err(format!("exit must be 0, 1 or 2, not {}", self.exit));
        }
        for p in self.files.keys().chain(self.absent.iter()) {
            if !p.starts_with('/') {
                return Err(format!("path {p:?} must be absolute"));
            }
            normalize(p)?;
        }
        for (p, f) in &self.files {
            f.validate(p)?;
        }
        if self.exit != 0 {
            if self.stderr.is_empty() {
                return Err("a failing case must name a stderr substring".into());
            }
            let has_success_checks = !self.files.is_empty()
                || !self.absent.is_empty()
                || self.exact
                || !self.config.is_empty()
                || !self.image.is_empty()
                || self.layers.is_some()
                || self.history.is_some()
                || !self.tags.is_empty();
            if has_success_checks {
                return Err("a failing case cannot have expectations on the image".into());
            }
        } else if self.files.is_empty() && self.config.is_empty() && self.absent.is_empty() {
            return Err("a successful case must expect files or config fields".into());
        }
        Ok(())
    }
}

impl Case {
    /// Loads and validates `testdata/cases/NAME/expect.json`.
    pub fn load(name: &str) -> Case {
        let dir = cases_dir().join(name);
        let path = dir.join("expect.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("case {name}: cannot read {}: {e}", path.display()));
        let expect: Expect = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("case {name}: bad expect.json: {e}"));
        if let Err(e) = expect.validate() {
            panic!("case {name}: bad expect.json: {e}");
        }
        assert!(
            dir.join("Dockerfile").is_file(),
            "case {name}: no Dockerfile in {}",
            dir.display()
        );
        Case {
            name: name.to_string(),
            dir,
            expect,
        }
    }

    /// The tools the case needs.
    pub fn tools(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.expect.requires.iter().map(String::as_str).collect();
        if self.expect.exit == 0 {
            t.extend_from_slice(CHECK_TOOLS);
        }
        t
    }

    /// Lays out a fresh work directory: the case's files beside the Dockerfile, the context
    /// in `ctx/` (modes normalised, since git keeps only the executable bit), then
    /// `setup.sh` run there.
    pub fn prepare(&self) -> Work {
        let dir = TestDir::new(&self.name);
        let ctx = dir.join("ctx");
        for entry in std::fs::read_dir(&self.dir)
            .expect("case dir is readable")
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.as_str() {
                "expect.json" | "setup.sh" | "context" => {}
                _ => copy_tree(&entry.path(), &dir.join(&name)),
            }
        }
        let context = self.dir.join("context");
        if context.is_dir() {
            copy_tree(&context, &ctx);
        } else {
            std::fs::create_dir(&ctx).expect("create ctx");
        }
        let dockerfile = if self.expect.dockerfile_in_context {
            std::fs::rename(dir.join("Dockerfile"), ctx.join("Dockerfile"))
                .expect("move the Dockerfile into the context");
            None
        } else {
            Some(dir.join("Dockerfile"))
        };
        let setup = self.dir.join("setup.sh");
        if setup.is_file() {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg("umask 022 && exec bash -eu \"$0\"")
                .arg(&setup)
                .current_dir(dir.path())
                .env("CTX", &ctx);
            let ran = run_cmd(&mut cmd, None, TOOL_TIMEOUT);
            assert_eq!(
                ran.code,
                0,
                "case {}: setup.sh failed: {}",
                self.name,
                ran.summary()
            );
        }
        std::fs::create_dir(dir.join("out")).expect("create out");
        Work {
            dir,
            ctx,
            dockerfile,
        }
    }

    /// Replaces `{work}` and `{ctx}` in an argument.
    fn expand(&self, work: &Work, arg: &str) -> String {
        arg.replace("{work}", &work.dir.path().to_string_lossy())
            .replace("{ctx}", &work.ctx.to_string_lossy())
    }

    /// The rbuild arguments for the case, without outputs and context.
    pub fn build_args(&self, work: &Work) -> Vec<String> {
        let e = &self.expect;
        let mut args = vec![
            "build".to_string(),
            "--progress".into(),
            "plain".into(),
            "--cache-dir".into(),
            work.cache().to_string_lossy().into_owned(),
        ];
        if let Some(df) = &work.dockerfile {
            args.push("-f".into());
            args.push(df.to_string_lossy().into_owned());
        }
        if let Some(t) = &e.target {
            args.push("--target".into());
            args.push(t.clone());
        }
        for t in &e.tags {
            args.push("-t".into());
            args.push(t.clone());
        }
        for (k, v) in &e.build_args {
            args.push("--build-arg".into());
            args.push(match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            });
        }
        args.extend(e.args.iter().map(|a| self.expand(work, a)));
        args
    }

    /// Runs rbuild on the prepared work directory with `extra` arguments before the context.
    pub fn run_rbuild(&self, work: &Work, extra: &[String], env: &[(&str, &str)]) -> Ran {
        let mut args = self.build_args(work);
        args.extend(extra.iter().cloned());
        args.push(work.ctx.to_string_lossy().into_owned());
        let mut cmd = rbuild_cmd();
        cmd.current_dir(work.dir.path()).args(&args);
        for (k, v) in &self.expect.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_cmd(&mut cmd, None, RBUILD_TIMEOUT)
    }
}

/// Copies a file or tree, keeping symlinks as symlinks, with modes normalised: directories
/// 0755, files 0755 when any execute bit is set and 0644 otherwise.
pub fn copy_tree(src: &Path, dst: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(src).expect("source is readable");
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src).expect("read link");
        std::os::unix::fs::symlink(target, dst).expect("create symlink");
    } else if ft.is_dir() {
        std::fs::create_dir(dst).expect("create dir");
        for e in std::fs::read_dir(src).expect("read dir").flatten() {
            copy_tree(&e.path(), &dst.join(e.file_name()));
        }
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    } else {
        std::fs::copy(src, dst).expect("copy file");
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

/// A prepared work directory.
pub struct Work {
    /// The directory (removed on drop).
    pub dir: TestDir,
    /// The build context.
    pub ctx: PathBuf,
    /// The Dockerfile given with `-f`, unless it is in the context.
    pub dockerfile: Option<PathBuf>,
}

impl Work {
    /// Where outputs go.
    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// The cache directory.
    pub fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }
}

/// The outputs every case build writes.
pub struct Outputs {
    /// `type=oci` tarball.
    pub oci_tar: PathBuf,
    /// `type=oci,tar=false` layout.
    pub oci_dir: PathBuf,
    /// `type=docker` archive.
    pub docker: PathBuf,
    /// `type=local` directory.
    pub local: PathBuf,
    /// `type=tar` filesystem tarball.
    pub flat_tar: PathBuf,
    /// `--iidfile`.
    pub iidfile: PathBuf,
    /// `--metadata-file`.
    pub metadata: PathBuf,
}

impl Outputs {
    /// Outputs under `out`.
    pub fn new(out: &Path) -> Outputs {
        Outputs {
            oci_tar: out.join("oci.tar"),
            oci_dir: out.join("oci-layout"),
            docker: out.join("docker.tar"),
            local: out.join("rootfs"),
            flat_tar: out.join("fs.tar"),
            iidfile: out.join("iid"),
            metadata: out.join("metadata.json"),
        }
    }

    /// The rbuild arguments that write them.
    pub fn args(&self) -> Vec<String> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "-o".into(),
            format!("type=oci,dest={}", s(&self.oci_tar)),
            "-o".into(),
            format!("type=oci,tar=false,dest={}", s(&self.oci_dir)),
            "-o".into(),
            format!("type=docker,dest={}", s(&self.docker)),
            "-o".into(),
            format!("type=local,dest={}", s(&self.local)),
            "-o".into(),
            format!("type=tar,dest={}", s(&self.flat_tar)),
            "--iidfile".into(),
            s(&self.iidfile),
            "--metadata-file".into(),
            s(&self.metadata),
        ]
    }
}

/// Collects every problem of one case, so one run reports all of them.
pub struct Report {
    case: String,
    problems: Vec<String>,
    rbuild: String,
}

impl Report {
    /// A report for `case`, quoting rbuild's run on failure.
    pub fn new(case: &str, ran: &Ran) -> Report {
        Report {
            case: case.to_string(),
            problems: Vec::new(),
            rbuild: ran.summary(),
        }
    }

    /// Records a problem seen in `view` (which output or tool).
    pub fn fail(&mut self, view: &str, msg: impl Display) {
        self.problems.push(format!("[{view}] {msg}"));
    }

    /// Records an error result; returns the value of an ok one.
    pub fn check<T>(&mut self, view: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(view, e);
                None
            }
        }
    }

    /// Panics with every problem, if any.
    pub fn finish(self) {
        if !self.problems.is_empty() {
            panic!(
                "case {}: {} problem(s):\n  - {}\n{}",
                self.case,
                self.problems.len(),
                self.problems.join("\n  - "),
                self.rbuild
            );
        }
    }
}

/// Builds a case with every output type and checks everything it expects.
pub fn run_case(name: &str) {
    let case = Case::load(name);
    if !require_tools(name, &case.tools()) {
        return;
    }
    let work = case.prepare();
    let outs = Outputs::new(&work.out());
    let ran = case.run_rbuild(&work, &outs.args(), &[]);
    let mut r = Report::new(name, &ran);
    let e = &case.expect;
    if ran.code != e.exit {
        r.fail(
            "rbuild",
            format!("exit code {}, expected {}", ran.code, e.exit),
        );
    }
    let stderr = ran.stderr_text();
    for s in &e.stderr {
        if !stderr.contains(s.as_str()) {
            r.fail("rbuild", format!("stderr does not contain {s:?}"));
        }
    }
    let left = leftover_temp_files(&work.cache());
    if !left.is_empty() {
        r.fail(
            "cache",
            format!("temporary files left in the cache's tmp/: {left:?}"),
        );
    }
    if e.exit != 0 || ran.code != 0 {
        let written = dir_entries(&work.out());
        if e.exit != 0 && !written.is_empty() {
            r.fail(
                "outputs",
                format!("a failed build left files in the output directory: {written:?}"),
            );
        }
        r.finish();
        return;
    }
    check_outputs(&case, &work, &outs, &mut r);
    r.finish();
}

/// Checks every output of a successful build.
pub fn check_outputs(case: &Case, work: &Work, outs: &Outputs, r: &mut Report) {
    let e = &case.expect;
    let owners_on_disk = is_root();

    // OCI layout directory, read and verified here.
    let dir_img = r
        .check("oci dir", Files::from_dir(&outs.oci_dir))
        .and_then(|f| r.check("oci dir", OciImage::read(&f, "oci dir")));
    if let Some(img) = &dir_img {
        check_config(r, "oci dir config", &img.config, e, false);
        let layers = img.manifest["layers"].as_array().map_or(0, Vec::len);
        if let Some(n) = e.layers {
            if layers != n {
                r.fail("oci dir manifest", format!("{layers} layers, expected {n}"));
            }
        }
        if let Some(t) = r.check("oci dir layers", img.tree()) {
            check_tree(r, "oci dir layers", &t, case, work, true);
        }
    }

    // OCI tarball: the same image, checked by reading it and with skopeo.
    let tar_bytes = r.check(
        "oci tar",
        std::fs::read(&outs.oci_tar).map_err(|e| format!("{}: {e}", outs.oci_tar.display())),
    );
    let tar_img = tar_bytes
        .as_deref()
        .and_then(|b| r.check("oci tar", Files::from_tar(b)))
        .and_then(|f| r.check("oci tar", OciImage::read(&f, "oci tar")));
    if let (Some(t), Some(d)) = (&tar_img, &dir_img) {
        if t.manifest_digest != d.manifest_digest {
            r.fail(
                "oci tar",
                format!(
                    "manifest {} differs from the directory layout's {}",
                    t.manifest_digest, d.manifest_digest
                ),
            );
        }
    }
    if let Some(t) = &tar_img {
        check_oci_names(r, t, e);
        check_id_files(r, t, outs);
        check_with_skopeo(r, t, outs, e);
    }

    // umoci unpacks a copy made by skopeo.
    let umoci_layout = work.dir.join("umoci-layout");
    let bundle = work.dir.join("bundle");
    // With several names the index has one entry per name: pick one.
    let src_ref = dir_img
        .as_ref()
        .filter(|i| i.index["manifests"].as_array().map_or(0, Vec::len) > 1)
        .and_then(OciImage::ref_name);
    let copied = skopeo_copy_layout(&outs.oci_dir, src_ref.as_deref(), &umoci_layout, "test");
    if r.check("skopeo copy", copied).is_some() {
        if let Some(rootfs) = r.check("umoci", umoci_unpack(&umoci_layout, "test", &bundle)) {
            if let Some(t) = r.check("umoci rootfs", FsTree::from_dir(&rootfs, owners_on_disk)) {
                check_tree(r, "umoci rootfs", &t, case, work, owners_on_disk);
            }
        }
    }

    // docker-archive: read here, then loaded by podman.
    let iid = tar_img.as_ref().map(|t| t.config_digest.clone());
    check_docker_archive(r, case, work, outs, iid.as_deref());

    // type=local and type=tar.
    match FsTree::from_dir(&outs.local, false) {
        Ok(t) if outs.local.is_dir() => check_tree(r, "local output", &t, case, work, false),
        Ok(_) => r.fail("local output", "no directory was written"),
        Err(err) => r.fail("local output", err),
    }
    let flat = std::fs::read(&outs.flat_tar)
        .map_err(|e| format!("{}: {e}", outs.flat_tar.display()))
        .and_then(|b| FsTree::from_tar(&b));
    if let Some(t) = r.check("tar output", flat) {
        check_tree(r, "tar output", &t, case, work, true);
    }
}

/// `--iidfile` and `--metadata-file` name the image that was written.
fn check_id_files(r: &mut Report, img: &OciImage, outs: &Outputs) {
    match std::fs::read_to_string(&outs.iidfile) {
        Ok(id) if id.trim() == img.config_digest => {}
        Ok(id) => r.fail("iidfile", format!("{id:?}, expected {}", img.config_digest)),
        Err(err) => r.fail("iidfile", err),
    }
    let meta = std::fs::read(&outs.metadata)
        .map_err(|e| e.to_string())
        .and_then(|b| super::image::parse_json(&b, "metadata file"));
    if let Some(m) = r.check("metadata file", meta) {
        if m["containerimage.digest"] != img.manifest_digest.as_str() {
            r.fail(
                "metadata file",
                format!(
                    "containerimage.digest is {}, manifest is {}",
                    m["containerimage.digest"], img.manifest_digest
                ),
            );
        }
        if m["containerimage.config.digest"] != img.config_digest.as_str() {
            r.fail(
                "metadata file",
                format!(
                    "containerimage.config.digest is {}, config is {}",
                    m["containerimage.config.digest"], img.config_digest
                ),
            );
        }
    }
}

/// The forms a tag may be recorded in.
fn tag_forms(tag: &str) -> Vec<String> {
    let tagged = if tag
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        tag.to_string()
    } else {
        format!("{tag}:latest")
    };
    let mut forms = vec![tagged.clone()];
    let first = tagged.split('/').next().unwrap_or("");
    if !tagged.contains('/') {
        forms.push(format!("docker.io/library/{tagged}"));
    } else if !(first.contains('.') || first.contains(':') || first == "localhost") {
        forms.push(format!("docker.io/{tagged}"));
    }
    forms
}

/// `-t` names are recorded in the OCI index.
fn check_oci_names(r: &mut Report, img: &OciImage, e: &Expect) {
    let values = img.annotation_values();
    for tag in &e.tags {
        let forms = tag_forms(tag);
        let tag_part = forms[0].rsplit_once(':').map_or("", |(_, t)| t).to_string();
        // `org.opencontainers.image.ref.name` may hold just the tag part.
        let found = values.iter().any(|v| forms.contains(v) || *v == tag_part);
        if !found {
            r.fail(
                "oci tar",
                format!("tag {tag} is not in the index annotations {values:?}"),
            );
        }
    }
}

/// skopeo reads the OCI archive: raw config, parsed config, manifest summary.
fn check_with_skopeo(r: &mut Report, img: &OciImage, outs: &Outputs, e: &Expect) {
    // With several names the index has one entry per name: skopeo needs one of them.
    let reference = match img.ref_name() {
        Some(name) if img.index["manifests"].as_array().map_or(0, Vec::len) > 1 => {
            format!("oci-archive:{}:{name}", outs.oci_tar.display())
        }
        _ => format!("oci-archive:{}", outs.oci_tar.display()),
    };
    if let Some(raw) = r.check(
        "skopeo raw config",
        skopeo(&["inspect", "--raw", "--config", &reference]),
    ) {
        let trimmed = raw.strip_suffix(b"\n").unwrap_or(&raw);
        if trimmed != img.config_bytes.as_slice() {
            r.fail(
                "skopeo raw config",
                "differs from the config blob in the archive",
            );
        }
        if let Some(v) = r.check(
            "skopeo raw config",
            super::image::parse_json(trimmed, "config"),
        ) {
            check_config(r, "skopeo raw config", &v, e, false);
        }
    }
    if let Some(v) = r.check(
        "skopeo config",
        skopeo_json(&["inspect", "--config", &reference]),
    ) {
        check_config(r, "skopeo config", &v, e, true);
    }
    if let Some(v) = r.check("skopeo inspect", skopeo_json(&["inspect", &reference])) {
        if v["Digest"] != img.manifest_digest.as_str() {
            r.fail(
                "skopeo inspect",
                format!(
                    "Digest {} but the manifest is {}",
                    v["Digest"], img.manifest_digest
                ),
            );
        }
        let n = v["Layers"].as_array().map_or(0, Vec::len);
        let want = img.manifest["layers"].as_array().map_or(0, Vec::len);
        if n != want {
            r.fail(
                "skopeo inspect",
                format!("{n} layers, the manifest has {want}"),
            );
        }
        if v["Os"] != "linux" || v["Architecture"] != img.config["architecture"] {
            r.fail(
                "skopeo inspect",
                format!(
                    "platform {}/{} vs config {}",
                    v["Os"], v["Architecture"], img.config["architecture"]
                ),
            );
        }
    }
}

/// The docker-archive: read and verified here, listed by skopeo, loaded and inspected by
/// podman (whose image id must be the `--iidfile` id).
fn check_docker_archive(
    r: &mut Report,
    case: &Case,
    work: &Work,
    outs: &Outputs,
    iid: Option<&str>,
) {
    let e = &case.expect;
    let bytes = r.check(
        "docker-archive",
        std::fs::read(&outs.docker).map_err(|e| format!("{}: {e}", outs.docker.display())),
    );
    let Some(bytes) = bytes else { return };
    if let Some(a) = r.check("docker-archive", DockerArchive::read(&bytes)) {
        check_config(r, "docker-archive config", &a.config, e, false);
        if let Some(t) = r.check("docker-archive layers", layers_tree(&a.layers)) {
            check_tree(r, "docker-archive layers", &t, case, work, true);
        }
        for tag in &e.tags {
            let forms = tag_forms(tag);
            if !a.repo_tags.iter().any(|t| forms.contains(t)) {
                r.fail(
                    "docker-archive",
                    format!("RepoTags {:?} lack {tag}", a.repo_tags),
                );
            }
        }
        if let Some(id) = iid {
            let digest = format!("sha256:{}", sha256_hex(&a.config_bytes));
            if digest != id {
                r.fail(
                    "docker-archive",
                    format!("config digest {digest}, image id is {id}"),
                );
            }
        }
    }
    let reference = format!("docker-archive:{}", outs.docker.display());
    if let Some(v) = r.check(
        "skopeo docker-archive",
        skopeo_json(&["inspect", &reference]),
    ) {
        if let Some(n) = e.layers {
            let got = v["Layers"].as_array().map_or(0, Vec::len);
            if got != n {
                r.fail(
                    "skopeo docker-archive",
                    format!("{got} layers, expected {n}"),
                );
            }
        }
    }
    let Some(podman) = r.check("podman", Podman::new()) else {
        return;
    };
    let Some(loaded) = r.check("podman load", podman.load(&outs.docker)) else {
        return;
    };
    let Some(id) = iid else { return };
    let hex = id.trim_start_matches("sha256:");
    let Some(v) = r.check("podman inspect", podman.inspect(hex)) else {
        r.fail("podman load", format!("podman said: {loaded}"));
        return;
    };
    if v["Id"] != hex {
        r.fail(
            "podman inspect",
            format!("Id {} but the image id is {hex}", v["Id"]),
        );
    }
    check_portable(r, "podman inspect", &v["Config"], e);
    if let Some(n) = e.layers {
        let got = v["RootFS"]["Layers"].as_array().map_or(0, Vec::len);
        if got != n {
            r.fail("podman inspect", format!("{got} layers, expected {n}"));
        }
    }
    let names: Vec<String> = v["RepoTags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for tag in &e.tags {
        let t = &tag_forms(tag)[0];
        if !names
            .iter()
            .any(|n| n == t || n.ends_with(&format!("/{t}")))
        {
            r.fail("podman inspect", format!("RepoTags {names:?} lack {tag}"));
        }
    }
}

/// Empty strings, arrays and objects count as absent (tools drop or add them freely).
fn normalize_empty(v: &Value) -> Value {
    match v {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::Array(a) if a.is_empty() => Value::Null,
        Value::Object(o) if o.is_empty() => Value::Null,
        other => other.clone(),
    }
}

/// The portable config fields, as a tool that re-encodes the config shows them.
fn check_portable(r: &mut Report, view: &str, config: &Value, e: &Expect) {
    for (k, want) in &e.config {
        if !PORTABLE_FIELDS.contains(&k.as_str()) {
            continue;
        }
        let got = normalize_empty(config.get(k).unwrap_or(&Value::Null));
        if got != normalize_empty(want) {
            r.fail(view, format!("config.{k} is {got}, expected {want}"));
        }
    }
}

/// Checks an image config document. `reencoded` marks a tool's re-encoding (only portable
/// fields, empty values equal to absent ones).
fn check_config(r: &mut Report, view: &str, cfg: &Value, e: &Expect, reencoded: bool) {
    let config = cfg.get("config").unwrap_or(&Value::Null);
    if reencoded {
        check_portable(r, view, config, e);
    } else {
        for (k, want) in &e.config {
            let got = config.get(k).unwrap_or(&Value::Null);
            if got != want {
                r.fail(view, format!("config.{k} is {got}, expected {want}"));
            }
        }
        for (k, want) in &e.image {
            let got = cfg.get(k).unwrap_or(&Value::Null);
            if got != want {
                r.fail(view, format!("{k} is {got}, expected {want}"));
            }
        }
    }
    if cfg["os"] != "linux" {
        r.fail(view, format!("os is {}", cfg["os"]));
    }
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    if let Some(n) = e.layers {
        if diff_ids != n {
            r.fail(
                view,
                format!("{diff_ids} layers (rootfs.diff_ids), expected {n}"),
            );
        }
    }
    let history = cfg["history"].as_array().cloned().unwrap_or_default();
    if let Some(n) = e.history {
        if history.len() != n {
            r.fail(
                view,
                format!("{} history entries, expected {n}", history.len()),
            );
        }
    }
    if !history.is_empty() {
        let with_layer = history.iter().filter(|h| h["empty_layer"] != true).count();
        if with_layer != diff_ids {
            r.fail(
                view,
                format!(
                    "{with_layer} history entries have a layer, but there are {diff_ids} layers"
                ),
            );
        }
    }
}

/// Checks a filesystem tree against the case's `files`, `absent` and `exact`. `owners` says
/// whether the view records owners.
pub fn check_tree(r: &mut Report, view: &str, t: &FsTree, case: &Case, work: &Work, owners: bool) {
    let e = &case.expect;
    let mut expected_paths = BTreeSet::new();
    for (raw, f) in &e.files {
        let Ok(Some(path)) = normalize(raw) else {
            r.fail(view, format!("bad expectation path {raw}"));
            continue;
        };
        expected_paths.insert(path.clone());
        let Some(node) = t.nodes.get(&path) else {
            r.fail(view, format!("{path} is missing"));
            continue;
        };
        if node.kind.name() != f.kind {
            r.fail(
                view,
                format!("{path} is a {}, expected a {}", node.kind.name(), f.kind),
            );
            continue;
        }
        if let Some(m) = &f.mode {
            let want = parse_mode(m).unwrap_or(0);
            if node.mode != want {
                r.fail(
                    view,
                    format!("{path} has mode {:04o}, expected {want:04o}", node.mode),
                );
            }
        }
        if owners {
            if let Some((uid, gid)) = node.owner {
                if f.uid.is_some_and(|u| u != uid) || f.gid.is_some_and(|g| g != gid) {
                    r.fail(
                        view,
                        format!(
                            "{path} is owned by {uid}:{gid}, expected {}:{}",
                            f.uid.map_or("*".into(), |u| u.to_string()),
                            f.gid.map_or("*".into(), |g| g.to_string())
                        ),
                    );
                }
            }
        }
        let content = node.content.as_deref().unwrap_or(&[]);
        let want_content: Option<Vec<u8>> = match (&f.content, &f.content_file) {
            (Some(c), _) => Some(c.as_bytes().to_vec()),
            (_, Some(file)) => match std::fs::read(work.dir.join(file)) {
                Ok(b) => Some(b),
                Err(err) => {
                    r.fail(
                        view,
                        format!("{path}: cannot read content_file {file}: {err}"),
                    );
                    None
                }
            },
            _ => None,
        };
        if let Some(want) = want_content {
            if content != want.as_slice() {
                r.fail(
                    view,
                    format!(
                        "{path} has content {:?}, expected {:?}",
                        preview(content),
                        preview(&want)
                    ),
                );
            }
        }
        if let Some(h) = &f.sha256 {
            let got = sha256_hex(content);
            if got != *h {
                r.fail(view, format!("{path} has sha256 {got}, expected {h}"));
            }
        }
        if let Some(n) = f.size {
            if content.len() as u64 != n {
                r.fail(
                    view,
                    format!("{path} has {} bytes, expected {n}", content.len()),
                );
            }
        }
        if let Some(m) = f.mtime {
            if node.mtime != m {
                r.fail(
                    view,
                    format!("{path} has mtime {}, expected {m}", node.mtime),
                );
            }
        }
        if let Some(target) = &f.target {
            if node.link_target.as_deref() != Some(target.as_str()) {
                r.fail(
                    view,
                    format!(
                        "{path} points to {:?}, expected {target:?}",
                        node.link_target
                    ),
                );
            }
        }
        if let Some(other) = &f.hardlink {
            let other = normalize(other).ok().flatten().unwrap_or_default();
            match t.nodes.get(&other) {
                Some(o) if o.link_group == node.link_group => {}
                Some(_) => r.fail(view, format!("{path} is not hard-linked with {other}")),
                None => r.fail(
                    view,
                    format!("{path}: hard-link partner {other} is missing"),
                ),
            }
        }
    }
    for raw in &e.absent {
        if let Ok(Some(path)) = normalize(raw) {
            if t.nodes.contains_key(&path) {
                r.fail(view, format!("{path} exists but must not"));
            }
        }
    }
    if e.exact {
        let extra: Vec<&String> = t
            .nodes
            .keys()
            .filter(|p| !expected_paths.contains(*p))
            .collect();
        if !extra.is_empty() {
            r.fail(view, format!("unexpected paths: {extra:?}"));
        }
    }
    if t.nodes
        .keys()
        .any(|p| p.ends_with(".wh..wh..opq") || p.contains("/.wh."))
    {
        r.fail(view, "whiteout files are visible in the final filesystem");
    }
}

/// The start of some content, for messages.
fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() > 200 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(200).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s.into_owned()
    }
}
