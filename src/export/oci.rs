//! OCI image layout (image-layout spec 1.0): `oci-layout`, `index.json`, `blobs/sha256/*`,
//! as a tar stream or a directory. Names go into the index as BuildKit writes them:
//! `io.containerd.image.name` (the full reference) and `org.opencontainers.image.ref.name`
//! (the tag), one manifest descriptor per name.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::{archive_blob, archive_bytes, archive_dir, image_blobs, LayoutAnnotations};
use crate::image::oci::{Descriptor, ImageIndex};
use crate::image::reference::Reference;
use crate::image::BuiltImage;
use crate::snapshot::tar_writer::TarWriter;
use crate::store::Store;

const LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The `index.json` of a layout holding `image` under `names`, with `annotations`.
pub fn index_json(
    image: &BuiltImage,
    names: &[Reference],
    annotations: &LayoutAnnotations,
) -> Result<Vec<u8>> {
    let descriptor = || {
        let mut d = Descriptor::new(
            &image.manifest_media_type(),
            &image.manifest_digest,
            image.manifest.len() as u64,
        );
        d.annotations = annotations.manifest_descriptor.clone();
        d
    };
    let manifests: Vec<Descriptor> = if names.is_empty() {
        vec![descriptor()]
    } else {
        names
            .iter()
            .map(|n| {
                let mut d = descriptor();
                d.annotations
                    .insert("io.containerd.image.name".into(), n.to_string());
                if let Some(tag) = &n.tag {
                    d.annotations
                        .insert("org.opencontainers.image.ref.name".into(), tag.clone());
                }
                d
            })
            .collect()
    };
    let mut index = ImageIndex::new(manifests);
    index.annotations = annotations.index.clone();
    Ok(serde_json::to_vec(&index)?)
}

/// Streams the layout as a tar archive.
pub fn write_archive(
    store: &Store,
    image: &BuiltImage,
    index_json: &[u8],
    mtime: i64,
    out: &mut dyn Write,
) -> Result<()> {
    let mut tar = TarWriter::new(out);
    archive_bytes(&mut tar, "oci-layout", LAYOUT_FILE, mtime)?;
    archive_bytes(&mut tar, "index.json", index_json, mtime)?;
    archive_dir(&mut tar, "blobs", mtime)?;
    archive_dir(&mut tar, "blobs/sha256", mtime)?;
    for blob in image_blobs(image) {
        let path = format!("blobs/sha256/{}", blob.digest.hex());
        archive_blob(&mut tar, store, &path, &blob, mtime)?;
    }
    tar.finish()?;
    Ok(())
}

/// Writes the layout into the (new, empty) directory `dir`. Blobs are copied from the
/// store (reflinked where the filesystem can), never hard-linked: editing the output must
/// not corrupt the cache.
pub fn write_dir(store: &Store, image: &BuiltImage, index_json: &[u8], dir: &Path) -> Result<()> {
    fs::write(dir.join("oci-layout"), LAYOUT_FILE)?;
    fs::write(dir.join("index.json"), index_json)?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    for blob in image_blobs(image) {
        fs::copy(store.blob_path(&blob.digest), blobs.join(blob.digest.hex()))
            .with_context(|| format!("cannot copy blob {}", blob.digest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_each_tag() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let manifest = b"{}".to_vec();
        let image = BuiltImage {
            manifest_digest: store.write_blob(&manifest).unwrap(),
            manifest,
            config_digest: store.write_blob(b"{\"a\":1}").unwrap(),
            config: b"{\"a\":1}".to_vec(),
            layers: Vec::new(),
        };
        let names = vec![Reference::parse("app:1.0").unwrap()];
        let idx: serde_json::Value = serde_json::from_slice(
            &index_json(&image, &names, &LayoutAnnotations::default()).unwrap(),
        )
        .unwrap();
        let a = &idx["manifests"][0]["annotations"];
        assert_eq!(a["org.opencontainers.image.ref.name"], "1.0");
        assert_eq!(a["io.containerd.image.name"], "docker.io/library/app:1.0");
        let idx: serde_json::Value = serde_json::from_slice(
            &index_json(&image, &[], &LayoutAnnotations::default()).unwrap(),
        )
        .unwrap();
        assert!(idx["manifests"][0].get("annotations").is_none());

        let mut out = Vec::new();
        let index = index_json(&image, &names, &LayoutAnnotations::default()).unwrap();
        write_archive(&store, &image, &index, 0, &mut out).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let paths: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            &paths[..4],
            ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        );
        assert_eq!(paths.len(), 6);
    }
}
