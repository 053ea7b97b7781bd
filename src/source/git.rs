//! Git repositories for `ADD <repo>#<ref>[:<dir>]`, fetched with the `git` program (found
//! on PATH): one shallow fetch of the ref into a new repository, checked out, its `.git`
//! removed unless `--keep-git-dir`. Only the network transports are allowed (no `file://`,
//! no `ext::` commands), git asks nothing on the terminal, and the user's and system's
//! git configuration is not read.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Fetches `reference` (None: the default branch) of `url` into the new directory
/// `into` (which must not exist) and returns the directory to copy: `into`, or its
/// `subdir`.
pub fn fetch(
    url: &str,
    reference: Option<&str>,
    subdir: Option<&str>,
    keep_git_dir: bool,
    into: &Path,
) -> Result<PathBuf> {
    let program = which_git()?;
    std::fs::create_dir(into).with_context(|| format!("cannot create {}", into.display()))?;
    let log = into.with_extension("log");
    let git = |args: &[&str]| -> Result<()> {
        let mut child = Command::new(&program)
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "advice.detachedHead=false",
            ])
            .args(args)
            .current_dir(into)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", "http:https:git:ssh")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("cannot create the git log")?)
            .spawn()
            .context("cannot run git")?;
        // A fetch can take long: a cancelled build kills it rather than wait.
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if crate::cancel::Cancel.requested() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("cancelled");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if !status.success() {
            bail!(
                "git {}: {}",
                args.first().copied().unwrap_or_default(),
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        Ok(())
    };
    git(&["init", "-q"])?;
    git(&[
        "fetch",
        "-q",
        "--depth=1",
        "--no-tags",
        url,
        reference.unwrap_or("HEAD"),
    ])
    .with_context(|| format!("cannot fetch {url}#{}", reference.unwrap_or("HEAD")))?;
    git(&["checkout", "-q", "FETCH_HEAD"])?;
    if !keep_git_dir {
        std::fs::remove_dir_all(into.join(".git")).context("cannot remove .git")?;
    }
    match subdir {
        None => Ok(into.to_path_buf()),
        Some(d) => {
            let clean: Vec<&str> = d
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            if clean.contains(&"..") {
                bail!("{url}: the directory {d:?} leaves the repository");
            }
            let dir = into.join(clean.join("/"));
            let meta = std::fs::symlink_metadata(&dir)
                .with_context(|| format!("{url}: no directory {d:?} in the repository"))?;
            if !meta.is_dir() {
                bail!("{url}: {d:?} is not a directory of the repository");
            }
            Ok(dir)
        }
    }
}

/// Where git is, or what to install.
fn which_git() -> Result<PathBuf> {
    crate::which::on_path("git").context("ADD of a git repository needs the git program on PATH: install it (Debian and Ubuntu: apt-get install git)")
}
