//! Pulling: manifest (and index → platform manifest), config and layers into the store,
//! each blob verified by digest while it streams into a store temporary file.

use std::collections::BTreeSet;
use std::io::{BufWriter, Read, Write};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use ureq::http::Method;

use super::error::RegistryError;
use super::events::{emit, TransferEvent, TransferProgress};
use super::manifest::{media_type_of, parse_image, Manifest, MANIFEST_ACCEPT, MAX_MANIFEST_SIZE};
use super::transport::{status_error, transport_error, Repo, Req};
use super::{parallel, Client, PARALLEL_TRANSFERS};
use crate::image::reference::Reference;
use crate::image::Layer;
use crate::plan::platform::Platform;
use crate::source::index::{parse_index, select_platform};
use crate::store::{Digest, HashingWriter, Store};

/// A pulled image: every blob it names is in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference pulled.
    pub reference: Reference,
    /// Digest of the image manifest (the platform's, when the reference names an index).
    pub manifest_digest: Digest,
    /// The image manifest bytes as served.
    pub manifest: Vec<u8>,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// The config bytes.
    pub config: Vec<u8>,
    /// Layers, bottom first, with the config's diff ids and the manifest's media types.
    pub layers: Vec<Layer>,
}

/// The part of an image config a pull needs. (Not [`crate::image::config::ImageConfig`]:
/// configs written by other tools hold `null`s it does not take.)
#[derive(Deserialize)]
struct ConfigRootFs {
    rootfs: RootFsIds,
}

#[derive(Deserialize)]
struct RootFsIds {
    #[serde(default)]
    diff_ids: Vec<String>,
}

const PROGRESS_STEP: u64 = 1 << 20;
const READ_BUF: usize = 256 << 10;

impl Client {
    /// Fetches the manifest or index `reference` names (by digest if it has one, else by
    /// tag, `latest` by default), verifying the digest when the reference has one.
    pub fn get_manifest(&self, reference: &Reference) -> Result<Manifest> {
        self.on_endpoints(reference, |repo| fetch_top(self, repo, reference))
    }

    /// The image manifest `reference` names for `platform` (picked from an index).
    pub fn resolve(&self, reference: &Reference, platform: &Platform) -> Result<Manifest> {
        self.on_endpoints(reference, |repo| {
            let top = fetch_top(self, repo, reference)?;
            platform_manifest(self, repo, reference, top, platform)
        })
    }

    /// Pulls `reference` for `platform` into `store`: the manifest (and index), config and
    /// layers, skipping blobs already there; layers download in parallel.
    pub fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &Store,
        progress: TransferProgress,
    ) -> Result<PulledImage> {
        self.on_endpoints(reference, |repo| {
            self.pull_from(repo, reference, platform, store, progress)
        })
    }

    /// Runs `f` with a pull session on each endpoint of `reference`'s registry (mirrors of
    /// docker.io first) until one succeeds; the last endpoint's error is returned.
    fn on_endpoints<T>(&self, reference: &Reference, f: impl Fn(&Repo) -> Result<T>) -> Result<T> {
        let endpoints = self.pull_endpoints(&reference.registry);
        let scopes = vec![format!("repository:{}:pull", reference.repository)];
        let mut last = None;
        for (registry, host) in endpoints {
            let attempt = Repo::new(
                self,
                &registry,
                &host,
                &reference.repository,
                scopes.clone(),
            )
            .and_then(|repo| f(&repo));
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no registry to pull {reference} from")))
    }

    fn pull_from(
        &self,
        repo: &Repo,
        reference: &Reference,
        platform: &Platform,
        store: &Store,
        progress: TransferProgress,
    ) -> Result<PulledImage> {
        let top = fetch_top(self, repo, reference)?;
        if top.is_index() {
            store.write_blob(&top.bytes)?;
        }
        let manifest = platform_manifest(self, repo, reference, top, platform)?;
        store.write_blob(&manifest.bytes)?;
        emit(
            progress,
            TransferEvent::Resolved {
                manifest: manifest.digest.clone(),
            },
        );
        let image = parse_image(&manifest.bytes)
            .with_context(|| format!("manifest {} of \"{reference}\"", manifest.digest))?;
        let config_digest = image.config.digest()?;
        self.ensure_blob(repo, &config_digest, image.config.size, store, progress)?;
        let config = store.read_blob(&config_digest)?;
        let rootfs: ConfigRootFs = serde_json::from_slice(&config).with_context(|| {
            format!("config {config_digest} of \"{reference}\" is not an image config")
        })?;
        if rootfs.rootfs.diff_ids.len() != image.layers.len() {
            bail!(
                "\"{reference}\": the manifest has {} layers but the config {} diff ids",
                image.layers.len(),
                rootfs.rootfs.diff_ids.len()
            );
        }
        let mut layers = Vec::with_capacity(image.layers.len());
        for (desc, diff_id) in image.layers.iter().zip(&rootfs.rootfs.diff_ids) {
            layers.push(Layer {
                digest: desc.digest()?,
                diff_id: diff_id
                    .parse()
                    .with_context(|| format!("config {config_digest}: bad diff id"))?,
                size: desc.size,
                media_type: desc.media_type.clone(),
            });
        }
        let mut seen = BTreeSet::new();
        let unique: Vec<&Layer> = layers.iter().filter(|l| seen.insert(&l.digest)).collect();
        parallel(&unique, PARALLEL_TRANSFERS, |l| {
            self.ensure_blob(repo, &l.digest, l.size, store, progress)
        })?;
        Ok(PulledImage {
            reference: reference.clone(),
            manifest_digest: manifest.digest,
            manifest: manifest.bytes,
            config_digest,
            config,
            layers,
        })
    }

    /// Downloads blob `digest` of `size` bytes into the store unless it is there.
    fn ensure_blob(
        &self,
        repo: &Repo,
        digest: &Digest,
        size: u64,
        store: &Store,
        progress: TransferProgress,
    ) -> Result<()> {
        if store.has_blob(digest) {
            emit(
                progress,
                TransferEvent::Present {
                    digest: digest.clone(),
                    size,
                },
            );
            return Ok(());
        }
        self.with_retries(|| download_blob(repo, digest, size, store, progress))?;
        emit(
            progress,
            TransferEvent::Moved {
                digest: digest.clone(),
                size,
            },
        );
        Ok(())
    }
}

/// One try at a blob: stream it into a store temporary file, hashing on the way, and store
/// it only if its size and digest are right.
fn download_blob(
    repo: &Repo,
    digest: &Digest,
    size: u64,
    store: &Store,
    progress: TransferProgress,
) -> Result<()> {
    let what = format!("downloading blob {digest}");
    let req = Req::new(Method::GET, repo.url(&format!("blobs/{digest}")));
    let resp = repo.send(&req, &what)?;
    if resp.status() != 200 {
        return Err(status_error(resp, &repo.registry, &what));
    }
    let mut body = resp.into_body().into_reader().take(size.saturating_add(1));
    let mut tmp = store.temp_file()?;
    let mut out = HashingWriter::new(BufWriter::new(tmp.as_file_mut()));
    let mut buf = vec![0u8; READ_BUF];
    let (mut done, mut reported) = (0u64, 0u64);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(RegistryError::Transport {
                    what: what.clone(),
                    registry: repo.registry.clone(),
                    detail: format!("the transfer broke after {done} of {size} bytes: {e}"),
                    retryable: true,
                }
                .into())
            }
        };
        out.write_all(&buf[..n])
            .context("cannot write a blob to the cache")?;
        done += n as u64;
        if done - reported >= PROGRESS_STEP {
            reported = done;
            emit(
                progress,
                TransferEvent::Progress {
                    digest: digest.clone(),
                    done,
                    total: size,
                },
            );
        }
    }
    let (writer, actual, written) = out.finish();
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .context("cannot write a blob to the cache")?;
    if written < size {
        return Err(RegistryError::Transport {
            what,
            registry: repo.registry.clone(),
            detail: format!("the connection closed after {written} of {size} bytes"),
            retryable: true,
        }
        .into());
    }
    if written > size || actual != *digest {
        return Err(RegistryError::DigestMismatch {
            what: format!("blob from {}", repo.registry),
            expected: digest.clone(),
            actual,
        }
        .into());
    }
    store.commit_blob(tmp, digest)?;
    Ok(())
}

/// The manifest or index the reference names.
fn fetch_top(client: &Client, repo: &Repo, reference: &Reference) -> Result<Manifest> {
    let expected = match &reference.digest {
        Some(d) => Some(d.parse::<Digest>()?),
        None => None,
    };
    let target = match (&expected, &reference.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".to_string(),
    };
    client.with_retries(|| fetch_manifest(repo, reference, &target, expected.as_ref()))
}

/// The image manifest for `platform`: `top` itself, or its index entry's manifest.
fn platform_manifest(
    client: &Client,
    repo: &Repo,
    reference: &Reference,
    top: Manifest,
    platform: &Platform,
) -> Result<Manifest> {
    if !top.is_index() {
        return Ok(top);
    }
    let entries = parse_index(&top.bytes)?;
    let entry = select_platform(&entries, platform, &format!("\"{reference}\""))?;
    let digest = entry.digest()?;
    let target = digest.to_string();
    let m = client.with_retries(|| fetch_manifest(repo, reference, &target, Some(&digest)))?;
    if m.is_index() {
        bail!("\"{reference}\": the index entry for {platform} is itself an index, which is not supported");
    }
    Ok(m)
}

/// One try at `GET /v2/<name>/manifests/<target>`.
fn fetch_manifest(
    repo: &Repo,
    reference: &Reference,
    target: &str,
    expected: Option<&Digest>,
) -> Result<Manifest> {
    let what = format!("fetching manifest of \"{reference}\"");
    let req = Req::new(Method::GET, repo.url(&format!("manifests/{target}")))
        .header("accept", MANIFEST_ACCEPT);
    let mut resp = repo.send(&req, &what)?;
    match resp.status().as_u16() {
        200 => {}
        404 => {
            return Err(RegistryError::NotFound {
                reference: reference.to_string(),
                registry: repo.registry.clone(),
            }
            .into())
        }
        _ => return Err(status_error(resp, &repo.registry, &what)),
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let bytes = match resp
        .body_mut()
        .with_config()
        .limit(MAX_MANIFEST_SIZE)
        .read_to_vec()
    {
        Ok(b) => b,
        Err(ureq::Error::BodyExceedsLimit(_)) => {
            bail!("{what}: the manifest is larger than {MAX_MANIFEST_SIZE} bytes")
        }
        Err(e) => return Err(transport_error(e, &repo.registry, &what)),
    };
    let digest = Digest::of(&bytes);
    if let Some(want) = expected {
        if *want != digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest of \"{reference}\" from {}", repo.registry),
                expected: want.clone(),
                actual: digest,
            }
            .into());
        }
    }
    let media_type = media_type_of(&bytes, content_type.as_deref())
        .with_context(|| format!("{what} from {}", repo.registry))?;
    Ok(Manifest {
        digest,
        media_type,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::source::registry::test_server::{client, fixture, not_found, Reply, TestServer};
    use crate::source::registry::RegistryConfig;

    fn reference(host: &str, rest: &str) -> Reference {
        Reference::parse(&format!("{host}/{rest}"))
            .unwrap()
            .with_default_tag()
    }

    fn amd64() -> Platform {
        Platform::parse("linux/amd64").unwrap()
    }

    fn tmp_is_empty(store: &Store) -> bool {
        std::fs::read_dir(store.tmp_dir()).unwrap().count() == 0
    }

    #[test]
    fn pulls_verifies_and_skips_what_is_stored() {
        let fx = Arc::new(fixture(b"layer bytes", "amd64"));
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let (f, n) = (fx.clone(), blob_gets.clone());
        let server = TestServer::start(move |req| {
            if req.route().contains("/blobs/") {
                n.fetch_add(1, Ordering::SeqCst);
            }
            f.serve("app", req).unwrap_or_else(not_found)
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = client(RegistryConfig::default());
        let r = reference(&server.host(), "app");
        let events = Mutex::new(Vec::new());
        let record = |e: &TransferEvent| events.lock().unwrap().push(e.clone());
        let img = c.pull(&r, &amd64(), &store, Some(&record)).unwrap();
        assert_eq!(img.manifest_digest, fx.manifest_digest);
        assert_eq!(img.manifest, fx.manifest);
        assert_eq!(img.config_digest, fx.config_digest);
        assert_eq!(img.config, fx.config);
        assert_eq!(img.reference, r);
        assert_eq!(
            img.layers,
            [Layer {
                digest: fx.layer_digest.clone(),
                diff_id: fx.layer_digest.clone(),
                size: fx.layer.len() as u64,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            }]
        );
        for d in [&fx.manifest_digest, &fx.config_digest, &fx.layer_digest] {
            assert!(store.has_blob(d), "{d}");
        }
        assert_eq!(blob_gets.load(Ordering::SeqCst), 2);
        assert!(events.lock().unwrap().contains(&TransferEvent::Moved {
            digest: fx.layer_digest.clone(),
            size: fx.layer.len() as u64
        }));
        // Again: nothing downloaded but the manifest.
        events.lock().unwrap().clear();
        c.pull(&r, &amd64(), &store, Some(&record)).unwrap();
        assert_eq!(blob_gets.load(Ordering::SeqCst), 2);
        let events = events.into_inner().unwrap();
        assert!(
            events
                .iter()
                .all(|e| !matches!(e, TransferEvent::Moved { .. })),
            "{events:?}"
        );
        assert!(tmp_is_empty(&store));
    }

    #[test]
    fn refuses_a_blob_whose_bytes_do_not_match() {
        let fx = Arc::new(fixture(b"the real layer", "amd64"));
        let f = fx.clone();
        let server = TestServer::start(move |req| {
            if req.route().ends_with(&f.layer_digest.to_string()) {
                // Same length, other bytes.
                return Reply::ok(b"the fake layer".to_vec());
            }
            f.serve("app", req).unwrap_or_else(not_found)
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = client(RegistryConfig::default());
        let e = c
            .pull(&reference(&server.host(), "app"), &amd64(), &store, None)
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&fx.layer_digest.to_string()), "{msg}");
        assert!(msg.contains("does not match its digest"), "{msg}");
        assert!(matches!(
            e.downcast_ref::<RegistryError>(),
            Some(RegistryError::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&fx.layer_digest));
        assert!(tmp_is_empty(&store));
    }

    #[test]
    fn retries_a_blob_cut_short() {
        let fx = Arc::new(fixture(&[7u8; 100_000], "amd64"));
        let tries = Arc::new(AtomicUsize::new(0));
        let (f, t) = (fx.clone(), tries.clone());
        let server = TestServer::start(move |req| {
            if req.route().ends_with(&f.layer_digest.to_string()) {
                match t.fetch_add(1, Ordering::SeqCst) {
                    0 => return Reply::Drop,
                    1 => {
                        return Reply::Cut {
                            status: 200,
                            body: f.layer.clone(),
                            keep: 5000,
                        }
                    }
                    _ => {}
                }
            }
            f.serve("app", req).unwrap_or_else(not_found)
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = client(RegistryConfig::default());
        let img = c
            .pull(&reference(&server.host(), "app"), &amd64(), &store, None)
            .unwrap();
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert_eq!(store.read_blob(&img.layers[0].digest).unwrap(), fx.layer);
        assert!(tmp_is_empty(&store));
    }

    #[test]
    fn gives_up_after_bounded_retries() {
        let tries = Arc::new(AtomicUsize::new(0));
        let t = tries.clone();
        let server = TestServer::start(move |req| {
            if req.route().contains("/manifests/") {
                t.fetch_add(1, Ordering::SeqCst);
                return Reply::Drop;
            }
            Reply::ok("{}")
        });
        let c = client(RegistryConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let e = c
            .pull(&reference(&server.host(), "app"), &amd64(), &store, None)
            .unwrap_err()
            .to_string();
        assert_eq!(tries.load(Ordering::SeqCst), 4);
        assert!(e.contains("gave up after 4 tries"), "{e}");
        assert!(
            e.contains(&format!("cannot reach {}", server.host())),
            "{e}"
        );
        // 503s are retried the same way.
        let tries = Arc::new(AtomicUsize::new(0));
        let t = tries.clone();
        let server = TestServer::start(move |req| {
            if req.route().contains("/manifests/") {
                t.fetch_add(1, Ordering::SeqCst);
                return Reply::status(503).body("down for maintenance");
            }
            Reply::ok("{}")
        });
        let e = c
            .get_manifest(&reference(&server.host(), "app"))
            .unwrap_err()
            .to_string();
        assert_eq!(tries.load(Ordering::SeqCst), 4);
        assert!(e.contains("answered 503: down for maintenance"), "{e}");
    }

    #[test]
    fn unknown_tags_are_not_found() {
        let fx = fixture(b"x", "amd64");
        let server = TestServer::start(move |req| fx.serve("app", req).unwrap_or_else(not_found));
        let c = client(RegistryConfig::default());
        let r = reference(&server.host(), "app:nope");
        let e = c.get_manifest(&r).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "\"{}/app:nope\": not found in {}",
                server.host(),
                server.host()
            )
        );
    }

    #[test]
    fn picks_the_platform_from_an_index_and_checks_digests() {
        let amd = Arc::new(fixture(b"amd64 layer", "amd64"));
        let arm = Arc::new(fixture(b"arm64 layer", "arm64"));
        let entry = |f: &crate::source::registry::test_server::Fixture, arch: &str| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                crate::image::MEDIA_TYPE_MANIFEST,
                f.manifest_digest,
                f.manifest.len()
            )
        };
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{}]}}"#,
            crate::image::MEDIA_TYPE_INDEX,
            entry(&amd, "amd64"),
            entry(&arm, "arm64")
        );
        let index_digest = Digest::of(index.as_bytes());
        let (a, b, idx) = (amd.clone(), arm.clone(), index.clone());
        let server = TestServer::start(move |req| {
            if req.route() == "/v2/multi/manifests/latest" {
                return Reply::ok(idx.clone());
            }
            a.serve("multi", req)
                .filter(|_| !req.route().ends_with("/latest"))
                .or_else(|| {
                    b.serve("multi", req)
                        .filter(|_| !req.route().ends_with("/latest"))
                })
                .unwrap_or_else(not_found)
        });
        let c = client(RegistryConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = reference(&server.host(), "multi");
        let top = c.get_manifest(&r).unwrap();
        assert!(top.is_index());
        assert_eq!(top.digest, index_digest);
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let img = c.pull(&r, &arm64, &store, None).unwrap();
        assert_eq!(img.manifest_digest, arm.manifest_digest);
        assert_eq!(img.layers[0].digest, arm.layer_digest);
        assert!(store.has_blob(&index_digest));
        assert!(!store.has_blob(&amd.layer_digest));
        let m = c.resolve(&r, &amd64()).unwrap();
        assert_eq!(m.digest, amd.manifest_digest);
        let e = c
            .resolve(&r, &Platform::parse("linux/s390x").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("available: linux/amd64, linux/arm64"), "{e}");
        // A reference by digest must get exactly those bytes.
        let by_digest =
            Reference::parse(&format!("{}/multi@{}", server.host(), amd.manifest_digest)).unwrap();
        assert_eq!(
            c.get_manifest(&by_digest).unwrap().digest,
            amd.manifest_digest
        );
        let wrong =
            Reference::parse(&format!("{}/multi@{}", server.host(), Digest::of(b"other"))).unwrap();
        let e = c.get_manifest(&wrong).unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn docker_hub_pulls_go_to_mirrors_first() {
        let fx = Arc::new(fixture(b"mirrored", "amd64"));
        let empty = TestServer::start(|req| {
            if req.route() == "/v2/" {
                return Reply::ok("{}");
            }
            not_found()
        });
        let f = fx.clone();
        let mirror =
            TestServer::start(move |req| f.serve("library/busybox", req).unwrap_or_else(not_found));
        let c = client(RegistryConfig {
            mirrors: vec![format!("http://{}", empty.host()), mirror.host()],
            ..RegistryConfig::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = Reference::parse("busybox").unwrap().with_default_tag();
        let img = c.pull(&r, &amd64(), &store, None).unwrap();
        assert_eq!(img.manifest_digest, fx.manifest_digest);
        assert_eq!(
            img.reference.to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn manifest_bytes_must_match_the_reference_digest() {
        let fx = fixture(b"x", "amd64");
        let claimed = Digest::of(b"claimed");
        let body = fx.manifest.clone();
        let server = TestServer::start(move |req| {
            if req.route().contains("/manifests/") {
                return Reply::ok(body.clone());
            }
            Reply::ok("{}")
        });
        let c = client(RegistryConfig::default());
        let r = Reference::parse(&format!("{}/app@{claimed}", server.host())).unwrap();
        let e = c.get_manifest(&r).unwrap_err().to_string();
        assert!(
            e.contains(&claimed.to_string()) && e.contains(&fx.manifest_digest.to_string()),
            "{e}"
        );
    }
}
