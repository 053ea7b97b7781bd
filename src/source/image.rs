//! Images whose blobs are in the store: manifests and indexes read back, the host's
//! platform picked from an index, and the result handed to the solver as a base.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::image::config::ImageConfig;
use crate::image::oci::ImageManifest;
use crate::image::{BuiltImage, Layer};
use crate::plan::Platform;
use crate::source::index::{parse_index, select_platform};
use crate::store::{Digest, Store};

/// A base image ready to build on: every blob it names is in the store.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// What the Dockerfile named, normalised (e.g. `docker.io/library/busybox:latest`).
    pub name: String,
    /// Digest of the manifest (or of the index it was selected from, when there was one).
    pub digest: Digest,
    /// Its config.
    pub config: ImageConfig,
    /// Its layers, bottom first.
    pub layers: Vec<Layer>,
}

/// What a manifest-like blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2).
    Manifest,
    /// An image index or Docker manifest list.
    Index,
}

/// Tells a manifest from an index by `mediaType`, or by shape when it has none.
pub fn manifest_kind(doc: &Value) -> Result<ManifestKind> {
    match doc.get("mediaType").and_then(Value::as_str) {
        Some(
            "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json",
        ) => Ok(ManifestKind::Index),
        Some(
            "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v2+json",
        ) => Ok(ManifestKind::Manifest),
        Some(other) => bail!("unsupported manifest media type {other:?}"),
        None if doc.get("manifests").is_some() => Ok(ManifestKind::Index),
        None if doc.get("layers").is_some() => Ok(ManifestKind::Manifest),
        None => bail!("not an image manifest or index"),
    }
}

/// The layer media type rbuild writes in its own manifests for a layer of `media_type`
/// (Docker's names become the OCI ones; the bytes are the same).
pub fn oci_layer_media_type(media_type: &str) -> String {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip".into()
        }
        "application/vnd.docker.image.rootfs.diff.tar" => {
            "application/vnd.oci.image.layer.v1.tar".into()
        }
        other => other.into(),
    }
}

/// Opens the image whose manifest or index is blob `digest`, choosing `platform` from an
/// index. Every blob must be present.
pub fn open_stored(
    store: &Store,
    name: &str,
    digest: &Digest,
    platform: &Platform,
) -> Result<BaseImage> {
    let manifest_digest = platform_manifest(store, name, digest, platform)?;
    let mut image = open_manifest(store, name, &manifest_digest)?;
    image.digest = digest.clone();
    Ok(image)
}

/// The stored image `name` (manifest or index blob `digest`) as a build's result is: the
/// platform's manifest and config bytes as stored, and its layers; for saving or pushing
/// it again.
pub fn open_stored_built(
    store: &Store,
    name: &str,
    digest: &Digest,
    platform: &Platform,
) -> Result<BuiltImage> {
    let manifest_digest = platform_manifest(store, name, digest, platform)?;
    let image = open_manifest(store, name, &manifest_digest)?;
    let manifest = store.read_blob(&manifest_digest)?;
    let config_digest = serde_json::from_slice::<ImageManifest>(&manifest)?
        .config
        .digest()?;
    let config = store.read_blob(&config_digest)?;
    Ok(BuiltImage {
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers: image.layers,
    })
}

/// The digest of `platform`'s manifest: `digest` itself, or the entry chosen from the
/// index it names.
fn platform_manifest(
    store: &Store,
    name: &str,
    digest: &Digest,
    platform: &Platform,
) -> Result<Digest> {
    let bytes = store
        .read_blob(digest)
        .with_context(|| format!("image {name} is incomplete in the store"))?;
    let doc: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("image {name}: manifest {digest} is not JSON"))?;
    match manifest_kind(&doc)? {
        ManifestKind::Index => {
            let entries = parse_index(&bytes).with_context(|| format!("image {name}"))?;
            select_platform(&entries, platform, &format!("image {name}"))?.digest()
        }
        ManifestKind::Manifest => Ok(digest.clone()),
    }
}

fn open_manifest(store: &Store, name: &str, digest: &Digest) -> Result<BaseImage> {
    let bytes = store.read_blob(digest).with_context(|| {
        format!("image {name}: the manifest for this platform is not in the store")
    })?;
    let doc: Value = serde_json::from_slice(&bytes)?;
    if manifest_kind(&doc)? != ManifestKind::Manifest {
        bail!("image {name}: nested image indexes are not supported");
    }
    let manifest: ImageManifest = serde_json::from_value(doc).with_context(|| {
        format!("image {name}: manifest {digest} is not valid (its config and layer descriptors)")
    })?;
    let config_digest = manifest.config.digest()?;
    let config_bytes = store
        .read_blob(&config_digest)
        .with_context(|| format!("image {name}: config is missing"))?;
    check_size(
        name,
        "config",
        &config_digest,
        manifest.config.size,
        config_bytes.len() as u64,
    )?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes).with_context(|| {
        format!("image {name}: config {config_digest} is not a valid image config")
    })?;
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        bail!(
            "image {name}: the manifest has {} layers but the config {} diff ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        );
    }
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        if l.media_type.contains("foreign") || l.media_type.contains("nondistributable") {
            bail!("image {name}: foreign (non-distributable) layers are not supported");
        }
        let digest = l.digest()?;
        if !store.has_blob(&digest) {
            bail!("image {name} is incomplete in the store: layer {digest} is missing");
        }
        let on_disk = std::fs::metadata(store.blob_path(&digest))
            .with_context(|| format!("image {name}: layer {digest}"))?
            .len();
        check_size(name, "layer", &digest, l.size, on_disk)?;
        layers.push(Layer {
            digest,
            diff_id: diff_id.parse()?,
            size: on_disk,
            media_type: oci_layer_media_type(&l.media_type),
        });
    }
    Ok(BaseImage {
        name: name.to_string(),
        digest: digest.clone(),
        config,
        layers,
    })
}

/// Checks a descriptor's size against the blob's real size.
fn check_size(name: &str, what: &str, digest: &Digest, declared: u64, actual: u64) -> Result<()> {
    if declared != actual {
        bail!(
            "image {name}: the {what} {digest} is {actual} bytes, but its descriptor says {declared}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_by_media_type_or_shape() {
        assert_eq!(
            manifest_kind(&json!({"manifests": []})).unwrap(),
            ManifestKind::Index
        );
        assert_eq!(
            manifest_kind(&json!({"layers": []})).unwrap(),
            ManifestKind::Manifest
        );
        assert!(manifest_kind(&json!({"mediaType": "text/plain"})).is_err());
    }
}
