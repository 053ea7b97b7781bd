//! Hostile input that must end in a clear error, quickly and within bounded memory: words
//! whose expansion doubles line after line, substitutions nested thousands deep, a
//! Dockerfile with no end, pattern substitutions whose matching would take hours. Each
//! used to crash rbuild, hang it or make it eat memory.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{run_cmd, Ran, TestDir};

/// How long a refused Dockerfile may take to be refused.
const QUICK: Duration = Duration::from_secs(20);

/// Builds `dockerfile` (FROM scratch after it) in an empty context, within [`QUICK`].
fn build(test: &str, dockerfile: &str) -> Ran {
    let dir = TestDir::new(test);
    let ctx = dir.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    build_in(&dir, &ctx, &[])
}

fn build_in(dir: &TestDir, ctx: &Path, extra: &[&str]) -> Ran {
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .args(["build", "--cache-dir"])
        .arg(dir.join("cache"))
        .args(extra)
        .arg(ctx);
    let started = Instant::now();
    let ran = run_cmd(&mut cmd, None, QUICK);
    assert!(
        started.elapsed() < QUICK,
        "not refused within {QUICK:?}: {}",
        ran.summary()
    );
    ran
}

/// Asserts a build failure (exit 1, not a crash) whose message names `line` and says
/// `says`.
fn assert_refused_at(ran: &Ran, line: usize, says: &str) {
    let err = ran.stderr_text();
    assert_eq!(ran.code, 1, "expected a build error: {}", ran.summary());
    assert!(
        err.contains(&format!("Dockerfile:{line}")),
        "the error should point at line {line}: {err}"
    );
    assert!(err.contains(says), "the error should say {says:?}: {err}");
}

#[test]
fn words_that_double_at_every_line_are_refused_at_the_line() {
    // Ten bytes doubled seventeen times pass a mebibyte: ARG A17 is refused.
    let mut df = String::from("ARG A0=0123456789\n");
    for i in 1..=40 {
        df.push_str(&format!("ARG A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
    }
    df.push_str("FROM scratch\n");
    let ran = build("doubling", &df);
    assert_refused_at(&ran, 18, "longer than 1048576 bytes");
}

#[test]
fn many_large_words_exhaust_the_expansion_budget() {
    // A16 is 640 KiB; 110 copies of it are more than 64 MiB in all.
    let mut df = String::from("ARG A0=0123456789\n");
    for i in 1..=16 {
        df.push_str(&format!("ARG A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
    }
    for i in 0..110 {
        df.push_str(&format!("ARG C{i}=${{A16}}\n"));
    }
    df.push_str("FROM scratch\n");
    let ran = build("budget", &df);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text().contains("more than 64 MiB in all"),
        "{}",
        ran.summary()
    );
}

#[test]
fn nesting_is_bounded_without_recursion_the_input_controls() {
    // 100 levels: refused by the depth bound.
    let nest = |n: usize| format!("{}x{}", "${A:-".repeat(n), "}".repeat(n));
    let ran = build("nest-100", &format!("ARG X={}\nFROM scratch\n", nest(100)));
    assert_refused_at(&ran, 1, "nested more than 64 deep");
    // 20,000 levels (120,000 bytes on one line) overflowed the stack (exit 134): now the
    // line is refused before anything expands it.
    let ran = build(
        "nest-20000",
        &format!("ARG X={}\nFROM scratch\n", nest(20_000)),
    );
    assert_refused_at(
        &ran,
        1,
        "dockerfile line greater than max allowed size of 65535",
    );
}

#[test]
fn costly_pattern_substitution_is_refused() {
    // Leftmost-longest replacement of a many-star pattern over 60,000 characters: hours of
    // matching without a budget.
    let df = format!(
        "ARG A={}\nARG B=${{A//*a*a*a*b/x}}\nFROM scratch\n",
        "a".repeat(60_000)
    );
    let ran = build("glob", &df);
    assert_refused_at(&ran, 2, "pattern matching took more than");
}

#[test]
fn an_endless_dockerfile_is_refused() {
    let dir = TestDir::new("endless");
    let ctx = dir.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    let ran = build_in(&dir, &ctx, &["-f", "/dev/zero"]);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text().contains("is larger than 16 MiB"),
        "{}",
        ran.summary()
    );
}

/// A tar entry for [`tar_of`]: path, type, mode, content, device numbers.
type Item<'a> = (&'a str, tar::EntryType, u32, &'a [u8], (u32, u32));

fn tar_of(items: &[Item<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, mode, data, (major, minor)) in items {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if kind.is_character_special() || kind.is_block_special() {
            h.set_device_major(*major).unwrap();
            h.set_device_minor(*minor).unwrap();
        }
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The layers of the OCI layout directory at `dir`, as entries.
fn layers(dir: &Path) -> Vec<Vec<common::build::TarItem>> {
    let files = common::image::Files::from_dir(dir).unwrap();
    let image = common::image::OciImage::read(&files, "output").unwrap();
    image
        .layers
        .iter()
        .map(|l| common::build::tar_items(l).unwrap())
        .collect()
}

fn find<'a>(layer: &'a [common::build::TarItem], path: &str) -> &'a common::build::TarItem {
    layer
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no {path} in the layer"))
}

#[test]
fn special_files_follow_one_rule_in_every_source() {
    // BuildKit's rule: FIFOs and device nodes are copied as what they are, sockets become
    // empty files; a directory's mode is kept even when it locks its owner out (mode 000).
    // A context on stdin and an ADDed archive hold them as tar entries, which an
    // unprivileged build cannot all make on disk.
    use tar::EntryType as T;
    let dir = TestDir::new("special");
    let inner = tar_of(&[
        ("dev", T::Char, 0o600, b"", (1, 5)),
        ("p", T::Fifo, 0o640, b"", (0, 0)),
    ]);
    let context = tar_of(&[
        (
            "Dockerfile",
            T::Regular,
            0o644,
            b"FROM scratch\nCOPY . /\nADD inner.tar /add/\n",
            (0, 0),
        ),
        ("inner.tar", T::Regular, 0o644, &inner, (0, 0)),
        ("locked", T::Directory, 0o000, b"", (0, 0)),
        ("locked/f", T::Regular, 0o644, b"x", (0, 0)),
        ("fifo", T::Fifo, 0o644, b"", (0, 0)),
        ("null", T::Char, 0o666, b"", (1, 3)),
        ("blk", T::Block, 0o660, b"", (7, 0)),
    ]);
    let out = dir.join("out");
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .args(["build", "--cache-dir"])
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(format!("type=oci,tar=false,dest={}", out.display()))
        .arg("-");
    let ran = run_cmd(&mut cmd, Some(&context), QUICK);
    ran.assert_ok("a context on stdin with special files");
    let built = layers(&out);
    let copied = &built[0];
    let locked = find(copied, "locked");
    assert_eq!((locked.kind, locked.mode), (T::Directory, 0o000));
    assert_eq!(find(copied, "locked/f").size, 1);
    assert_eq!(find(copied, "fifo").kind, T::Fifo);
    let null = find(copied, "null");
    assert_eq!(
        (null.kind, null.mode, null.device),
        (T::Char, 0o666, Some((1, 3)))
    );
    let blk = find(copied, "blk");
    assert_eq!((blk.kind, blk.device), (T::Block, Some((7, 0))));
    let added = &built[1];
    let dev = find(added, "add/dev");
    assert_eq!(
        (dev.kind, dev.mode, dev.device),
        (T::Char, 0o600, Some((1, 5)))
    );
    assert_eq!(find(added, "add/p").kind, T::Fifo);

    // A socket in a context directory: an empty file with its mode.
    let ctx = dir.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(ctx.join("sock")).unwrap();
    let out2 = dir.join("out2");
    let ran = build_in(
        &dir,
        &ctx,
        &["-o", &format!("type=oci,tar=false,dest={}", out2.display())],
    );
    ran.assert_ok("a context with a socket");
    let sock = find(&layers(&out2)[0], "sock").clone();
    assert_eq!((sock.kind, sock.size), (T::Regular, 0));
}

#[test]
fn terminal_escapes_from_input_are_escaped() {
    let no_controls = |ran: &Ran| {
        let raw: Vec<u8> = ran
            .stderr
            .iter()
            .copied()
            .filter(|b| *b < 0x20 && *b != b'\n' && *b != b'\t')
            .collect();
        assert!(
            raw.is_empty(),
            "raw control bytes {raw:?} reached stderr: {}",
            ran.summary()
        );
    };
    let ran = build(
        "escapes",
        "FROM scratch\nFROBNICATE \u{1b}[2J\u{1b}]0;owned\u{7}\n",
    );
    assert_eq!(ran.code, 1, "{}", ran.summary());
    no_controls(&ran);
    assert!(ran.stderr_text().contains("\\x1b[2J"), "{}", ran.summary());
    // A context on stdin whose first header is garbage with escapes in it.
    let dir = TestDir::new("escapes-tar");
    let mut garbage = b"\x1b[2J\x1b]0;owned\x07".to_vec();
    garbage.resize(1024, b'\x1b');
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .args(["build", "--cache-dir"])
        .arg(dir.join("cache"))
        .arg("-");
    let ran = run_cmd(&mut cmd, Some(&garbage), QUICK);
    assert_ne!(ran.code, 0, "{}", ran.summary());
    no_controls(&ran);
}
