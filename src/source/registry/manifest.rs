//! Manifests as registries serve them: OCI and Docker schema 2 image manifests and indexes
//! (manifest lists), the `Accept` header that asks for them, and picking a platform's
//! manifest from an index.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::image::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::plan::platform::Platform;
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

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
}

impl Descriptor {
    /// The digest, parsed.
    pub fn digest(&self) -> Result<Digest> {
        self.digest
            .parse()
            .with_context(|| format!("bad descriptor digest {:?}", self.digest))
    }
}

/// The `platform` of an index entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PlatformSpec {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl PlatformSpec {
    fn display(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
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

/// Parses an index's entries.
pub(crate) fn parse_index(bytes: &[u8]) -> Result<Vec<Descriptor>> {
    let doc: Document = serde_json::from_slice(bytes).context("the index is not valid JSON")?;
    Ok(doc.manifests.unwrap_or_default())
}

/// The variant an architecture means when it names none.
fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

/// `v7` → 7; None for anything else.
fn variant_number(v: &str) -> Option<u32> {
    v.strip_prefix('v')?.parse().ok()
}

/// The index entry for `want`: same os and architecture, and the same variant (arm64
/// means v8, arm v7, amd64 none or v1); failing an exact variant, the highest lower arm
/// variant (a v7 machine runs v6 images). The error lists the platforms on offer.
pub(crate) fn select_platform<'a>(
    entries: &'a [Descriptor],
    want: &Platform,
    what: &str,
) -> Result<&'a Descriptor> {
    let want_variant = want
        .variant
        .clone()
        .or_else(|| default_variant(&want.arch).map(String::from));
    let variant_of = |p: &PlatformSpec| {
        p.variant
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| default_variant(&p.architecture).map(String::from))
    };
    let same_arch = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == want.os && p.architecture == want.arch)
    };
    let exact = entries.iter().filter(same_arch).find(|d| {
        let Some(p) = d.platform.as_ref() else {
            return false;
        };
        let have = variant_of(p);
        match (&want_variant, &have) {
            (None, None) => true,
            (None, Some(h)) => want.arch == "amd64" && h == "v1",
            (Some(w), Some(h)) => w == h,
            (Some(w), None) => want.arch == "amd64" && w == "v1",
        }
    });
    if let Some(d) = exact {
        return Ok(d);
    }
    if want.arch == "arm" {
        let limit = want_variant
            .as_deref()
            .and_then(variant_number)
            .unwrap_or(7);
        let lower = entries
            .iter()
            .filter(same_arch)
            .filter_map(|d| {
                let n = variant_of(d.platform.as_ref()?)
                    .as_deref()
                    .and_then(variant_number)?;
                (n <= limit).then_some((n, d))
            })
            .max_by_key(|(n, _)| *n);
        if let Some((_, d)) = lower {
            return Ok(d);
        }
    }
    let mut offered: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown" && p.architecture != "unknown")
        .map(PlatformSpec::display)
        .collect();
    offered.dedup();
    let offered = if offered.is_empty() {
        "none".to_string()
    } else {
        offered.join(", ")
    };
    bail!("{what} has no image for platform {want}; available: {offered}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> Vec<Descriptor> {
        let entries: Vec<String> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let variant = variant.map_or(String::new(), |v| format!(r#","variant":"{v}""#));
                format!(
                    r#"{{"mediaType":"{MEDIA_TYPE_MANIFEST}","digest":"sha256:{}","size":10,
                        "platform":{{"os":"{os}","architecture":"{arch}"{variant}}}}}"#,
                    format!("{i}").repeat(64)
                )
            })
            .collect();
        let doc = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            entries.join(",")
        );
        parse_index(doc.as_bytes()).unwrap()
    }

    fn pick(entries: &[Descriptor], p: &str) -> Result<usize> {
        let d = select_platform(entries, &Platform::parse(p).unwrap(), "\"x\"")?;
        Ok(entries.iter().position(|e| std::ptr::eq(e, d)).unwrap())
    }

    #[test]
    fn selects_platforms_from_an_index() {
        let idx = index(&[
            ("linux", "amd64", None),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "arm64", Some("v8")),
            ("linux", "s390x", None),
            ("unknown", "unknown", None),
        ]);
        assert_eq!(pick(&idx, "linux/amd64").unwrap(), 0);
        assert_eq!(pick(&idx, "linux/arm64").unwrap(), 3);
        assert_eq!(pick(&idx, "linux/arm64/v8").unwrap(), 3);
        assert_eq!(pick(&idx, "linux/arm/v7").unwrap(), 2);
        assert_eq!(pick(&idx, "linux/arm").unwrap(), 2);
        assert_eq!(pick(&idx, "linux/arm/v6").unwrap(), 1);
        assert_eq!(pick(&idx, "linux/arm/v8").unwrap(), 2);
        assert_eq!(pick(&idx, "linux/amd64/v1").unwrap(), 0);
        let e = pick(&idx, "linux/ppc64le").unwrap_err().to_string();
        assert_eq!(
            e,
            "\"x\" has no image for platform linux/ppc64le; available: linux/amd64, linux/arm/v6, \
             linux/arm/v7, linux/arm64/v8, linux/s390x"
        );
        let e = pick(&idx, "windows/amd64").unwrap_err().to_string();
        assert!(e.contains("windows/amd64"), "{e}");
        assert!(pick(&idx, "linux/arm/v5").is_err());
    }

    #[test]
    fn arm64_without_variant_is_v8() {
        let idx = index(&[("linux", "arm64", None), ("linux", "amd64", Some("v3"))]);
        assert_eq!(pick(&idx, "linux/arm64/v8").unwrap(), 0);
        assert_eq!(pick(&idx, "linux/arm64").unwrap(), 0);
        // amd64 wants a plain (or v1) entry, not a v3-only one.
        assert!(pick(&idx, "linux/amd64").is_err());
        assert_eq!(pick(&idx, "linux/amd64/v3").unwrap(), 1);
    }

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
