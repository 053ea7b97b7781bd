//! Registry credentials from docker / podman auth files (`auths`, `credHelpers`,
//! `credsStore`) and docker credential helpers.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

use crate::image::reference::DEFAULT_REGISTRY;

/// The key docker uses for Docker Hub in auth files and with credential helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Names Docker Hub goes by in auth file keys.
const DOCKER_HUB_HOSTS: &[&str] = &[
    DEFAULT_REGISTRY,
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// A secret for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    /// User name and password (or personal access token).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token service.
    IdentityToken { username: String, token: String },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Secret::IdentityToken { username, .. } => write!(f, "IdentityToken({username}, ***)"),
        }
    }
}

/// Credentials found for a registry, and where they came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub secret: Secret,
    pub source: String,
}

#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Looks `registry` (and `repository`, for podman's per-namespace keys) up in `files`, in
/// order: the first file with an entry wins. Missing files are skipped; unreadable or
/// malformed ones are errors.
pub(crate) fn lookup(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>> {
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read auth file {}", file.display()))
            }
        };
        if let Some(found) = lookup_in(&text, file, registry, repository, &helper_command)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The command that runs credential helper `name`.
fn helper_command(name: &str) -> Command {
    let mut cmd = Command::new(format!("docker-credential-{name}"));
    cmd.arg("get");
    cmd
}

/// One auth file's answer: a `credHelpers` entry, else an `auths` entry, else `credsStore`.
fn lookup_in(
    text: &str,
    file: &Path,
    registry: &str,
    repository: &str,
    helper: &dyn Fn(&str) -> Command,
) -> Result<Option<Credentials>> {
    let parsed: AuthFile = if text.trim().is_empty() {
        AuthFile::default()
    } else {
        serde_json::from_str(text)
            .with_context(|| format!("cannot parse auth file {}", file.display()))?
    };
    let server = server_url(registry);
    if let Some(name) = best_match(parsed.cred_helpers.keys(), registry, repository)
        .and_then(|k| parsed.cred_helpers.get(k))
    {
        return run_helper(helper(name), name, &server);
    }
    if let Some(key) = best_match(parsed.auths.keys(), registry, repository) {
        let entry = &parsed.auths[key];
        if let Some(secret) = entry_secret(entry)
            .with_context(|| format!("auth file {}: entry {key:?}", file.display()))?
        {
            return Ok(Some(Credentials {
                secret,
                source: file.display().to_string(),
            }));
        }
    }
    match &parsed.creds_store {
        Some(name) if !name.is_empty() => run_helper(helper(name), name, &server),
        _ => Ok(None),
    }
}

/// The secret of an `auths` entry; None for an empty placeholder (`{}`).
fn entry_secret(e: &AuthEntry) -> Result<Option<Secret>> {
    let (mut username, mut password) = (e.username.clone(), e.password.clone());
    if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .context("`auth` is not base64")?;
        let decoded = String::from_utf8(decoded).context("`auth` is not UTF-8")?;
        let Some((u, p)) = decoded.split_once(':') else {
            bail!("`auth` is not base64 of user:password");
        };
        username = Some(u.to_string());
        password = Some(p.to_string());
    }
    if let Some(token) = e.identitytoken.clone().filter(|t| !t.is_empty()) {
        return Ok(Some(Secret::IdentityToken {
            username: username.unwrap_or_default(),
            token,
        }));
    }
    Ok(match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Some(Secret::Basic { username, password })
        }
        _ => None,
    })
}

/// What credential helpers (and docker's auth keys) call `registry`.
fn server_url(registry: &str) -> String {
    if DOCKER_HUB_HOSTS.contains(&registry) {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// The most specific key naming `registry` (and a namespace of `repository`, if the key has
/// one): keys may carry a scheme and docker's `/v1/` or `/v2/` suffix.
fn best_match<'a>(
    keys: impl Iterator<Item = &'a String>,
    registry: &str,
    repository: &str,
) -> Option<&'a String> {
    let hub = DOCKER_HUB_HOSTS.contains(&registry);
    keys.filter_map(|key| {
        let (host, path) = normalize_key(key);
        let host_ok = if hub {
            DOCKER_HUB_HOSTS.contains(&host.as_str())
        } else {
            host.eq_ignore_ascii_case(registry)
        };
        let path_ok =
            path.is_empty() || repository == path || repository.starts_with(&format!("{path}/"));
        (host_ok && path_ok).then_some((path.len(), key))
    })
    .max_by_key(|(specificity, _)| *specificity)
    .map(|(_, key)| key)
}

/// A key as (lowercase host, namespace path): no scheme, no `/v1/`-style API suffix.
fn normalize_key(key: &str) -> (String, String) {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = key.split_once('/').unwrap_or((key, ""));
    let path = path.trim_matches('/');
    let path = if matches!(path, "v1" | "v2") {
        ""
    } else {
        path
    };
    (host.to_ascii_lowercase(), path.to_string())
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs a credential helper's `get` with the server URL on stdin. A helper that is not
/// installed, or has nothing for the server, gives None.
fn run_helper(mut cmd: Command, name: &str, server: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot run {program}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its output below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot run {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout
            .to_ascii_lowercase()
            .contains("credentials not found")
        {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = [stdout.trim(), stderr.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        bail!("{program} get {server} failed ({}): {said}", out.status);
    }
    let parsed: HelperOutput = serde_json::from_str(&stdout)
        .with_context(|| format!("{program} get {server}: output is not the expected JSON"))?;
    if parsed.secret.is_empty() {
        return Ok(None);
    }
    let secret = if parsed.username == "<token>" {
        Secret::IdentityToken {
            username: String::new(),
            token: parsed.secret,
        }
    } else {
        Secret::Basic {
            username: parsed.username,
            password: parsed.secret,
        }
    };
    Ok(Some(Credentials {
        secret,
        source: program,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn no_helper(_: &str) -> Command {
        Command::new("/nonexistent/docker-credential-none")
    }

    fn find(text: &str, registry: &str, repo: &str) -> Option<Secret> {
        lookup_in(text, Path::new("auth.json"), registry, repo, &no_helper)
            .unwrap()
            .map(|c| c.secret)
    }

    fn basic(u: &str, p: &str) -> Option<Secret> {
        Some(Secret::Basic {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn auths_entries_and_key_matching() {
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{hub}"}},
                "http://127.0.0.1:5000": {{"username": "u", "password": "p"}},
                "quay.io": {{"auth": "{quay}"}},
                "quay.io/team": {{"auth": "{team}"}},
                "ghcr.io/v2/": {{"identitytoken": "refresh", "auth": "{tok}"}},
                "empty.example": {{}}
            }}}}"#,
            hub = b64("hubuser:hubpass"),
            quay = b64("q:1"),
            team = b64("t:2"),
            tok = b64("00000000:"),
        );
        assert_eq!(
            find(&text, "docker.io", "library/busybox"),
            basic("hubuser", "hubpass")
        );
        assert_eq!(find(&text, "127.0.0.1:5000", "x"), basic("u", "p"));
        assert_eq!(find(&text, "127.0.0.1:5001", "x"), None);
        assert_eq!(find(&text, "quay.io", "other/app"), basic("q", "1"));
        assert_eq!(find(&text, "quay.io", "team/app"), basic("t", "2"));
        assert_eq!(find(&text, "quay.io", "teamx/app"), basic("q", "1"));
        assert_eq!(
            find(&text, "ghcr.io", "o/a"),
            Some(Secret::IdentityToken {
                username: "00000000".into(),
                token: "refresh".into()
            })
        );
        assert_eq!(find(&text, "empty.example", "a"), None);
        // A password may contain ':'.
        let text = format!(
            r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
            b64("a:b:c")
        );
        assert_eq!(find(&text, "r.example", "x"), basic("a", "b:c"));
    }

    #[test]
    fn docker_hub_keys() {
        for key in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
        ] {
            let text = format!(r#"{{"auths": {{"{key}": {{"auth": "{}"}}}}}}"#, b64("a:b"));
            assert_eq!(
                find(&text, "docker.io", "library/x"),
                basic("a", "b"),
                "{key}"
            );
        }
        assert_eq!(server_url("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_url("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn malformed_files_are_errors() {
        let e = lookup_in("{", Path::new("/x/auth.json"), "r", "x", &no_helper).unwrap_err();
        assert!(format!("{e:#}").contains("/x/auth.json"), "{e:#}");
        let text = r#"{"auths": {"r": {"auth": "!!!"}}}"#;
        let e = lookup_in(text, Path::new("a.json"), "r", "x", &no_helper).unwrap_err();
        assert!(format!("{e:#}").contains("not base64"), "{e:#}");
        assert_eq!(find("", "r", "x"), None);
    }

    #[test]
    fn lookup_skips_missing_files_and_takes_the_first_match() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.json");
        let second = dir.path().join("second.json");
        std::fs::write(
            &first,
            r#"{"auths": {"other.example": {"username": "o", "password": "o"}}}"#,
        )
        .unwrap();
        std::fs::write(
            &second,
            r#"{"auths": {"r.example": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        let files = [dir.path().join("missing.json"), first, second.clone()];
        let found = lookup(&files, "r.example", "x").unwrap().unwrap();
        assert_eq!(Some(found.secret), basic("u", "p"));
        assert_eq!(found.source, second.display().to_string());
        assert!(lookup(&files, "none.example", "x").unwrap().is_none());
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn credential_helpers() {
        // The helper gets the server URL on stdin and answers JSON.
        let helper = |_: &str| {
            sh(
                r#"read -r url; printf '{"ServerURL":"%s","Username":"hu","Secret":"%s-secret"}' "$url" "$url""#,
            )
        };
        let text =
            r#"{"credHelpers": {"gcr.io": "gcloud"}, "auths": {"gcr.io": {"auth": "eDp5"}}}"#;
        let got = lookup_in(text, Path::new("a.json"), "gcr.io", "p/i", &helper)
            .unwrap()
            .unwrap();
        assert_eq!(Some(got.secret), basic("hu", "gcr.io-secret"));
        assert_eq!(got.source, "docker-credential-gcloud");
        // credsStore covers every registry, with docker's key for Docker Hub.
        let text = r#"{"credsStore": "desktop"}"#;
        let got = lookup_in(text, Path::new("a.json"), "docker.io", "library/x", &helper)
            .unwrap()
            .unwrap();
        assert_eq!(
            Some(got.secret),
            basic("hu", "https://index.docker.io/v1/-secret")
        );
        // `<token>` means an identity token.
        let token = |_: &str| sh(r#"read -r url; echo '{"Username":"<token>","Secret":"rt"}'"#);
        let got = lookup_in(text, Path::new("a.json"), "r", "x", &token)
            .unwrap()
            .unwrap();
        assert!(matches!(got.secret, Secret::IdentityToken { ref token, .. } if token == "rt"));
        // Nothing stored, or no such helper: no credentials.
        let none = |_: &str| sh("echo 'credentials not found in native keychain'; exit 1");
        assert!(lookup_in(text, Path::new("a.json"), "r", "x", &none)
            .unwrap()
            .is_none());
        assert!(lookup_in(text, Path::new("a.json"), "r", "x", &no_helper)
            .unwrap()
            .is_none());
        // Any other failure is reported.
        let broken = |_: &str| sh("echo boom >&2; exit 3");
        let e = lookup_in(text, Path::new("a.json"), "r", "x", &broken)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("docker-credential-desktop get r failed") && e.contains("boom"),
            "{e}"
        );
    }
}
