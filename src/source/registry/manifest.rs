//! Manifests as registries serve them: OCI and Docker schema 2 image manifests and indexes
//! (manifest lists), the `Accept` header that asks for them, and picking a platform's
//! manifest from an index.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::image::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::source::index::Descriptor;
use crate::store::Digest;

/// Media type of a Docker schema 2 image manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list (the Docker image index).
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header of manifest requests: every manifest and index type rbuild reads.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest accepted (containerd's limit).
pub(crate) const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// A manifest or index as fetched: its bytes, their digest and its media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// Media type (from the document, else the response's `Content-Type`).
    pub media_type: String,
    /// The bytes exactly as served.
    pub bytes: Vec<u8>,
}

impl Manifest {
    /// True for an image index / manifest list.
    pub fn is_index(&self) -> bool {
        is_index_type(&self.media_type)
    }
}

fn is_index_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

#[derive(Deserialize)]
struct Document {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The media type of a manifest: the document's `mediaType`, else the response's
/// `Content-Type`, else guessed from its fields. Schema 1 and unknown types are errors.
pub(crate) fn media_type_of(bytes: &[u8], content_type: Option<&str>) -> Result<String> {
    let doc: Document = serde_json::from_slice(bytes).context("the manifest is not valid JSON")?;
    if doc.schema_version == Some(1) {
        bail!("Docker schema 1 manifests are not supported (the image must be re-pushed with a current tool)");
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
        .filter(|c| {
            is_index_type(c) || c == MEDIA_TYPE_MANIFEST || c == MEDIA_TYPE_DOCKER_MANIFEST
        });
    let media_type = match doc.media_type.filter(|m| !m.is_empty()).or(header) {
        Some(m) => m,
        None if doc.manifests.is_some() => MEDIA_TYPE_INDEX.to_string(),
        None if doc.layers.is_some() => MEDIA_TYPE_MANIFEST.to_string(),
        None => bail!("the manifest has no media type and neither layers nor manifests"),
    };
    if !(is_index_type(&media_type)
        || media_type == MEDIA_TYPE_MANIFEST
        || media_type == MEDIA_TYPE_DOCKER_MANIFEST)
    {
        bail!("unsupported manifest media type {media_type:?}");
    }
    Ok(media_type)
}

/// An image manifest's config and layers.
pub(crate) struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Parses an image manifest (not an index).
pub(crate) fn parse_image(bytes: &[u8]) -> Result<ImageManifest> {
    let doc: Document = serde_json::from_slice(bytes).context("the manifest is not valid JSON")?;
    let config = doc.config.context("the manifest has no config")?;
    Ok(ImageManifest {
        config,
        layers: doc.layers.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_names_every_manifest_type() {
        for t in [
            MEDIA_TYPE_MANIFEST,
            MEDIA_TYPE_INDEX,
            MEDIA_TYPE_DOCKER_MANIFEST,
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        ] {
            assert!(
                MANIFEST_ACCEPT.split(", ").any(|a| a == t),
                "{t} missing from {MANIFEST_ACCEPT}"
            );
        }
        assert_eq!(MANIFEST_ACCEPT.split(", ").count(), 4);
    }

    #[test]
    fn media_types() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}","config":{{"digest":"sha256:{}","size":1}},"layers":[]}}"#,
            "a".repeat(64)
        );
        assert_eq!(
            media_type_of(docker.as_bytes(), None).unwrap(),
            MEDIA_TYPE_DOCKER_MANIFEST
        );
        let bare = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(media_type_of(bare, None).unwrap(), MEDIA_TYPE_INDEX);
        assert_eq!(
            media_type_of(
                bare,
                Some(&format!("{MEDIA_TYPE_DOCKER_MANIFEST_LIST}; charset=utf-8"))
            )
            .unwrap(),
            MEDIA_TYPE_DOCKER_MANIFEST_LIST
        );
        let e = media_type_of(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
        assert!(media_type_of(b"<html>", None).is_err());
        assert!(media_type_of(br#"{"mediaType":"text/plain"}"#, None).is_err());
        let m = parse_image(docker.as_bytes()).unwrap();
        assert_eq!(m.config.size, 1);
        assert!(m.layers.is_empty());
    }
}
