//! The OCI image documents rbuild reads and writes, typed once: content descriptors, image
//! manifests and image indexes (Docker's schema 2 manifests and manifest lists have the
//! same shape). Fields are declared in the order they are written (sorted by name), so the
//! bytes of a document rbuild writes do not depend on how it was built.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::store::Digest;

/// A content descriptor: an index entry, a manifest's config or one of its layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Annotations (`org.opencontainers.image.ref.name`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `sha256:...` of the content.
    pub digest: String,
    /// Media type of the content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    /// Size of the content in bytes.
    pub size: u64,
}

impl Descriptor {
    /// A descriptor of `size` bytes of `media_type` content with digest `digest`.
    pub fn new(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
        Descriptor {
            annotations: BTreeMap::new(),
            digest: digest.to_string(),
            media_type: media_type.to_string(),
            platform: None,
            size,
        }
    }

    /// The digest, parsed.
    pub fn digest(&self) -> Result<Digest> {
        self.digest
            .parse()
            .with_context(|| format!("bad descriptor digest {:?}", self.digest))
    }
}

/// The `platform` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    /// CPU architecture (`amd64`, `arm64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// CPU variant (`v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest: a config and layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Annotations (`--annotation`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Its own media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
}

impl ImageManifest {
    /// An OCI image manifest of `config` and `layers`.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> ImageManifest {
        ImageManifest {
            annotations: BTreeMap::new(),
            config,
            layers,
            media_type: super::MEDIA_TYPE_MANIFEST.to_string(),
            schema_version: 2,
        }
    }
}

/// An image index: manifests, by platform or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// Annotations (`--annotation index:K=V`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The manifests it lists.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Its own media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Always 2.
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
}

impl ImageIndex {
    /// An OCI image index of `manifests`.
    pub fn new(manifests: Vec<Descriptor>) -> ImageIndex {
        ImageIndex {
            annotations: BTreeMap::new(),
            manifests,
            media_type: super::MEDIA_TYPE_INDEX.to_string(),
            schema_version: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_written_with_sorted_keys() {
        let d = Digest::of(b"x");
        let m = ImageManifest::new(
            Descriptor::new(crate::image::MEDIA_TYPE_CONFIG, &d, 1),
            vec![Descriptor::new(crate::image::MEDIA_TYPE_LAYER_GZIP, &d, 2)],
        );
        let text = serde_json::to_string(&m).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        // serde_json's Value keeps keys sorted: the same bytes mean sorted keys.
        assert_eq!(text, serde_json::to_string(&value).unwrap());
        assert_eq!(serde_json::from_str::<ImageManifest>(&text).unwrap(), m);
        let mut entry = Descriptor::new(crate::image::MEDIA_TYPE_MANIFEST, &d, 3);
        entry
            .annotations
            .insert("org.opencontainers.image.ref.name".into(), "1".into());
        let index = serde_json::to_string(&ImageIndex::new(vec![entry])).unwrap();
        let value: serde_json::Value = serde_json::from_str(&index).unwrap();
        assert_eq!(index, serde_json::to_string(&value).unwrap());
    }
}
