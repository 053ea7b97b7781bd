//! OCI distribution registry client: pull (manifests, index → platform, blobs verified
//! while streaming into the store, in parallel, with retries) and push (existence checks,
//! cross-repository mounts, monolithic or chunked uploads, manifests), with anonymous,
//! Basic and bearer-token authentication and credentials from docker / podman auth files.
//!
//! Everything is blocking; parallel transfers use scoped threads.

#![warn(missing_docs)]

mod auth;
mod config;
mod credentials;
mod error;
mod events;
mod manifest;
mod pull;
mod push;
#[cfg(test)]
mod test_server;
mod transport;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use ureq::tls::{Certificate, TlsConfig};
use ureq::Agent;

pub use config::RegistryConfig;
pub use error::RegistryError;
pub use events::{TransferEvent, TransferProgress};
pub use manifest::{Manifest, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST};
pub use pull::PulledImage;

use auth::{Challenge, Token};
use credentials::Credentials;

/// How many blobs are transferred at once.
const PARALLEL_TRANSFERS: usize = 3;
/// Blobs up to this size are uploaded in one PUT; larger ones in PATCH chunks of it.
const UPLOAD_CHUNK: u64 = 8 << 20;
/// The first pause between tries (doubled each time).
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// A registry client. Cheap to share between threads; keeps connections, learned
/// authentication challenges, tokens and credentials for its lifetime.
pub struct Client {
    cfg: RegistryConfig,
    /// Hosts allowed plain HTTP besides loopback: insecure registries, `http://` mirrors.
    plain_hosts: Vec<String>,
    /// The CA certificates every registry is checked against (system bundle, extra CAs).
    common_roots: Vec<Certificate<'static>>,
    verified: Agent,
    unverified: Agent,
    loopback: Agent,
    /// Agents of hosts with a certs.d entry (their own CAs, a client certificate), made on
    /// first use; `None` for hosts without one.
    host_agents: Mutex<HashMap<String, Option<Agent>>>,
    schemes: Mutex<HashMap<String, &'static str>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
    creds: Mutex<HashMap<(String, String), Option<Credentials>>>,
    retry_delay: Duration,
    chunk_size: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// An HTTP agent with rbuild's settings: no redirects followed, statuses returned rather
/// than raised, bounded connect and read/write times; `proxy` says whether the
/// environment's proxy settings apply.
fn new_agent(tls: TlsConfig, proxy: bool) -> Agent {
    let mut builder = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .timeout_per_write(Some(Duration::from_secs(120)))
        .tls_config(tls);
    if !proxy {
        builder = builder.proxy(None);
    }
    builder.build().new_agent()
}

impl Client {
    /// A client with `cfg`; fails when an extra CA file cannot be read.
    pub fn new(cfg: RegistryConfig) -> Result<Client> {
        let common_roots = config::trusted_certs(&cfg.ca_files)?;
        let unchecked = || TlsConfig::builder().disable_verification(true).build();
        let verified = new_agent(
            TlsConfig::builder()
                .root_certs(config::root_certs(&common_roots))
                .build(),
            true,
        );
        let mut plain_hosts: Vec<String> = cfg
            .insecure
            .iter()
            .map(|h| config::parse_mirror(h).0)
            .collect();
        plain_hosts.extend(
            cfg.mirrors
                .iter()
                .map(|m| config::parse_mirror(m))
                .filter(|(_, plain)| *plain)
                .map(|(host, _)| host),
        );
        Ok(Client {
            plain_hosts,
            common_roots,
            verified,
            unverified: new_agent(unchecked(), true),
            loopback: new_agent(unchecked(), false),
            host_agents: Mutex::default(),
            schemes: Mutex::default(),
            challenges: Mutex::default(),
            tokens: Mutex::default(),
            creds: Mutex::default(),
            retry_delay: RETRY_DELAY,
            chunk_size: UPLOAD_CHUNK,
            cfg,
        })
    }

    /// The agent of a host with a certs.d entry: its CAs trusted besides the common ones,
    /// its client certificate presented; `None` without an entry. Certificate checks are
    /// off for loopback and insecure registries, as for every agent.
    fn host_agent(&self, host: &str) -> Result<Option<Agent>> {
        if let Some(found) = lock(&self.host_agents).get(host) {
            return Ok(found.clone());
        }
        let agent = config::host_certs(&self.cfg.certs_dirs, host)?.map(|certs| {
            let mut roots = self.common_roots.clone();
            roots.extend(certs.roots);
            let tls = TlsConfig::builder()
                .root_certs(config::root_certs(&roots))
                .client_cert(certs.client)
                .disable_verification(self.plain_http_allowed(host))
                .build();
            new_agent(tls, !config::is_loopback(host))
        });
        lock(&self.host_agents).insert(host.to_string(), agent.clone());
        Ok(agent)
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// Credentials for a repository of `registry`, looked up once.
    fn credentials(&self, registry: &str, repository: &str) -> Result<Option<Credentials>> {
        let key = (registry.to_string(), repository.to_string());
        if let Some(found) = lock(&self.creds).get(&key) {
            return Ok(found.clone());
        }
        let found = credentials::lookup(&self.cfg.auth_files(), registry, repository)?;
        lock(&self.creds).insert(key, found.clone());
        Ok(found)
    }

    /// The (registry, API host) pairs to pull `registry` from: docker.io's mirrors first.
    fn pull_endpoints(&self, registry: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if config::api_host(registry) == config::DOCKER_HUB_API {
            for m in &self.cfg.mirrors {
                let (host, _) = config::parse_mirror(m);
                out.push((host.clone(), host));
            }
        }
        out.push((registry.to_string(), config::api_host(registry)));
        out
    }
}

/// Locks a mutex, ignoring poisoning (the guarded maps stay consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on every item with up to `threads` scoped threads; after a failure no new item
/// is started, and the failure of the earliest item is returned.
fn parallel<T: Sync>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let errors: Mutex<Vec<(usize, anyhow::Error)>> = Mutex::default();
    let work = || loop {
        if failed.load(Ordering::Relaxed) {
            return;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else {
            return;
        };
        if let Err(e) = f(item) {
            failed.store(true, Ordering::Relaxed);
            lock(&errors).push((i, e));
        }
    };
    std::thread::scope(|s| {
        let extra = threads.min(items.len()).saturating_sub(1);
        for _ in 0..extra {
            // Fewer helpers if threads cannot be had: the caller's thread works too.
            if std::thread::Builder::new()
                .name("registry".into())
                .spawn_scoped(s, work)
                .is_err()
            {
                break;
            }
        }
        work();
    });
    let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_runs_everything_and_reports_the_first_failure() {
        let seen = Mutex::new(Vec::new());
        let items: Vec<u32> = (0..20).collect();
        parallel(&items, 3, |i| {
            lock(&seen).push(*i);
            Ok(())
        })
        .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, items);
        let e = parallel(&items, 3, |i| {
            if *i >= 5 {
                anyhow::bail!("item {i}")
            }
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("item "), "{e}");
        parallel(&[] as &[u32], 3, |_| anyhow::bail!("never")).unwrap();
    }

    #[test]
    fn endpoints_put_mirrors_first_for_docker_hub_only() {
        let client = Client::new(RegistryConfig {
            mirrors: vec!["http://127.0.0.1:5001".into(), "mirror.example".into()],
            ..RegistryConfig::default()
        })
        .unwrap();
        assert_eq!(
            client.pull_endpoints("docker.io"),
            [
                ("127.0.0.1:5001".to_string(), "127.0.0.1:5001".to_string()),
                ("mirror.example".to_string(), "mirror.example".to_string()),
                ("docker.io".to_string(), "registry-1.docker.io".to_string()),
            ]
        );
        assert_eq!(
            client.pull_endpoints("ghcr.io"),
            [("ghcr.io".to_string(), "ghcr.io".to_string())]
        );
        assert!(client.plain_http_allowed("127.0.0.1:5001"));
        assert!(!client.plain_http_allowed("mirror.example"));
    }
}
