//! `RUN --mount=...` values, parsed and checked as BuildKit's Dockerfile frontend defines
//! them: `type=bind` (the default), `cache`, `tmpfs`, `secret` and `ssh`, with their
//! options. Where a mount reads from (`from=`) is resolved by the caller.

use anyhow::{anyhow, bail, Result};

use super::steps::absolute;
use crate::csv_fields::csv_fields;

/// Where secrets are mounted when no target is given.
const SECRETS_DIR: &str = "/run/secrets";
/// Where the first SSH agent socket is mounted when no target is given.
const SSH_SOCKET: &str = "/run/buildkit/ssh_agent.0";

/// One `--mount`, before `from=` is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Where it appears in the step: an absolute, cleaned path (None only for a secret
    /// given as an environment variable alone).
    pub target: Option<String>,
    /// `from=`: a stage, an image or a named context (None: the build context, or for a
    /// cache nothing).
    pub from: Option<String>,
    /// What kind of mount.
    pub kind: MountKind,
}

/// The kinds of mounts, with their own options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A file or directory of the context, a stage or an image; read-only unless
    /// `readwrite`, when writes go to a throwaway copy.
    Bind {
        /// The path inside the source (`source=`; "" = its root).
        source: String,
        /// `rw`: writable, changes discarded after the step.
        readwrite: bool,
    },
    /// A directory kept in rbuild's cache between steps and builds.
    Cache {
        /// The cache's identity (`id=`; default the target).
        id: String,
        /// Mounted read-only.
        readonly: bool,
        /// How concurrent builds share it.
        sharing: Sharing,
        /// With `from=`: the directory to seed a new cache from (`source=`).
        source: String,
        /// Mode, owner and group of a new cache directory.
        mode: u32,
        /// Owner of a new cache directory.
        uid: u32,
        /// Group of a new cache directory.
        gid: u32,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// `size=` in bytes (None: the kernel's default, half of RAM).
        size: Option<u64>,
    },
    /// A secret given to the build with `--secret id=...`: a file at the target, and/or
    /// an environment variable.
    Secret {
        /// The secret's id (`id=`; default the target's file name).
        id: String,
        /// `env=`: also (or only) exported as this variable.
        env: Option<String>,
        /// Fail when the build was not given the secret.
        required: bool,
        /// Mode of the file (default 0400).
        mode: u32,
        /// Owner of the file.
        uid: u32,
        /// Group of the file.
        gid: u32,
    },
    /// An SSH agent socket given with `--ssh id=...`; `SSH_AUTH_SOCK` points at it.
    Ssh {
        /// The agent's id (`id=`; default `default`).
        id: String,
        /// Fail when the build was not given the agent.
        required: bool,
    },
}

/// `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Every build uses it at once (the default).
    Shared,
    /// A build that finds it in use gets a new, empty one.
    Private,
    /// A build waits until no other uses it.
    Locked,
}

/// The options each type takes (besides `type`).
fn allowed(kind: &str) -> &'static [&'static str] {
    match kind {
        "bind" => &["target", "source", "from", "readonly", "readwrite"],
        "cache" => &[
            "target",
            "source",
            "from",
            "readonly",
            "readwrite",
            "id",
            "sharing",
            "mode",
            "uid",
            "gid",
        ],
        "tmpfs" => &["target", "size"],
        "secret" => &["target", "id", "env", "required", "mode", "uid", "gid"],
        // The agent's own socket is bound: its mode and owner are the host's.
        "ssh" => &["target", "id", "required"],
        _ => &[],
    }
}

/// Parses one `--mount` value (after variable expansion); a relative target is taken from
/// `workdir`, as BuildKit does.
pub fn parse_mount(value: &str, workdir: &str) -> Result<MountSpec> {
    let mut fields: Vec<(String, Option<String>)> = Vec::new();
    for field in csv_fields(value)? {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let key = match key.as_str() {
            "src" => "source".to_string(),
            "dst" | "destination" => "target".to_string(),
            "ro" => "readonly".to_string(),
            "rw" => "readwrite".to_string(),
            _ => key,
        };
        fields.push((key, val));
    }
    let kind = fields
        .iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.clone().unwrap_or_default().to_ascii_lowercase())
        .unwrap_or_else(|| "bind".to_string());
    if allowed(&kind).is_empty() {
        bail!("unsupported mount type {kind:?}: expected bind, cache, tmpfs, secret or ssh");
    }
    let mut opts = Options { fields: Vec::new() };
    for (key, val) in fields {
        if key == "type" {
            continue;
        }
        if !allowed(&kind).contains(&key.as_str()) {
            bail!("unexpected key {key:?} for a {kind} mount");
        }
        if opts.fields.iter().any(|(k, _)| *k == key) {
            bail!("{key} given twice");
        }
        opts.fields.push((key, val));
    }
    let target = match opts.text("target")? {
        Some(t) if t.is_empty() => bail!("empty mount target"),
        Some(t) => Some(clean_target(&absolute(workdir, &t))?),
        None => None,
    };
    let from = opts.text("from")?.filter(|f| !f.is_empty());
    let readonly = opts.flag("readonly")?;
    let readwrite = opts.flag("readwrite")?;
    let mode = |default| opts.number("mode", 8).map(|m| m.unwrap_or(default) as u32);
    let id_of = |n: &str| opts.number(n, 10).map(|v| v.unwrap_or(0) as u32);
    let (target, kind) = match kind.as_str() {
        "bind" => {
            if readonly == Some(true) && readwrite == Some(true) {
                bail!("a mount cannot be both readonly and readwrite");
            }
            let kind = MountKind::Bind {
                source: opts.text("source")?.unwrap_or_default(),
                readwrite: readwrite.unwrap_or(readonly == Some(false)),
            };
            (
                Some(target.ok_or_else(|| anyhow!("a bind mount needs a target"))?),
                kind,
            )
        }
        "cache" => {
            let target = target.ok_or_else(|| anyhow!("a cache mount needs a target"))?;
            let sharing = match opts.text("sharing")?.as_deref() {
                None | Some("shared") => Sharing::Shared,
                Some("private") => Sharing::Private,
                Some("locked") => Sharing::Locked,
                Some(other) => {
                    bail!("unsupported sharing {other:?}: expected shared, private or locked")
                }
            };
            let kind = MountKind::Cache {
                id: opts
                    .text("id")?
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| target.clone()),
                readonly: readonly.unwrap_or(readwrite == Some(false)),
                sharing,
                source: opts.text("source")?.unwrap_or_default(),
                mode: mode(0o755)?,
                uid: id_of("uid")?,
                gid: id_of("gid")?,
            };
            (Some(target), kind)
        }
        "tmpfs" => {
            let target = target.ok_or_else(|| anyhow!("a tmpfs mount needs a target"))?;
            let size = opts.text("size")?.map(|s| parse_size(&s)).transpose()?;
            (Some(target), MountKind::Tmpfs { size })
        }
        "secret" => {
            let env = opts.text("env")?.filter(|e| !e.is_empty());
            let id = match (opts.text("id")?.filter(|i| !i.is_empty()), &target) {
                (Some(id), _) => id,
                (None, Some(t)) => t.rsplit('/').next().unwrap_or_default().to_string(),
                (None, None) => bail!("a secret mount needs an id or a target"),
            };
            // Without a target a secret is a file under /run/secrets, unless it is only an
            // environment variable.
            let target = match (target, &env) {
                (Some(t), _) => Some(t),
                (None, Some(_)) => None,
                (None, None) => Some(format!("{SECRETS_DIR}/{id}")),
            };
            let kind = MountKind::Secret {
                id,
                env,
                required: opts.flag("required")?.unwrap_or(false),
                mode: mode(0o400)?,
                uid: id_of("uid")?,
                gid: id_of("gid")?,
            };
            (target, kind)
        }
        _ => {
            let kind = MountKind::Ssh {
                id: opts
                    .text("id")?
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| "default".to_string()),
                required: opts.flag("required")?.unwrap_or(false),
            };
            (Some(target.unwrap_or_else(|| SSH_SOCKET.to_string())), kind)
        }
    };
    Ok(MountSpec { target, from, kind })
}

/// The options of one mount, by their canonical names.
struct Options {
    fields: Vec<(String, Option<String>)>,
}

impl Options {
    fn get(&self, key: &str) -> Option<&Option<String>> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A `key=value` option's value.
    fn text(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v.clone())),
            Some(None) => bail!("{key} needs a value ({key}=...)"),
        }
    }

    /// A boolean option: `key`, `key=true|false`.
    fn flag(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(v)) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => bail!("{key}={v}: expected true or false"),
            },
        }
    }

    /// A number in `radix`.
    fn number(&self, key: &str, radix: u32) -> Result<Option<u64>> {
        self.text(key)?
            .map(|v| {
                u64::from_str_radix(v.trim_start_matches("0o"), radix)
                    .map_err(|_| anyhow!("{key}={v}: not a number"))
            })
            .transpose()
    }
}

/// Checks a cleaned absolute target: not the root, nothing the sandbox mounts itself.
fn clean_target(target: &str) -> Result<String> {
    let first = target
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    if first.is_empty() {
        bail!("cannot mount over the root directory");
    }
    if matches!(first, "proc" | "sys" | "dev") {
        bail!("cannot mount over {target}: the sandbox owns it");
    }
    Ok(target.to_string())
}

/// A size with an optional unit (`65536`, `64k`, `64m`, `1g`, `1gb`; powers of 1024).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (digits, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| anyhow!("invalid size {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> MountSpec {
        parse_mount(v, "/").unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn err(v: &str) -> String {
        parse_mount(v, "/").unwrap_err().to_string()
    }

    #[test]
    fn relative_targets_are_below_the_workdir() {
        let m = parse_mount("type=cache,target=.cache", "/home/app").unwrap();
        assert_eq!(m.target.as_deref(), Some("/home/app/.cache"));
        let m = parse_mount("type=cache,target=/abs", "/home/app").unwrap();
        assert_eq!(m.target.as_deref(), Some("/abs"));
    }

    #[test]
    fn bind_is_the_default_and_read_only() {
        let m = ok("target=/src");
        assert_eq!(m.target.as_deref(), Some("/src"));
        assert_eq!(
            m.kind,
            MountKind::Bind {
                source: String::new(),
                readwrite: false
            }
        );
        let m = ok("type=bind,from=builder,src=/out,dst=work/../app,rw");
        assert_eq!(m.from.as_deref(), Some("builder"));
        assert_eq!(m.target.as_deref(), Some("/app"));
        assert_eq!(
            m.kind,
            MountKind::Bind {
                source: "/out".into(),
                readwrite: true
            }
        );
        assert!(matches!(
            ok("target=/x,readonly=false").kind,
            MountKind::Bind {
                readwrite: true,
                ..
            }
        ));
    }

    #[test]
    fn cache_options() {
        let m = ok("type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1000,gid=50");
        assert_eq!(
            m.kind,
            MountKind::Cache {
                id: "/root/.cache".into(),
                readonly: false,
                sharing: Sharing::Locked,
                source: String::new(),
                mode: 0o700,
                uid: 1000,
                gid: 50
            }
        );
        assert!(matches!(
            ok("type=cache,id=go,target=/go,ro").kind,
            MountKind::Cache { ref id, readonly: true, sharing: Sharing::Shared, mode: 0o755, .. } if id == "go"
        ));
    }

    #[test]
    fn tmpfs_secret_and_ssh_defaults() {
        assert_eq!(
            ok("type=tmpfs,target=/t,size=64m").kind,
            MountKind::Tmpfs {
                size: Some(64 << 20)
            }
        );
        let s = ok("type=secret,id=npmrc");
        assert_eq!(s.target.as_deref(), Some("/run/secrets/npmrc"));
        assert!(matches!(
            s.kind,
            MountKind::Secret {
                mode: 0o400,
                required: false,
                ..
            }
        ));
        let s = ok("type=secret,target=/root/.netrc,required");
        assert!(
            matches!(s.kind, MountKind::Secret { ref id, required: true, .. } if id == ".netrc")
        );
        let s = ok("type=secret,id=token,env=TOKEN");
        assert_eq!(s.target, None);
        let ssh = ok("type=ssh");
        assert_eq!(ssh.target.as_deref(), Some("/run/buildkit/ssh_agent.0"));
        assert_eq!(
            ssh.kind,
            MountKind::Ssh {
                id: "default".into(),
                required: false
            }
        );
    }

    #[test]
    fn quoting() {
        let m = ok(r#"type=bind,"source=a,b",target=/x"#);
        assert!(matches!(m.kind, MountKind::Bind { ref source, .. } if source == "a,b"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(err("type=volume,target=/x").contains("unsupported mount type"));
        assert!(err("type=bind").contains("needs a target"));
        assert!(err("type=tmpfs,target=/t,id=x").contains("unexpected key \"id\""));
        assert!(err("type=cache,target=/c,sharing=maybe").contains("unsupported sharing"));
        assert!(err("target=/x,ro,rw").contains("both readonly and readwrite"));
        assert!(err("target=/").contains("root directory"));
        assert!(err("target=/proc/x").contains("cannot mount over /proc/x"));
        assert!(err("type=cache,target=/c,mode=9z").contains("not a number"));
        assert!(err("type=tmpfs,target=/t,size=lots").contains("invalid size"));
        assert!(err("type=secret").contains("needs an id or a target"));
        assert!(err("type=tmpfs,target=/t,from=x").contains("unexpected key"));
        assert!(err(r#"target="/x"#).contains("unterminated quote"));
        assert!(err("target=/x,target=/y").contains("given twice"));
        assert!(err("type=ssh,uid=1000").contains("unexpected key \"uid\""));
    }
}
