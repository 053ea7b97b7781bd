//! Image indexes (OCI image indexes and Docker manifest lists): their entries, and the
//! entry for a platform. Used for indexes pulled from registries and for those in the store.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::plan::platform::Platform;

pub(crate) use crate::image::oci::{Descriptor, PlatformSpec};

/// `os/arch[/variant]`, for messages.
fn display(p: &PlatformSpec) -> String {
    match &p.variant {
        Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
        _ => format!("{}/{}", p.os, p.architecture),
    }
}

#[derive(Deserialize)]
struct IndexDocument {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// Parses an index's entries.
pub(crate) fn parse_index(bytes: &[u8]) -> Result<Vec<Descriptor>> {
    let doc: IndexDocument =
        serde_json::from_slice(bytes).context("the index is not valid JSON")?;
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
        .map(display)
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
    use crate::image::MEDIA_TYPE_MANIFEST;

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
}
