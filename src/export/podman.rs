//! `--load=podman`: the image handed to `podman load` as a docker-archive, so it lands in
//! the user's containers-storage (podman's and buildah's images) under its names.

use std::io::{BufWriter, Write};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use super::docker;
use crate::image::reference::Reference;
use crate::image::BuiltImage;
use crate::store::Store;

/// Writes `image` as a docker-archive named `names` into a temporary file of the store and
/// runs `podman load` on it.
pub fn load(store: &Store, image: &BuiltImage, names: &[Reference], mtime: i64) -> Result<()> {
    if names.is_empty() {
        bail!("--load=podman needs a name: give one with -t NAME");
    }
    let podman = crate::which::on_path("podman").ok_or_else(|| {
        anyhow!("--load=podman runs `podman load`, and podman is not on PATH (Debian: apt-get install podman)")
    })?;
    let tmp = store.temp_file()?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        docker::write_archive(store, image, names, mtime, &mut out)?;
        out.flush()?;
    }
    let ran = Command::new(&podman)
        .arg("load")
        .arg("--input")
        .arg(tmp.path())
        .output()
        .with_context(|| format!("cannot run {}", podman.display()))?;
    if !ran.status.success() {
        bail!(
            "podman load failed ({}): {}",
            ran.status,
            crate::progress::printable(String::from_utf8_lossy(&ran.stderr).trim())
        );
    }
    Ok(())
}
