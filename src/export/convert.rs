//! An image as one output asks for it: layers recompressed (`force-compression=true`),
//! Docker media types (`oci-mediatypes=false`). A layer is converted once per format: the
//! result is remembered in the cache index and reused by later exports and builds.

use std::io::BufReader;

use anyhow::{bail, Context, Result};

use super::ImageFormat;
use crate::image::oci::{Descriptor, ImageManifest};
use crate::image::{
    BuiltImage, Layer, LayerCompression, LayerFormat, MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_CONFIG,
};
use crate::snapshot::compression::decompressing_reader;
use crate::snapshot::recompress;
use crate::source::registry::MEDIA_TYPE_DOCKER_MANIFEST;
use crate::store::index::StepResult;
use crate::store::{FieldHasher, Store};

/// `image` as `format` asks, or None when it is already so.
pub fn for_output(
    store: &Store,
    image: &BuiltImage,
    format: &ImageFormat,
) -> Result<Option<BuiltImage>> {
    let wanted = format.layers;
    // Forced, or a layer Docker media types cannot name (zstd, made for another output).
    let converts = |l: &Layer| {
        let has = LayerCompression::of_media_type(&l.media_type);
        let forced = format.force && has != Some(wanted.compression);
        forced || (!format.oci_mediatypes && has.and_then(|c| c.docker_media_type()).is_none())
    };
    if format.oci_mediatypes && !image.layers.iter().any(converts) {
        return Ok(None);
    }
    let mut layers = Vec::with_capacity(image.layers.len());
    for l in &image.layers {
        layers.push(if converts(l) {
            converted(store, l, wanted)?
        } else {
            l.clone()
        });
    }
    let old: ImageManifest =
        serde_json::from_slice(&image.manifest).context("the built manifest")?;
    let mut descriptors = Vec::with_capacity(layers.len());
    for l in &layers {
        descriptors.push(Descriptor::new(
            &layer_media_type(l, format.oci_mediatypes)?,
            &l.digest,
            l.size,
        ));
    }
    let config_type = if format.oci_mediatypes {
        MEDIA_TYPE_CONFIG
    } else {
        MEDIA_TYPE_DOCKER_CONFIG
    };
    let mut manifest = ImageManifest::new(
        Descriptor::new(config_type, &image.config_digest, image.config.len() as u64),
        descriptors,
    );
    manifest.annotations = old.annotations;
    if !format.oci_mediatypes {
        manifest.media_type = MEDIA_TYPE_DOCKER_MANIFEST.to_string();
    }
    let bytes = serde_json::to_vec(&manifest)?;
    let digest = store.write_blob(&bytes)?;
    Ok(Some(BuiltImage {
        manifest_digest: digest,
        manifest: bytes,
        config_digest: image.config_digest.clone(),
        config: image.config.clone(),
        layers,
    }))
}

/// The media type of `l` in a manifest with OCI or Docker media types.
fn layer_media_type(l: &Layer, oci: bool) -> Result<String> {
    if oci {
        return Ok(l.media_type.clone());
    }
    match LayerCompression::of_media_type(&l.media_type).map(LayerCompression::docker_media_type) {
        Some(Some(t)) => Ok(t.to_string()),
        _ => bail!(
            "layer {} is {}, which has no Docker media type: keep oci-mediatypes=true",
            l.digest,
            l.media_type
        ),
    }
}

/// Layer `l` in `format`: from an earlier conversion, or converted now and remembered.
fn converted(store: &Store, l: &Layer, format: LayerFormat) -> Result<Layer> {
    let mut h = FieldHasher::new("rbuild-layer-conversion-v1");
    h.str("blob", &l.digest.to_string());
    h.str("media_type", format.compression.media_type());
    h.u64("level", u64::from(format.level.unsigned_abs()));
    let key = h.finish();
    if let Some(layer) = store.step_result(&key)?.and_then(|r| r.layer) {
        let layer = Layer::from_ref(&layer)?;
        if store.has_blob(&layer.digest) {
            return Ok(layer);
        }
    }
    let blob = store.open_blob(&l.digest)?;
    let (_, mut tar) = decompressing_reader(BufReader::new(blob))?;
    let layer = recompress(store, &mut tar, format, &l.diff_id)
        .with_context(|| format!("cannot recompress layer {}", l.digest))?;
    store.put_step_result(
        &key,
        &StepResult {
            layer: Some(layer.to_ref()),
        },
        &format!("{} as {}", l.digest, format.compression.media_type()),
    )?;
    Ok(layer)
}
