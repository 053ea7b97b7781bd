//! Platforms (`os/arch[/variant]`): the host's, and parsing of `--platform` values.

use std::fmt;

use anyhow::{bail, Result};

/// A target platform in OCI / GOARCH spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture, e.g. `amd64`.
    pub arch: String,
    /// Variant, e.g. `v7` for arm; None where it does not apply.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform rbuild is running on.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    /// Parses `os/arch[/variant]`; `local` means the host.
    pub fn parse(s: &str) -> Result<Platform> {
        let s = s.trim();
        if s == "local" {
            return Ok(Platform::host());
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_lowercase(),
                arch: normalize_arch(arch),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.to_lowercase(),
                    arch: normalize_arch(arch),
                    variant: Some(variant.to_lowercase()),
                })
            }
            _ => bail!("invalid platform {s:?}: expected os/arch[/variant]"),
        }
    }

    /// True when `self` can be built here: same os and arch, and a matching variant when
    /// both name one (`amd64/v1` is plain amd64).
    pub fn matches_host(&self) -> bool {
        let host = Platform::host();
        let variant_ok = match (&self.variant, &host.variant) {
            (None, _) => true,
            (Some(v), _) if self.arch == "amd64" && v == "v1" => true,
            (Some(v), Some(h)) => v == h,
            (Some(_), None) => false,
        };
        self.os == host.os && self.arch == host.arch && variant_ok
    }

    /// The automatic build arguments for this platform with the given prefix
    /// (`TARGET` or `BUILD`): `PLATFORM`, `OS`, `ARCH`, `VARIANT`.
    pub fn args(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (format!("{prefix}PLATFORM"), self.to_string()),
            (format!("{prefix}OS"), self.os.clone()),
            (format!("{prefix}ARCH"), self.arch.clone()),
            (
                format!("{prefix}VARIANT"),
                self.variant.clone().unwrap_or_default(),
            ),
        ]
    }
}

fn normalize_arch(arch: &str) -> String {
    match arch.to_lowercase().as_str() {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let host = Platform::host();
        assert!(Platform::parse(&host.to_string()).unwrap().matches_host());
        assert!(Platform::parse("local").unwrap().matches_host());
        assert!(!Platform::parse("windows/amd64").unwrap().matches_host());
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
        assert_eq!(Platform::parse("Linux/x86_64").unwrap().arch, "amd64");
    }
}
