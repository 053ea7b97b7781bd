//! `type=image` and `type=registry`: the image recorded under its names in rbuild's store
//! (so a later `FROM name` finds it offline) and, when pushing, uploaded to each name's
//! registry: blobs checked, mounted from the base images' repositories or uploaded, then
//! the manifest under the tag.

use anyhow::{bail, Context, Result};

use super::{ExportTargets, Pushed};
use crate::image::reference::Reference;
use crate::image::BuiltImage;

/// Records (and with `push`, pushes) `image` under `names`; returns what was pushed.
pub fn export_image(
    targets: &ExportTargets<'_>,
    image: &BuiltImage,
    names: &[Reference],
    push: bool,
) -> Result<Pushed> {
    if names.is_empty() {
        bail!("type=image and type=registry need a name (name=REF or -t REF)");
    }
    let mut pushed = Vec::new();
    for name in names {
        let full = name.to_string();
        targets
            .store
            .set_image(&full, &image.manifest_digest, "build")?;
        if !push {
            continue;
        }
        let mount_from: Vec<String> = targets
            .mount_from
            .iter()
            .filter(|b| b.registry == name.registry)
            .map(|b| b.repository.clone())
            .collect();
        let digest = targets
            .registry
            .push_reporting(
                name,
                image,
                targets.store,
                &mount_from,
                targets.push_progress,
            )
            .with_context(|| format!("cannot push {full}"))?;
        pushed.push((full, digest));
    }
    Ok(pushed)
}
