//! Resolving what `FROM NAME` and `COPY --from=NAME` name: a `--build-context`, an image
//! in the store, or (by the pull policy) an image pulled from its registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{anyhow, bail, Context, Result};

use super::archive::import_layout_image;
use super::image::{open_stored, BaseImage};
use super::registry::TransferProgress;
use crate::image::reference::Reference;
use crate::plan::Platform;
use crate::store::{Digest, Store};

/// When base images are fetched from their registry (`--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only when the store does not have the image (the default): a build whose bases are
    /// all in the store needs no network.
    Missing,
    /// Every time, to pick up a moved tag.
    Always,
    /// Never: an image missing from the store is an error.
    Never,
}

/// A `--build-context NAME=VALUE` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// `docker-image://REF`: another image reference.
    Image(String),
    /// `oci-layout://DIR[:TAG|@DIGEST]`: an image in a local OCI layout.
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// `TAG` or `@DIGEST`, if given.
        selector: Option<String>,
    },
    /// A local directory, for `COPY --from=NAME`.
    Dir(PathBuf),
}

impl NamedContext {
    /// Parses the part after `NAME=`.
    pub fn parse(value: &str) -> Result<NamedContext> {
        if let Some(r) = value.strip_prefix("docker-image://") {
            Reference::parse(r)?;
            return Ok(NamedContext::Image(r.to_string()));
        }
        if let Some(rest) = value.strip_prefix("oci-layout://") {
            let (dir, selector) = match rest.rsplit_once('@') {
                Some((d, digest)) => {
                    digest.parse::<Digest>()?;
                    (d, Some(format!("@{digest}")))
                }
                None => match rest.rsplit_once(':') {
                    Some((d, tag)) if !tag.contains('/') => (d, Some(tag.to_string())),
                    _ => (rest, None),
                },
            };
            return Ok(NamedContext::OciLayout {
                dir: PathBuf::from(dir),
                selector,
            });
        }
        if let Some((scheme, _)) = value.split_once("://") {
            bail!("build context scheme {scheme}:// is not supported (docker-image://, oci-layout:// or a directory)");
        }
        let dir = PathBuf::from(value);
        if !dir.is_dir() {
            bail!("build context {value:?} is not a directory");
        }
        Ok(NamedContext::Dir(dir))
    }
}

/// Pulls an image from its registry into the store and returns its manifest digest.
pub trait Puller: Sync {
    /// Fetches `reference` (normalised, with tag or digest) for `platform`, reporting to
    /// `progress`.
    fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &Store,
        progress: TransferProgress,
    ) -> Result<Digest>;
}

impl Puller for super::registry::Client {
    fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &Store,
        progress: TransferProgress,
    ) -> Result<Digest> {
        let pulled = super::registry::Client::pull(self, reference, platform, store, progress)?;
        if reference.tag.is_some() {
            store.set_image(
                &reference.to_string(),
                &pulled.manifest_digest,
                &format!("pull docker://{reference}"),
            )?;
        }
        Ok(pulled.manifest_digest)
    }
}

/// Finds base images for a build.
pub struct Resolver<'a> {
    store: &'a Store,
    platform: Platform,
    policy: PullPolicy,
    named: BTreeMap<String, NamedContext>,
    puller: Option<&'a dyn Puller>,
    used: Mutex<Vec<(String, Digest)>>,
    /// Images resolved so far, by the name asked for, each behind a lock of its own:
    /// stages that share a base wait for one resolution (one pull, one import) instead
    /// of each doing it.
    resolved: Mutex<BTreeMap<String, Arc<Mutex<Option<BaseImage>>>>>,
}

impl<'a> Resolver<'a> {
    /// A resolver over `store`; `puller` is how images are fetched when the policy says so.
    pub fn new(
        store: &'a Store,
        platform: Platform,
        policy: PullPolicy,
        named: BTreeMap<String, NamedContext>,
        puller: Option<&'a dyn Puller>,
    ) -> Resolver<'a> {
        Resolver {
            store,
            platform,
            policy,
            named,
            puller,
            used: Mutex::new(Vec::new()),
            resolved: Mutex::new(BTreeMap::new()),
        }
    }

    fn named_context(&self, name: &str) -> Option<&NamedContext> {
        if let Some(c) = self.named.get(name) {
            return Some(c);
        }
        // `--build-context alpine=…` also answers `FROM docker.io/library/alpine:latest`.
        let wanted = Reference::parse(name).ok()?.with_default_tag();
        self.named.iter().find_map(|(k, v)| {
            let k = Reference::parse(k).ok()?.with_default_tag();
            (k == wanted).then_some(v)
        })
    }

    /// The directory a `--build-context NAME=DIR` gave, if `name` is one.
    pub fn local_dir(&self, name: &str) -> Option<&Path> {
        match self.named_context(name) {
            Some(NamedContext::Dir(d)) => Some(d),
            _ => None,
        }
    }

    /// The image `name` (as written in FROM or `COPY --from`) stands for.
    pub fn image(&self, name: &str) -> Result<BaseImage> {
        self.image_reporting(name, None)
    }

    /// As [`Resolver::image`], reporting a pull's progress to `progress`. A name is
    /// resolved once per build; a caller that asks while another resolves it waits for
    /// that answer (after a failure, it tries again itself).
    pub fn image_reporting(&self, name: &str, progress: TransferProgress) -> Result<BaseImage> {
        let slot = {
            let mut all = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(all.entry(name.to_string()).or_default())
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(image) = &*slot {
            return Ok(image.clone());
        }
        let image = self.resolve(name, progress)?;
        *slot = Some(image.clone());
        Ok(image)
    }

    fn resolve(&self, name: &str, progress: TransferProgress) -> Result<BaseImage> {
        let image = match self.named_context(name) {
            Some(NamedContext::Image(r)) => self.registry_image(r, progress)?,
            Some(NamedContext::OciLayout { dir, selector }) => {
                let digest = import_layout_image(self.store, dir, selector.as_deref())
                    .with_context(|| format!("build context {name}"))?;
                let label = format!("oci-layout://{}", dir.display());
                open_stored(self.store, &label, &digest, &self.platform)?
            }
            Some(NamedContext::Dir(d)) => bail!(
                "build context {name} is the directory {}; only COPY --from can use it, FROM needs an image",
                d.display()
            ),
            None => self.registry_image(name, progress)?,
        };
        if let Ok(mut used) = self.used.lock() {
            let entry = (image.name.clone(), image.digest.clone());
            if !used.contains(&entry) {
                used.push(entry);
            }
        }
        Ok(image)
    }

    fn registry_image(&self, name: &str, progress: TransferProgress) -> Result<BaseImage> {
        let reference = Reference::parse(name)?.with_default_tag();
        let full = reference.to_string();
        if self.policy != PullPolicy::Always {
            if let Some(d) = self.stored_digest(&reference)? {
                return open_stored(self.store, &full, &d, &self.platform);
            }
            if self.policy == PullPolicy::Never {
                bail!(
                    "image {full} is not in the local store and --pull=never forbids pulling it; import it with `rbuild image load FILE`"
                );
            }
        }
        let puller = self.puller.ok_or_else(|| {
            anyhow!("image {full} is not in the local store, and this rbuild cannot reach registries; import it with `rbuild image load FILE`")
        })?;
        let digest = puller
            .pull(&reference, &self.platform, self.store, progress)
            .with_context(|| format!("cannot pull {full}"))?;
        open_stored(self.store, &full, &digest, &self.platform)
    }

    fn stored_digest(&self, reference: &Reference) -> Result<Option<Digest>> {
        if let Some(d) = &reference.digest {
            let d: Digest = d.parse()?;
            return Ok(self.store.has_blob(&d).then_some(d));
        }
        Ok(match self.store.image(&reference.to_string())? {
            Some(r) => Some(r.manifest_digest()?),
            None => None,
        })
    }

    /// The base images resolved so far (name, digest), for `--metadata-file`.
    pub fn used(&self) -> Vec<(String, Digest)> {
        self.used.lock().map(|u| u.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_contexts() {
        assert_eq!(
            NamedContext::parse("docker-image://alpine:3").unwrap(),
            NamedContext::Image("alpine:3".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            NamedContext::parse(&format!("oci-layout:///x/y@{d}")).unwrap(),
            NamedContext::OciLayout {
                dir: "/x/y".into(),
                selector: Some(format!("@{d}"))
            }
        );
        assert_eq!(
            NamedContext::parse("oci-layout://lay:v1").unwrap(),
            NamedContext::OciLayout {
                dir: "lay".into(),
                selector: Some("v1".into())
            }
        );
        assert!(NamedContext::parse("git://x").is_err());
        assert!(NamedContext::parse("/definitely/not/here").is_err());
    }

    /// Pulls a config-only image, slowly, counting the pulls.
    struct SlowPuller(std::sync::atomic::AtomicUsize);

    impl Puller for SlowPuller {
        fn pull(
            &self,
            _: &Reference,
            _: &Platform,
            store: &Store,
            _: TransferProgress,
        ) -> Result<Digest> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(100));
            let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
            let c = store.write_blob(config)?;
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[]}}"#,
                config.len()
            );
            store.write_blob(manifest.as_bytes())
        }
    }

    #[test]
    fn stages_that_share_a_base_pull_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let puller = SlowPuller(Default::default());
        let r = Resolver::new(
            &store,
            Platform::host(),
            PullPolicy::Always,
            BTreeMap::new(),
            Some(&puller),
        );
        let digests: Vec<Digest> = std::thread::scope(|s| {
            let stages: Vec<_> = (0..3)
                .map(|_| s.spawn(|| r.image("busybox").unwrap().digest))
                .collect();
            stages.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(puller.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(digests.iter().all(|d| *d == digests[0]));
        // Within one build the name keeps its answer, even with --pull=always.
        r.image("busybox").unwrap();
        assert_eq!(puller.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn never_policy_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = Resolver::new(
            &store,
            Platform::host(),
            PullPolicy::Never,
            BTreeMap::new(),
            None,
        );
        let e = r.image("busybox").unwrap_err().to_string();
        assert!(
            e.contains("docker.io/library/busybox:latest") && e.contains("image load"),
            "{e}"
        );
    }
}
