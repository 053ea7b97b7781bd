//! `ADD <git repository>#<ref>[:<dir>]` against a repository served by `git daemon` on
//! 127.0.0.1 (started here, on a free port): a tag, the default branch with
//! `--keep-git-dir`, a subdirectory of a branch; and the error when git is missing.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::build::file_content;
use common::{require_tools, run_cmd, TestDir, TOOL_TIMEOUT};

/// A `git daemon` serving `base`, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args);
    run_cmd(&mut cmd, None, TOOL_TIMEOUT).assert_ok(&format!("git {args:?}"));
}

/// Serves the repositories under `base` on 127.0.0.1; returns the daemon and its port.
fn serve(base: &Path) -> (Daemon, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // git-daemon itself, not `git daemon`: the `git` wrapper would run it as a child of
    // its own, which killing the wrapper leaves behind.
    let exec_path = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    let exec_path = String::from_utf8_lossy(&exec_path.stdout)
        .trim()
        .to_string();
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .arg("--reuseaddr")
        .arg("--export-all")
        .arg(format!("--base-path={}", base.display()))
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start git daemon");
    let daemon = Daemon(child);
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "git daemon did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (daemon, port)
}

#[test]
fn add_fetches_git_repositories() {
    let test = "add_fetches_git_repositories";
    if !require_tools(test, &["git"]) {
        return;
    }
    let dir = TestDir::new(test);
    let repo = dir.join("srv/repo");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("a.txt"), "one\n").unwrap();
    std::fs::write(repo.join("sub/s.txt"), "s\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "one"]);
    git(&repo, &["tag", "v1"]);
    std::fs::write(repo.join("a.txt"), "two\n").unwrap();
    git(&repo, &["commit", "-qam", "two"]);
    let (_daemon, port) = serve(&dir.join("srv"));
    let url = format!("git://127.0.0.1:{port}/repo");

    let ctx = dir.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nADD {url}#v1 /v1/\nADD --keep-git-dir {url} /head/\nADD {url}#main:sub /sub/\n"
        ),
    )
    .unwrap();
    let out = dir.join("fs.tar");
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .args(["build", "--cache-dir"])
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(format!("type=tar,dest={}", out.display()))
        .arg(&ctx);
    run_cmd(&mut cmd, None, TOOL_TIMEOUT).assert_ok("ADD of git repositories");
    let fs = common::tree::FsTree::from_tar(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(file_content(&fs, "/v1/a.txt").as_deref(), Some("one\n"));
    assert_eq!(file_content(&fs, "/v1/sub/s.txt").as_deref(), Some("s\n"));
    assert!(
        !fs.nodes.contains_key("/v1/.git"),
        "the tag's .git was kept"
    );
    assert_eq!(file_content(&fs, "/head/a.txt").as_deref(), Some("two\n"));
    assert!(
        fs.nodes.contains_key("/head/.git/HEAD"),
        "--keep-git-dir lost .git"
    );
    assert_eq!(file_content(&fs, "/sub/s.txt").as_deref(), Some("s\n"));
    assert!(
        !fs.nodes.contains_key("/sub/a.txt"),
        "more than the subdirectory"
    );

    // Without git: a clear error naming what to install.
    let empty = TestDir::new("no-git");
    let mut cmd = common::rbuild_cmd();
    cmd.current_dir(dir.path())
        .env("PATH", empty.path())
        .args(["build", "--cache-dir"])
        .arg(dir.join("cache2"))
        .arg(&ctx);
    let ran = run_cmd(&mut cmd, None, TOOL_TIMEOUT);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text().contains("needs the git program"),
        "{}",
        ran.summary()
    );
}
