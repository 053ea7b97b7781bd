//! Layers read back from the store, decompressed and checked against the diff_id their
//! image's config names: the uncompressed bytes are hashed on the way through, so a layer
//! that is applied is verified for free, and one that never is gets a pass of its own
//! before an image that names it is written. A blob seen to match is remembered in the
//! index and never read again for this.

use std::io::{BufReader, Read};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::compression::decompressing_reader;
use crate::image::Layer;
use crate::store::{Digest, Store};

/// A layer's uncompressed tar stream that checks its diff_id when finished.
pub struct LayerReader<'a> {
    inner: Box<dyn Read + 'a>,
    hasher: Sha256,
    layer: &'a Layer,
    store: &'a Store,
}

/// Opens `layer` from `store` as its uncompressed tar stream (cancellable).
pub fn open_layer<'a>(store: &'a Store, layer: &'a Layer) -> Result<LayerReader<'a>> {
    let blob = crate::cancel::Cancellable(store.open_blob(&layer.digest)?);
    let (_, inner) = decompressing_reader(BufReader::with_capacity(1 << 20, blob))
        .with_context(|| format!("cannot read layer {}", layer.digest))?;
    Ok(LayerReader {
        inner,
        hasher: Sha256::new(),
        layer,
        store,
    })
}

impl Read for LayerReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl LayerReader<'_> {
    /// Reads what the consumer left (a tar's trailing padding) and checks the digest of
    /// everything against the layer's diff_id; a match is remembered.
    pub fn finish(mut self) -> Result<()> {
        std::io::copy(&mut self, &mut std::io::sink())
            .with_context(|| format!("cannot read layer {}", self.layer.digest))?;
        let got = Digest::from_sha256(self.hasher.finalize().into());
        if got != self.layer.diff_id {
            bail!(
                "layer {} is not what its image says: its uncompressed content is {got}, but the image config names {} (rootfs.diff_ids)",
                self.layer.digest,
                self.layer.diff_id
            );
        }
        self.store
            .note_layer_verified(&self.layer.digest, &self.layer.diff_id)
    }
}

/// Checks every layer of `layers` that was not seen to match its diff_id before.
pub fn verify_layers(store: &Store, layers: &[Layer]) -> Result<()> {
    for layer in layers {
        if !store.layer_verified(&layer.digest, &layer.diff_id)? {
            open_layer(store, layer)?.finish()?;
        }
    }
    Ok(())
}
