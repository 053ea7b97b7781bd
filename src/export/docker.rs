//! docker-archive, as `docker save` writes it and `docker load` / `podman load` read it:
//! `manifest.json` (config, repo tags, layers), `repositories`, and the blobs. Layers stay
//! gzip-compressed (both loaders decompress them), so nothing is recompressed.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use serde_json::json;

use super::{archive_blob, archive_bytes, archive_dir, image_blobs};
use crate::image::reference::Reference;
use crate::image::BuiltImage;
use crate::snapshot::tar_writer::TarWriter;
use crate::store::Store;

/// Streams the docker-archive.
pub fn write_archive(
    store: &Store,
    image: &BuiltImage,
    names: &[Reference],
    mtime: i64,
    out: &mut dyn Write,
) -> Result<()> {
    let blob_path = |hex: &str| format!("blobs/sha256/{hex}");
    let tags: Vec<String> = names
        .iter()
        .filter(|n| n.tag.is_some())
        .map(Reference::familiar)
        .collect();
    let manifest = json!([{
        "Config": blob_path(image.config_digest.hex()),
        "RepoTags": tags,
        "Layers": image.layers.iter().map(|l| blob_path(l.digest.hex())).collect::<Vec<_>>(),
    }]);
    // Legacy `repositories`: repository → tag → top layer id.
    let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if let Some(top) = image.layers.last() {
        for n in names {
            if let Some(tag) = &n.tag {
                let repo = Reference {
                    tag: None,
                    digest: None,
                    ..n.clone()
                }
                .familiar();
                repos
                    .entry(repo)
                    .or_default()
                    .insert(tag.clone(), top.diff_id.hex().to_string());
            }
        }
    }

    let mut tar = TarWriter::new(out);
    archive_dir(&mut tar, "blobs", mtime)?;
    archive_dir(&mut tar, "blobs/sha256", mtime)?;
    for blob in image_blobs(image) {
        if blob.digest == image.manifest_digest {
            continue; // docker-archive has no manifest blob
        }
        archive_blob(&mut tar, store, &blob_path(blob.digest.hex()), &blob, mtime)?;
    }
    archive_bytes(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec(&manifest)?,
        mtime,
    )?;
    if !repos.is_empty() {
        archive_bytes(
            &mut tar,
            "repositories",
            &serde_json::to_vec(&repos)?,
            mtime,
        )?;
    }
    tar.finish()?;
    Ok(())
}
