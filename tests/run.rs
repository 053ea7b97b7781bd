//! RUN steps end to end, on the generated busybox base (`make base`): the three forms and
//! heredocs, users and groups, the owners and whiteouts of RUN layers, exit codes, the
//! network, what a step cannot see or do (host files, new namespaces, mounts, inherited
//! file descriptors), cancellation, `--isolation=chroot`, the single-id fallback and
//! `rbuild info`. Each case is a Dockerfile under `testdata/run/`; the busybox OCI archive
//! is loaded into each build's own store and every build uses `--pull=never`.
//!
//! `scripts/test.sh` runs these as root and again as an unprivileged user with sub-id
//! ranges; what one of those cannot do is skipped with the reason.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::build::{
    busybox, descendants, file_content, info, info_line, info_with, line_channel, mounts_under,
    needs, single_id_mode, skip, step_output, still_running, unshare_works, Build, HttpServer,
    Proc,
};
use common::{dir_entries, is_root, rbuild_bin, rbuild_cmd, require_tools, run_cmd, sha256_hex};

/// The testdata group of these cases.
const GROUP: &str = "run";

/// A build of `testdata/run/NAME` with busybox loaded into its store, or `None` (skip)
/// when the generated base is missing.
fn prepared(test: &str, name: &str) -> Option<Build> {
    let bb = busybox(test)?;
    let b = Build::case(GROUP, name);
    b.load_busybox(&bb);
    Some(b)
}

/// The build arguments every test passes, plus `extra`.
fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--pull=never"];
    v.extend_from_slice(extra);
    v
}

/// Whether fuse-overlayfs can be used by this user: the program on PATH and `/dev/fuse`
/// openable. In CI both are the harness's job (scripts/test.sh installs the program and
/// makes the device usable), so a missing one fails the test; elsewhere it skips.
fn fuse_usable(test: &str) -> bool {
    if !require_tools(test, &["fuse-overlayfs"]) {
        return false;
    }
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => true,
        Err(e) if common::in_ci() => panic!(
            "{test}: cannot open /dev/fuse ({e}); CI=true, so this is a failure: scripts/test.sh makes it usable (chmod 666 as root)"
        ),
        Err(e) => {
            skip(test, &format!("cannot open /dev/fuse: {e}"));
            false
        }
    }
}

/// The snapshotters every RUN can be compared across: walk, copy, the kernel overlay and
/// fuse-overlayfs (where usable).
fn all_snapshotters(test: &str) -> Vec<&'static str> {
    let mut v = vec!["walk", "copy", "overlay"];
    if fuse_usable(test) {
        v.push("fuse-overlayfs");
    }
    v
}

/// The reason to skip owner assertions, when rbuild would run in single-id mode.
fn single_id_skip(test: &str) -> bool {
    match single_id_mode() {
        Some(line) => {
            skip(
                test,
                &format!("rbuild maps only one id here, so RUN steps cannot own files as other ids (id mapping: {line})"),
            );
            true
        }
        None => false,
    }
}

#[test]
fn run_forms_and_heredocs_print_in_plain_progress() {
    let test = "run_forms_and_heredocs_print_in_plain_progress";
    let Some(b) = prepared(test, "forms") else {
        return;
    };
    let built = b.build_ok(&args(&[]));
    let err = built.ran.stderr_text();
    for (instruction, lines) in [
        ("RUN echo shell-form-", vec!["shell-form-42"]),
        (
            r#"RUN ["echo", "exec-form $HOME"]"#,
            vec!["exec-form $HOME"],
        ),
        ("RUN <<SCRIPT", vec!["heredoc-first", "heredoc-42"]),
        ("RUN <<AWK", vec!["awk-heredoc-42"]),
        ("RUN <<SH", vec!["sh-shebang-heredoc-42"]),
        ("RUN cat <<EOF > /greeting", vec![]),
    ] {
        let got = step_output(&err, instruction).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got, lines,
            "output of the step {instruction:?} in plain progress:\n{err}"
        );
    }
    let fs = built.fs();
    assert_eq!(
        file_content(&fs, "/shebang").as_deref(),
        Some("sh-shebang-heredoc-42\n"),
        "/shebang written by the #!/bin/sh heredoc"
    );
    assert_eq!(
        file_content(&fs, "/greeting").as_deref(),
        Some("hello 2\n"),
        "/greeting written by `cat <<EOF > /greeting` (expanded by the shell)"
    );
}

#[test]
fn user_sets_uid_gid_and_supplementary_groups() {
    let test = "user_sets_uid_gid_and_supplementary_groups";
    if single_id_skip(test) {
        return;
    }
    let Some(b) = prepared(test, "users") else {
        return;
    };
    let fs = b.build_ok(&args(&[])).fs();
    let id = |p: &str| {
        file_content(&fs, p)
            .unwrap_or_else(|| panic!("{p} is missing"))
            .trim()
            .to_string()
    };
    let root = id("/id-root");
    assert!(
        root.starts_with("uid=0(root) gid=0(root)"),
        "id as root: {root}"
    );
    let app = id("/tmp/id-app");
    assert!(
        app.starts_with("uid=1000(app) gid=1000(app) groups="),
        "USER app: {app}"
    );
    let groups = app.split_once("groups=").map(|(_, g)| g).unwrap_or("");
    let groups: Vec<&str> = groups.split(',').collect();
    assert!(
        groups.contains(&"50(staff)") && groups.contains(&"1000(app)"),
        "USER app must have its primary group and staff (50) from /etc/group: {app}"
    );
    assert_eq!(
        id("/tmp/id-app-staff"),
        "uid=1000(app) gid=50(staff) groups=50(staff)",
        "USER app:staff has that group only"
    );
    let numeric = id("/tmp/id-4242");
    assert!(
        numeric.starts_with("uid=4242 gid=0(root)"),
        "USER 4242 (no passwd entry) runs with gid 0: {numeric}"
    );
}

#[test]
fn run_layers_record_owners() {
    let test = "run_layers_record_owners";
    if single_id_skip(test) {
        return;
    }
    let Some(b) = prepared(test, "owners") else {
        return;
    };
    let built = b.build_ok(&args(&[]));
    let layers = built.layer_entries();
    for (path, owner) in [
        ("root-file", (0, 0)),
        ("tmp/app-file", (1000, 1000)),
        ("x", (1000, 50)),
    ] {
        let found: Vec<_> = layers.iter().flatten().filter(|e| e.path == path).collect();
        assert_eq!(found.len(), 1, "{path} is in exactly one layer: {found:?}");
        assert_eq!(
            (found[0].uid, found[0].gid),
            owner,
            "owner of {path} in its layer's tar header"
        );
    }
    let fs = built.fs();
    for (path, owner) in [
        ("/root-file", (0, 0)),
        ("/tmp/app-file", (1000, 1000)),
        ("/x", (1000, 50)),
    ] {
        let node = fs
            .nodes
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(
            node.owner,
            Some(owner),
            "owner of {path} in the type=tar output"
        );
    }
}

#[test]
fn deletions_become_whiteouts() {
    let test = "deletions_become_whiteouts";
    let Some(b) = prepared(test, "deletions") else {
        return;
    };
    let built = b.build_ok(&args(&[]));
    let layers = built.layer_entries();
    let layer = layers
        .iter()
        .find(|l| l.iter().any(|e| e.path == "bin/.wh.vi"))
        .unwrap_or_else(|| panic!("no layer has the whiteout bin/.wh.vi: {layers:#?}"));
    let names: Vec<&str> = layer.iter().map(|e| e.path.as_str()).collect();
    assert!(
        names.contains(&"etc/.wh.app.d"),
        "the layer of `rm /bin/vi && rm -rf /etc/app.d` whites out etc/app.d: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("etc/app.d/")),
        "one whiteout hides the deleted directory; nothing below it is listed: {names:?}"
    );
    let fs = built.fs();
    for gone in [
        "/bin/vi",
        "/etc/app.d",
        "/etc/app.d/c.conf",
        "/data/a",
        "/data/sub",
    ] {
        assert!(
            !fs.nodes.contains_key(gone),
            "{gone} is still in the final filesystem"
        );
    }
    assert!(
        fs.nodes.contains_key("/bin/busybox"),
        "/bin/busybox is gone"
    );
    assert_eq!(file_content(&fs, "/data/new").as_deref(), Some("new\n"));
    assert_eq!(file_content(&fs, "/var/new").as_deref(), Some(""));
    assert_eq!(file_content(&fs, "/srv/new").as_deref(), Some(""));
}

/// The entry names of the one layer that adds `path`.
fn layer_adding<'a>(layers: &'a [Vec<common::build::TarItem>], path: &str) -> Vec<&'a str> {
    let found: Vec<_> = layers
        .iter()
        .filter(|l| l.iter().any(|e| e.path == path))
        .collect();
    assert_eq!(found.len(), 1, "{path} must be added by exactly one layer");
    found[0].iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn replaced_directories_hide_what_was_below() {
    let test = "replaced_directories_hide_what_was_below";
    let Some(b) = prepared(test, "deletions") else {
        return;
    };
    let layers = b.build_ok(&args(&[])).layer_entries();
    // `mv /data /data.old && mkdir /data ...`: the new /data is certainly a new inode, so
    // the layer marks it opaque.
    let data = layer_adding(&layers, "data/new");
    assert!(
        data.contains(&"data/.wh..wh..opq"),
        "the layer of `mv /data /data.old && mkdir /data && ...` has no opaque marker \
         data/.wh..wh..opq: {data:?}"
    );
    // `rm -rf /srv && mkdir /srv`: the filesystem may give the new directory the freed
    // inode number, and then the old children are whited out one by one instead; either
    // way everything that was below must be hidden.
    let srv = layer_adding(&layers, "srv/new");
    let opaque = srv.contains(&"srv/.wh..wh..opq");
    let each = srv.contains(&"srv/.wh.old") && srv.contains(&"srv/.wh.sub");
    assert!(
        opaque || each,
        "the layer of `rm -rf /srv && mkdir /srv && touch /srv/new` hides neither with an \
         opaque marker nor with whiteouts of srv/old and srv/sub: {srv:?}"
    );
    // `rm -rf /var && mkdir /var` of the base's empty /var: nothing to hide, so the marker
    // is optional (see the report: on ext4 the inode is reused and there is none).
    let var = layer_adding(&layers, "var/new");
    assert!(
        var.contains(&"var"),
        "the replaced /var is in its layer: {var:?}"
    );
}

#[test]
fn failing_run_reports_its_line_and_exit_code() {
    let test = "failing_run_reports_its_line_and_exit_code";
    let Some(b) = prepared(test, "exit-code") else {
        return;
    };
    let mut extra = args(&[]);
    let outs = b.output_args();
    extra.extend(outs.iter().map(String::as_str));
    let ran = b.build(&extra);
    let err = ran.stderr_text();
    assert_eq!(
        ran.code,
        1,
        "a failed RUN is exit code 1: {}",
        ran.summary()
    );
    let line = b.line_of("RUN exit 3");
    assert!(
        err.contains(&format!("Dockerfile:{line}")),
        "stderr must name Dockerfile:{line}: {err}"
    );
    assert!(
        err.contains("did not complete successfully: exit code: 3"),
        "stderr must give the exit code: {err}"
    );
    assert_eq!(
        step_output(&err, "RUN echo before-failure").unwrap_or_else(|e| panic!("{e}")),
        ["before-failure"]
    );
    assert!(
        step_output(&err, "RUN echo after-failure").is_err(),
        "the step after the failure ran: {err}"
    );
    assert_eq!(dir_entries(&b.out), Vec::<String>::new(), "partial output");
    assert_eq!(b.leftover_temp_files(), Vec::<String>::new(), "store tmp/");
}

#[test]
fn run_uses_the_host_network_by_default() {
    let test = "run_uses_the_host_network_by_default";
    let Some(b) = prepared(test, "network-default") else {
        return;
    };
    let server = HttpServer::start("reachable");
    let port = format!("PORT={}", server.port);
    let fs = b.build_ok(&args(&["--build-arg", &port])).fs();
    // The file, not wget's messages: busybox wget can crash on a refused connection.
    assert_eq!(
        file_content(&fs, "/out").as_deref(),
        Some("reachable"),
        "/out fetched from 127.0.0.1:{}",
        server.port
    );
    assert!(server.hits() >= 1, "the server saw no request");
}

#[test]
fn run_network_none_cannot_reach_the_host() {
    let test = "run_network_none_cannot_reach_the_host";
    let Some(b) = prepared(test, "network-none") else {
        return;
    };
    let server = HttpServer::start("reachable");
    let port = format!("PORT={}", server.port);
    let fs = b.build_ok(&args(&["--build-arg", &port])).fs();
    let out = file_content(&fs, "/out");
    assert!(
        !out.as_deref().unwrap_or("").contains("reachable"),
        "RUN --network=none fetched from the host: /out = {out:?}"
    );
    assert_eq!(
        server.hits(),
        0,
        "the server was reached from --network=none"
    );
    let dev = file_content(&fs, "/net-dev").expect("/net-dev written");
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(
        interfaces,
        ["lo"],
        "--network=none has only loopback: {dev}"
    );
    // The build's --network=none is every RUN's default (RUN --network=default too).
    std::fs::write(
        &b.dockerfile,
        "FROM busybox\nARG PORT\nRUN wget -q -O /out \"http://127.0.0.1:$PORT/\" || true\nRUN --network=default cat /proc/net/dev > /net-dev\n",
    )
    .unwrap();
    let fs = b
        .build_ok(&args(&["--build-arg", &port, "--network", "none"]))
        .fs();
    assert!(!file_content(&fs, "/out")
        .unwrap_or_default()
        .contains("reachable"));
    assert_eq!(
        server.hits(),
        0,
        "the server was reached under --network none"
    );
    let dev = file_content(&fs, "/net-dev").expect("/net-dev written");
    assert_eq!(
        dev.lines().count(),
        3,
        "only loopback under --network none: {dev}"
    );
}

#[test]
fn run_cannot_see_host_files() {
    let test = "run_cannot_see_host_files";
    let Some(b) = prepared(test, "host-files") else {
        return;
    };
    let secret = sha256_hex(format!("{:?}{}", Instant::now(), std::process::id()).as_bytes());
    let name = format!("secret-{}.txt", &secret[..16]);
    // In the scratch directory, outside the build context.
    let path = b.dir.join(&name);
    std::fs::write(&path, &secret).unwrap();
    let path_arg = format!("SECRET_PATH={}", path.display());
    let name_arg = format!("SECRET_NAME={name}");
    let built = b.build_ok(&args(&["--build-arg", &path_arg, "--build-arg", &name_arg]));
    let fs = built.fs();
    let leak = file_content(&fs, "/leak");
    assert!(
        leak.as_deref().unwrap_or("").is_empty(),
        "a RUN step read the host file {}: {leak:?}",
        path.display()
    );
    let found = file_content(&fs, "/found").expect("/found written");
    assert!(
        found.trim().is_empty(),
        "the host file is visible in the step: {found}"
    );
    // /proc/1/root is the step's own root (or unreadable), never the host's.
    let listing = file_content(&fs, "/proc1-root").expect("/proc1-root written");
    let image_top: Vec<String> = fs
        .nodes
        .keys()
        .filter(|p| p.matches('/').count() == 1)
        .map(|p| p[1..].to_string())
        .collect();
    let host_only: Vec<String> = dir_entries(std::path::Path::new("/"))
        .into_iter()
        .filter(|n| !image_top.contains(n))
        .collect();
    for n in &host_only {
        assert!(
            !listing.lines().any(|l| l.trim() == n),
            "`ls /proc/1/root/` in a step shows the host's /{n}: {listing}"
        );
    }
}

#[test]
fn new_user_namespaces_are_refused_in_a_step() {
    let test = "new_user_namespaces_are_refused_in_a_step";
    let Some(b) = prepared(test, "unshare") else {
        return;
    };
    let ran = b.build(&args(&[]));
    assert_step_failed(&b, &ran, "RUN unshare -U true");
}

#[test]
fn mounts_are_refused_in_a_step() {
    let test = "mounts_are_refused_in_a_step";
    let Some(b) = prepared(test, "mount") else {
        return;
    };
    let ran = b.build(&args(&[]));
    assert_step_failed(&b, &ran, "RUN mount -t tmpfs x /mnt");
}

/// Checks that the build failed (exit 1) because the step on the line starting with
/// `instruction` exited non-zero after it started.
fn assert_step_failed(b: &Build, ran: &common::Ran, instruction: &str) {
    let err = ran.stderr_text();
    assert_eq!(ran.code, 1, "`{instruction}` must fail: {}", ran.summary());
    step_output(&err, instruction).unwrap_or_else(|e| panic!("the step did not start: {e}"));
    let line = b.line_of(instruction);
    assert!(
        err.contains(&format!("Dockerfile:{line}"))
            && err.contains("did not complete successfully: exit code:"),
        "the error must name Dockerfile:{line} and the step's exit code: {err}"
    );
}

/// Builds the `signals` case (with a time limit: were SIGPIPE ignored, `yes | head` would
/// never end) and returns the signals its first step started with ignored, and `/yes`.
fn ignored_signals_in_a_step(test: &str) -> Option<(Vec<u32>, Option<String>)> {
    let b = prepared(test, "signals")?;
    let mut extra = args(&[]);
    let outs = b.output_args();
    extra.extend(outs.iter().map(String::as_str));
    let built = b.run_built_within(&mut b.build_cmd(&extra), Duration::from_secs(60));
    built.ran.assert_ok("the signals case");
    let err = built.ran.stderr_text();
    let lines = step_output(&err, r#"RUN ["grep", "^SigIgn:""#).unwrap_or_else(|e| panic!("{e}"));
    let mask = lines
        .iter()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no SigIgn mask in the step's output: {lines:?}"));
    let ignored = (0..64)
        .filter(|b| mask & (1 << b) != 0)
        .map(|b| b + 1)
        .collect();
    Some((ignored, file_content(&built.fs(), "/yes")))
}

#[test]
fn steps_do_not_ignore_sigpipe() {
    let test = "steps_do_not_ignore_sigpipe";
    let Some((ignored, yes)) = ignored_signals_in_a_step(test) else {
        return;
    };
    assert!(
        !ignored.contains(&(libc::SIGPIPE as u32)),
        "a step starts with SIGPIPE ignored (ignored: {ignored:?})"
    );
    assert_eq!(
        yes.as_deref(),
        Some("y\ny\ny\ny\ny\n"),
        "/yes from `yes | head -c 10`"
    );
}

#[test]
fn steps_start_with_no_ignored_signals() {
    let test = "steps_start_with_no_ignored_signals";
    let Some((ignored, _)) = ignored_signals_in_a_step(test) else {
        return;
    };
    // An ignored signal stays ignored across exec: whatever rbuild's caller ignored must
    // not reach the step (`grep -q "^SigIgn:\s*0*$" /proc/self/status` must succeed).
    assert!(
        ignored.is_empty(),
        "a step starts with these signals ignored: {ignored:?} (rbuild must reset every \
         signal, real-time ones included: started from a Rust program, as here, rbuild \
         itself starts with glibc's internal signals 32 and 33 ignored)"
    );
}

#[test]
fn inherited_file_descriptors_do_not_reach_steps() {
    let test = "inherited_file_descriptors_do_not_reach_steps";
    let Some(b) = prepared(test, "fds") else {
        return;
    };
    let file = b.dir.join("fd7.txt");
    std::fs::write(&file, "").unwrap();
    let file_s = file.to_string_lossy().into_owned();
    // The shell opens fd 7 (no close-on-exec) and proves it works before rbuild inherits it.
    let script = r#"exec 7>>"$0" && echo probe >&7 && exec "$@""#;
    let outs = b.output_args();
    let mut extra = args(&[]);
    extra.extend(outs.iter().map(String::as_str));
    let mut cmd = b.wrapped_cmd(&["sh", "-c", script, &file_s], &extra);
    let built = b.run_built(&mut cmd);
    built.ran.assert_ok("build with an inherited fd 7");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "probe\n",
        "a RUN step wrote to the fd 7 rbuild inherited"
    );
    let fds = file_content(&built.fs(), "/fds").expect("/fds written");
    assert!(
        !fds.lines().any(|l| l.trim() == "7"),
        "fd 7 is open in the step: {fds}"
    );
}

/// Starts the `cancel` build, waits for its step to print `started` and for `sleep 300` to
/// run, sends `sig` to rbuild and checks that everything ends within 2 s and leaves nothing.
fn cancel_with(test: &str, sig: Signal, extra: &[&str]) {
    let Some(b) = prepared(test, "cancel") else {
        return;
    };
    let dest = format!("type=tar,dest={}", b.fs_out().display());
    let mut all = vec!["-o", dest.as_str()];
    all.extend_from_slice(extra);
    let mut cmd = b.build_cmd(&args(&all));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start rbuild");
    let pid = child.id() as i32;
    let lines = line_channel(child.stderr.take().expect("stderr is piped"));
    let mut seen = Vec::new();
    let fail = |child: &mut std::process::Child, tree: &[Proc], msg: String| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        for p in tree.iter().filter(|p| still_running(p)) {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        panic!("{msg}");
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                let done = l.starts_with('#') && l.ends_with(" started");
                seen.push(l);
                if done {
                    break;
                }
            }
            Err(_) => fail(
                &mut child,
                &[],
                format!("the step never printed `started`:\n{}", seen.join("\n")),
            ),
        }
    }
    // The step's processes, while it runs (they are rbuild's descendants).
    let mut tree = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        tree = descendants(pid);
        if tree.iter().any(|p| p.cmdline == "sleep 300") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !tree.iter().any(|p| p.cmdline == "sleep 300") {
        fail(
            &mut child,
            &tree,
            format!("no `sleep 300` below rbuild (pid {pid}): {tree:#?}"),
        );
    }
    kill(Pid::from_raw(pid), sig).expect("signal rbuild");
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for rbuild") {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(2) {
            fail(
                &mut child,
                &tree,
                format!("rbuild did not exit within 2 s of {sig:?}"),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    // Killed processes may take a moment to be reaped once rbuild is gone.
    let grace = Instant::now() + Duration::from_millis(500);
    let mut left: Vec<Proc> = tree.iter().filter(|p| still_running(p)).cloned().collect();
    while !left.is_empty() && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(20));
        left.retain(still_running);
    }
    if !left.is_empty() {
        fail(
            &mut child,
            &tree,
            format!("processes of the build survived {sig:?}: {left:#?}"),
        );
    }
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(5)) {
        seen.push(l);
    }
    let err = seen.join("\n");
    assert!(
        !status.success(),
        "a cancelled build exited 0 after {took:?}:\n{err}"
    );
    if sig == Signal::SIGKILL {
        // Nothing could be cleaned up: the next build on the cache collects what the
        // killed one left (its temp directory, upper directories).
        std::fs::write(&b.dockerfile, "FROM busybox\nRUN true\n").unwrap();
        b.build(&args(extra))
            .assert_ok("a build after the killed one");
    } else {
        assert!(
            err.to_lowercase().contains("cancel"),
            "rbuild should say the build was cancelled:\n{err}"
        );
        // As a shell reports a command ended by the signal: 130 (SIGINT), 143 (SIGTERM).
        assert_eq!(
            status.code(),
            Some(128 + sig as i32),
            "exit code of a build cancelled by {sig:?}"
        );
    }
    assert_eq!(b.leftover_temp_files(), Vec::<String>::new(), "store tmp/");
    assert_eq!(
        mounts_under(b.dir.path()),
        Vec::<String>::new(),
        "mounts left under the scratch directory"
    );
    assert!(!b.fs_out().exists(), "a cancelled build wrote its output");
}

#[test]
fn sigint_cancels_the_build_and_its_step() {
    cancel_with("sigint_cancels_the_build_and_its_step", Signal::SIGINT, &[]);
}

#[test]
fn sigterm_cancels_the_build_and_its_step() {
    cancel_with(
        "sigterm_cancels_the_build_and_its_step",
        Signal::SIGTERM,
        &[],
    );
}

#[test]
fn sigkill_on_fuse_overlayfs_leaves_no_daemon() {
    // Killed outright, rbuild cannot unmount: its fuse-overlayfs daemons must die with it
    // (they hold the mount namespace and the upper directories otherwise).
    let test = "sigkill_on_fuse_overlayfs_leaves_no_daemon";
    if fuse_usable(test) {
        cancel_with(test, Signal::SIGKILL, &["--snapshotter=fuse-overlayfs"]);
    }
}

#[test]
fn chroot_isolation_runs_a_step() {
    let test = "chroot_isolation_runs_a_step";
    if !require_tools(test, &["unshare"]) {
        return;
    }
    if let Err(why) = unshare_works(&["-Ur"]) {
        needs(test, &format!("{why} (needs unprivileged user namespaces)"));
        return;
    }
    let Some(b) = prepared(test, "chroot") else {
        return;
    };
    // Root in a user namespace where no further user namespace can be made: where
    // `--isolation=chroot` is meant for.
    let script = r#"echo 0 > /proc/sys/user/max_user_namespaces || exit 97; exec "$@""#;
    let outs = b.output_args();
    // auto: the chroot isolation has no mount namespace, so the snapshotter falls back to
    // walk (whatever RBUILD_SNAPSHOTTER the suite runs with).
    let mut extra = args(&["--isolation=chroot", "--snapshotter=auto"]);
    extra.extend(outs.iter().map(String::as_str));
    let mut cmd = b.wrapped_cmd(&["unshare", "-Ur", "sh", "-c", script, "sh"], &extra);
    let built = b.run_built(&mut cmd);
    if built.ran.code == 97 {
        skip(
            test,
            "cannot set user.max_user_namespaces to 0 inside `unshare -Ur`",
        );
        return;
    }
    built.ran.assert_ok("--isolation=chroot build");
    let fs = built.fs();
    assert_eq!(file_content(&fs, "/c").as_deref(), Some("chroot\n"));
    assert_eq!(
        file_content(&fs, "/proc-list").as_deref(),
        Some(""),
        "the chroot isolation mounts no /proc (README), so the step saw an empty /proc"
    );
    assert_eq!(
        file_content(&fs, "/chroot-again").as_deref(),
        Some("refused\n"),
        "a step under the chroot isolation must not chroot again (the way out of a chroot)"
    );
}

/// How a test gets rbuild into single-id mode here: as root, by running it as `nobody`
/// (uid 65534, which has no sub-id ranges); unprivileged, inside `unshare -U
/// --map-current-user`, where the setuid newuidmap cannot work and rbuild falls back.
enum SingleId {
    /// Run as uid/gid 65534.
    Nobody,
    /// Run under `unshare -U --map-current-user`.
    Nested,
}

impl SingleId {
    /// The way available here, or `None` after printing why not.
    fn get(test: &str) -> Option<SingleId> {
        if is_root() {
            // The binary must be reachable for uid 65534.
            let mut probe = rbuild_cmd();
            probe.arg("--version").uid(65534).gid(65534);
            let ran = run_cmd(&mut probe, None, common::TOOL_TIMEOUT);
            if ran.code != 0 {
                skip(
                    test,
                    &format!(
                        "{} cannot be run as uid 65534: {}",
                        rbuild_bin().display(),
                        ran.stderr_text().trim()
                    ),
                );
                return None;
            }
            Some(SingleId::Nobody)
        } else {
            if !require_tools(test, &["unshare"]) {
                return None;
            }
            if let Err(why) = unshare_works(&["-U", "--map-current-user"]) {
                needs(test, &why);
                return None;
            }
            Some(SingleId::Nested)
        }
    }

    /// Prepares `b` (as nobody: hands its scratch directory to uid 65534).
    fn prepare(&self, b: &Build) {
        if let SingleId::Nobody = self {
            for e in walkdir::WalkDir::new(b.dir.path()).into_iter().flatten() {
                std::os::unix::fs::lchown(e.path(), Some(65534), Some(65534))
                    .expect("chown the scratch directory to nobody");
            }
        }
    }

    /// A command running rbuild with `args` (after the program) this way.
    fn cmd(&self, b: &Build, args: &[std::ffi::OsString]) -> Command {
        let mut cmd = match self {
            SingleId::Nobody => {
                let mut c = rbuild_cmd();
                c.uid(65534).gid(65534);
                c
            }
            SingleId::Nested => {
                let mut c = Command::new("unshare");
                c.args(["-U", "--map-current-user"]).arg(rbuild_bin());
                c.env_remove("SOURCE_DATE_EPOCH")
                    .env_remove("RBUILD_CACHE_DIR")
                    .env_remove("XDG_CACHE_HOME");
                c
            }
        };
        cmd.current_dir(b.dir.path()).args(args);
        cmd
    }
}

#[test]
fn single_id_fallback_runs_steps_as_root_only() {
    let test = "single_id_fallback_runs_steps_as_root_only";
    let Some(mode) = SingleId::get(test) else {
        return;
    };
    let Some(bb) = busybox(test) else {
        return;
    };
    let mut results = Vec::new();
    for name in ["single-id", "single-id-chown", "single-id-user"] {
        let b = Build::case(GROUP, name);
        b.load_busybox(&bb);
        mode.prepare(&b);
        let outs = b.output_args();
        let mut extra = args(&[]);
        extra.extend(outs.iter().map(String::as_str));
        let built = b.run_built(&mut mode.cmd(&b, &b.build_args(&extra)));
        results.push((b, built));
    }
    let (b, ok) = &results[0];
    ok.ran.assert_ok("single-id build");
    let err = ok.ran.stderr_text();
    assert!(
        err.contains("only your own user id is mapped"),
        "rbuild must warn that it maps a single id: {err}"
    );
    let fs = ok.fs();
    assert_eq!(file_content(&fs, "/single").as_deref(), Some("single\n"));
    let id = file_content(&fs, "/id").unwrap_or_default();
    assert!(id.starts_with("uid=0(root) gid=0(root)"), "id: {id}");
    let entry = ok
        .layer_entries()
        .into_iter()
        .flatten()
        .find(|e| e.path == "single")
        .expect("/single in a layer");
    assert_eq!((entry.uid, entry.gid), (0, 0), "owner of /single");
    b.line_of("RUN echo single");
    for (b, built, instruction) in [
        (&results[1].0, &results[1].1, "RUN chown 1000:50 /x"),
        (&results[2].0, &results[2].1, "RUN id"),
    ] {
        let err = built.ran.stderr_text();
        assert_eq!(
            built.ran.code,
            1,
            "`{instruction}` must fail in single-id mode: {}",
            built.ran.summary()
        );
        let line = b.line_of(instruction);
        assert!(
            err.contains(&format!("Dockerfile:{line}")),
            "the error must name Dockerfile:{line}: {err}"
        );
    }
    let err = results[2].1.ran.stderr_text();
    assert!(
        err.contains(r#"cannot run as user "app" (uid 1000, gid 1000): uid 1000 is not mapped: only your own id is mapped"#),
        "USER app in single-id mode must say why it cannot run: {err}"
    );
    // `rbuild info` tries the mapping for real: it reports the single id, and why, under
    // the same conditions (nested: newuidmap refuses; nobody: no sub-id ranges).
    let info_args: Vec<std::ffi::OsString> = vec!["info".into()];
    let text = info_with(&mut mode.cmd(b, &info_args));
    let mapping = info_line(&text, "id mapping:").unwrap_or_default();
    assert!(
        mapping.starts_with("single id only (tried)") && mapping.contains("because"),
        "rbuild info in single-id conditions: {text}"
    );
}

#[test]
fn info_reports_namespaces_mapping_isolation_and_seccomp() {
    let text = info();
    for key in ["user namespaces:", "id mapping:", "isolation:", "seccomp:"] {
        let v = info_line(&text, key).unwrap_or_else(|| panic!("no `{key}` line in:\n{text}"));
        assert!(!v.is_empty(), "`{key}` is empty in:\n{text}");
    }
    let mapping = info_line(&text, "id mapping:").unwrap();
    if is_root() {
        assert!(
            mapping.starts_with("none needed"),
            "as root: id mapping {mapping}"
        );
    } else {
        assert!(
            mapping.starts_with("full") || mapping.starts_with("single id"),
            "unprivileged: id mapping {mapping}"
        );
    }
    let seccomp = info_line(&text, "seccomp:").unwrap();
    assert!(
        seccomp.contains("Docker default profile"),
        "seccomp: {seccomp}"
    );
    let isolation = info_line(&text, "isolation:").unwrap();
    assert!(
        isolation.starts_with("namespaces") || isolation.starts_with("chroot"),
        "isolation: {isolation}"
    );
}

#[test]
fn every_snapshotter_makes_the_same_layers_as_walk() {
    let test = "every_snapshotter_makes_the_same_layers_as_walk";
    let mut names = vec!["deletions", "forms"];
    // USER app, chown to 1000 and to 1:1 need ids a single-id mapping does not have.
    if !single_id_skip(test) {
        names.extend(["users", "owners", "overlay-edge"]);
    }
    for name in names {
        // SOURCE_DATE_EPOCH clamps the times of what the steps made, so the two builds must
        // agree byte for byte — except where a step replaces a directory: whether the new
        // one gets the old inode number is up to the filesystem, and decides between an
        // opaque directory and a whiteout per old entry (the same tree either way).
        let snapshotters = all_snapshotters(test);
        let results: Vec<_> = snapshotters
            .iter()
            .map(|snapshotter| {
                let b = prepared(test, name).expect("the busybox base (checked above)");
                let built = built_with(&b, snapshotter, &[]);
                assert!(b.leftover_temp_files().is_empty(), "temp files left");
                // Per layer, what it adds or changes (whiteouts aside), and the final tree.
                let added: Vec<Vec<String>> = built
                    .layer_entries()
                    .iter()
                    .map(|l| {
                        l.iter()
                            .filter(|e| {
                                !e.path.rsplit('/').next().unwrap_or("").starts_with(".wh.")
                            })
                            .map(|e| format!("{} {:?} {}:{}", e.path, e.kind, e.uid, e.gid))
                            .collect()
                    })
                    .collect();
                (built.image().manifest_digest, added, built.fs().nodes)
            })
            .collect();
        let walk = &results[0];
        for (other, got) in snapshotters[1..].iter().zip(&results[1..]) {
            let overlay = other.contains("overlay");
            // A new hard link to a lower layer's file changes that file's link count and
            // ctime: walk adds it again (with its other names, so the link survives in
            // the layer); overlay, like BuildKit's differ, adds only the new name. The
            // same files either way.
            let relinked = |e: &String| {
                overlay && (e.starts_with("hl-src ") || e.starts_with("hl-within-lower "))
            };
            let expected: Vec<Vec<String>> = walk
                .1
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let last_step = i + 2 == walk.1.len();
                    l.iter()
                        .filter(|e| !(last_step && name == "overlay-edge" && relinked(e)))
                        .cloned()
                        .collect()
                })
                .collect();
            assert_eq!(
                expected, got.1,
                "{name}: {other}'s layers add other entries"
            );
            // Overlay breaks that link (the lower's other names keep the old inode), as
            // any overlay without `index` does, which rootless overlay cannot have.
            let unlinked = |p: &str, n: &common::tree::Node| {
                let mut n = n.clone();
                if name == "overlay-edge" && overlay && p.starts_with("/hl-") {
                    n.link_group = String::new();
                    n.is_hardlink_entry = false;
                }
                n
            };
            let differ: Vec<String> = walk
                .2
                .iter()
                .filter(|(p, n)| got.2.get(*p).map(|g| unlinked(p, g)) != Some(unlinked(p, n)))
                .map(|(p, n)| format!("{p}: {n:?} / {:?}", got.2.get(p)))
                .chain(
                    got.2
                        .keys()
                        .filter(|p| !walk.2.contains_key(*p))
                        .map(|p| format!("{p}: only in {other}")),
                )
                .collect();
            assert!(
                differ.is_empty(),
                "{name}: {other}'s final filesystem differs: {differ:#?}"
            );
            if !["deletions", "overlay-edge"].contains(&name) {
                assert_eq!(
                    walk.0, got.0,
                    "{name}: --snapshotter={other} made another image than walk"
                );
            }
        }
    }

    // A failing step leaves its stage's root alone, and nothing behind.
    let Some(b) = prepared(test, "exit-code") else {
        return;
    };
    let ran = b.build(&args(&["--snapshotter=copy"]));
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(b.leftover_temp_files().is_empty(), "temp files left");
    let ran = b.build(&args(&["--snapshotter=zfs"]));
    assert_eq!(
        ran.code,
        2,
        "an unknown snapshotter is a usage error: {}",
        ran.summary()
    );
}

/// The manifest digest of a build of `dockerfile` in `b`'s store with `snapshotter`, under
/// SOURCE_DATE_EPOCH, and the final filesystem.
fn build_with(
    b: &Build,
    dockerfile: &str,
    snapshotter: &str,
    extra: &[&str],
) -> (String, common::tree::FsTree) {
    std::fs::write(&b.dockerfile, dockerfile).unwrap();
    let built = built_with(b, snapshotter, extra);
    (built.image().manifest_digest, built.fs())
}

/// A build of `b`'s Dockerfile with `snapshotter` under SOURCE_DATE_EPOCH, checked to
/// have succeeded.
fn built_with(b: &Build, snapshotter: &str, extra: &[&str]) -> common::build::Built {
    let mut all: Vec<String> = vec!["--snapshotter".into(), snapshotter.into()];
    all.extend(extra.iter().map(|s| s.to_string()));
    all.extend(b.output_args());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut cmd = b.build_cmd(&args(&all));
    cmd.env("SOURCE_DATE_EPOCH", "1700000000");
    let built = b.run_built(&mut cmd);
    built
        .ran
        .assert_ok(&format!("build with --snapshotter={snapshotter}"));
    built
}

#[test]
fn overlay_stacks_200_layers_and_starts_from_a_cache_hit() {
    let test = "overlay_stacks_200_layers_and_starts_from_a_cache_hit";
    let Some(b) = prepared(test, "forms") else {
        return;
    };
    // A step in the middle of a stage, on the snapshot the first build left in the cache.
    let first = "FROM busybox\nRUN echo 1 > /a\nRUN echo 2 > /b\n";
    let second = "FROM busybox\nRUN echo 1 > /a\nRUN echo 3 > /b\n";
    build_with(&b, first, "overlay", &[]);
    let (on_hit, _) = build_with(&b, second, "overlay", &[]);
    let w = prepared(test, "forms").unwrap();
    let (walked, _) = build_with(&w, second, "walk", &[]);
    assert_eq!(
        on_hit, walked,
        "a step after a cache hit made another layer than walk"
    );

    // A base of 201 layers: more lower directories than a mount option of absolute paths
    // could name.
    let mut tall = String::from("FROM busybox\n");
    for i in 1..=200 {
        tall.push_str(&format!("RUN echo {i} > /l{i}\n"));
    }
    for builder in [&b, &w] {
        build_with(builder, &tall, "overlay", &["-o", "type=image,name=tall:1"]);
    }
    let on_tall = "FROM tall:1\nRUN cat /l1 /l200 > /both && rm /l100\n";
    let (over, fs) = build_with(&b, on_tall, "overlay", &[]);
    assert_eq!(file_content(&fs, "/both").as_deref(), Some("1\n200\n"));
    assert!(file_content(&fs, "/l100").is_none());
    let (walked, _) = build_with(&w, on_tall, "walk", &[]);
    assert_eq!(
        over, walked,
        "201 lowers: overlay and walk made other images"
    );
    // fuse-overlayfs keeps snapshots of its own: the 201 layers are unpacked again, each
    // through a fuse-overlayfs mount of the ones below, and then stacked.
    if fuse_usable(test) {
        let (fused, fs) = build_with(&b, on_tall, "fuse-overlayfs", &[]);
        assert_eq!(file_content(&fs, "/both").as_deref(), Some("1\n200\n"));
        assert_eq!(
            fused, walked,
            "201 lowers: fuse-overlayfs and walk made other images"
        );
        let (fused, _) = build_with(&b, second, "fuse-overlayfs", &[]);
        assert_eq!(
            fused, on_hit,
            "fuse-overlayfs after a cache hit made another layer than overlay"
        );
    }
    assert!(b.leftover_temp_files().is_empty(), "temp files left");
    assert!(
        mounts_under(&b.cache).is_empty(),
        "mounts left: {:?}",
        mounts_under(&b.cache)
    );
}

/// A tar holding `capfile`, an executable with file capabilities (cap_net_bind_service,
/// effective: a v2 `security.capability` value).
fn tar_with_capabilities() -> (Vec<u8>, Vec<u8>) {
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // revision 2, effective
    cap.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted: CAP_NET_BIND_SERVICE
    cap.extend_from_slice(&[0u8; 12]); // inheritable, and the upper 32 bits
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("SCHILY.xattr.security.capability", cap.as_slice())])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut h, "capfile", &b"x\n"[..]).unwrap();
    (builder.into_inner().unwrap(), cap)
}

#[test]
fn file_capabilities_survive_every_snapshotter() {
    let test = "file_capabilities_survive_every_snapshotter";
    if busybox(test).is_none() {
        return;
    }
    let (tar, cap) = tar_with_capabilities();
    let dockerfile = "FROM busybox\nADD caps.tar /\nRUN chmod 0750 /capfile && echo y > /other\n";
    let mut digests = Vec::new();
    for snapshotter in all_snapshotters(test) {
        let b = prepared(test, "forms").unwrap();
        std::fs::write(b.ctx.join("caps.tar"), &tar).unwrap();
        std::fs::write(&b.dockerfile, dockerfile).unwrap();
        let built = built_with(&b, snapshotter, &[]);
        let digest = built.image().manifest_digest;
        let built_layers = built.layer_entries();
        // The ADD layer, then the RUN layer that copied the file up and changed its mode.
        for (i, layer) in built_layers.iter().rev().take(2).enumerate() {
            let item = layer
                .iter()
                .find(|e| e.path == "capfile")
                .unwrap_or_else(|| panic!("{snapshotter}: no capfile in layer -{i}"));
            assert_eq!(
                item.xattrs,
                vec![("security.capability".to_string(), cap.clone())],
                "{snapshotter}: layer -{i} lost or changed the file's capabilities"
            );
        }
        digests.push((snapshotter, digest));
    }
    for (s, d) in &digests[1..] {
        assert_eq!(*d, digests[0].1, "{s} made another image than walk");
    }
}

#[test]
fn fuse_overlayfs_missing_or_chosen_by_auto() {
    let test = "fuse_overlayfs_missing_or_chosen_by_auto";
    let Some(b) = prepared(test, "forms") else {
        return;
    };
    std::fs::write(&b.dockerfile, "FROM busybox\nRUN echo a > /a\n").unwrap();
    // Not on PATH: the build fails saying what to install (newuidmap and newgidmap stay
    // reachable).
    let bin = common::TestDir::new(test);
    for tool in ["newuidmap", "newgidmap"] {
        if let Some(p) = common::find_tool(tool) {
            std::os::unix::fs::symlink(p, bin.path().join(tool)).unwrap();
        }
    }
    let mut cmd = b.build_cmd(&args(&["--snapshotter=fuse-overlayfs"]));
    cmd.env("PATH", bin.path());
    let ran = run_cmd(&mut cmd, None, common::TOOL_TIMEOUT);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text()
            .contains("fuse-overlayfs is not on PATH: install it"),
        "{}",
        ran.summary()
    );
    // auto falls back to fuse-overlayfs where the kernel overlay cannot hold upper
    // directories: a cache directory on overlayfs. Mounting that overlay needs root.
    if !is_root() {
        skip(
            test,
            "mounting an overlay for the cache directory needs root",
        );
        return;
    }
    if !fuse_usable(test) {
        return;
    }
    let t = common::TestDir::new(test);
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(t.path().join(d)).unwrap();
    }
    let p = |n: &str| t.path().join(n).display().to_string();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("lower"),
        p("upper"),
        p("work")
    );
    let mut mount = Command::new("mount");
    mount.args(["-t", "overlay", "overlay", "-o", &options, &p("merged")]);
    run_cmd(&mut mount, None, common::TOOL_TIMEOUT)
        .assert_ok("mount an overlay for the cache directory");
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(p("merged"));
    let mut on_overlay = prepared(test, "forms").unwrap();
    on_overlay.cache = t.path().join("merged/cache");
    on_overlay.load_busybox(&busybox(test).unwrap());
    std::fs::write(&on_overlay.dockerfile, "FROM busybox\nRUN echo a > /a\n").unwrap();
    let built = on_overlay.build_ok(&args(&["--snapshotter=auto"]));
    assert_eq!(file_content(&built.fs(), "/a").as_deref(), Some("a\n"));
    let mut cmd = rbuild_cmd();
    cmd.args(["info", "--cache-dir"]).arg(&on_overlay.cache);
    let text = info_with(&mut cmd);
    let kernel = info_line(&text, "overlay probe:").expect("an overlay probe line");
    assert!(kernel.contains("is on overlayfs"), "{kernel}");
    let fuse = info_line(&text, "fuse-overlayfs probe:").expect("a fuse-overlayfs line");
    assert!(fuse.starts_with("usable"), "{fuse}");
}

#[test]
fn info_shows_the_overlay_probe_of_the_cache_directory() {
    let test = "info_shows_the_overlay_probe_of_the_cache_directory";
    let Some(b) = prepared(test, "forms") else {
        return;
    };
    let probe = || {
        let mut cmd = rbuild_cmd();
        cmd.env("RBUILD_CACHE_DIR", &b.cache).arg("info");
        info_line(&info_with(&mut cmd), "overlay probe:").expect("an overlay probe line")
    };
    assert!(probe().contains("not run yet"), "{}", probe());
    b.build_ok(&args(&["--snapshotter=auto"]));
    let line = probe();
    // These machines' kernels mount overlay in a user namespace; where the build had to
    // fall back, the line must say why.
    assert!(
        line.starts_with("usable in this cache directory (kernel "),
        "after a build: {line}"
    );
}

#[test]
fn run_mounts_bind_cache_and_tmpfs() {
    let test = "run_mounts_bind_cache_and_tmpfs";
    // The cache is made for uid 1000, which a single-id mapping cannot give files to.
    if single_id_skip(test) {
        return;
    }
    let Some(b) = prepared(test, "mounts") else {
        return;
    };
    let built = b.build_ok(&args(&[]));
    let fs = built.fs();
    let seen = |name: &str| file_content(&fs, &format!("/seen/{name}")).unwrap_or_default();
    assert_eq!(seen("bind"), "hello from the context\n");
    assert_eq!(
        seen("bind-ls"),
        ".dockerignore\nsrc\n",
        "the context as the build sees it: without what .dockerignore leaves out"
    );
    assert_eq!(seen("bind-ro"), "read-only\n");
    assert_eq!(seen("from-stage"), "from-the-data-stage\n");
    assert_eq!(seen("rw"), "changed\n");
    assert_eq!(
        seen("rw-after"),
        "hello from the context\n",
        "a writable bind's changes are thrown away"
    );
    assert_eq!(seen("cache-1"), "1\n");
    assert_eq!(seen("cache-owner"), "1000 750\n");
    assert_eq!(
        seen("cache-2"),
        "1\n",
        "the same cache, by id, at another target"
    );
    assert_eq!(seen("tmpfs"), "1024\n", "a 1 MiB tmpfs");
    assert_eq!(seen("nested"), "f\n", "a cache mounted inside the context");
    assert_eq!(
        seen("nested-link"),
        "f\n",
        "the same below a symlinked target"
    );
    assert_eq!(
        seen("nested-parent"),
        ".dockerignore\nprivate\nsrc\n",
        "only the mount point shows of the ignored directory"
    );
    let root_after = seen("root-after");
    for target in ["ctx", "data", "src", "elsewhere", "scratch", "app"] {
        assert!(
            !root_after.lines().any(|l| l == target),
            "the mount point /{target} stayed in the root: {root_after}"
        );
    }
    // No layer holds a mount point or what went through a mount.
    for entry in built.layer_entries().iter().flatten() {
        let top = entry.path.split('/').next().unwrap_or_default();
        assert!(
            !["ctx", "data", "src", "elsewhere", "scratch", "app"].contains(&top)
                && !entry.path.starts_with("var/cache/counter"),
            "a layer holds {}",
            entry.path
        );
    }
    assert!(b.leftover_temp_files().is_empty(), "temp files left");

    // The cache outlives the build (--no-cache: the steps run again, the mount's cache
    // stays).
    let again = b.build_ok(&args(&["--no-cache"]));
    assert_eq!(
        file_content(&again.fs(), "/seen/cache-1").as_deref(),
        Some("2\n"),
        "the second build sees the first one's cache"
    );
}

#[test]
fn run_mount_secrets_and_ssh_never_reach_the_image() {
    let test = "run_mount_secrets_and_ssh_never_reach_the_image";
    if single_id_skip(test) {
        return;
    }
    let Some(b) = prepared(test, "mount-secrets") else {
        return;
    };
    let value = "s3cr3t-8d1f-value";
    let secret = b.dir.join("token");
    std::fs::write(&secret, value).expect("write the secret");
    let agent = b.dir.join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).expect("an agent socket");
    let secret_arg = format!("id=token,src={}", secret.display());
    let ssh_arg = format!("default={}", agent.display());
    let built = b.build_ok(&args(&["--secret", &secret_arg, "--ssh", &ssh_arg]));
    let fs = built.fs();
    let read = |p: &str| file_content(&fs, p).unwrap_or_default();
    assert_eq!(read("/secret-size"), format!("{}\n", value.len()));
    assert_eq!(read("/secret-mode"), "400 0\n");
    assert_eq!(read("/secret-target"), "440 1000\n");
    assert_eq!(read("/secret-env-length"), format!("{}\n", value.len()));
    assert_eq!(read("/secret-optional"), "skipped\n");
    assert_eq!(read("/ssh-sock"), "/run/buildkit/ssh_agent.0\n");
    let root_after = read("/root-after");
    assert!(
        !root_after.lines().any(|l| l == "run"),
        "the mount points under /run stayed: {root_after}"
    );
    assert!(
        !fs.nodes.contains_key("/etc/app/token"),
        "the secret's mount point stayed"
    );
    // The value is in no blob of the image: layers (uncompressed), config, manifest.
    let image = built.image();
    let mut blobs: Vec<Vec<u8>> = image
        .layers
        .iter()
        .map(|l| common::tree::decompress(l).expect("a readable layer"))
        .collect();
    blobs.push(image.config_bytes.clone());
    blobs.push(image.manifest.to_string().into_bytes());
    for blob in &blobs {
        assert!(
            !blob.windows(value.len()).any(|w| w == value.as_bytes()),
            "the secret's value is in the image"
        );
    }
    assert!(b.leftover_temp_files().is_empty(), "temp files left");

    // A required secret that was not given: the line and what to pass.
    std::fs::write(
        &b.dockerfile,
        "FROM busybox\nRUN --mount=type=secret,id=npmrc,required true\n",
    )
    .expect("rewrite the Dockerfile");
    let ran = b.build(&args(&[]));
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text()
            .contains("Dockerfile:2: mount at /run/secrets/npmrc: secret \"npmrc\" not given: pass --secret id=npmrc,src=FILE"),
        "{}",
        ran.summary()
    );
    assert!(b.leftover_temp_files().is_empty(), "temp files left");
}

#[test]
fn generated_etc_files_are_per_step_and_never_in_a_layer() {
    let test = "generated_etc_files_are_per_step_and_never_in_a_layer";
    let Some(b) = prepared(test, "etc-files") else {
        return;
    };
    let built = b.build_ok(&args(&[]));
    let fs = built.fs();
    let read = |p: &str| file_content(&fs, p).unwrap_or_default();
    assert_eq!(read("/hostname-seen"), "rbuild\n");
    assert_eq!(read("/etc-hostname-seen"), "rbuild\n");
    let hosts = read("/hosts-seen");
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(
        !hosts.contains("changed-by-a-step"),
        "a step's change to /etc/hosts reached the next step: {hosts}"
    );
    assert_eq!(
        read("/resolv-none"),
        "",
        "--network=none has no name servers"
    );
    assert!(
        !read("/dev-seen").contains(".etc"),
        "the staging of the /etc files shows in /dev: {}",
        read("/dev-seen")
    );
    for entry in built.layer_entries().iter().flatten() {
        assert!(
            !matches!(
                entry.path.as_str(),
                "etc/hosts" | "etc/hostname" | "etc/resolv.conf"
            ),
            "a layer holds {}",
            entry.path
        );
    }
}

#[test]
fn device_nodes_made_in_a_step_do_not_open() {
    let test = "device_nodes_made_in_a_step_do_not_open";
    let Some(b) = prepared(test, "devices") else {
        return;
    };
    let fs = b.build_ok(&args(&[])).fs();
    assert_eq!(file_content(&fs, "/in-root").as_deref(), Some("blocked\n"));
    assert_eq!(file_content(&fs, "/in-dev").as_deref(), Some("blocked\n"));
    assert_eq!(
        file_content(&fs, "/dev-null-works").as_deref(),
        Some("usable\n"),
        "the devices rbuild binds still work"
    );
}

#[test]
fn independent_stages_run_at_once_and_a_failure_stops_the_others() {
    let test = "independent_stages_run_at_once_and_a_failure_stops_the_others";
    let Some(b) = prepared(test, "forms") else {
        return;
    };
    // Three independent stages of one 3-second step each, and a final stage copying from
    // all three: the three steps overlap (each starts before any ends), whatever order
    // they finish in.
    let mut df = String::new();
    for s in ["a", "b", "c"] {
        df.push_str(&format!(
            "FROM busybox AS {s}\nRUN sleep 3 && echo {s} > /{s}\n"
        ));
    }
    df.push_str("FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\nCOPY --from=c /c /c\n");
    std::fs::write(&b.dockerfile, &df).unwrap();
    let built = b.build_ok(&args(&["--no-cache"]));
    let err = built.ran.stderr_text();
    let lines: Vec<&str> = err.lines().collect();
    let id_of = |stage: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("[{stage} 2/2] RUN")))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("no step of stage {stage}: {err}"))
            .to_string()
    };
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?}: {err}"))
    };
    let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| id_of(s)).collect();
    let last_start = ids.iter().map(|id| at(&format!("{id} ["))).max().unwrap();
    let first_end = ids
        .iter()
        .map(|id| at(&format!("{id} DONE")))
        .min()
        .unwrap();
    assert!(
        last_start < first_end,
        "the three stages did not overlap:\n{err}"
    );
    let fs = built.fs();
    for s in ["a", "b", "c"] {
        assert_eq!(
            file_content(&fs, &format!("/{s}")).as_deref(),
            Some(format!("{s}\n").as_str())
        );
    }
    // With --jobs 1 they run one after another.
    let one = b.build(&args(&["--no-cache", "--jobs", "1"]));
    one.assert_ok("--jobs 1");
    let err1 = one.stderr_text();
    let pos = |pat: &str| err1.find(pat).unwrap_or_else(|| panic!("{pat}: {err1}"));
    // Numbered in start order: the first RUN to start ended before the next started.
    let first_run = ["a", "b", "c"]
        .iter()
        .map(|s| pos(&format!("[{s} 2/2] RUN")))
        .min()
        .unwrap();
    let first_id = err1[..first_run].rsplit('\n').next().unwrap().trim_end();
    let second_run = ["a", "b", "c"]
        .iter()
        .map(|s| pos(&format!("[{s} 2/2] RUN")))
        .filter(|&p| p > first_run)
        .min()
        .unwrap();
    assert!(
        second_run > pos(&format!("{first_id} DONE")),
        "--jobs 1 overlapped:\n{err1}"
    );

    // A failing stage stops one still running beside it, promptly and cleanly.
    std::fs::write(
        &b.dockerfile,
        "FROM busybox AS slow\nRUN sleep 60\nFROM busybox AS bad\nRUN sleep 1 && exit 3\nFROM busybox\nCOPY --from=slow / /s\nCOPY --from=bad / /b\n",
    )
    .unwrap();
    let started = Instant::now();
    let ran = b.build(&args(&["--no-cache"]));
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the slow stage was not stopped: {:?}",
        started.elapsed()
    );
    assert!(
        ran.stderr_text().contains("exit code: 3") || ran.stderr_text().contains("code 3"),
        "the failure reported is the failing stage's: {}",
        ran.summary()
    );
    assert!(b.leftover_temp_files().is_empty(), "temp files left");
    assert!(mounts_under(&b.cache).is_empty(), "mounts left");
}

#[test]
fn root_of_a_one_id_user_namespace_is_single_id() {
    // `unshare -Ur`: rbuild is root, but only one id is mapped, so chown to others fails;
    // rbuild info must say so rather than "none needed".
    let test = "root_of_a_one_id_user_namespace_is_single_id";
    if !require_tools(test, &["unshare"]) {
        return;
    }
    if let Err(why) = unshare_works(&["-Ur"]) {
        needs(test, &why);
        return;
    }
    let mut cmd = Command::new("unshare");
    cmd.arg("-Ur").arg(rbuild_bin()).arg("info");
    let text = info_with(&mut cmd);
    let line = info_line(&text, "id mapping:").expect("an id mapping line");
    assert!(
        line.contains("single id only") && line.contains("maps one id"),
        "{line}"
    );
}

#[test]
fn add_host_ulimit_and_shm_size_reach_run_steps() {
    let test = "add_host_ulimit_and_shm_size_reach_run_steps";
    let Some(b) = prepared(test, "forms") else {
        return;
    };
    std::fs::write(
        &b.dockerfile,
        "FROM busybox\nRUN cat /etc/hosts > /hosts && ulimit -n > /nofile && ulimit -Hn > /nofile-hard && df -k /dev/shm | tail -n 1 > /shm\n",
    )
    .unwrap();
    let fs = b
        .build_ok(&args(&[
            "--add-host",
            "db.internal:10.1.2.3",
            "--ulimit",
            "nofile=321:654",
            "--shm-size",
            "8m",
        ]))
        .fs();
    let shm = file_content(&fs, "/shm").unwrap_or_default();
    assert_eq!(
        shm.split_whitespace().nth(1),
        Some("8192"),
        "--shm-size 8m: {shm}"
    );
    let hosts = file_content(&fs, "/hosts").unwrap_or_default();
    assert!(
        hosts.contains("10.1.2.3\tdb.internal"),
        "/etc/hosts: {hosts}"
    );
    assert_eq!(file_content(&fs, "/nofile").as_deref(), Some("321\n"));
    assert_eq!(file_content(&fs, "/nofile-hard").as_deref(), Some("654\n"));
    let ran = b.build(&args(&["--ulimit", "bogus=1"]));
    assert_eq!(ran.code, 2, "{}", ran.summary());
}

#[test]
fn the_walk_snapshotter_is_linear_in_depth() {
    // The walk after a RUN goes by descriptors: a tree 1,900 directories deep costs what a
    // flat one of as many entries does. (Walking by path resolved every path from the
    // top, quadratic in depth: 0.5 s for each `RUN true` at 2,000 levels.)
    let test = "the_walk_snapshotter_is_linear_in_depth";
    let Some(b) = prepared(test, "forms") else {
        return;
    };
    // Seconds of the fastest of the three `RUN true` steps after `make`.
    let cost = |make: &str| {
        std::fs::write(
            &b.dockerfile,
            format!("FROM busybox\nRUN {make}\nRUN true\nRUN true #2\nRUN true #3\n"),
        )
        .unwrap();
        let built = b.build_ok(&args(&["--snapshotter", "walk", "--no-cache"]));
        let err = built.ran.stderr_text();
        let ids: Vec<String> = err
            .lines()
            .filter(|l| l.contains("] RUN true"))
            .filter_map(|l| l.split(' ').next().map(String::from))
            .collect();
        assert_eq!(ids.len(), 3, "{err}");
        ids.iter()
            .map(|id| {
                let done = err
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{id} DONE ")))
                    .unwrap_or_else(|| panic!("{id} DONE: {err}"));
                done.trim_end_matches('s').parse::<f64>().unwrap()
            })
            .fold(f64::MAX, f64::min)
    };
    let deep = cost("mkdir -p $(for i in $(seq 1900); do printf d/; done)");
    let flat = cost("mkdir -p /w && cd /w && mkdir $(seq 1900)");
    assert!(
        deep < flat + 0.15,
        "RUN true took {deep:.2}s in a deep tree, {flat:.2}s in a flat one"
    );
}

#[test]
fn an_image_whose_passwd_is_a_fifo_fails_at_once() {
    // A base image (here an earlier stage) may hold anything at /etc/passwd. Reading a
    // fifo there would wait forever for a writer; it is refused like any non-file, and the
    // named user is then unknown.
    let test = "an_image_whose_passwd_is_a_fifo_fails_at_once";
    let Some(b) = prepared(test, "forms") else {
        return;
    };
    std::fs::write(
        &b.dockerfile,
        "FROM busybox AS evil\nRUN rm /etc/passwd && mkfifo /etc/passwd\n\
         FROM evil\nUSER app\nRUN true\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let ran = b.build(&args(&[]));
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(ran.stderr_text().contains("app"), "{}", ran.summary());
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
