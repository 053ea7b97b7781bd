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
    let git = |args: &[&str]| -> Result<()> {
        crate::cancel::Cancel.check()?;
        let out = Command::new(&program)
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
            .output()
            .context("cannot run git")?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
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
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("git"))
        .find(|p| p.is_file())
        .context("ADD of a git repository needs the git program on PATH: install it (Debian and Ubuntu: apt-get install git)")
}
