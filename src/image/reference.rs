//! Image references (`busybox`, `host:5000/team/app:1.0`, `app@sha256:…`), validated and
//! normalised as docker does.

use std::fmt;

use anyhow::{bail, Result};

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, if given (or defaulted by [`Reference::with_default_tag`]).
    pub tag: Option<String>,
    /// Digest, if given (`sha256:…`).
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `s`; errors say what is wrong with it.
    pub fn parse(s: &str) -> Result<Reference> {
        if s.is_empty() {
            bail!("invalid reference format: empty name");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                check_digest(s, d)?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(rest[at + 1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(t) = &tag {
            check_tag(s, t)?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, more))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_registry(s, first)?;
                (first.to_string(), more.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        check_path(s, &path)?;
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same reference with tag `latest` when it has neither tag nor digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".into());
        }
        self
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form docker shows (`busybox:latest`, `localhost:5000/app:1`): no
    /// `docker.io/` and no `library/`.
    pub fn familiar(&self) -> String {
        let mut out = if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        self.push_suffix(&mut out);
        out
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

fn check_digest(full: &str, d: &str) -> Result<()> {
    let ok = d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !ok {
        bail!("invalid reference {full:?}: digest {d:?} is not sha256:<64 hex digits>");
    }
    Ok(())
}

fn check_tag(full: &str, t: &str) -> Result<()> {
    let mut chars = t.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || t.len() > 128 {
        bail!("invalid reference {full:?}: bad tag {t:?} (letters, digits, '_', '.', '-'; at most 128)");
    }
    Ok(())
}

fn check_registry(full: &str, r: &str) -> Result<()> {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if !host_ok || !port_ok {
        bail!("invalid reference {full:?}: bad registry {r:?}");
    }
    Ok(())
}

fn check_path(full: &str, path: &str) -> Result<()> {
    if path.is_empty() {
        bail!("invalid reference {full:?}: empty repository name");
    }
    for comp in path.split('/') {
        if !valid_component(comp) {
            if comp.chars().any(|c| c.is_ascii_uppercase()) {
                bail!("invalid reference {full:?}: repository name must be lowercase");
            }
            bail!("invalid reference {full:?}: bad repository component {comp:?}");
        }
    }
    if path.len() > 255 {
        bail!("invalid reference {full:?}: repository name longer than 255 characters");
    }
    Ok(())
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = Reference::parse("busybox").unwrap().with_default_tag();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");
        let r = Reference::parse("localhost:5000/team/app:1.0").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.familiar(), "localhost:5000/team/app:1.0");
        let r = Reference::parse("user/app").unwrap();
        assert_eq!(r.repository, "user/app");
        assert_eq!(r.familiar(), "user/app");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("127.0.0.1:5000/x@{d}"))
            .unwrap()
            .with_default_tag();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        let r = Reference::parse("localhost/app").unwrap();
        assert_eq!(r.registry, "localhost");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "App",
            "app:",
            "app:-x",
            "a//b",
            "app@sha256:xyz",
            "-app",
            "app_",
            "host:port/app",
            "a/b:c:d",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = Reference::parse("MyApp").unwrap_err().to_string();
        assert!(e.contains("lowercase"), "{e}");
    }
}
