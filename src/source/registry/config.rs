//! Registry settings (plain-HTTP registries, extra CAs, docker.io mirrors, auth files), read
//! from the environment, and the host rules that follow from them.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts};

use crate::image::reference::DEFAULT_REGISTRY;

/// The host that serves docker.io's registry API.
pub(crate) const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// How the registry client reaches registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) that may be reached over plain HTTP, or over HTTPS
    /// without certificate checks. Loopback hosts always may.
    pub insecure: Vec<String>,
    /// Extra PEM files of CA certificates, trusted besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Pull-through mirrors of docker.io (`host[:port]`, `http://host` for plain HTTP),
    /// tried in order before docker.io itself.
    pub mirrors: Vec<String>,
    /// An auth file consulted before the default ones (`--authfile`, `$REGISTRY_AUTH_FILE`).
    pub auth_file: Option<PathBuf>,
    /// The default auth files, consulted in order after `auth_file`; the first one with an
    /// entry for a registry wins.
    pub auth_search: Vec<PathBuf>,
    /// Directories of per-registry certificates, laid out as containers-certs.d(5) and
    /// docker's certs.d: `DIR/HOST[:PORT]/` holds `*.crt` CA certificates and a client
    /// certificate `NAME.cert` with its key `NAME.key`. The first directory with an entry
    /// for a host is used.
    pub certs_dirs: Vec<PathBuf>,
}

impl RegistryConfig {
    /// Settings from the process environment; see [`RegistryConfig::from_vars`].
    pub fn from_env() -> RegistryConfig {
        RegistryConfig::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Settings from environment variables looked up with `var`:
    /// `RBUILD_REGISTRY_MIRROR` and `RBUILD_REGISTRY_INSECURE` (comma-separated hosts),
    /// `RBUILD_REGISTRY_CA` (comma-separated PEM files), `REGISTRY_AUTH_FILE`, and the
    /// default auth files: `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json`; the
    /// certificate directories: `RBUILD_REGISTRY_CERTS_DIR` (comma-separated) or else
    /// `$XDG_CONFIG_HOME/containers/certs.d`, `/etc/containers/certs.d`, `/etc/docker/certs.d`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> RegistryConfig {
        let list = |name: &str| -> Vec<String> {
            var(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let home = var("HOME").map(PathBuf::from);
        let mut auth_search = Vec::new();
        if let Some(dir) = var("DOCKER_CONFIG") {
            auth_search.push(PathBuf::from(dir).join("config.json"));
        }
        if let Some(home) = &home {
            auth_search.push(home.join(".docker/config.json"));
        }
        if let Some(dir) = var("XDG_RUNTIME_DIR") {
            auth_search.push(PathBuf::from(dir).join("containers/auth.json"));
        }
        let config_home = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".config")));
        if let Some(dir) = &config_home {
            auth_search.push(dir.join("containers/auth.json"));
        }
        let mut certs_dirs: Vec<PathBuf> = list("RBUILD_REGISTRY_CERTS_DIR")
            .into_iter()
            .map(PathBuf::from)
            .collect();
        if certs_dirs.is_empty() {
            certs_dirs.extend(config_home.map(|d| d.join("containers/certs.d")));
            certs_dirs.extend(
                ["/etc/containers/certs.d", "/etc/docker/certs.d"]
                    .iter()
                    .map(PathBuf::from),
            );
        }
        RegistryConfig {
            insecure: list("RBUILD_REGISTRY_INSECURE"),
            ca_files: list("RBUILD_REGISTRY_CA")
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            mirrors: list("RBUILD_REGISTRY_MIRROR"),
            auth_file: var("REGISTRY_AUTH_FILE").map(PathBuf::from),
            auth_search,
            certs_dirs,
        }
    }

    /// The auth files to consult, in order.
    pub(crate) fn auth_files(&self) -> Vec<PathBuf> {
        self.auth_file
            .iter()
            .chain(&self.auth_search)
            .cloned()
            .collect()
    }
}

/// A mirror entry without scheme or trailing slash, and whether it asked for plain HTTP.
pub(crate) fn parse_mirror(entry: &str) -> (String, bool) {
    let (rest, plain) = match entry.trim() {
        e if e.starts_with("http://") => (&e["http://".len()..], true),
        e => (e.strip_prefix("https://").unwrap_or(e), false),
    };
    let host = rest.split('/').next().unwrap_or(rest);
    (host.to_ascii_lowercase(), plain)
}

/// The host that serves the API of `registry` (docker.io is served elsewhere).
pub(crate) fn api_host(registry: &str) -> String {
    if registry == DEFAULT_REGISTRY || registry == "index.docker.io" {
        DOCKER_HUB_API.to_string()
    } else {
        registry.to_string()
    }
}

/// True for `localhost`, 127.0.0.0/8 and ::1, with or without a port.
pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = strip_port(host);
    if bare.eq_ignore_ascii_case("localhost") || bare.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6 == Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback())
        }
        Err(_) => false,
    }
}

/// `host` without `:port` (and without the brackets of an IPv6 literal).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Places where distributions keep the system CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Trust roots from certificates: the built-in Mozilla roots when there are none.
pub(crate) fn root_certs(certs: &[Certificate<'static>]) -> RootCerts {
    if certs.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::new_with_certs(certs)
    }
}

/// The trusted CA certificates: the system bundle (`$SSL_CERT_FILE` or the distribution's)
/// plus `extra` PEM files.
pub(crate) fn trusted_certs(extra: &[PathBuf]) -> Result<Vec<Certificate<'static>>> {
    let mut certs = Vec::new();
    let env_bundle = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let system = env_bundle
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find_map(|p| std::fs::read(&p).ok());
    if let Some(pem) = system {
        certs.extend(pem_certificates(&pem));
    }
    for file in extra {
        let pem = std::fs::read(file)
            .with_context(|| format!("cannot read registry CA file {}", file.display()))?;
        let found = pem_certificates(&pem);
        if found.is_empty() {
            bail!(
                "registry CA file {}: no PEM certificate in it",
                file.display()
            );
        }
        certs.extend(found);
    }
    Ok(certs)
}

/// What a certs.d directory says about one registry.
#[derive(Debug, Default)]
pub(crate) struct HostCerts {
    /// CA certificates (`*.crt`) trusted for this registry besides the common ones.
    pub roots: Vec<Certificate<'static>>,
    /// The client certificate chain and key (`NAME.cert` + `NAME.key`).
    pub client: Option<ClientCert>,
}

/// The certificates for `host` from the first of `dirs` that has a `host` entry; `None`
/// when none has. A `.cert` without its `.key` (or the reverse), or a file that holds no
/// PEM certificate or key, is an error naming the file.
pub(crate) fn host_certs(dirs: &[PathBuf], host: &str) -> Result<Option<HostCerts>> {
    let Some(dir) = dirs.iter().map(|d| d.join(host)).find(|d| d.is_dir()) else {
        return Ok(None);
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read registry certificates in {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read registry certificates in {}", dir.display()))?;
    names.sort();
    let read = |path: &Path| -> Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut found = HostCerts::default();
    for path in &names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => {
                let certs = pem_certificates(&read(path)?);
                if certs.is_empty() {
                    bail!(
                        "registry CA file {}: no PEM certificate in it",
                        path.display()
                    );
                }
                found.roots.extend(certs);
            }
            Some("cert") => {
                let key_path = path.with_extension("key");
                if !key_path.is_file() {
                    bail!(
                        "client certificate {} has no key {}",
                        path.display(),
                        key_path.display()
                    );
                }
                if found.client.is_some() {
                    bail!("{}: more than one client certificate", dir.display());
                }
                let chain = pem_certificates(&read(path)?);
                if chain.is_empty() {
                    bail!(
                        "client certificate {}: no PEM certificate in it",
                        path.display()
                    );
                }
                let key_pem = read(&key_path)?;
                let key = PrivateKey::from_pem(&key_pem)
                    .map_err(|e| anyhow::anyhow!("client key {}: {e}", key_path.display()))?;
                check_client_cert(&chain, &key_pem).with_context(|| {
                    format!(
                        "client certificate {} with key {}",
                        path.display(),
                        key_path.display()
                    )
                })?;
                found.client = Some(ClientCert::new_with_certs(&chain, key));
            }
            Some("key") if !path.with_extension("cert").is_file() => {
                bail!(
                    "client key {} has no certificate {}",
                    path.display(),
                    path.with_extension("cert").display()
                );
            }
            _ => {}
        }
    }
    Ok(Some(found))
}

/// Whether TLS can use `chain` with the key in `key_pem` (a supported key type that belongs to the first
/// certificate), asked of the rustls that ureq uses, which would otherwise panic.
fn check_client_cert(chain: &[Certificate<'static>], key_pem: &[u8]) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| anyhow::anyhow!("no usable private key: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(certs, key_der)?;
    Ok(())
}

fn pem_certificates(pem: &[u8]) -> Vec<Certificate<'static>> {
    parse_pem(pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "[::2]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn config_from_vars() {
        let cfg = RegistryConfig::from_vars(|k| {
            match k {
                "RBUILD_REGISTRY_MIRROR" => Some("mirror.example:5000, http://127.0.0.1:5001/"),
                "REGISTRY_AUTH_FILE" => Some("/a/auth.json"),
                "HOME" => Some("/home/u"),
                "DOCKER_CONFIG" => Some("/d"),
                _ => None,
            }
            .map(String::from)
        });
        assert_eq!(
            cfg.mirrors,
            ["mirror.example:5000", "http://127.0.0.1:5001/"]
        );
        assert_eq!(
            cfg.auth_files(),
            [
                PathBuf::from("/a/auth.json"),
                PathBuf::from("/d/config.json"),
                PathBuf::from("/home/u/.docker/config.json"),
                PathBuf::from("/home/u/.config/containers/auth.json"),
            ]
        );
        assert_eq!(
            parse_mirror("http://127.0.0.1:5001/"),
            ("127.0.0.1:5001".to_string(), true)
        );
        assert_eq!(
            parse_mirror("https://Mirror.example/x"),
            ("mirror.example".to_string(), false)
        );
        assert_eq!(api_host("docker.io"), DOCKER_HUB_API);
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let e = trusted_certs(std::slice::from_ref(&bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = trusted_certs(&[missing]).unwrap_err().to_string();
        assert!(e.contains("cannot read registry CA file"), "{e}");
    }

    #[test]
    fn certs_d_entries() {
        let root = tempfile::tempdir().unwrap();
        let (first, second) = (root.path().join("a"), root.path().join("b"));
        let dirs = [first.clone(), second.clone()];
        std::fs::create_dir_all(second.join("reg.example:5000")).unwrap();
        assert!(host_certs(&dirs, "other.example").unwrap().is_none());
        let found = host_certs(&dirs, "reg.example:5000").unwrap().unwrap();
        assert!(found.roots.is_empty() && found.client.is_none());

        let host = second.join("reg.example:5000");
        std::fs::write(host.join("ca.crt"), "no certificate here").unwrap();
        let e = host_certs(&dirs, "reg.example:5000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.crt: no PEM certificate"), "{e}");
        std::fs::remove_file(host.join("ca.crt")).unwrap();

        std::fs::write(host.join("client.cert"), "x").unwrap();
        let e = host_certs(&dirs, "reg.example:5000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("client.cert has no key"), "{e}");
        std::fs::rename(host.join("client.cert"), host.join("client.key")).unwrap();
        let e = host_certs(&dirs, "reg.example:5000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("client.key has no certificate"), "{e}");

        // The first directory with an entry wins.
        std::fs::create_dir_all(first.join("reg.example:5000")).unwrap();
        let found = host_certs(&dirs, "reg.example:5000").unwrap().unwrap();
        assert!(found.client.is_none());
    }

    #[test]
    fn default_certs_dirs() {
        let cfg = RegistryConfig::from_vars(|k| (k == "HOME").then(|| "/home/u".to_string()));
        assert_eq!(
            cfg.certs_dirs,
            [
                PathBuf::from("/home/u/.config/containers/certs.d"),
                PathBuf::from("/etc/containers/certs.d"),
                PathBuf::from("/etc/docker/certs.d"),
            ]
        );
        let cfg = RegistryConfig::from_vars(|k| {
            (k == "RBUILD_REGISTRY_CERTS_DIR").then(|| "/c1,/c2".to_string())
        });
        assert_eq!(cfg.certs_dirs, [PathBuf::from("/c1"), PathBuf::from("/c2")]);
    }
}
