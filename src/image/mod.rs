//! A built image as the solver hands it to the exporters: config and layers in the store.

pub mod config;
pub mod oci;
pub mod reference;

use crate::store::Digest;

/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker's media type of a gzip-compressed layer (`oci-mediatypes=false`).
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker's media type of an uncompressed layer.
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker's media type of an image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// How a layer's tar is compressed (`-o compression=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip (levels 0–9; the default, 6).
    Gzip,
    /// zstd (levels 1–22; default 3).
    Zstd,
    /// None: the blob is the tar.
    Uncompressed,
}

impl LayerCompression {
    /// Parses `gzip`, `zstd` or `uncompressed`.
    pub fn parse(s: &str) -> Option<LayerCompression> {
        match s {
            "gzip" => Some(LayerCompression::Gzip),
            "zstd" => Some(LayerCompression::Zstd),
            "uncompressed" => Some(LayerCompression::Uncompressed),
            _ => None,
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerCompression::Gzip => MEDIA_TYPE_LAYER_GZIP,
            LayerCompression::Zstd => MEDIA_TYPE_LAYER_ZSTD,
            LayerCompression::Uncompressed => MEDIA_TYPE_LAYER_TAR,
        }
    }

    /// Docker's media type, where Docker has one (not for zstd).
    pub fn docker_media_type(self) -> Option<&'static str> {
        match self {
            LayerCompression::Gzip => Some(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            LayerCompression::Zstd => None,
            LayerCompression::Uncompressed => Some(MEDIA_TYPE_DOCKER_LAYER_TAR),
        }
    }

    /// The compression a layer media type (OCI or Docker) names.
    pub fn of_media_type(media_type: &str) -> Option<LayerCompression> {
        [
            LayerCompression::Gzip,
            LayerCompression::Zstd,
            LayerCompression::Uncompressed,
        ]
        .into_iter()
        .find(|c| c.media_type() == media_type || c.docker_media_type() == Some(media_type))
    }

    /// The levels it takes, and its default.
    pub fn levels(self) -> (std::ops::RangeInclusive<i32>, i32) {
        match self {
            LayerCompression::Gzip => (0..=9, 6),
            LayerCompression::Zstd => (1..=22, 3),
            LayerCompression::Uncompressed => (0..=0, 0),
        }
    }
}

/// How new layers are written: compression and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerFormat {
    /// The compression.
    pub compression: LayerCompression,
    /// Its level (within [`LayerCompression::levels`]).
    pub level: i32,
}

impl Default for LayerFormat {
    fn default() -> LayerFormat {
        LayerFormat {
            compression: LayerCompression::Gzip,
            level: 6,
        }
    }
}

/// A layer blob in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Size of the stored blob in bytes.
    pub size: u64,
    /// Media type of the stored blob.
    pub media_type: String,
}

impl Layer {
    /// The layer as an index record keeps it.
    pub fn to_ref(&self) -> crate::store::index::LayerRef {
        crate::store::index::LayerRef {
            digest: self.digest.to_string(),
            diff_id: self.diff_id.to_string(),
            size: self.size,
            media_type: self.media_type.clone(),
        }
    }

    /// The layer an index record names.
    pub fn from_ref(r: &crate::store::index::LayerRef) -> anyhow::Result<Layer> {
        Ok(Layer {
            digest: r.digest.parse()?,
            diff_id: r.diff_id.parse()?,
            size: r.size,
            media_type: r.media_type.clone(),
        })
    }
}

/// A finished image: every blob it names is in the store.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Digest of the manifest blob (the image digest).
    pub manifest_digest: Digest,
    /// The manifest bytes exactly as stored.
    pub manifest: Vec<u8>,
    /// Digest of the config blob (the image id).
    pub config_digest: Digest,
    /// The config bytes exactly as stored.
    pub config: Vec<u8>,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
}

impl BuiltImage {
    /// The manifest's own media type (OCI's unless the manifest says otherwise).
    pub fn manifest_media_type(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.manifest)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(String::from))
            .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.to_string())
    }
}
