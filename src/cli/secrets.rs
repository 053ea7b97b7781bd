//! `--secret` and `--ssh` (buildx spelling): what `RUN --mount=type=secret|ssh` may use.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use crate::solver::mounts::{MountInputs, SecretSource};

/// Parses every `--secret` and `--ssh` value; `var` reads the environment.
pub fn mount_inputs(
    secrets: &[String],
    ssh: &[String],
    var: impl Fn(&str) -> Option<String>,
) -> Result<MountInputs> {
    let mut inputs = MountInputs::default();
    for value in secrets {
        let (id, source) =
            parse_secret(value, &var).map_err(|e| anyhow!("invalid --secret {value:?}: {e}"))?;
        inputs.secrets.insert(id, source);
    }
    for value in ssh {
        let (id, socket) =
            parse_ssh(value, &var).map_err(|e| anyhow!("invalid --ssh {value:?}: {e}"))?;
        inputs.ssh.insert(id, socket);
    }
    Ok(inputs)
}

/// `id=ID[,src=PATH|source=PATH][,env=VAR][,type=file|env]`. Without a source: the
/// variable named like the id when it is set, as buildx does.
fn parse_secret(
    value: &str,
    var: &impl Fn(&str) -> Option<String>,
) -> Result<(String, SecretSource)> {
    let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
    for field in value.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("{field:?} is not KEY=VALUE"))?;
        match k {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" => kind = Some(v.to_string()),
            other => bail!("unexpected key {other:?}"),
        }
    }
    let id = id
        .filter(|i| !i.is_empty())
        .ok_or_else(|| anyhow!("id= is required"))?;
    let source = match (kind.as_deref(), src, env) {
        (Some("env"), Some(name), None) | (None | Some("env"), None, Some(name)) => {
            SecretSource::Env(name)
        }
        (None | Some("file"), Some(path), None) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!("{} is not a file", path.display());
            }
            SecretSource::File(path)
        }
        (None, None, None) if var(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None, None) => bail!("give src=FILE or env=VAR (no variable ${id} is set)"),
        (Some(t), _, _) if t != "file" && t != "env" => {
            bail!("unsupported type {t:?}: expected file or env")
        }
        _ => bail!("give one of src= and env="),
    };
    Ok((id, source))
}

/// `ID[=SOCKET]` (default id `default`; without a socket, `$SSH_AUTH_SOCK`). Only agent
/// sockets can be forwarded, not key files.
fn parse_ssh(value: &str, var: &impl Fn(&str) -> Option<String>) -> Result<(String, PathBuf)> {
    let (id, path) = match value.split_once('=') {
        Some((id, path)) => (id, Some(path.to_string())),
        None => (value, None),
    };
    let id = if id.is_empty() { "default" } else { id };
    let path = match path {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(
            var("SSH_AUTH_SOCK")
                .ok_or_else(|| anyhow!("no socket given and $SSH_AUTH_SOCK is not set"))?,
        ),
    };
    let meta = std::fs::metadata(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if !meta.file_type().is_socket() {
        bail!(
            "{} is not an agent socket (key files are not supported; run ssh-agent and ssh-add)",
            path.display()
        );
    }
    Ok((id.to_string(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn secrets_from_files_and_variables() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("token");
        std::fs::write(&file, "s3cret").unwrap();
        let f = file.display().to_string();
        let inputs = mount_inputs(
            &[
                format!("id=a,src={f}"),
                format!("id=b,source={f},type=file"),
                "id=c,env=TOKEN".to_string(),
                "id=HOME".to_string(),
            ],
            &[],
            |v| (v == "HOME").then(|| "/root".to_string()),
        )
        .unwrap();
        assert_eq!(inputs.secrets["a"], SecretSource::File(file.clone()));
        assert_eq!(inputs.secrets["b"], SecretSource::File(file));
        assert_eq!(inputs.secrets["c"], SecretSource::Env("TOKEN".into()));
        assert_eq!(inputs.secrets["HOME"], SecretSource::Env("HOME".into()));
    }

    #[test]
    fn bad_secrets_say_why() {
        let e = |v: &str| {
            mount_inputs(&[v.to_string()], &[], none)
                .unwrap_err()
                .to_string()
        };
        assert!(e("src=/x").contains("id= is required"));
        assert!(e("id=a,src=/nonexistent/x").contains("is not a file"));
        assert!(e("id=a").contains("give src=FILE or env=VAR"));
        assert!(e("id=a,type=vault,src=/x").contains("unsupported type"));
        assert!(e("id=a,color=red").contains("unexpected key"));
    }

    #[test]
    fn ssh_needs_a_socket() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let s = sock.display().to_string();
        let inputs = mount_inputs(&[], &["default".into(), format!("work={s}")], |v| {
            (v == "SSH_AUTH_SOCK").then(|| s.clone())
        })
        .unwrap();
        assert_eq!(inputs.ssh["default"], sock);
        assert_eq!(inputs.ssh["work"], sock);
        let file = t.path().join("id_ed25519");
        std::fs::write(&file, "key").unwrap();
        let e = mount_inputs(&[], &[format!("default={}", file.display())], none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an agent socket"), "{e}");
        let e = mount_inputs(&[], &["default".into()], none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SSH_AUTH_SOCK is not set"), "{e}");
    }
}
