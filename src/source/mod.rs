//! Image sources: where base images come from. OCI registries (pull and push) and
//! offline files (OCI layouts and archives, docker-archives) for air-gapped machines.

pub mod archive;
pub mod image;
pub mod index;
pub mod registry;
pub mod resolver;
