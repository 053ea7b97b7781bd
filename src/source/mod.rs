//! Sources from outside the context: where base images come from (OCI registries, pull
//! and push; offline files: OCI layouts and archives, docker-archives, for air-gapped
//! machines), and git repositories for ADD.

pub mod archive;
pub mod git;
pub mod image;
pub mod index;
pub mod registry;
pub mod resolver;
