//! Offline image sources: OCI archives, OCI layout directories and docker-archives
//! imported into the store, so air-gapped machines can build on them.
//!
//! Archives are read in one streaming pass (plain or compressed tars): every blob goes
//! straight into the store, verified against its digest where the archive names one.

use std::collections::HashMap;
use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::image::{manifest_kind, open_stored, ManifestKind};
use crate::image::oci::{Descriptor, ImageManifest};
use crate::image::reference::Reference;
use crate::image::MEDIA_TYPE_CONFIG;
use crate::plan::Platform;
use crate::snapshot::compression::{decompressing_reader, Compression};
use crate::store::{Digest, HashingWriter, Store};

/// One image an import brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The normalised name it was recorded under.
    pub name: String,
    /// Its manifest (or index) digest.
    pub digest: Digest,
}

/// Small metadata files kept in memory while an archive streams by.
const METADATA_FILES: &[&str] = &["index.json", "oci-layout", "manifest.json", "repositories"];
const METADATA_LIMIT: u64 = 64 << 20;

/// Imports an OCI archive, OCI layout directory or docker-archive at `path` and records
/// its images by name (`name` overrides the archive's own names; it needs an archive of
/// one image). Each image is checked to be complete for `platform`.
pub fn import(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    platform: &Platform,
) -> Result<Vec<Imported>> {
    let shown = path.display().to_string();
    let found: Vec<(Option<String>, Digest)> = if path.is_dir() {
        import_layout_dir(store, path).with_context(|| format!("cannot load {shown}"))?
    } else {
        let file = fs::File::open(path).with_context(|| format!("cannot open {shown}"))?;
        import_tar(store, file).with_context(|| format!("cannot load {shown}"))?
    };
    if found.is_empty() {
        bail!("{shown} holds no image");
    }
    if name.is_some() && found.len() > 1 {
        bail!(
            "{shown} holds {} images; --name can name only one",
            found.len()
        );
    }
    let mut out = Vec::new();
    for (own_name, digest) in found {
        let chosen = match (name, own_name) {
            (Some(n), _) => n.to_string(),
            (None, Some(n)) => n,
            (None, None) => bail!(
                "{shown} holds an image ({digest}) without a full name (at most a tag); give it one with --name NAME"
            ),
        };
        let reference = Reference::parse(&chosen)?.with_default_tag();
        let normalised = reference.to_string();
        let image = open_stored(store, &normalised, &digest, platform)?;
        // An image that names a wrong diff_id is refused now, not when a build uses it.
        crate::snapshot::verify_layers(store, &image.layers)
            .with_context(|| format!("image {normalised}"))?;
        store.set_image(&normalised, &digest, &format!("load {shown}"))?;
        out.push(Imported {
            name: normalised,
            digest,
        });
    }
    Ok(out)
}

/// Imports the image a `--build-context NAME=oci-layout://DIR[:TAG|@DIGEST]` names and
/// returns its digest (not recorded under any name).
pub fn import_layout_image(store: &Store, dir: &Path, selector: Option<&str>) -> Result<Digest> {
    let index = read_layout_index(dir)?;
    let entries = index_entries(&index)?;
    let chosen = match selector {
        None if entries.len() == 1 => &entries[0],
        None => bail!(
            "{} holds {} images: name one with :TAG or @DIGEST",
            dir.display(),
            entries.len()
        ),
        Some(sel) => entries
            .iter()
            .find(|e| {
                let digest = e.get("digest").and_then(Value::as_str);
                let tag = e
                    .pointer("/annotations/org.opencontainers.image.ref.name")
                    .and_then(Value::as_str);
                match sel.strip_prefix('@') {
                    Some(d) => digest == Some(d),
                    None => tag == Some(sel),
                }
            })
            .ok_or_else(|| anyhow!("{} has no image {sel}", dir.display()))?,
    };
    let digest = descriptor_digest(chosen)?;
    copy_closure(store, dir, &digest)?;
    Ok(digest)
}

fn read_layout_index(dir: &Path) -> Result<Value> {
    if !dir.join("oci-layout").is_file() {
        bail!(
            "{} is not an OCI image layout (no oci-layout file)",
            dir.display()
        );
    }
    let bytes = fs::read(dir.join("index.json"))
        .with_context(|| format!("{}: cannot read index.json", dir.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: index.json is not JSON", dir.display()))
}

fn index_entries(index: &Value) -> Result<&Vec<Value>> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("index.json has no manifests"))
}

fn descriptor_digest(d: &Value) -> Result<Digest> {
    d.get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("descriptor without a digest"))?
        .parse()
}

/// The name an OCI index entry gives its image: the containerd name, or a ref.name that
/// is a whole reference (a bare tag is not enough).
fn oci_entry_name(d: &Value) -> Option<String> {
    if let Some(n) = d
        .pointer("/annotations/io.containerd.image.name")
        .and_then(Value::as_str)
    {
        return Some(n.to_string());
    }
    let r = d
        .pointer("/annotations/org.opencontainers.image.ref.name")
        .and_then(Value::as_str)?;
    (r.contains(':') || r.contains('/')).then(|| r.to_string())
}

fn import_layout_dir(store: &Store, dir: &Path) -> Result<Vec<(Option<String>, Digest)>> {
    let index = read_layout_index(dir)?;
    let mut out = Vec::new();
    for e in index_entries(&index)? {
        let digest = descriptor_digest(e)?;
        copy_closure(store, dir, &digest)?;
        out.push((oci_entry_name(e), digest));
    }
    Ok(out)
}

/// Copies a manifest or index and everything it references that the layout has into
/// the store (index entries for other platforms may be absent).
fn copy_closure(store: &Store, dir: &Path, digest: &Digest) -> Result<()> {
    let blob_path = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
    copy_blob(store, &blob_path(digest), digest)?;
    let doc: Value = serde_json::from_slice(&store.read_blob(digest)?)?;
    match manifest_kind(&doc)? {
        ManifestKind::Index => {
            for e in index_entries(&doc)? {
                let child = descriptor_digest(e)?;
                if blob_path(&child).is_file() {
                    copy_closure(store, dir, &child)?;
                }
            }
        }
        ManifestKind::Manifest => {
            let config = doc
                .get("config")
                .ok_or_else(|| anyhow!("manifest {digest} has no config"))?;
            copy_blob(
                store,
                &blob_path(&descriptor_digest(config)?),
                &descriptor_digest(config)?,
            )?;
            for l in doc
                .get("layers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let d = descriptor_digest(l)?;
                copy_blob(store, &blob_path(&d), &d)?;
            }
        }
    }
    Ok(())
}

fn copy_blob(store: &Store, path: &Path, digest: &Digest) -> Result<()> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let f = fs::File::open(path).with_context(|| format!("blob {digest} is missing"))?;
    store_verified(store, f, Some(digest))?;
    Ok(())
}

/// Streams `data` into the store; with `expected`, refuses (and drops) content whose
/// digest differs.
fn store_verified(
    store: &Store,
    mut data: impl Read,
    expected: Option<&Digest>,
) -> Result<(Digest, u64)> {
    let tmp = store.temp_file()?;
    let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, tmp.as_file()));
    std::io::copy(&mut data, &mut w)?;
    let (mut inner, digest, size) = w.finish();
    inner.flush()?;
    drop(inner);
    if let Some(e) = expected {
        if *e != digest {
            bail!("blob {e}: its content does not match its digest (got {digest}); refusing it");
        }
    }
    store.commit_blob(tmp, &digest)?;
    Ok((digest, size))
}

/// What a streamed archive held.
#[derive(Default)]
struct Collected {
    metadata: HashMap<String, Vec<u8>>,
    files: HashMap<String, (Digest, u64)>,
    links: HashMap<String, String>,
}

impl Collected {
    /// The stored content of archive path `p` (following links).
    fn file(&self, p: &str) -> Result<&(Digest, u64)> {
        let mut p = clean(p);
        for _ in 0..16 {
            if let Some(f) = self.files.get(&p) {
                return Ok(f);
            }
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        bail!("the archive has no file {p}")
    }
}

fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

fn import_tar(store: &Store, file: fs::File) -> Result<Vec<(Option<String>, Digest)>> {
    let (_, reader) = decompressing_reader(BufReader::with_capacity(1 << 20, file))?;
    let mut c = Collected::default();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().context("not a tar archive")? {
        let mut entry = entry.context("corrupt tar archive")?;
        let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if METADATA_FILES.contains(&path.as_str()) {
                    if entry.size() > METADATA_LIMIT {
                        bail!("{path} is too large");
                    }
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf)?;
                    c.metadata.insert(path, buf);
                    continue;
                }
                let expected = path
                    .strip_prefix("blobs/sha256/")
                    .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
                let stored = store_verified(store, &mut entry, expected.as_ref())?;
                c.files.insert(path, stored);
            }
            tar::EntryType::Symlink => {
                if let Some(t) = entry.link_name_bytes() {
                    let t = String::from_utf8_lossy(&t).into_owned();
                    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                    let target = if t.starts_with('/') {
                        t
                    } else {
                        format!("{dir}/{t}")
                    };
                    c.links.insert(path, clean(&target));
                }
            }
            tar::EntryType::Link => {
                if let Some(t) = entry.link_name_bytes() {
                    c.links.insert(path, clean(&String::from_utf8_lossy(&t)));
                }
            }
            _ => {}
        }
    }
    if let Some(index) = c.metadata.get("index.json") {
        let index: Value = serde_json::from_slice(index).context("index.json is not JSON")?;
        return index_entries(&index)?
            .iter()
            .map(|e| Ok((oci_entry_name(e), descriptor_digest(e)?)))
            .collect();
    }
    if let Some(manifest) = c.metadata.get("manifest.json") {
        return docker_images(store, &c, manifest);
    }
    bail!("not an OCI archive or a docker-archive (no index.json or manifest.json)")
}

/// Turns the entries of a docker-archive's `manifest.json` into OCI manifests in the
/// store; one result per name (or one unnamed result for an untagged image).
fn docker_images(
    store: &Store,
    c: &Collected,
    manifest: &[u8],
) -> Result<Vec<(Option<String>, Digest)>> {
    let items: Value = serde_json::from_slice(manifest).context("manifest.json is not JSON")?;
    let items = items
        .as_array()
        .ok_or_else(|| anyhow!("manifest.json is not a list"))?;
    let mut out = Vec::new();
    for item in items {
        let config_path = item
            .get("Config")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("manifest.json entry without Config"))?;
        let (config_digest, config_size) = c.file(config_path)?.clone();
        let mut layers = Vec::new();
        for l in item
            .get("Layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let p = l
                .as_str()
                .ok_or_else(|| anyhow!("manifest.json: bad layer"))?;
            let (digest, size) = c.file(p)?.clone();
            let magic = {
                let mut head = [0u8; 8];
                let mut f = store.open_blob(&digest)?;
                let n = f.read(&mut head)?;
                Compression::detect(&head[..n])
            };
            let media_type = match magic {
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                other => bail!("layer {p} is compressed with {other:?}, which images cannot use"),
            };
            layers.push(Descriptor::new(media_type, &digest, size));
        }
        let manifest = ImageManifest::new(
            Descriptor::new(MEDIA_TYPE_CONFIG, &config_digest, config_size),
            layers,
        );
        let digest = store.write_blob(&serde_json::to_vec(&manifest)?)?;
        let tags: Vec<String> = item
            .get("RepoTags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        if tags.is_empty() {
            out.push((None, digest));
        } else {
            out.extend(tags.into_iter().map(|t| (Some(t), digest.clone())));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_archive_paths() {
        assert_eq!(clean("./a//b/../c"), "a/c");
        assert_eq!(clean("../../x"), "x");
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let claimed = Digest::of(b"the real bytes");
        let err = store_verified(&store, &b"other bytes"[..], Some(&claimed)).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(!store.has_blob(&claimed));
        assert!(!store.has_blob(&Digest::of(b"other bytes")));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
