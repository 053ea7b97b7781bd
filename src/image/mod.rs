//! A built image as the solver hands it to the exporters: config and layers in the store.

pub mod config;
pub mod oci;
pub mod reference;

use crate::store::Digest;

/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";

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
