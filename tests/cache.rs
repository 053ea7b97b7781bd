//! The build cache end to end, on the generated busybox base: warm rebuilds that run
//! nothing, what a change invalidates, `--no-cache(-filter)`, LRU eviction with base images
//! last, `du` against `du -sb`, `prune`, `image rm`, many processes on one cache directory,
//! SIGKILL at random moments (40 of them: the store ends no larger than after one clean
//! build), and a full disk.
//!
//! `scripts/test.sh` runs these as root and again as the unprivileged user rbuild-tester.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::build::{busybox, skip, Build, Built};
use common::{is_root, rbuild_cmd, require_tools, run_cmd, Ran, RBUILD_TIMEOUT, TOOL_TIMEOUT};

/// A scratch build with busybox loaded, `Dockerfile` and context `files` written.
fn setup(test: &str, dockerfile: &str, files: &[(&str, &str)]) -> Option<Build> {
    let bb = busybox(test)?;
    let b = Build::scratch(test);
    b.load_busybox(&bb);
    write_case(&b, dockerfile, files);
    Some(b)
}

/// `len` bytes that gzip cannot shrink (xorshift; the same every time).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_case(b: &Build, dockerfile: &str, files: &[(&str, &str)]) {
    std::fs::write(&b.dockerfile, dockerfile).expect("write the Dockerfile");
    for (name, content) in files {
        let p = b.ctx.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).expect("write a context file");
    }
}

fn build(b: &Build, extra: &[&str]) -> Built {
    let mut args = vec!["--pull=never"];
    args.extend_from_slice(extra);
    b.build_ok(&args)
}

/// The steps of a plain-progress log, in order, with whether each was `CACHED`.
fn steps(ran: &Ran) -> Vec<(String, bool)> {
    let err = ran.stderr_text();
    let mut titles: BTreeMap<String, String> = BTreeMap::new();
    let mut order = Vec::new();
    let mut cached: BTreeMap<String, bool> = BTreeMap::new();
    for line in err.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, text)) = rest.split_once(' ') else {
            continue;
        };
        // The Dockerfile's steps after FROM: not `[internal] ...`, not the FROM itself.
        let op = text.split("] ").nth(1).unwrap_or("");
        if text.starts_with('[') && !text.starts_with("[internal]") && !op.starts_with("FROM ") {
            titles.insert(id.to_string(), text.to_string());
            order.push(id.to_string());
        } else if text == "CACHED" {
            cached.insert(id.to_string(), true);
        }
    }
    order
        .iter()
        .map(|id| (titles[id].clone(), cached.contains_key(id)))
        .collect()
}

/// The titles of the steps that made layers (RUN, COPY, ADD, WORKDIR) and ran (were not
/// cached).
fn ran_steps(ran: &Ran) -> Vec<String> {
    steps(ran)
        .into_iter()
        .filter(|(t, c)| {
            let op = t.split("] ").nth(1).unwrap_or("");
            !c && ["RUN", "COPY", "ADD", "WORKDIR"]
                .iter()
                .any(|k| op.starts_with(k))
        })
        .map(|(t, _)| t)
        .collect()
}

fn layer_digests(built: &Built) -> Vec<String> {
    built.image().manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn rbuild_in(b: &Build, args: &[&str]) -> Ran {
    let mut cmd = rbuild_cmd();
    cmd.current_dir(b.dir.path())
        .args(&args[..1])
        .arg("--cache-dir")
        .arg(&b.cache)
        .args(&args[1..]);
    run_cmd(&mut cmd, None, RBUILD_TIMEOUT)
}

fn cache_check_is_clean(b: &Build) {
    let ran = rbuild_in(b, &["cache", "check"]);
    ran.assert_ok("rbuild cache check");
    assert!(
        ran.stdout_text().contains(": clean"),
        "cache check: {}",
        ran.stdout_text()
    );
}

const WARM: &str = "FROM busybox
COPY a.txt /a.txt
RUN cat /proc/sys/kernel/random/uuid > /stamp
WORKDIR /work
RUN echo second > /work/second
";

#[test]
fn a_warm_rebuild_runs_nothing_and_no_cache_runs_everything() {
    let test = "a_warm_rebuild_runs_nothing_and_no_cache_runs_everything";
    let Some(b) = setup(test, WARM, &[("a.txt", "a\n")]) else {
        return;
    };
    // Each build overwrites the outputs: what is compared is read right after it.
    let stamp = |built: &Built| common::build::file_content(&built.fs(), "/stamp").unwrap();
    let first = build(&b, &[]);
    assert_eq!(ran_steps(&first.ran).len(), 4, "{}", first.ran.summary());
    assert!(steps(&first.ran).iter().all(|(_, c)| !c));
    let (first_layers, first_stamp) = (layer_digests(&first), stamp(&first));
    let second = build(&b, &[]);
    let all = steps(&second.ran);
    assert_eq!(all.len(), 4);
    assert!(
        all.iter().all(|(_, c)| *c),
        "a warm rebuild ran steps: {all:?}"
    );
    assert_eq!(
        layer_digests(&second),
        first_layers,
        "the stamp layer must be the first build's"
    );
    assert_eq!(stamp(&second), first_stamp);

    let third = build(&b, &["--no-cache"]);
    assert_eq!(ran_steps(&third.ran).len(), 4, "--no-cache reran nothing");
    let third_layers = layer_digests(&third);
    assert_ne!(
        stamp(&third),
        first_stamp,
        "--no-cache must run the RUN again (a new stamp)"
    );
    assert_ne!(third_layers, first_layers);
    // The newest result wins.
    let fourth = build(&b, &[]);
    assert_eq!(layer_digests(&fourth), third_layers);
    assert!(b.leftover_temp_files().is_empty(), "temp files left");
    cache_check_is_clean(&b);
}

const CHAIN: &str = "FROM busybox
COPY a.txt /a.txt
RUN cat /proc/sys/kernel/random/uuid > /t1
COPY b.txt /b.txt
ARG V=0
RUN echo $V > /v && cat /proc/sys/kernel/random/uuid > /t2
RUN cat /proc/sys/kernel/random/uuid > /t3
";

#[test]
fn a_change_rebuilds_only_the_steps_after_it() {
    let test = "a_change_rebuilds_only_the_steps_after_it";
    let Some(b) = setup(test, CHAIN, &[("a.txt", "a\n"), ("b.txt", "b\n")]) else {
        return;
    };
    build(&b, &[]);
    // mtime only: still a hit.
    filetime::set_file_mtime(
        b.ctx.join("a.txt"),
        filetime::FileTime::from_unix_time(1_000_000, 0),
    )
    .unwrap();
    let touched = build(&b, &[]);
    assert!(
        ran_steps(&touched.ran).is_empty(),
        "a touched file missed: {:?}",
        ran_steps(&touched.ran)
    );
    let touched_layers = layer_digests(&touched);
    // Another content for b.txt: the steps from its COPY on.
    std::fs::write(b.ctx.join("b.txt"), "B\n").unwrap();
    let changed = build(&b, &[]);
    let ran = ran_steps(&changed.ran);
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert!(ran[0].contains("COPY b.txt"), "{ran:?}");
    let changed_layers = layer_digests(&changed);
    let n = changed_layers.len();
    assert_eq!(
        touched_layers[..n - 3],
        changed_layers[..n - 3],
        "the steps before the change keep their layers"
    );
    assert_ne!(touched_layers[n - 3..], changed_layers[n - 3..]);
    // A changed build arg: from the first step that has it in scope.
    let arg = build(&b, &["--build-arg", "V=1"]);
    let ran = ran_steps(&arg.ran);
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(ran[0].contains("RUN echo $V"), "{ran:?}");
    // Back to the earlier value: all cached again (the cache keeps probing after a miss).
    let back = build(&b, &[]);
    assert!(
        ran_steps(&back.ran).is_empty(),
        "{:?}",
        ran_steps(&back.ran)
    );
    assert_eq!(layer_digests(&back), changed_layers);
}

const TWO_STAGES: &str = "FROM busybox AS one
RUN cat /proc/sys/kernel/random/uuid > /one
FROM busybox AS two
COPY --from=one /one /one
RUN cat /proc/sys/kernel/random/uuid > /two
";

#[test]
fn no_cache_filter_reruns_the_named_stages_only() {
    let test = "no_cache_filter_reruns_the_named_stages_only";
    let Some(b) = setup(test, TWO_STAGES, &[]) else {
        return;
    };
    build(&b, &[]);
    let again = build(&b, &["--no-cache-filter", "two"]);
    let all = steps(&again.ran);
    for (title, cached) in &all {
        assert_eq!(
            *cached,
            title.starts_with("[one"),
            "with --no-cache-filter two: {all:?}"
        );
    }
    let ran = b.build(&["--pull=never", "--no-cache-filter", "three"]);
    assert_eq!(ran.code, 2, "{}", ran.summary());
    assert!(ran.stderr_text().contains("no stage named \"three\""));
}

/// A Dockerfile that makes an incompressible layer of `mb` MB unique to `name`.
fn sized(name: &str, mb: usize) -> String {
    format!(
        "FROM busybox\nRUN head -c {} /dev/urandom > /{name}\n",
        mb * 1_000_000
    )
}

/// `du -sb DIR` in bytes.
fn du_sb(dir: &Path) -> u64 {
    let ran = run_cmd(Command::new("du").arg("-sb").arg(dir), None, TOOL_TIMEOUT);
    ran.assert_ok("du -sb");
    ran.stdout_text()
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du prints a number")
}

/// The `Total:` of `rbuild du`, in bytes (decimal units, as printed).
fn rbuild_du_total(b: &Build) -> u64 {
    let ran = rbuild_in(b, &["du"]);
    ran.assert_ok("rbuild du");
    let text = ran.stdout_text();
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("Total:"))
        .unwrap_or_else(|| panic!("no Total: in {text}"))
        .trim();
    let split = total
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap();
    let (n, unit) = total.split_at(split);
    let mult = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => panic!("unit {other}"),
    };
    (n.parse::<f64>().unwrap() * mult) as u64
}

#[test]
fn least_recently_used_goes_first_and_base_images_last() {
    let test = "least_recently_used_goes_first_and_base_images_last";
    let Some(b) = setup(test, "", &[]) else {
        return;
    };
    let build_named = |name: &str, extra: &[&str]| -> Ran {
        write_case(&b, &sized(name, 3), &[]);
        let mut args = vec!["--pull=never"];
        args.extend_from_slice(extra);
        let ran = b.build(&args);
        ran.assert_ok(name);
        // Last-used times are in seconds: keep the builds apart.
        std::thread::sleep(Duration::from_millis(1100));
        ran
    };
    for name in ["a", "b", "c"] {
        build_named(name, &[]);
    }
    assert!(
        ran_steps(&build_named("a", &[])).is_empty(),
        "rebuilding a must be all cached"
    );
    let used = du_sb(&b.cache);
    let listed = rbuild_du_total(&b);
    let off = (used as f64 - listed as f64).abs() / used as f64;
    assert!(
        off < 0.05,
        "rbuild du says {listed} bytes, du -sb {used}: {:.1}% apart",
        off * 100.0
    );
    // With d's 3 MB in, room for all but b's and c's: the least recently used two.
    let limit = format!("{}", used - 1_500_000);
    build_named("d", &["--max-used-space", &limit]);
    assert!(
        ran_steps(&build_named("a", &[])).is_empty(),
        "a (used recently) was evicted"
    );
    assert_eq!(
        ran_steps(&build_named("b", &[])).len(),
        1,
        "b (least recently used) was kept"
    );
    cache_check_is_clean(&b);

    // prune: everything but the base image; --all: the base image too.
    rbuild_in(&b, &["prune", "--force"]).assert_ok("prune");
    let ls = b.image_cmd("ls", &["-q"]);
    assert!(
        ls.stdout_text().contains("busybox"),
        "prune without --all removed the base image: {}",
        ls.stdout_text()
    );
    assert_eq!(
        ran_steps(&build_named("a", &[])).len(),
        1,
        "prune left a's step in the cache"
    );
    rbuild_in(&b, &["prune", "--force", "--all"]).assert_ok("prune --all");
    let ls = b.image_cmd("ls", &["-q"]);
    assert!(ls.stdout_text().trim().is_empty(), "{}", ls.stdout_text());
    let left = rbuild_du_total(&b);
    assert!(left < 1_500_000, "prune --all left {left} bytes");
    cache_check_is_clean(&b);
}

#[test]
fn image_rm_frees_what_only_that_image_held() {
    let test = "image_rm_frees_what_only_that_image_held";
    let Some(b) = setup(test, &sized("kept", 2), &[]) else {
        return;
    };
    let built = build(&b, &["-o", "type=image,name=mine:1"]);
    let layers = layer_digests(&built);
    let own = layers.last().expect("a layer").clone();
    let blob = |d: &str| {
        b.cache
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    assert!(blob(&own).is_file());
    // The step records hold the layer, and so does the name: pruning steps keeps it.
    rbuild_in(&b, &["prune", "--force", "--filter", "type=regular"]).assert_ok("prune");
    assert!(
        blob(&own).is_file(),
        "the named image lost its layer to a prune of steps"
    );
    let before = rbuild_du_total(&b);
    b.image_cmd("rm", &["mine:1"]).assert_ok("image rm");
    rbuild_in(&b, &["prune", "--force"]).assert_ok("prune");
    assert!(
        !blob(&own).exists(),
        "image rm + prune kept the image's own layer"
    );
    for base_layer in &layers[..layers.len() - 1] {
        assert!(blob(base_layer).is_file(), "the base image lost a layer");
    }
    let freed = before.saturating_sub(rbuild_du_total(&b));
    assert!(
        freed > 1_900_000,
        "image rm + prune freed only {freed} bytes"
    );
    cache_check_is_clean(&b);
}

#[test]
fn cache_mounts_are_records_du_shows_and_prune_removes() {
    let test = "cache_mounts_are_records_du_shows_and_prune_removes";
    let df = "FROM busybox\nRUN --mount=type=cache,target=/c,id=counter \\\n    echo $(( $(cat /c/n 2>/dev/null || echo 0) + 1 )) > /c/n && cp /c/n /seen\n";
    let Some(b) = setup(test, df, &[]) else {
        return;
    };
    let seen = |built: &Built| common::build::file_content(&built.fs(), "/seen").unwrap();
    assert_eq!(seen(&build(&b, &[])), "1\n");
    assert_eq!(seen(&build(&b, &["--no-cache"])), "2\n");
    let du = rbuild_in(&b, &["du", "--verbose", "--filter", "type=exec.cachemount"]);
    du.assert_ok("du");
    let text = du.stdout_text();
    assert!(
        text.contains("cache mount counter") && text.contains("Type:\t\texec.cachemount"),
        "{text}"
    );
    rbuild_in(
        &b,
        &["prune", "--force", "--filter", "type=exec.cachemount"],
    )
    .assert_ok("prune the cache mount");
    // The empty lock file stays (a build about to take it must find the same inode).
    let left: Vec<String> = common::dir_entries(&b.cache.join("mounts"))
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(
        left.is_empty(),
        "the cache mount's directory stayed: {left:?}"
    );
    assert_eq!(
        seen(&build(&b, &["--no-cache"])),
        "1\n",
        "a pruned cache mount starts empty"
    );
    cache_check_is_clean(&b);
}

#[test]
fn sigterm_ends_a_build_without_run_steps_and_leaves_nothing() {
    let test = "sigterm_ends_a_build_without_run_steps_and_leaves_nothing";
    let Some(b) = setup(test, "FROM busybox\nCOPY big /big\n", &[]) else {
        return;
    };
    // 150 MB that gzip cannot shrink: the COPY's layer takes a while to write.
    std::fs::write(b.ctx.join("big"), noise(150_000_000)).unwrap();
    let mut cmd = b.build_cmd(&["--pull=never"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start rbuild");
    // Until the layer is being written: a blob growing in the store's temp area.
    let deadline = Instant::now() + Duration::from_secs(60);
    let writing = loop {
        let growing = walkdir::WalkDir::new(b.cache.join("tmp"))
            .into_iter()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("blob-"));
        if growing || Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break growing;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(writing, "the build never started writing its layer");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let sent = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} to end the build",
        sent.elapsed()
    );
    assert!(!out.status.success(), "the build was not cancelled");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        b.leftover_temp_files().is_empty(),
        "a cancelled build left {:?}",
        b.leftover_temp_files()
    );
    cache_check_is_clean(&b);
}

/// Deterministic builds (with SOURCE_DATE_EPOCH) for the concurrency and crash tests.
const DET: [&str; 3] = [
    "FROM busybox\nCOPY a.txt /a.txt\nRUN seq 1 300000 > /n && sleep 0.3\n",
    "FROM busybox\nRUN seq 1 200000 > /m\nCOPY a.txt /b.txt\nRUN cat /m /b.txt > /mb\n",
    "FROM busybox AS s\nRUN seq 5 150000 > /s\nFROM busybox\nCOPY --from=s /s /s\nWORKDIR /w/x\n",
];

fn det_cmd(b: &Build, dockerfile: &Path, extra: &[&str]) -> Command {
    let mut cmd = rbuild_cmd();
    cmd.current_dir(b.dir.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--cache-dir"])
        .arg(&b.cache)
        .args(["--pull=never", "--progress=plain", "-q", "-f"])
        .arg(dockerfile)
        .args(extra)
        .arg(&b.ctx);
    cmd
}

/// The image ids (`-q`) of each deterministic Dockerfile, built alone in a fresh cache.
fn reference_ids(test: &str) -> Option<(Build, Vec<String>)> {
    let b = setup(test, "", &[("a.txt", "x\n")])?;
    let mut ids = Vec::new();
    for (i, df) in DET.iter().enumerate() {
        let path = b.dir.join(format!("Dockerfile.{i}"));
        std::fs::write(&path, df).unwrap();
        let ran = run_cmd(&mut det_cmd(&b, &path, &[]), None, RBUILD_TIMEOUT);
        ran.assert_ok("reference build");
        ids.push(ran.stdout_text().trim().to_string());
    }
    Some((b, ids))
}

#[test]
fn many_builds_and_prunes_share_one_cache() {
    let test = "many_builds_and_prunes_share_one_cache";
    let Some((_, expected)) = reference_ids(test) else {
        return;
    };
    let Some(b) = setup(test, "", &[("a.txt", "x\n")]) else {
        return;
    };
    for (i, df) in DET.iter().enumerate() {
        std::fs::write(b.dir.join(format!("Dockerfile.{i}")), df).unwrap();
    }
    for round in 0..2 {
        let mut children = Vec::new();
        for n in 0..6 {
            let i = n % 3;
            let mut cmd = det_cmd(&b, &b.dir.join(format!("Dockerfile.{i}")), &[]);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            children.push((i, cmd.spawn().expect("start rbuild")));
        }
        // Prunes beside the builds, until they end.
        let deadline = Instant::now() + RBUILD_TIMEOUT;
        let mut prunes = 0;
        while children
            .iter_mut()
            .any(|(_, c)| c.try_wait().unwrap().is_none())
        {
            assert!(Instant::now() < deadline, "builds did not end");
            rbuild_in(&b, &["prune", "--force"]).assert_ok("prune during builds");
            prunes += 1;
        }
        assert!(prunes > 0);
        for (i, child) in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: build of Dockerfile.{i} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                expected[i],
                "round {round}: Dockerfile.{i} gave another image than alone"
            );
        }
        cache_check_is_clean(&b);
    }
    assert!(b.leftover_temp_files().is_empty(), "temp files left");
}

#[test]
fn sigkill_at_any_moment_leaves_a_usable_cache() {
    let test = "sigkill_at_any_moment_leaves_a_usable_cache";
    let Some((_, expected)) = reference_ids(test) else {
        return;
    };
    let Some(b) = setup(test, "", &[("a.txt", "x\n")]) else {
        return;
    };
    let path = b.dir.join("Dockerfile.0");
    std::fs::write(&path, DET[0]).unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("{test}: seed {seed}");
    for round in 0..40 {
        // xorshift: a delay of 50 ms to 2 s.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(50 + seed % 1950);
        let mut cmd = det_cmd(&b, &path, &["--no-cache"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn().expect("start rbuild");
        std::thread::sleep(delay);
        // The whole process group at once: no process gets to clean up.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        let ran = run_cmd(&mut det_cmd(&b, &path, &[]), None, RBUILD_TIMEOUT);
        ran.assert_ok(&format!(
            "round {round}: the build after a SIGKILL at {delay:?}"
        ));
        assert_eq!(
            ran.stdout_text().trim(),
            expected[0],
            "round {round}: after a SIGKILL at {delay:?} the image differs"
        );
        cache_check_is_clean(&b);
    }
    assert!(
        b.leftover_temp_files().is_empty(),
        "temp files of killed builds were not collected: {:?}",
        b.leftover_temp_files()
    );
    assert!(common::dir_entries(&b.cache.join("leases")).is_empty());
    // Nothing of the killed builds stays: the store holds what one clean build leaves.
    let clean = setup(test, "", &[("a.txt", "x\n")]).unwrap();
    let clean_df = clean.dir.join("Dockerfile.0");
    std::fs::write(&clean_df, DET[0]).unwrap();
    run_cmd(&mut det_cmd(&clean, &clean_df, &[]), None, RBUILD_TIMEOUT).assert_ok("a clean build");
    let (killed, once) = (stored_bytes(&b.cache), stored_bytes(&clean.cache));
    assert!(
        killed <= once,
        "after 40 SIGKILLs the store holds {killed} bytes of blobs and snapshots, one clean build {once}"
    );
}

/// Bytes of the files in a cache's blobs and snapshots.
fn stored_bytes(cache: &Path) -> u64 {
    ["blobs", "snapshots"]
        .iter()
        .flat_map(|d| walkdir::WalkDir::new(cache.join(d)).into_iter().flatten())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn a_full_disk_fails_clearly_and_leaves_the_cache_consistent() {
    let test = "a_full_disk_fails_clearly_and_leaves_the_cache_consistent";
    if !is_root() {
        skip(
            test,
            "mounting a small tmpfs for the cache needs root; the run as root covers this",
        );
        return;
    }
    if !require_tools(test, &["mount", "umount"]) {
        return;
    }
    let Some(b) = setup(test, "FROM busybox\nCOPY big /big\n", &[]) else {
        return;
    };
    // 12 MB that gzip cannot shrink, in the context (not on the small disk).
    std::fs::write(b.ctx.join("big"), noise(12_000_000)).unwrap();
    // The cache on an 8 MB tmpfs, holding busybox.
    let small = b.dir.join("small");
    std::fs::create_dir(&small).unwrap();
    run_cmd(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(&small),
        None,
        TOOL_TIMEOUT,
    )
    .assert_ok("mount a tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&small);
    let bb = busybox(test).unwrap();
    let mut small_build = Build::scratch(&format!("{test}-small"));
    small_build.cache = small.join("cache");
    small_build.ctx = b.ctx.clone();
    write_case(&small_build, "FROM busybox\nCOPY big /big\n", &[]);
    small_build.load_busybox(&bb);
    let ran = small_build.build(&["--pull=never"]);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text().contains("No space left on device"),
        "{}",
        ran.summary()
    );
    assert!(!ran.stderr_text().contains("panicked"), "{}", ran.summary());
    cache_check_is_clean(&small_build);
    assert!(small_build.leftover_temp_files().is_empty());
    run_cmd(
        Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&small),
        None,
        TOOL_TIMEOUT,
    )
    .assert_ok("grow the tmpfs");
    small_build
        .build(&["--pull=never"])
        .assert_ok("the build once there is room");
    cache_check_is_clean(&small_build);
}
