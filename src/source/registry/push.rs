//! Pushing: each blob is checked for (HEAD), mounted from another repository when the caller
//! names candidates, or uploaded straight from the store file (one PUT, or PATCH chunks
//! and a closing PUT); then the manifest is PUT under the tag.

use std::collections::BTreeSet;
use std::fs::File;

use anyhow::{anyhow, bail, Context, Result};
use ureq::http::Method;

use super::config::api_host;
use super::events::{emit, TransferEvent, TransferProgress};
use super::transport::{location, resolve_location, status_error, with_query, Payload, Repo, Req};
use super::{parallel, Client, PARALLEL_TRANSFERS};
use crate::image::reference::Reference;
use crate::image::BuiltImage;
use crate::store::{Digest, Store};

const OCTET_STREAM: &str = "application/octet-stream";

impl Client {
    /// Pushes `image` (its blobs from `store`) to `reference`, under its tag (`latest` when
    /// it has neither tag nor digest), and returns the manifest digest. `mount_from` names
    /// repositories of the same registry that may already hold the blobs (e.g. the base
    /// image's): they are mounted instead of uploaded where the registry allows.
    pub fn push(
        &self,
        reference: &Reference,
        image: &BuiltImage,
        store: &Store,
        mount_from: &[String],
    ) -> Result<Digest> {
        self.push_reporting(reference, image, store, mount_from, None)
    }

    /// As [`Client::push`], reporting each blob's bytes to `progress`.
    pub fn push_reporting(
        &self,
        reference: &Reference,
        image: &BuiltImage,
        store: &Store,
        mount_from: &[String],
        progress: TransferProgress,
    ) -> Result<Digest> {
        let sources: Vec<&str> = mount_from
            .iter()
            .map(String::as_str)
            .filter(|r| *r != reference.repository && !r.is_empty())
            .collect();
        let repo = self.push_session(reference, &sources)?;
        // The config goes first, alone: its answers teach the session the registry's
        // authentication before the layers go in parallel.
        self.push_blob(&repo, &image.config_digest, store, &sources, progress)?;
        let mut seen = BTreeSet::from([&image.config_digest]);
        let layers: Vec<&Digest> = image
            .layers
            .iter()
            .map(|l| &l.digest)
            .filter(|d| seen.insert(*d))
            .collect();
        parallel(&layers, PARALLEL_TRANSFERS, |d| {
            self.push_blob(&repo, d, store, &sources, progress)
        })?;
        let media_type = image.manifest_media_type();
        self.put_manifest(&repo, reference, &image.manifest, &media_type)
    }

    /// PUTs a manifest or index (whose blobs and manifests must already be in the
    /// repository) to `reference` with content type `media_type`; returns its digest.
    pub fn push_manifest(
        &self,
        reference: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest> {
        let repo = self.push_session(reference, &[])?;
        self.put_manifest(&repo, reference, bytes, media_type)
    }

    fn push_session(&self, reference: &Reference, sources: &[&str]) -> Result<Repo<'_>> {
        let mut scopes = vec![format!("repository:{}:pull,push", reference.repository)];
        scopes.extend(sources.iter().map(|s| format!("repository:{s}:pull")));
        Repo::new(
            self,
            &reference.registry,
            &api_host(&reference.registry),
            &reference.repository,
            scopes,
        )
    }

    fn put_manifest(
        &self,
        repo: &Repo,
        reference: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if let Some(d) = &reference.digest {
            if *d != digest.to_string() {
                bail!("cannot push to \"{reference}\": the manifest's digest is {digest}");
            }
        }
        let target = match (&reference.tag, &reference.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => "latest".to_string(),
        };
        let what = format!("pushing manifest to \"{reference}\"");
        let req = Req::new(Method::PUT, repo.url(&format!("manifests/{target}")))
            .header("content-type", media_type)
            .body(Payload::Bytes(bytes));
        self.with_retries(|| {
            let resp = repo.send(&req, &what)?;
            if !matches!(resp.status().as_u16(), 200 | 201 | 202 | 204) {
                return Err(status_error(resp, &repo.registry, &what));
            }
            let said = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok());
            if let Some(said) = said.filter(|s| *s != digest.to_string()) {
                bail!(
                    "{what}: {} stored it as {said}, not {digest}",
                    repo.registry
                );
            }
            Ok(())
        })?;
        Ok(digest)
    }

    /// Makes blob `digest` present in the repository.
    fn push_blob(
        &self,
        repo: &Repo,
        digest: &Digest,
        store: &Store,
        sources: &[&str],
        progress: TransferProgress,
    ) -> Result<()> {
        let file = store.open_blob(digest)?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot read blob {digest} in the cache"))?
            .len();
        let what = format!("uploading blob {digest}");
        let present = || {
            emit(
                progress,
                TransferEvent::Present {
                    digest: digest.clone(),
                    size: len,
                },
            )
        };
        self.with_retries(|| {
            let head = Req::new(Method::HEAD, repo.url(&format!("blobs/{digest}")));
            let resp = repo.send(&head, &what)?;
            match resp.status().as_u16() {
                200 => {
                    present();
                    return Ok(());
                }
                404 => {}
                _ => return Err(status_error(resp, &repo.registry, &what)),
            }
            let upload = match self.try_mount(repo, digest, sources, &what)? {
                Mount::Done => {
                    present();
                    return Ok(());
                }
                Mount::Session(url) => url,
                Mount::Failed => self.start_upload(repo, &what)?,
            };
            let blob = Blob {
                file: &file,
                len,
                digest,
            };
            self.upload(repo, &upload, &blob, &what, progress)?;
            emit(
                progress,
                TransferEvent::Moved {
                    digest: digest.clone(),
                    size: len,
                },
            );
            Ok(())
        })
    }

    /// Tries each mount source in turn.
    fn try_mount(
        &self,
        repo: &Repo,
        digest: &Digest,
        sources: &[&str],
        what: &str,
    ) -> Result<Mount> {
        let digest = digest.to_string();
        for from in sources {
            let url = with_query(
                &repo.url("blobs/uploads/"),
                &[("mount", &digest), ("from", from)],
            );
            let req = Req::new(Method::POST, url.clone());
            let resp = repo.send(&req, what)?;
            match resp.status().as_u16() {
                201 => return Ok(Mount::Done),
                // Not mounted, but an upload session was opened: use it.
                202 => {
                    if let Some(loc) = location(&resp) {
                        return Ok(Mount::Session(resolve_location(&url, &loc)));
                    }
                }
                s if s >= 500 => return Err(status_error(resp, &repo.registry, what)),
                // Not allowed from there (or not supported): try the next, then upload.
                _ => {}
            }
        }
        Ok(Mount::Failed)
    }

    /// `POST /v2/<name>/blobs/uploads/`: the upload session's URL.
    fn start_upload(&self, repo: &Repo, what: &str) -> Result<String> {
        let url = repo.url("blobs/uploads/");
        let resp = repo.send(&Req::new(Method::POST, url.clone()), what)?;
        if resp.status() != 202 {
            return Err(status_error(resp, &repo.registry, what));
        }
        let loc = location(&resp).ok_or_else(|| {
            anyhow!(
                "{what}: {} opened an upload without a Location",
                repo.registry
            )
        })?;
        Ok(resolve_location(&url, &loc))
    }

    /// Sends the blob's bytes to the upload session at `url` and closes it with the digest.
    fn upload(
        &self,
        repo: &Repo,
        url: &str,
        blob: &Blob<'_>,
        what: &str,
        progress: TransferProgress,
    ) -> Result<()> {
        let (file, len, digest) = (blob.file, blob.len, blob.digest);
        let digest_s = digest.to_string();
        let close = |url: &str, body: Payload| -> Result<()> {
            let req = Req::new(Method::PUT, with_query(url, &[("digest", &digest_s)]))
                .header("content-type", OCTET_STREAM)
                .body(body);
            let resp = repo.send(&req, what)?;
            if !matches!(resp.status().as_u16(), 201 | 204) {
                return Err(status_error(resp, &repo.registry, what));
            }
            Ok(())
        };
        if len <= self.chunk_size {
            return close(
                url,
                Payload::File {
                    file,
                    offset: 0,
                    len,
                },
            );
        }
        let mut url = url.to_string();
        let mut offset = 0;
        while offset < len {
            let n = self.chunk_size.min(len - offset);
            let req = Req::new(Method::PATCH, url.clone())
                .header("content-type", OCTET_STREAM)
                .header("content-range", format!("{offset}-{}", offset + n - 1))
                .body(Payload::File {
                    file,
                    offset,
                    len: n,
                });
            let resp = repo.send(&req, what)?;
            if !matches!(resp.status().as_u16(), 202 | 204) {
                return Err(status_error(resp, &repo.registry, what));
            }
            if let Some(loc) = location(&resp) {
                url = resolve_location(&url, &loc);
            }
            offset += n;
            emit(
                progress,
                TransferEvent::Progress {
                    digest: digest.clone(),
                    done: offset,
                    total: len,
                },
            );
        }
        close(&url, Payload::Empty)
    }
}

/// A blob of the store being uploaded.
struct Blob<'a> {
    file: &'a File,
    len: u64,
    digest: &'a Digest,
}

/// What a mount attempt gave.
enum Mount {
    /// The blob is now in the repository.
    Done,
    /// Not mounted; upload to this session.
    Session(String),
    /// Not mounted and no session: start one.
    Failed,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use percent_encoding::percent_decode_str;

    use super::*;
    use crate::image::Layer;
    use crate::source::registry::test_server::{client, fixture, Reply, TestRequest, TestServer};
    use crate::source::registry::RegistryConfig;

    /// Just enough of the distribution upload protocol, with a log of what was asked.
    #[derive(Default)]
    struct Fake {
        blobs: Mutex<HashMap<String, Vec<u8>>>,
        uploads: Mutex<HashMap<String, Vec<u8>>>,
        manifests: Mutex<HashMap<String, Vec<u8>>>,
        log: Mutex<Vec<String>>,
        next_id: AtomicUsize,
    }

    fn query(req: &TestRequest, key: &str) -> Option<String> {
        let q = req.path.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| percent_decode_str(v).decode_utf8_lossy().into_owned())
        })
    }

    impl Fake {
        fn handle(&self, req: &TestRequest) -> Reply {
            let route = req.route().to_string();
            let range = req.header("content-range").unwrap_or("");
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {route} {range}", req.method).trim().to_string());
            let Some(rest) = route.strip_prefix("/v2/") else {
                return Reply::status(404);
            };
            if rest.is_empty() {
                return Reply::ok("{}");
            }
            if let Some((repo, id)) = rest.split_once("/blobs/uploads/") {
                return self.upload(req, repo, id);
            }
            if let Some((repo, digest)) = rest.split_once("/blobs/") {
                let key = format!("{repo}@{digest}");
                let status = if self.blobs.lock().unwrap().contains_key(&key) {
                    200
                } else {
                    404
                };
                return Reply::status(status);
            }
            if let Some((repo, tag)) = rest.split_once("/manifests/") {
                let digest = Digest::of(&req.body);
                self.manifests
                    .lock()
                    .unwrap()
                    .insert(format!("{repo}:{tag}"), req.body.clone());
                return Reply::status(201).header("Docker-Content-Digest", &digest.to_string());
            }
            Reply::status(404)
        }

        fn upload(&self, req: &TestRequest, repo: &str, id: &str) -> Reply {
            let location = |id: &str| format!("/v2/{repo}/blobs/uploads/{id}?_state=s");
            match req.method.as_str() {
                "POST" => {
                    if let (Some(d), Some(from)) = (query(req, "mount"), query(req, "from")) {
                        let mut blobs = self.blobs.lock().unwrap();
                        if let Some(bytes) = blobs.get(&format!("{from}@{d}")).cloned() {
                            blobs.insert(format!("{repo}@{d}"), bytes);
                            return Reply::status(201);
                        }
                    }
                    let mut uploads = self.uploads.lock().unwrap();
                    let id = format!("u{}", self.next_id.fetch_add(1, Ordering::SeqCst));
                    uploads.insert(id.clone(), Vec::new());
                    Reply::status(202).header("Location", &location(&id))
                }
                "PATCH" => {
                    let mut uploads = self.uploads.lock().unwrap();
                    let Some(data) = uploads.get_mut(id) else {
                        return Reply::status(404);
                    };
                    let start = req
                        .header("content-range")
                        .and_then(|r| r.split('-').next()?.parse::<usize>().ok());
                    if start != Some(data.len()) {
                        return Reply::status(416);
                    }
                    data.extend_from_slice(&req.body);
                    Reply::status(202).header("Location", &location(id))
                }
                "PUT" => {
                    let mut uploads = self.uploads.lock().unwrap();
                    let Some(mut data) = uploads.remove(id) else {
                        return Reply::status(404);
                    };
                    data.extend_from_slice(&req.body);
                    let digest = Digest::of(&data).to_string();
                    if query(req, "digest") != Some(digest.clone()) {
                        return Reply::status(400).body(
                            r#"{"errors":[{"code":"DIGEST_INVALID","message":"digest invalid"}]}"#,
                        );
                    }
                    self.blobs
                        .lock()
                        .unwrap()
                        .insert(format!("{repo}@{digest}"), data);
                    Reply::status(201)
                }
                _ => Reply::status(405),
            }
        }

        fn take_log(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    fn built(store: &Store, layer: &[u8]) -> BuiltImage {
        let fx = fixture(layer, "amd64");
        store.write_blob(&fx.layer).unwrap();
        store.write_blob(&fx.config).unwrap();
        BuiltImage {
            manifest_digest: fx.manifest_digest.clone(),
            manifest: fx.manifest.clone(),
            config_digest: fx.config_digest.clone(),
            config: fx.config.clone(),
            layers: vec![Layer {
                digest: fx.layer_digest.clone(),
                diff_id: fx.layer_digest.clone(),
                size: fx.layer.len() as u64,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            }],
        }
    }

    #[test]
    fn uploads_in_chunks_skips_present_blobs_and_mounts() {
        let fake = Arc::new(Fake::default());
        let f = fake.clone();
        let server = TestServer::start(move |req| f.handle(req));
        let host = server.host();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let image = built(&store, b"0123456789");
        let mut c = client(RegistryConfig::default());
        c.chunk_size = 4;
        let r = Reference::parse(&format!("{host}/app:v1")).unwrap();
        let digest = c.push(&r, &image, &store, &[]).unwrap();
        assert_eq!(digest, image.manifest_digest);
        assert_eq!(fake.manifests.lock().unwrap()["app:v1"], image.manifest);
        assert_eq!(
            fake.blobs.lock().unwrap()[&format!("app@{}", image.layers[0].digest)],
            b"0123456789"
        );
        let log = fake.take_log();
        let ranges = |session: &str| -> Vec<String> {
            log.iter()
                .filter_map(|l| l.strip_prefix(&format!("PATCH /v2/app/blobs/uploads/{session} ")))
                .map(String::from)
                .collect()
        };
        // The config goes first (session u0), then the layer in 4-byte chunks, in order.
        assert_eq!(
            ranges("u0").len(),
            image.config.len().div_ceil(4),
            "{log:?}"
        );
        assert_eq!(ranges("u1"), ["0-3", "4-7", "8-9"], "{log:?}");

        // Pushing again uploads nothing.
        c.push(&r, &image, &store, &[]).unwrap();
        let log = fake.take_log();
        assert!(
            log.iter()
                .all(|l| !l.starts_with("PATCH") && !l.starts_with("POST")),
            "{log:?}"
        );

        // Another repository mounts the blobs from the first.
        let r2 = Reference::parse(&format!("{host}/other:v1")).unwrap();
        c.push(&r2, &image, &store, &["app".to_string()]).unwrap();
        let log = fake.take_log();
        assert!(log.iter().all(|l| !l.starts_with("PATCH")), "{log:?}");
        assert!(fake
            .blobs
            .lock()
            .unwrap()
            .contains_key(&format!("other@{}", image.config_digest)));
    }

    #[test]
    fn small_blobs_go_in_one_put_and_errors_are_clear() {
        let fake = Arc::new(Fake::default());
        let f = fake.clone();
        let server = TestServer::start(move |req| f.handle(req));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let image = built(&store, b"small");
        let c = client(RegistryConfig::default());
        let r = Reference::parse(&format!("{}/app", server.host())).unwrap();
        c.push(&r, &image, &store, &[]).unwrap();
        assert!(fake.manifests.lock().unwrap().contains_key("app:latest"));
        let log = fake.take_log();
        assert!(log.iter().all(|l| !l.starts_with("PATCH")), "{log:?}");
        // A digest reference must name these very bytes.
        let wrong =
            Reference::parse(&format!("{}/app@{}", server.host(), Digest::of(b"x"))).unwrap();
        let e = c.push(&wrong, &image, &store, &[]).unwrap_err().to_string();
        assert!(e.contains("the manifest's digest is"), "{e}");
        // A blob missing from the store is named.
        let mut broken = image.clone();
        broken.layers[0].digest = Digest::of(b"not stored");
        let e = c.push(&r, &broken, &store, &[]).unwrap_err().to_string();
        assert!(e.contains(&Digest::of(b"not stored").to_string()), "{e}");
    }
}
