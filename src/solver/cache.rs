//! Step cache keys (see `docs/cache.md`).
//!
//! A step's key is a [`FieldHasher`] digest of: a format version; the platform; the
//! `SOURCE_DATE_EPOCH` clamp; the *parent*, identified by the chain of its layers' diff_ids
//! (what the step really starts from, not how it was made); the USER; and the step
//! itself after ARG/ENV expansion (a RUN's command, environment, network, security,
//! working directory and `--mount` specs; a COPY's sources, destination and flags; a
//! WORKDIR's path). What a step reads besides its parent adds an input digest: the
//! content of the selected context files, or the layer chain of the stage or image it
//! copies or mounts from.

use std::collections::BTreeSet;

use anyhow::Result;

use crate::image::config::ImageConfig;
use crate::image::Layer;
use crate::plan::mounts::MountKind;
use crate::plan::steps::{CopyFrom, CopySource, StepKind};
use crate::store::index::StepResult;
use crate::store::{Digest, FieldHasher};

/// Which steps may be answered from the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheOptions {
    /// `--no-cache`: none.
    pub disabled: bool,
    /// `--no-cache-filter`: not the steps of these stages (indexes).
    pub no_cache_stages: BTreeSet<usize>,
}

impl CacheOptions {
    /// True when the steps of stage `index` may be answered from the cache.
    pub fn reads(&self, index: usize) -> bool {
        !self.disabled && !self.no_cache_stages.contains(&index)
    }
}

/// The identity of a filesystem: the chain of its layers' diff_ids.
pub fn chain_id(layers: &[Layer]) -> String {
    let mut h = FieldHasher::new("rbuild-chain-v1");
    for l in layers {
        h.str("diff_id", &l.diff_id.to_string());
    }
    h.finish().to_string()
}

/// What every key of a stage's steps starts from.
pub struct KeyBase<'a> {
    /// The target platform.
    pub platform: &'a str,
    /// Only one id is mapped, so every file on disk belongs to root: results differ.
    pub single_id: bool,
    /// The mtime clamp (SOURCE_DATE_EPOCH).
    pub epoch: Option<i64>,
    /// The step's parent filesystem.
    pub parent: &'a [Layer],
    /// The stage's config before the step.
    pub config: &'a ImageConfig,
}

/// The key of a step, or None when the step makes no layer or cannot be cached (an ADD
/// of a URL). `input` gives the digest of what a step reads from `from` at `paths`.
pub fn step_key(
    kind: &StepKind,
    base: &KeyBase<'_>,
    input: &mut dyn FnMut(&CopyFrom, &[String]) -> Result<String>,
) -> Result<Option<Digest>> {
    let mut h = FieldHasher::new("rbuild-step-v1");
    let epoch = base.epoch.map(|e| e.to_string());
    h.str("platform", base.platform)
        .u64("single_id", u64::from(base.single_id))
        .opt("epoch", epoch.as_deref())
        .str("parent", &chain_id(base.parent))
        .str("user", &base.config.config.user);
    match kind {
        StepKind::Config(_) => return Ok(None),
        StepKind::Workdir(dir) => {
            h.str("op", "workdir").str("dir", dir);
        }
        StepKind::Copy(c) => {
            h.str("op", if c.is_add { "add" } else { "copy" });
            let mut paths = Vec::new();
            h.u64("sources", c.sources.len() as u64);
            for s in &c.sources {
                match s {
                    CopySource::Path(p) => {
                        h.str("path", p);
                        paths.push(p.clone());
                    }
                    CopySource::Heredoc { name, content } => {
                        h.str("heredoc", name).str("content", content);
                    }
                    // What a URL or a repository holds is only known by fetching it.
                    CopySource::Url(_) | CopySource::Git { .. } => return Ok(None),
                }
            }
            let chmod = c.chmod.as_ref().map(|m| format!("{m:?}"));
            h.str("dest", &c.dest)
                .u64("dest_is_dir", u64::from(c.dest_is_dir))
                .opt("chown", c.chown.as_deref())
                .opt("chmod", chmod.as_deref())
                .list("exclude", &c.exclude)
                .u64("parents", u64::from(c.parents));
            if !paths.is_empty() {
                h.str("input", &input(&c.from, &paths)?);
            }
        }
        StepKind::Run(r) => {
            h.str("op", "run")
                .list("argv", &r.argv)
                .opt("script_name", r.script.as_ref().map(|s| s.0.as_str()))
                .opt("script", r.script.as_ref().map(|s| s.1.as_str()))
                .list("env", &r.env)
                .opt("network", r.network.as_deref())
                .opt("security", r.security.as_deref())
                .list("hosts", &r.extra_hosts)
                .list("ulimits", &r.ulimits)
                .str("workdir", &base.config.config.working_dir);
            h.u64("mounts", r.mounts.len() as u64);
            for m in &r.mounts {
                h.str("mount", &format!("{:?}", m.spec));
                let Some(from) = &m.from else { continue };
                let source = match &m.spec.kind {
                    MountKind::Bind { source, .. } | MountKind::Cache { source, .. } => source,
                    _ => continue,
                };
                let path = if source.is_empty() { "." } else { source };
                h.str("input", &input(from, &[path.to_string()])?);
            }
        }
    }
    Ok(Some(h.finish()))
}

/// A layer as the index keeps it.
pub fn to_result(layer: Option<&Layer>) -> StepResult {
    StepResult {
        layer: layer.map(Layer::to_ref),
    }
}

/// The layer of a cached result.
pub fn from_result(result: &StepResult) -> Result<Option<Layer>> {
    result.layer.as_ref().map(Layer::from_ref).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::steps::{ConfigEdit, CopyStep};

    fn layer(n: u8) -> Layer {
        Layer {
            digest: Digest::of(&[n]),
            diff_id: Digest::of(&[n, n]),
            size: 1,
            media_type: "m".into(),
        }
    }

    fn copy(dest: &str) -> StepKind {
        StepKind::Copy(CopyStep {
            is_add: false,
            from: CopyFrom::Context,
            sources: vec![CopySource::Path("a".into())],
            dest: dest.into(),
            dest_is_dir: false,
            chown: None,
            chmod: None,
            exclude: Vec::new(),
            parents: false,
            keep_git_dir: false,
        })
    }

    fn key(kind: &StepKind, parent: &[Layer], input: &str) -> Option<Digest> {
        key_as(kind, parent, input, false)
    }

    fn key_as(kind: &StepKind, parent: &[Layer], input: &str, single_id: bool) -> Option<Digest> {
        let config = ImageConfig::default();
        let base = KeyBase {
            platform: "linux/amd64",
            single_id,
            epoch: None,
            parent,
            config: &config,
        };
        step_key(kind, &base, &mut |_, _| Ok(input.to_string())).unwrap()
    }

    #[test]
    fn keys_follow_parent_step_and_input() {
        let a = key(&copy("/a"), &[layer(1)], "i");
        assert!(a.is_some());
        assert_eq!(a, key(&copy("/a"), &[layer(1)], "i"));
        assert_ne!(a, key(&copy("/b"), &[layer(1)], "i"));
        assert_ne!(a, key(&copy("/a"), &[layer(2)], "i"));
        assert_ne!(a, key(&copy("/a"), &[layer(1)], "j"));
        assert_ne!(a, key(&copy("/a"), &[], "i"));
        // A single-id mapping squashes owners on disk: its results are its own.
        assert_ne!(a, key_as(&copy("/a"), &[layer(1)], "i", true));
        assert_eq!(key(&StepKind::Config(ConfigEdit::Arg), &[], "i"), None);
    }
}
