//! Command-line behaviour beyond single cases: reproducibility, stdin and stdout streams,
//! id and metadata files, quiet mode, help and version, the two command forms, usage errors,
//! and that failed builds leave nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::case::{Case, Outputs};
use common::image::{skopeo, skopeo_json, DockerArchive, Files, OciImage};
use common::tree::FsTree;
use common::{
    dir_entries, is_root, leftover_temp_files, rbuild, require_tools, run_cmd, sha256_hex, Ran,
    TestDir, TOOL_TIMEOUT,
};

/// The epoch the reproducibility tests build with, and its RFC 3339 form.
const EPOCH: &str = "1700000000";
const EPOCH_RFC3339: &str = "2023-11-14T22:13:20Z";

/// The Dockerfile of the small context most tests build.
const DOCKERFILE: &str =
    "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY sub /sub/\nLABEL test=cli\n";

/// Writes the small context (Dockerfile included) into `dir/ctx` and returns its path.
fn small_context(dir: &TestDir) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(ctx.join("sub/inner.txt"), "inner\n").unwrap();
    ctx
}

/// Runs rbuild in `dir` with `SOURCE_DATE_EPOCH` set and a cache dir of its own.
fn rbuild_at_epoch(dir: &Path, cache: &str, args: &[&str], stdin: Option<&[u8]>) -> Ran {
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["--cache-dir", cache])
        .args(args);
    run_cmd(&mut cmd, stdin, common::RBUILD_TIMEOUT)
}

/// Checks that `fs` (a flat filesystem tar) holds the small context's files.
fn assert_small_fs(fs_tar: &[u8], what: &str) {
    let t = FsTree::from_tar(fs_tar).unwrap_or_else(|e| panic!("{what}: not a tar: {e}"));
    let content = |p: &str| t.nodes.get(p).and_then(|n| n.content.clone());
    assert_eq!(
        content("/hello.txt").as_deref(),
        Some(&b"hello\n"[..]),
        "{what}: /hello.txt"
    );
    assert_eq!(
        content("/sub/inner.txt").as_deref(),
        Some(&b"inner\n"[..]),
        "{what}: /sub/inner.txt"
    );
    assert!(
        !t.nodes.contains_key("/Dockerfile"),
        "{what}: the Dockerfile was copied"
    );
}

/// Runs `tar` with `args` (in `dir`) and returns its stdout.
fn tar_stream(dir: &Path, args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new("tar");
    cmd.current_dir(dir).args(args);
    let ran = run_cmd(&mut cmd, None, TOOL_TIMEOUT);
    ran.assert_ok("tar");
    ran.stdout
}

#[test]
fn reproducible_builds_are_byte_identical() {
    for name in [
        "heredoc_copy",
        "multistage_copy_from",
        "hardlinks",
        "long_names",
        "add_extract_formats",
    ] {
        let case = Case::load(name);
        if !require_tools(
            name,
            &case
                .expect
                .requires
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ) {
            continue;
        }
        // Two separate copies of the inputs (other paths, inodes and mtimes), two caches.
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let work = case.prepare();
                let outs = Outputs::new(&work.out());
                let ran = case.run_rbuild(&work, &outs.args(), &[("SOURCE_DATE_EPOCH", EPOCH)]);
                ran.assert_ok(&format!("{name}: build with SOURCE_DATE_EPOCH"));
                (work, outs)
            })
            .collect();
        let (a, b) = (&runs[0].1, &runs[1].1);
        for (what, pa, pb) in [
            ("oci tar", &a.oci_tar, &b.oci_tar),
            ("docker-archive", &a.docker, &b.docker),
            ("filesystem tar", &a.flat_tar, &b.flat_tar),
            ("iidfile", &a.iidfile, &b.iidfile),
        ] {
            let (x, y) = (std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
            assert_eq!(
                sha256_hex(&x),
                sha256_hex(&y),
                "{name}: two builds with SOURCE_DATE_EPOCH={EPOCH} gave different {what}s"
            );
        }
        let img = OciImage::read(
            &Files::from_tar(&std::fs::read(&a.oci_tar).unwrap()).unwrap(),
            name,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(img.config["created"], EPOCH_RFC3339, "{name}: created");
        for h in img.config["history"].as_array().unwrap() {
            assert_eq!(h["created"], EPOCH_RFC3339, "{name}: history entry {h}");
        }
        let epoch: u64 = EPOCH.parse().unwrap();
        for (i, layer) in img.layers.iter().enumerate() {
            let t = common::image::layers_tree(std::slice::from_ref(layer)).unwrap();
            for (path, node) in &t.nodes {
                assert!(
                    node.mtime <= epoch,
                    "{name}: layer {i}: {path} has mtime {} > {epoch}",
                    node.mtime
                );
            }
        }
    }
}

#[test]
fn tar_outputs_stream_to_stdout() {
    let dir = TestDir::new("stdout");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let file_out = dir.join("fs.tar").to_string_lossy().into_owned();

    let ran = rbuild_at_epoch(dir.path(), "c1", &["-o", "type=tar,dest=-", &ctx_s], None);
    ran.assert_ok("type=tar,dest=-");
    assert_small_fs(&ran.stdout, "type=tar,dest=- on stdout");
    let short = rbuild_at_epoch(dir.path(), "c1", &["-o", "-", &ctx_s], None);
    short.assert_ok("-o -");
    assert_eq!(
        short.stdout, ran.stdout,
        "`-o -` and `-o type=tar,dest=-` differ"
    );
    let to_file = rbuild_at_epoch(
        dir.path(),
        "c2",
        &["-o", &format!("type=tar,dest={file_out}"), &ctx_s],
        None,
    );
    to_file.assert_ok("type=tar to a file");
    assert!(
        to_file.stdout.is_empty(),
        "a build to files printed on stdout"
    );
    assert_eq!(
        std::fs::read(&file_out).unwrap(),
        ran.stdout,
        "stdout and file tar outputs differ"
    );

    // A bare path is type=local.
    let local = dir.join("localdir");
    rbuild_at_epoch(
        dir.path(),
        "c1",
        &["-o", &local.to_string_lossy(), &ctx_s],
        None,
    )
    .assert_ok("-o DIR");
    assert_eq!(
        std::fs::read(local.join("hello.txt")).unwrap(),
        b"hello\n",
        "-o DIR"
    );

    if !require_tools("tar_outputs_stream_to_stdout", &["skopeo"]) {
        return;
    }
    for kind in ["oci", "docker"] {
        let ran = rbuild_at_epoch(
            dir.path(),
            "c1",
            &["-o", &format!("type={kind},dest=-"), &ctx_s],
            None,
        );
        ran.assert_ok(&format!("type={kind},dest=-"));
        let path = dir.join(format!("{kind}-from-stdout.tar"));
        std::fs::write(&path, &ran.stdout).unwrap();
        let transport = if kind == "oci" {
            "oci-archive"
        } else {
            "docker-archive"
        };
        let v = skopeo_json(&["inspect", &format!("{transport}:{}", path.display())])
            .unwrap_or_else(|e| panic!("type={kind},dest=- is not readable by skopeo: {e}"));
        assert_eq!(
            v["Layers"].as_array().map(Vec::len),
            Some(2),
            "type={kind},dest=-: {v}"
        );
        let file = dir.join(format!("{kind}-file.tar"));
        let spec = format!("type={kind},dest={}", file.display());
        rbuild_at_epoch(dir.path(), "c3", &["-o", &spec, &ctx_s], None).assert_ok(&spec);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            ran.stdout,
            "type={kind}: stdout and file differ"
        );
    }
}

#[test]
fn context_from_a_tar_on_stdin() {
    let dir = TestDir::new("stdin-ctx");
    let ctx = small_context(&dir);
    std::fs::create_dir(ctx.join("alt")).unwrap();
    std::fs::write(
        ctx.join("alt/Other.Dockerfile"),
        "FROM scratch\nCOPY sub/inner.txt /only.txt\n",
    )
    .unwrap();
    let ctx_s = ctx.to_string_lossy().into_owned();
    let reference = rbuild_at_epoch(dir.path(), "c0", &["-o", "type=tar,dest=-", &ctx_s], None);
    reference.assert_ok("build from the directory");

    for (what, flags) in [("plain tar", "-cf"), ("gzip tar", "-czf")] {
        let stream = tar_stream(&ctx, &[flags, "-", "."]);
        let ran = rbuild_at_epoch(
            dir.path(),
            "c1",
            &["-o", "type=tar,dest=-", "-"],
            Some(&stream),
        );
        ran.assert_ok(&format!("context as a {what} on stdin"));
        assert_small_fs(&ran.stdout, &format!("context as a {what} on stdin"));
        assert_eq!(
            ran.stdout, reference.stdout,
            "context as a {what} on stdin gives another filesystem than the directory"
        );
    }
    let stream = tar_stream(&ctx, &["-cf", "-", "."]);
    let ran = rbuild_at_epoch(
        dir.path(),
        "c2",
        &["-f", "alt/Other.Dockerfile", "-o", "type=tar,dest=-", "-"],
        Some(&stream),
    );
    ran.assert_ok("-f NAME with the context on stdin");
    let t = FsTree::from_tar(&ran.stdout).unwrap();
    let names: Vec<&String> = t.nodes.keys().collect();
    assert_eq!(
        names,
        ["/only.txt"],
        "-f alt/Other.Dockerfile from the stdin context"
    );

    let garbage = b"this is not a tar archive at all".repeat(100);
    let ran = rbuild_at_epoch(
        dir.path(),
        "c3",
        &["-o", "type=tar,dest=out.tar", "-"],
        Some(&garbage),
    );
    assert_eq!(ran.code, 1, "garbage context on stdin: {}", ran.summary());
    assert!(
        !dir.join("out.tar").exists(),
        "garbage context left out.tar"
    );
    let left = leftover_temp_files(&dir.join("c3"));
    assert!(left.is_empty(), "garbage context left temp files: {left:?}");
}

#[test]
fn dockerfile_from_stdin() {
    let dir = TestDir::new("stdin-df");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let df = b"FROM scratch\nCOPY <<EOF /hello.txt\nhello from stdin\nEOF\nCOPY sub/inner.txt /inner.txt\n";
    let ran = rbuild_at_epoch(
        dir.path(),
        "c",
        &["-f", "-", "-o", "type=tar,dest=-", &ctx_s],
        Some(df),
    );
    ran.assert_ok("-f -");
    let t = FsTree::from_tar(&ran.stdout).unwrap();
    let content = |p: &str| t.nodes.get(p).and_then(|n| n.content.clone());
    assert_eq!(
        content("/hello.txt").as_deref(),
        Some(&b"hello from stdin\n"[..]),
        "-f -: heredoc"
    );
    assert_eq!(
        content("/inner.txt").as_deref(),
        Some(&b"inner\n"[..]),
        "-f -: context file"
    );
    assert!(
        !t.nodes.contains_key("/sub"),
        "-f - used the context's Dockerfile"
    );

    let ran = rbuild(
        dir.path(),
        &["-f", "-", "-o", "type=tar,dest=x.tar", "-"],
        Some(df),
    );
    assert_eq!(
        ran.code,
        2,
        "-f - with context - must be a usage error: {}",
        ran.summary()
    );
}

#[test]
fn iidfile_and_metadata_file() {
    if !require_tools("iidfile_and_metadata_file", &["skopeo"]) {
        return;
    }
    let dir = TestDir::new("iid");
    let ctx = small_context(&dir);
    let out = dir.join("out.tar");
    let (iid, meta) = (dir.join("iid"), dir.join("meta.json"));
    let args: Vec<String> = vec![
        "build".into(),
        "--cache-dir".into(),
        dir.join("cache").to_string_lossy().into_owned(),
        "-t".into(),
        "meta-test:1".into(),
        "-o".into(),
        format!("type=oci,dest={}", out.display()),
        "--iidfile".into(),
        iid.to_string_lossy().into_owned(),
        "--metadata-file".into(),
        meta.to_string_lossy().into_owned(),
        ctx.to_string_lossy().into_owned(),
    ];
    let ran = rbuild(dir.path(), &args, None);
    ran.assert_ok("build with --iidfile and --metadata-file");
    let reference = format!("oci-archive:{}", out.display());
    let raw = skopeo(&["inspect", "--raw", "--config", &reference]).unwrap();
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let config_digest = format!("sha256:{}", sha256_hex(raw));
    let id = std::fs::read_to_string(&iid).unwrap();
    assert_eq!(
        id.trim(),
        config_digest,
        "--iidfile must hold the config digest"
    );
    let manifest = skopeo_json(&["inspect", &reference]).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).unwrap()).expect("--metadata-file is JSON");
    assert_eq!(
        m["containerimage.digest"], manifest["Digest"],
        "containerimage.digest: {m}"
    );
    assert_eq!(
        m["containerimage.config.digest"],
        config_digest.as_str(),
        "containerimage.config.digest: {m}"
    );
    let desc = &m["containerimage.descriptor"];
    assert_eq!(
        desc["digest"], manifest["Digest"],
        "containerimage.descriptor: {m}"
    );
    assert_eq!(
        desc["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "descriptor: {m}"
    );
    assert!(
        desc["size"].as_u64().is_some_and(|s| s > 0),
        "descriptor size: {m}"
    );
    assert!(
        m["image.name"]
            .as_str()
            .is_some_and(|n| n.contains("meta-test:1")),
        "image.name: {m}"
    );
}

#[test]
fn quiet_prints_only_the_image_id() {
    let dir = TestDir::new("quiet");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let ran = rbuild_at_epoch(
        dir.path(),
        "c",
        &[
            "-q",
            "--iidfile",
            "iid",
            "-o",
            "type=oci,dest=out.tar",
            &ctx_s,
        ],
        None,
    );
    ran.assert_ok("-q");
    let id = std::fs::read_to_string(dir.join("iid")).unwrap();
    assert_eq!(
        ran.stdout_text(),
        format!("{}\n", id.trim()),
        "-q must print exactly the image id"
    );
    assert!(
        id.starts_with("sha256:") && id.trim().len() == 71,
        "image id {id:?}"
    );
    assert!(
        ran.stderr.is_empty(),
        "-q printed progress on stderr: {}",
        ran.stderr_text()
    );
    let both = rbuild(dir.path(), &["-q", "-o", "-", &ctx_s], None);
    assert_eq!(
        both.code,
        2,
        "-q with an output on stdout: {}",
        both.summary()
    );
}

#[test]
fn version_and_help() {
    let dir = TestDir::new("help");
    let v = rbuild(dir.path(), &["--version"], None);
    v.assert_ok("--version");
    let text = v.stdout_text();
    assert!(
        text.contains("rbuild") && text.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {text:?}"
    );
    for args in [&["--help"][..], &["build", "--help"], &["-h"]] {
        let h = rbuild(dir.path(), args, None);
        h.assert_ok(&format!("{args:?}"));
        let text = h.stdout_text();
        for needle in [
            "Examples:",
            "rbuild [build] [OPTIONS] CONTEXT",
            "type=oci",
            "--build-arg",
            "--target",
        ] {
            assert!(
                text.contains(needle),
                "{args:?} output lacks {needle:?}:\n{text}"
            );
        }
    }
}

#[test]
fn build_subcommand_and_bare_form_agree() {
    let dir = TestDir::new("forms");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    rbuild_at_epoch(
        dir.path(),
        "c1",
        &["-o", "type=oci,dest=bare.tar", &ctx_s],
        None,
    )
    .assert_ok("bare form");
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args([
            "build",
            "--cache-dir",
            "c2",
            "-o",
            "type=oci,dest=sub.tar",
            &ctx_s,
        ]);
    run_cmd(&mut cmd, None, common::RBUILD_TIMEOUT).assert_ok("build subcommand");
    let (a, b) = (
        std::fs::read(dir.join("bare.tar")).unwrap(),
        std::fs::read(dir.join("sub.tar")).unwrap(),
    );
    assert_eq!(
        sha256_hex(&a),
        sha256_hex(&b),
        "`rbuild build` and bare `rbuild` give other images"
    );
    // The same cache again, and --no-cache, give the same image too.
    rbuild_at_epoch(
        dir.path(),
        "c1",
        &["-o", "type=oci,dest=again.tar", &ctx_s],
        None,
    )
    .assert_ok("cached");
    rbuild_at_epoch(
        dir.path(),
        "c1",
        &["--no-cache", "-o", "type=oci,dest=nocache.tar", &ctx_s],
        None,
    )
    .assert_ok("--no-cache");
    for f in ["again.tar", "nocache.tar"] {
        assert_eq!(
            sha256_hex(&std::fs::read(dir.join(f)).unwrap()),
            sha256_hex(&a),
            "{f}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = TestDir::new("usage");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let cases: &[&[&str]] = &[
        &[],
        &["build"],
        &["--frobnicate", &ctx_s],
        &["-o", "type=local,dest=-", &ctx_s],
        &["-o", "type=oci,tar=maybe,dest=x", &ctx_s],
        &["-o", "type=docker,tar=false,dest=x", &ctx_s],
        &["-o", "-", "-o", "type=oci,dest=-", &ctx_s],
        &["--progress", "fancy", &ctx_s],
        &["--platform", "not-a-platform", &ctx_s],
        &["--label", "novalue", &ctx_s],
        &["--build-arg", "=x", &ctx_s],
        &["--build-arg", "", &ctx_s],
        &["/nonexistent-rbuild-context"],
        &["-f", "/nonexistent-rbuild/Dockerfile", &ctx_s],
        &[
            "-o",
            "type=oci,dest=same",
            "-o",
            "type=docker,dest=same",
            &ctx_s,
        ],
    ];
    for args in cases {
        let ran = rbuild(dir.path(), args, None);
        assert_eq!(ran.code, 2, "rbuild {args:?}: {}", ran.summary());
        assert!(!ran.stderr.is_empty(), "rbuild {args:?} gave no message");
    }
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .args(["-o", "type=tar,dest=x.tar", &ctx_s]);
    let ran = run_cmd(&mut cmd, None, common::RBUILD_TIMEOUT);
    assert_eq!(
        ran.code,
        2,
        "SOURCE_DATE_EPOCH=yesterday: {}",
        ran.summary()
    );
    assert!(!dir.join("x.tar").exists());
}

#[test]
fn failed_build_leaves_no_partial_output() {
    let dir = TestDir::new("partial");
    let ctx = small_context(&dir);
    // Two layers are written before step 3 fails.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /a\nCOPY sub /b/\nCOPY not-there.txt /c\n",
    )
    .unwrap();
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("old.tar"), "old").unwrap();
    let cache = dir.join("cache");
    let ctx_s = ctx.to_string_lossy().into_owned();
    let specs = [
        format!("type=oci,dest={}/old.tar", out.display()),
        format!("type=oci,tar=false,dest={}/layout", out.display()),
        format!("type=docker,dest={}/docker.tar", out.display()),
        format!("type=local,dest={}/rootfs", out.display()),
        format!("type=tar,dest={}/fs.tar", out.display()),
    ];
    let mut args: Vec<String> = vec!["--cache-dir".into(), cache.to_string_lossy().into_owned()];
    for s in &specs {
        args.push("-o".into());
        args.push(s.clone());
    }
    args.extend(["--iidfile".into(), format!("{}/iid", out.display())]);
    args.extend([
        "--metadata-file".into(),
        format!("{}/meta.json", out.display()),
    ]);
    args.push(ctx_s);
    let ran = rbuild(dir.path(), &args, None);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text().contains("Dockerfile:4"),
        "{}",
        ran.summary()
    );
    assert_eq!(
        dir_entries(&out),
        ["old.tar"],
        "a failed build wrote into the output directory"
    );
    assert_eq!(
        std::fs::read(out.join("old.tar")).unwrap(),
        b"old",
        "a failed build clobbered old.tar"
    );
    let left = leftover_temp_files(&cache);
    assert!(
        left.is_empty(),
        "a failed build left temporary files in the cache: {left:?}"
    );
}

#[test]
fn unwritable_output_directory() {
    use std::os::unix::fs::PermissionsExt;
    if is_root() {
        eprintln!("skipping the read-only directory part: root may write anywhere (the /proc case covers root)");
    } else {
        let dir = TestDir::new("readonly");
        let ctx = small_context(&dir);
        let ro = dir.join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let spec = format!("type=oci,dest={}/out.tar", ro.display());
        let ran = rbuild(
            dir.path(),
            &["--cache-dir", "cache", "-o", &spec, &ctx.to_string_lossy()],
            None,
        );
        assert_eq!(ran.code, 1, "{}", ran.summary());
        assert!(
            dir_entries(&ro).is_empty(),
            "files appeared in a read-only directory"
        );
    }
    // An existing directory cannot be replaced by a tar output.
    let dir = TestDir::new("dest-is-dir");
    let ctx = small_context(&dir);
    let target = dir.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), "keep").unwrap();
    let spec = format!("type=tar,dest={}", target.display());
    let cache = dir.join("cache");
    let ran = rbuild(
        dir.path(),
        &[
            "--cache-dir",
            &cache.to_string_lossy(),
            "-o",
            &spec,
            &ctx.to_string_lossy(),
        ],
        None,
    );
    assert_eq!(
        ran.code,
        1,
        "a tar output onto a directory: {}",
        ran.summary()
    );
    assert_eq!(dir_entries(&target), ["keep"], "the directory was changed");
    let beside: Vec<String> = dir_entries(dir.path())
        .into_iter()
        .filter(|n| !["ctx", "target", "cache"].contains(&n.as_str()))
        .collect();
    assert!(
        beside.is_empty(),
        "temporary files left beside the destination: {beside:?}"
    );
    let left = leftover_temp_files(&cache);
    assert!(
        left.is_empty(),
        "temporary files left in the cache: {left:?}"
    );
}

#[test]
fn output_names_are_recorded() {
    let dir = TestDir::new("names");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let spec = format!(
        "type=docker,dest={}/d.tar,name=named:2",
        dir.path().display()
    );
    rbuild(
        dir.path(),
        &["--cache-dir", "c", "-t", "tagged:1", "-o", &spec, &ctx_s],
        None,
    )
    .assert_ok("-o ...,name=");
    let a = DockerArchive::read(&std::fs::read(dir.join("d.tar")).unwrap()).unwrap();
    for want in ["tagged:1", "named:2"] {
        assert!(
            a.repo_tags
                .iter()
                .any(|t| t == want || t == &format!("docker.io/library/{want}")),
            "RepoTags {:?} lack {want}",
            a.repo_tags
        );
    }
}

#[test]
fn cache_dir_defaults() {
    let dir = TestDir::new("cache-env");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let home = dir.join("home");
    std::fs::create_dir(&home).unwrap();
    // RBUILD_CACHE_DIR, when set, is the cache.
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .env("HOME", &home)
        .env("RBUILD_CACHE_DIR", dir.join("envcache"))
        .args(["-o", "type=tar,dest=a.tar", &ctx_s]);
    run_cmd(&mut cmd, None, common::RBUILD_TIMEOUT).assert_ok("RBUILD_CACHE_DIR");
    assert!(
        !dir_entries(&dir.join("envcache")).is_empty(),
        "RBUILD_CACHE_DIR was not used"
    );
    assert!(
        dir_entries(&home).is_empty(),
        "the cache went to HOME despite RBUILD_CACHE_DIR"
    );
    // Otherwise $XDG_CACHE_HOME/rbuild, else ~/.cache/rbuild.
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", dir.join("xdg"))
        .args(["-o", "type=tar,dest=b.tar", &ctx_s]);
    run_cmd(&mut cmd, None, common::RBUILD_TIMEOUT).assert_ok("XDG_CACHE_HOME");
    assert!(
        dir.join("xdg/rbuild").is_dir(),
        "XDG_CACHE_HOME/rbuild was not used"
    );
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .env("HOME", &home)
        .args(["-o", "type=tar,dest=c.tar", &ctx_s]);
    run_cmd(&mut cmd, None, common::RBUILD_TIMEOUT).assert_ok("HOME");
    assert!(
        home.join(".cache/rbuild").is_dir(),
        "~/.cache/rbuild was not used"
    );
}

#[test]
fn pull_alone_is_a_switch() {
    // `--pull .` must not take the context as the policy (buildx's --pull is a switch);
    // --pull=POLICY stays the explicit form.
    let dir = TestDir::new("pull-switch");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let cache = dir.join("cache");
    let cache_s = cache.to_string_lossy().into_owned();
    for pull in [
        &["--pull"][..],
        &["--pull=never"][..],
        &["--pull=always"][..],
    ] {
        let mut args = vec!["build", "--cache-dir", &cache_s];
        args.extend_from_slice(pull);
        args.push(&ctx_s);
        let ran = rbuild(dir.path(), &args, None);
        assert_eq!(ran.code, 0, "rbuild {args:?}: {}", ran.summary());
    }
    let ran = rbuild(dir.path(), &["build", "--pull=sometimes", &ctx_s], None);
    assert_eq!(ran.code, 2, "{}", ran.summary());
}

#[test]
fn rawjson_progress_is_one_json_document_per_line() {
    let dir = TestDir::new("rawjson");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let cache = dir.join("cache").to_string_lossy().into_owned();
    let ran = rbuild(
        dir.path(),
        &["build", "--cache-dir", &cache, "--progress=rawjson", &ctx_s],
        None,
    );
    assert_eq!(ran.code, 0, "{}", ran.summary());
    let mut completed = 0;
    for line in ran.stderr_text().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        for vx in v["vertexes"].as_array().into_iter().flatten() {
            assert!(
                vx["digest"].as_str().unwrap().starts_with("sha256:"),
                "{vx}"
            );
            assert!(vx["name"].is_string() && vx["started"].is_string(), "{vx}");
            if vx["completed"].is_string() {
                completed += 1;
            }
        }
    }
    assert!(
        completed >= 3,
        "every step completes: {}",
        ran.stderr_text()
    );
}

#[test]
fn help_and_version_words_and_every_subcommand_help() {
    let dir = TestDir::new("help");
    let help = rbuild(dir.path(), &["help"], None);
    assert_eq!(help.code, 0, "{}", help.summary());
    for word in [
        "rbuild [build] [OPTIONS] CONTEXT",
        "  image ",
        "  info ",
        "  du ",
        "  prune ",
        "  cache ",
        "  version ",
    ] {
        assert!(
            help.stdout_text().contains(word),
            "help lacks {word}: {}",
            help.stdout_text()
        );
    }
    // `rbuild help CMD` is `rbuild CMD --help`.
    let image_help = rbuild(dir.path(), &["help", "image"], None);
    assert_eq!(image_help.code, 0, "{}", image_help.summary());
    assert!(
        image_help.stdout_text().contains("Usage: rbuild image"),
        "{}",
        image_help.stdout_text()
    );
    let version = rbuild(dir.path(), &["version"], None);
    assert_eq!(version.code, 0, "{}", version.summary());
    assert!(
        version.stdout_text().starts_with("rbuild "),
        "{}",
        version.stdout_text()
    );
    for cmd in [
        &["build", "--help"][..],
        &["image", "--help"][..],
        &["image", "load", "--help"][..],
        &["image", "ls", "--help"][..],
        &["image", "rm", "--help"][..],
        &["image", "inspect", "--help"][..],
        &["image", "tag", "--help"][..],
        &["image", "push", "--help"][..],
        &["image", "save", "--help"][..],
        &["du", "--help"][..],
        &["prune", "--help"][..],
        &["cache", "--help"][..],
        &["cache", "check", "--help"][..],
        &["info", "--help"][..],
        &["version", "--help"][..],
    ] {
        let ran = rbuild(dir.path(), cmd, None);
        assert_eq!(ran.code, 0, "rbuild {cmd:?}: {}", ran.summary());
        // Each names itself in full (`rbuild image ls`, not `rbuild ls`).
        let usage = match cmd[0] {
            "build" => "Usage: rbuild [build] [OPTIONS] CONTEXT".to_string(),
            _ => format!("Usage: rbuild {}", cmd[..cmd.len() - 1].join(" ")),
        };
        assert!(
            ran.stdout_text().contains(&usage),
            "rbuild {cmd:?} lacks {usage:?}: {}",
            ran.stdout_text()
        );
        let mut bad = cmd[..cmd.len() - 1].to_vec();
        bad.push("--bogus-flag");
        let ran = rbuild(dir.path(), &bad, None);
        assert_eq!(ran.code, 2, "rbuild {bad:?}: {}", ran.summary());
    }
    // Mirrors serve pulls: `image push` has the registry flags but not this one.
    let push_help = rbuild(dir.path(), &["image", "push", "--help"], None);
    assert!(push_help.stdout_text().contains("--authfile"));
    assert!(!push_help.stdout_text().contains("--registry-mirror"));
    let ran = rbuild(
        dir.path(),
        &["image", "push", "--registry-mirror", "m", "x"],
        None,
    );
    assert_eq!(ran.code, 2, "{}", ran.summary());
}

#[test]
fn tags_alone_and_load_keep_the_image_in_the_store() {
    // -t without -o (and --load) keep the image under its names, as buildx loads it; the
    // metadata file names what -t and -o name= gave.
    let dir = TestDir::new("tags-store");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let cache = dir.join("cache").to_string_lossy().into_owned();
    let meta = dir.join("meta.json");
    let meta_s = meta.to_string_lossy().into_owned();
    // A build with `extra` flags, then the names in the store.
    let build_and_list = |extra: &[&str]| {
        let mut argv = vec!["build", "--cache-dir", &cache, "--metadata-file", &meta_s];
        argv.extend_from_slice(extra);
        argv.push(&ctx_s);
        let ran = rbuild(dir.path(), &argv, None);
        assert_eq!(ran.code, 0, "{}", ran.summary());
        let ls = rbuild(
            dir.path(),
            &["image", "ls", "-q", "--cache-dir", &cache],
            None,
        );
        ls.stdout_text()
    };
    let names = build_and_list(&["-t", "tagged:1"]);
    assert!(
        names.contains("docker.io/library/tagged:1"),
        "-t alone: {names}"
    );
    let names = build_and_list(&["--load", "-t", "loaded:2", "-o", "type=image,name=extra:3"]);
    for n in ["docker.io/library/loaded:2", "docker.io/library/extra:3"] {
        assert!(names.contains(n), "{n}: {names}");
    }
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["image.name"], "loaded:2,extra:3", "{m}");
    let ran = rbuild(dir.path(), &["build", "--push", &ctx_s], None);
    assert_eq!(ran.code, 2, "--push without -t: {}", ran.summary());
}

#[test]
fn check_lints_without_building() {
    let dir = TestDir::new("check");
    let ctx = dir.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    let ctx_s = ctx.to_string_lossy().into_owned();
    let cache = dir.join("cache").to_string_lossy().into_owned();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch as base\nCMD run me\n").unwrap();
    let ran = rbuild(
        dir.path(),
        &["build", "--check", "--cache-dir", &cache, &ctx_s],
        None,
    );
    assert_eq!(ran.code, 1, "{}", ran.summary());
    let out = ran.stdout_text();
    assert!(out.contains("2 warnings have been found"), "{out}");
    assert!(
        out.contains("WARN: FromAsCasing") && out.contains("(line 1)"),
        "{out}"
    );
    assert!(
        out.contains("WARN: JSONArgsRecommended") && out.contains("(line 2)"),
        "{out}"
    );
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch AS base\nCMD [\"run\"]\n",
    )
    .unwrap();
    let ran = rbuild(
        dir.path(),
        &["build", "--check", "--cache-dir", &cache, &ctx_s],
        None,
    );
    assert_eq!(ran.code, 0, "{}", ran.summary());
    assert!(ran.stdout_text().contains("no warnings found"));
    // A Dockerfile error is reported at its line, and nothing is built.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY --from=nowhere\n",
    )
    .unwrap();
    let ran = rbuild(
        dir.path(),
        &["build", "--check", "--cache-dir", &cache, &ctx_s],
        None,
    );
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text().contains("Dockerfile:2"),
        "{}",
        ran.summary()
    );
}

#[test]
fn annotations_go_into_the_manifest() {
    let dir = TestDir::new("annotation");
    let ctx = small_context(&dir);
    let ctx_s = ctx.to_string_lossy().into_owned();
    let cache = dir.join("cache").to_string_lossy().into_owned();
    let out = dir.join("layout");
    let dest = format!("type=oci,tar=false,dest={}", out.display());
    let ran = rbuild(
        dir.path(),
        &[
            "build",
            "--cache-dir",
            &cache,
            "-o",
            &dest,
            "--annotation",
            "org.opencontainers.image.source=https://example.invalid/app",
            "--annotation",
            "manifest:team=build",
            "--annotation",
            "index:org.opencontainers.image.vendor=rbuild",
            "--annotation",
            "manifest-descriptor:purpose=test",
            &ctx_s,
        ],
        None,
    );
    assert_eq!(ran.code, 0, "{}", ran.summary());
    let files = Files::from_dir(&out).unwrap();
    let image = OciImage::read(&files, "layout").unwrap();
    assert_eq!(
        image.manifest["annotations"],
        serde_json::json!({
            "org.opencontainers.image.source": "https://example.invalid/app",
            "team": "build"
        })
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["annotations"],
        serde_json::json!({ "org.opencontainers.image.vendor": "rbuild" })
    );
    assert_eq!(
        index["manifests"][0]["annotations"],
        serde_json::json!({ "purpose": "test" })
    );
    // No index descriptor (one manifest), no unknown level, no other platform.
    for bad in [
        "index-descriptor:k=v",
        "layer:k=v",
        "manifest[linux/s390x]:k=v",
    ] {
        let ran = rbuild(dir.path(), &["build", "--annotation", bad, &ctx_s], None);
        assert_eq!(ran.code, 2, "{bad}: {}", ran.summary());
    }
}

#[test]
fn image_tag_inspect_and_save() {
    // A built image gets a second name, is inspected under it, and is saved in each format;
    // skopeo reads every archive back with the manifest the build made.
    let test = "image_tag_inspect_and_save";
    let dir = TestDir::new("image-cmds");
    let ctx = small_context(&dir);
    let cache = dir.join("cache").to_string_lossy().into_owned();
    let iid = dir.join("iid");
    let meta = dir.join("meta.json");
    let ran = rbuild(
        dir.path(),
        &[
            "build",
            "--cache-dir",
            &cache,
            "-t",
            "first:1",
            "--iidfile",
            &iid.to_string_lossy(),
            "--metadata-file",
            &meta.to_string_lossy(),
            &ctx.to_string_lossy(),
        ],
        None,
    );
    ran.assert_ok("build -t first:1");
    let image_id = std::fs::read_to_string(&iid).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let manifest_digest = m["containerimage.digest"].as_str().unwrap().to_string();
    let image = |args: &[&str]| {
        let mut argv = vec!["image"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--cache-dir", &cache]);
        rbuild(dir.path(), &argv, None)
    };
    image(&["tag", "first:1", "second:2", "third"]).assert_ok("image tag");
    let ls = image(&["ls", "-q"]);
    for n in [
        "docker.io/library/first:1",
        "docker.io/library/second:2",
        "docker.io/library/third:latest",
    ] {
        assert!(ls.stdout_text().contains(n), "{n}: {}", ls.summary());
    }
    assert_eq!(
        image(&["tag", "missing:1", "x:1"]).code,
        1,
        "tag of a missing image"
    );

    let inspected = image(&["inspect", "second:2"]);
    inspected.assert_ok("image inspect");
    let v: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(v[0]["Id"], image_id.trim(), "{v}");
    assert_eq!(v[0]["ManifestDigest"], manifest_digest.as_str(), "{v}");
    assert_eq!(v[0]["Config"]["Labels"]["test"], "cli", "{v}");
    assert_eq!(v[0]["Layers"].as_array().map(Vec::len), Some(2), "{v}");

    if !require_tools(test, &["skopeo"]) {
        return;
    }
    for (format, file, transport) in [
        ("oci-archive", "img.tar", "oci-archive"),
        ("docker-archive", "img-docker.tar", "docker-archive"),
        ("oci-dir", "layout", "oci"),
    ] {
        let out = dir.join(file);
        let out_s = out.to_string_lossy().into_owned();
        image(&["save", "second:2", "--format", format, "-o", &out_s])
            .assert_ok(&format!("image save --format {format}"));
        let cfg = skopeo_json(&["inspect", "--config", &format!("{transport}:{out_s}")])
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(
            cfg["config"]["Labels"]["test"], "cli",
            "{format}: skopeo reads the saved config"
        );
        if format != "docker-archive" {
            let raw = skopeo(&["inspect", "--raw", &format!("{transport}:{out_s}")])
                .unwrap_or_else(|e| panic!("{format}: {e}"));
            assert_eq!(
                format!("sha256:{}", sha256_hex(&raw)),
                manifest_digest,
                "{format}: the saved manifest is the built one"
            );
        }
    }
}

/// Runs `rbuild ARGS` in a pseudo-terminal (util-linux `script`); returns its exit code and
/// everything it wrote to the terminal.
fn rbuild_in_pty(dir: &Path, args: &[String]) -> (i32, String) {
    let quoted: Vec<String> = std::iter::once(common::rbuild_bin().display().to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut cmd = Command::new("script");
    cmd.current_dir(dir).env("TERM", "xterm").args([
        "-q",
        "-e",
        "-c",
        &quoted.join(" "),
        "/dev/null",
    ]);
    let ran = run_cmd(&mut cmd, None, common::RBUILD_TIMEOUT);
    (ran.code, String::from_utf8_lossy(&ran.stdout).into_owned())
}

#[test]
fn tty_progress_in_a_pseudo_terminal() {
    // buildx's live view: a `[+] Building` header whose timer runs, a row per step whose
    // timer runs while it does, the running step's last output lines, and a last frame
    // marked FINISHED with every step counted; a failure shows ERROR and its output.
    let test = "tty_progress_in_a_pseudo_terminal";
    if !require_tools(test, &["script"]) {
        return;
    }
    let Some(bb) = common::build::busybox(test) else {
        return;
    };
    let b = common::build::Build::scratch("tty");
    b.load_busybox(&bb);
    let build = |dockerfile: &str| {
        std::fs::write(&b.dockerfile, dockerfile).unwrap();
        let args: Vec<String> = [
            "build",
            "--cache-dir",
            &b.cache.to_string_lossy(),
            "--pull=never",
            "-f",
            &b.dockerfile.to_string_lossy(),
            &b.ctx.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        rbuild_in_pty(b.dir.path(), &args)
    };
    let distinct_times = |text: &str, row: &str| {
        let mut times: Vec<String> = text
            .split(['\r', '\n'])
            .filter(|l| l.contains(row))
            .filter_map(|l| {
                // The header's time follows "Building "; a row's ends the row.
                let t = match l.split_once("Building ") {
                    Some((_, rest)) => rest.split(' ').next()?,
                    None => l.trim_end().rsplit(' ').next()?,
                };
                let n = t.strip_suffix('s')?;
                n.parse::<f64>().ok().map(|_| n.to_string())
            })
            .collect();
        times.sort();
        times.dedup();
        times.len()
    };

    let (code, out) = build("FROM busybox\nRUN echo step-output && sleep 1.5 && echo end\n");
    assert_eq!(code, 0, "{out}");
    assert!(
        distinct_times(&out, "[+] Building") >= 5,
        "the header's timer did not run: {out}"
    );
    assert!(
        distinct_times(&out, "RUN echo step-output") >= 5,
        "the running step's timer did not run: {out}"
    );
    assert!(
        out.contains("=> => # step-output"),
        "the running step's output was not shown: {out}"
    );
    let last = out
        .split(['\r', '\n'])
        .rfind(|l| l.contains("[+] Building"))
        .unwrap_or_default()
        .to_string();
    // definition, metadata, FROM, RUN
    assert!(last.ends_with("(4/4) FINISHED"), "last frame: {last:?}");

    let (code, out) = build("FROM busybox\nRUN echo failing-output && exit 3\n");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("=> ERROR [stage-0 2/2] RUN echo failing-output"),
        "{out}"
    );
    assert!(
        out.contains(" > [stage-0 2/2] RUN echo failing-output && exit 3:"),
        "the failed step's output block: {out}"
    );
    assert!(!out.contains("FINISHED"), "{out}");
}

#[test]
fn load_into_podman() {
    // --load=podman hands the image to `podman load`: podman then has it under the -t
    // name, with the image id the build reported. podman gets a storage of its own here
    // (CONTAINERS_STORAGE_CONF), so the test touches no one's images.
    let test = "load_into_podman";
    if !require_tools(test, &["podman"]) {
        return;
    }
    let dir = TestDir::new("podman-load");
    let ctx = small_context(&dir);
    let conf = dir.join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("graph").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    let cache = dir.join("cache").to_string_lossy().into_owned();
    let iid = dir.join("iid");
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .args(["build", "--cache-dir", &cache, "--load=podman", "-t"])
        .arg("localhost/rbuild-load:1")
        .arg("--iidfile")
        .arg(&iid)
        .arg(&ctx);
    run_cmd(&mut cmd, None, common::RBUILD_TIMEOUT).assert_ok("--load=podman");
    let podman = |args: &[&str]| {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_STORAGE_CONF", &conf).args(args);
        run_cmd(&mut cmd, None, TOOL_TIMEOUT)
    };
    podman(&["image", "exists", "localhost/rbuild-load:1"]).assert_ok("podman image exists");
    let id = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "localhost/rbuild-load:1",
    ]);
    id.assert_ok("podman image inspect");
    let built = std::fs::read_to_string(&iid).unwrap();
    assert_eq!(
        format!("sha256:{}", id.stdout_text().trim()),
        built.trim(),
        "podman has the image the build made"
    );
    // Without a name there is nothing to load it as.
    let ran = rbuild(
        dir.path(),
        &[
            "build",
            "--cache-dir",
            &cache,
            "--load=podman",
            &ctx.to_string_lossy(),
        ],
        None,
    );
    assert_eq!(ran.code, 2, "{}", ran.summary());
}

#[test]
fn output_compression_and_media_types() {
    // -o compression=zstd|uncompressed, compression-level=, force-compression=,
    // oci-mediatypes=: the layers and manifests each output gets, read back by skopeo
    // (which decompresses zstd itself) and umoci (gzip and plain tar; Debian 12's umoci
    // 0.4.7 cannot read zstd).
    let test = "output_compression_and_media_types";
    if !require_tools(test, &["skopeo", "umoci"]) {
        return;
    }
    let Some(bb) = common::build::busybox(test) else {
        return;
    };
    let b = common::build::Build::scratch("compression");
    b.load_busybox(&bb);
    std::fs::write(&b.dockerfile, "FROM busybox\nCOPY f /f\n").unwrap();
    std::fs::write(b.ctx.join("f"), "compressed\n".repeat(1000)).unwrap();
    let dest = |name: &str| b.out.join(name).to_string_lossy().into_owned();
    let out = |name: &str, attrs: &str| format!("type=oci,tar=false,dest={},{attrs}", dest(name));
    let specs = [
        out("zstd", "compression=zstd,compression-level=19"),
        out("forced", "compression=zstd,force-compression=true"),
        out("plain", "compression=uncompressed,force-compression=true"),
        out("docker", "oci-mediatypes=false"),
    ];
    let mut args = vec!["--pull=never", "-t", "c:1"];
    for s in &specs {
        args.extend(["-o", s.as_str()]);
    }
    b.build(&args).assert_ok("four image outputs");
    let manifest = |name: &str| {
        let raw = skopeo(&["inspect", "--raw", &format!("oci:{}:1", dest(name))])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()
    };
    let layer_types = |name: &str| -> Vec<String> {
        manifest(name)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap().to_string())
            .collect()
    };
    let oci = "application/vnd.oci.image.layer.v1.tar";
    // New layers as asked; the base's stay gzip unless forced.
    assert_eq!(
        layer_types("zstd"),
        [format!("{oci}+gzip"), format!("{oci}+zstd")]
    );
    assert_eq!(
        layer_types("forced"),
        [format!("{oci}+zstd"), format!("{oci}+zstd")]
    );
    assert_eq!(layer_types("plain"), [oci.to_string(), oci.to_string()]);
    // skopeo and umoci refuse Docker media types in an OCI layout, so the layout is read
    // directly (a push with them is checked against the registry in tests/registry.rs).
    let docker = {
        let layout = b.out.join("docker");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let d = &index["manifests"][0];
        assert_eq!(
            d["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let digest = d["digest"].as_str().unwrap().replace(':', "/");
        let raw = std::fs::read(layout.join("blobs").join(digest)).unwrap();
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()
    };
    assert_eq!(
        docker["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        docker["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    let docker_layers: Vec<&str> = docker["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        docker_layers, ["application/vnd.docker.image.rootfs.diff.tar.gzip"; 2],
        "zstd layers made for another output are recompressed for Docker media types"
    );
    // An uncompressed blob is its tar: its digest is its diff id.
    let plain = manifest("plain");
    let config =
        skopeo_json(&["inspect", "--config", &format!("oci:{}:1", dest("plain"))]).unwrap();
    for (l, d) in plain["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
    {
        assert_eq!(l["digest"], *d);
    }
    // skopeo decompresses the zstd layers: each is the tar its diff id names.
    for name in ["zstd", "forced"] {
        let unpacked = b.out.join(format!("{name}-dir"));
        skopeo(&[
            "copy",
            "--dest-decompress",
            &format!("oci:{}:1", dest(name)),
            &format!("dir:{}", unpacked.display()),
        ])
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        for d in config["rootfs"]["diff_ids"].as_array().unwrap() {
            let hex = d.as_str().unwrap().trim_start_matches("sha256:");
            assert!(
                unpacked.join(hex).is_file(),
                "{name}: no layer decompressed to {d}"
            );
        }
    }
    let rootfs = common::image::umoci_unpack(&b.out.join("plain"), "1", &b.out.join("bundle"))
        .unwrap_or_else(|e| panic!("umoci plain: {e}"));
    assert!(rootfs.join("f").is_file() && rootfs.join("bin/busybox").exists());
    // A forced conversion is remembered: a later export gets the same blobs.
    let again = out("forced-again", "compression=zstd,force-compression=true");
    b.build(&["--pull=never", "-t", "c:1", "-o", &again])
        .assert_ok("forced again");
    assert_eq!(
        manifest("forced-again")["layers"],
        manifest("forced")["layers"]
    );

    for bad in [
        "type=oci,dest=x.tar,compression=lz4",
        "type=oci,dest=x.tar,compression=gzip,compression-level=10",
        "type=oci,dest=x.tar,compression=zstd,oci-mediatypes=false",
        "type=local,dest=x,compression=gzip",
    ] {
        let ran = b.build(&["--pull=never", "-o", bad]);
        assert_eq!(ran.code, 2, "{bad}: {}", ran.summary());
    }
}

#[test]
fn call_targets_and_outline() {
    // --call=targets lists the stages (the default one marked), --call=outline the build
    // args the target reads with their values; neither builds.
    let dir = TestDir::new("call");
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "ARG BASE=scratch\nFROM ${BASE} AS build\nARG VERSION=1.0\nCOPY . /src\nFROM scratch AS release\nARG MODE=fast\nCOPY --from=build /src /s\n",
    )
    .unwrap();
    let cache = dir.join("cache").to_string_lossy().into_owned();
    let ctx_s = ctx.to_string_lossy().into_owned();
    let call = |extra: &[&str]| {
        let mut argv = vec!["build", "--cache-dir", &cache];
        argv.extend_from_slice(extra);
        argv.push(&ctx_s);
        rbuild(dir.path(), &argv, None)
    };
    let targets = call(&["--call=targets"]);
    targets.assert_ok("--call=targets");
    assert_eq!(
        targets.stdout_text(),
        "TARGET\nbuild\nrelease (default)\n",
        "{}",
        targets.summary()
    );
    let outline = call(&["--call", "outline", "--build-arg", "MODE=slow"]);
    outline.assert_ok("--call outline");
    let text = outline.stdout_text();
    for line in [
        "TARGET:\trelease",
        "BASE\tscratch",
        "VERSION\t1.0",
        "MODE\tslow",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
    }
    assert!(
        !dir.join("cache/blobs/sha256").exists()
            || dir_entries(&dir.join("cache/blobs/sha256")).is_empty(),
        "--call built something"
    );
    assert_eq!(call(&["--check", "--call=targets"]).code, 2);
    assert_eq!(call(&["--call=bogus"]).code, 2);
}

#[test]
fn man_pages_come_from_the_help_definitions() {
    // `rbuild help --man DIR` writes a page per command, with the options --help lists.
    let dir = TestDir::new("man");
    let out = dir.join("man");
    let out_s = out.to_string_lossy().into_owned();
    rbuild(dir.path(), &["help", "--man", &out_s], None).assert_ok("help --man");
    for (page, needle) in [
        ("rbuild.1", "snapshotter"),
        ("rbuild-build.1", "snapshotter"),
        ("rbuild-image-save.1", "oci\\-archive"),
        ("rbuild-prune.1", "force"),
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
        assert!(text.contains(needle), "{page} lacks {needle:?}");
    }
}
