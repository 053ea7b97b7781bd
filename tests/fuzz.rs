//! Fuzzed Dockerfiles through the real binary: RBUILD_FUZZ_CASES (default 10,000)
//! Dockerfiles from a seeded generator (the same ones every run), plus the corpus under
//! `testdata/fuzz/dockerfiles/` (inputs that once crashed, hung or ate memory), each built
//! in an empty context. None may crash (exit codes 0, 1 and 2 only), take longer than 20 s,
//! or grow past 256 MiB of resident memory.
//!
//! This file holds one test, so the largest child process the test waited for (what
//! `getrusage(RUSAGE_CHILDREN)` reports) is one of these builds.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use common::{run_cmd, TestDir};

/// How long one fuzzed build may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The most resident memory any build may reach, in KiB.
const MAX_RSS_KIB: i64 = 256 * 1024;

/// Pieces Dockerfile lines are made of: keywords, flags, quotes, escapes, substitutions,
/// heredocs, JSON, and the bits that once broke things (doubling, deep nesting).
const TOKENS: &[&str] = &[
    "FROM ",
    "scratch",
    "RUN ",
    "COPY ",
    "ADD ",
    "ENV ",
    "LABEL ",
    "ARG ",
    "ONBUILD ",
    "HEALTHCHECK ",
    "CMD ",
    "ENTRYPOINT ",
    "SHELL ",
    "EXPOSE ",
    "VOLUME ",
    "USER ",
    "WORKDIR ",
    "STOPSIGNAL ",
    "MAINTAINER ",
    " AS ",
    "--from=",
    "--chown=",
    "--chmod=",
    "--mount=type=",
    "--network=",
    "--platform=",
    "<<",
    "<<-",
    "EOF",
    "'EOF'",
    "\"",
    "'",
    "\\",
    "`",
    "\n",
    "\r\n",
    "\t",
    " ",
    "#",
    "# escape=`\n",
    "# syntax=x\n",
    "$",
    "${",
    "}",
    ":-",
    ":+",
    ":?",
    "#",
    "%",
    "//",
    "/",
    "*",
    "?",
    "[",
    "]",
    "a",
    "A",
    "x=y",
    "=",
    "${A}${A}",
    "${A:-${A:-${A:-",
    "[\"a\",",
    "\"b\"]",
    "{",
    "0",
    "65535",
    "-1",
    "/..",
    "../",
    "/",
    "\u{1b}[2J",
    "\u{0}",
    "é",
];

/// One generated Dockerfile.
fn dockerfile() -> impl Strategy<Value = String> {
    let line =
        prop::collection::vec(prop::sample::select(TOKENS), 0..14).prop_map(|parts| parts.concat());
    (prop::bool::ANY, prop::collection::vec(line, 0..12)).prop_map(|(from_first, lines)| {
        let mut df = String::new();
        if from_first {
            df.push_str("FROM scratch\n");
        }
        for l in lines {
            df.push_str(&l);
            df.push('\n');
        }
        df
    })
}

/// The corpus: files under `testdata/fuzz/dockerfiles/`.
fn corpus() -> Vec<String> {
    let dir = common::testdata_dir().join("fuzz/dockerfiles");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect()
}

/// Builds `dockerfile` in `ctx` (an empty context) with the shared `cache`; the failure
/// message, if the outcome is not allowed.
fn check(n: usize, dockerfile: &str, dir: &Path, cache: &Path) -> Option<String> {
    let case = dir.join(format!("case-{n}"));
    std::fs::create_dir_all(&case).unwrap();
    std::fs::write(case.join("Dockerfile"), dockerfile).unwrap();
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(&case)
        .args(["build", "--progress=plain", "--cache-dir"])
        .arg(cache)
        .arg(&case);
    let ran = run_cmd(&mut cmd, None, TIMEOUT);
    let _ = std::fs::remove_dir_all(&case);
    (![0, 1, 2].contains(&ran.code)).then(|| {
        format!(
            "case {n}: exit {} (a crash or a timeout) for the Dockerfile {dockerfile:?}: {}",
            ran.code,
            ran.summary()
        )
    })
}

#[test]
fn fuzzed_dockerfiles_end_in_an_answer() {
    let cases: usize = std::env::var("RBUILD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = dockerfile();
    let mut inputs = corpus();
    for _ in 0..cases {
        inputs.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    let dir = TestDir::new("fuzz");
    let cache = dir.join("cache");
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let Some(df) = inputs.get(n) else { break };
                if let Some(f) = check(n, df, dir.path(), &cache) {
                    failures.lock().unwrap().push(f);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} Dockerfiles:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    assert!(
        usage.max_rss() < MAX_RSS_KIB,
        "a build reached {} KiB of resident memory (limit {MAX_RSS_KIB})",
        usage.max_rss()
    );
}
