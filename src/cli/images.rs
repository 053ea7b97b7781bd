//! `rbuild image load|ls|rm`: the images kept in the store (base images for offline
//! builds).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use super::{EXIT_BUILD_FAILED, EXIT_OK};
use crate::export::{export, Destination, ExportRequest, ExportTargets, OutputKind};
use crate::image::reference::Reference;
use crate::plan::Platform;
use crate::source::archive::import;
use crate::source::image::{open_stored, open_stored_built};
use crate::store::images::ImageRecord;
use crate::store::Store;

/// `rbuild image`: manage the images in rbuild's store.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    cache: super::cache::CacheDirArg,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Import an OCI archive, an OCI layout directory or a docker-archive (`-` = stdin).
    Load {
        /// The archive or layout directory.
        #[arg(value_name = "FILE|DIR")]
        path: Option<PathBuf>,
        /// The same, podman-style.
        #[arg(
            short = 'i',
            long = "input",
            value_name = "FILE|DIR",
            conflicts_with = "path"
        )]
        input: Option<PathBuf>,
        /// Name to record the image under (instead of the archive's own names).
        #[arg(long)]
        name: Option<String>,
        /// Print only the digests.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the images in the store.
    #[command(alias = "list")]
    Ls {
        /// Print only the names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images from the store by name.
    #[command(alias = "remove")]
    Rm {
        /// Image names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Print images' names, digests, config and layers as a JSON array.
    Inspect {
        /// Image names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Give an image more names.
    Tag {
        /// The image's name.
        #[arg(value_name = "NAME")]
        source: String,
        /// The new names.
        #[arg(required = true, value_name = "NEW_NAME")]
        targets: Vec<String>,
    },
    /// Push an image to its registry, or under another name to DESTINATION's.
    Push {
        /// The image's name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Push under this name instead.
        #[arg(value_name = "DESTINATION")]
        destination: Option<String>,
        #[command(flatten)]
        registry: super::RegistryArgs,
    },
    /// Write an image as an archive or layout (to stdout by default).
    Save {
        /// The image's name.
        #[arg(value_name = "NAME")]
        name: String,
        /// The file (`-` for stdout), or the directory for `oci-dir`.
        #[arg(short = 'o', long = "output", value_name = "PATH", default_value = "-")]
        output: PathBuf,
        /// The format.
        #[arg(long, value_enum, default_value = "oci-archive")]
        format: SaveFormat,
    },
}

/// `image save --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SaveFormat {
    /// An OCI image layout in a tar archive.
    OciArchive,
    /// An OCI image layout directory.
    OciDir,
    /// A docker-archive (`docker load`).
    DockerArchive,
}

/// Runs `rbuild image …` and returns the exit code.
pub fn main(args: ImageArgs) -> i32 {
    match run(args) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            super::print_error(&e);
            EXIT_BUILD_FAILED
        }
    }
}

fn run(args: ImageArgs) -> Result<()> {
    let store = args.cache.open()?;
    let platform = Platform::host();
    match args.command {
        ImageCommand::Load {
            path,
            input,
            name,
            quiet,
        } => {
            let path = path
                .or(input)
                .ok_or_else(|| anyhow!("image load needs a FILE or DIR (or - for stdin)"))?;
            if let Some(n) = &name {
                Reference::parse(n)?;
            }
            let from_stdin;
            let path = if path.as_os_str() == "-" {
                let mut tmp = store.temp_file()?;
                std::io::copy(&mut std::io::stdin().lock(), &mut tmp)
                    .context("cannot read the archive from stdin")?;
                from_stdin = tmp;
                from_stdin.path().to_path_buf()
            } else {
                path
            };
            for i in import(&store, &path, name.as_deref(), &platform)? {
                if quiet {
                    println!("{}", i.digest);
                } else {
                    println!("Loaded image: {} ({})", i.name, i.digest);
                }
            }
            Ok(())
        }
        ImageCommand::Ls { quiet } => {
            let images = store.images()?;
            if quiet {
                for r in images {
                    println!("{}", r.name);
                }
                return Ok(());
            }
            println!("{:<50} {:<19} {:>10}  SOURCE", "NAME", "DIGEST", "SIZE");
            for r in images {
                let size = r
                    .manifest_digest()
                    .and_then(|d| open_stored(&store, &r.name, &d, &platform))
                    .map(|b| human_size(b.layers.iter().map(|l| l.size).sum()))
                    .unwrap_or_else(|_| "incomplete".into());
                let short = r.digest.get(..19).unwrap_or(&r.digest);
                println!("{:<50} {:<19} {:>10}  {}", r.name, short, size, r.source);
            }
            Ok(())
        }
        ImageCommand::Rm { names } => {
            let mut missing = Vec::new();
            for n in &names {
                let full = Reference::parse(n)?.with_default_tag().to_string();
                if store.remove_image(&full)? {
                    println!("Removed {full}");
                } else {
                    missing.push(full);
                }
            }
            if !missing.is_empty() {
                bail!("no such image: {}", missing.join(", "));
            }
            Ok(())
        }
        ImageCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                out.push(inspect(&store, n, &platform)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        ImageCommand::Tag { source, targets } => {
            let (_, record) = stored(&store, &source)?;
            for t in &targets {
                let full = Reference::parse(t)?.with_default_tag().to_string();
                store.set_image(&full, &record.manifest_digest()?, &record.source)?;
                println!("Tagged {full}");
            }
            Ok(())
        }
        ImageCommand::Push {
            name,
            destination,
            registry,
        } => {
            let (full, record) = stored(&store, &name)?;
            let image = open_stored_built(&store, &full, &record.manifest_digest()?, &platform)?;
            let dest =
                Reference::parse(destination.as_deref().unwrap_or(&full))?.with_default_tag();
            let digest = registry
                .client(&[])?
                .push(&dest, &image, &store, &[])
                .with_context(|| format!("cannot push {dest}"))?;
            println!("pushed {dest}@{digest}");
            Ok(())
        }
        ImageCommand::Save {
            name,
            output,
            format,
        } => save(&store, &name, output, format, &platform),
    }
}

/// The record of image `name` (its normalised name and record).
fn stored(store: &Store, name: &str) -> Result<(String, ImageRecord)> {
    let full = Reference::parse(name)?.with_default_tag().to_string();
    let record = store
        .image(&full)?
        .ok_or_else(|| anyhow!("no such image: {full}"))?;
    Ok((full, record))
}

/// `image inspect`'s object for one image: docker's field names where they apply.
fn inspect(store: &Store, name: &str, platform: &Platform) -> Result<serde_json::Value> {
    let (full, record) = stored(store, name)?;
    let image = open_stored_built(store, &full, &record.manifest_digest()?, platform)?;
    let config: serde_json::Value = serde_json::from_slice(&image.config)?;
    Ok(serde_json::json!({
        "Id": image.config_digest.to_string(),
        "Name": full,
        "Digest": record.digest,
        "ManifestDigest": image.manifest_digest.to_string(),
        "Source": record.source,
        "Created": config.get("created"),
        "Architecture": config.get("architecture"),
        "Os": config.get("os"),
        "Size": image.layers.iter().map(|l| l.size).sum::<u64>(),
        "Config": config.get("config"),
        "RootFS": config.get("rootfs"),
        "Layers": image.layers.iter().map(|l| serde_json::json!({
            "Digest": l.digest.to_string(),
            "DiffID": l.diff_id.to_string(),
            "Size": l.size,
            "MediaType": l.media_type,
        })).collect::<Vec<_>>(),
    }))
}

/// `image save`: the stored image written as `format` asks.
fn save(
    store: &Store,
    name: &str,
    output: PathBuf,
    format: SaveFormat,
    platform: &Platform,
) -> Result<()> {
    let (full, record) = stored(store, name)?;
    let image = open_stored_built(store, &full, &record.manifest_digest()?, platform)?;
    let dest = if output.as_os_str() == "-" {
        if std::io::stdout().is_terminal() {
            bail!("refusing to write an archive to a terminal: redirect stdout or give -o FILE");
        }
        Destination::Stdout
    } else {
        Destination::Path(output)
    };
    let kind = match format {
        SaveFormat::OciArchive => OutputKind::Oci { tar: true },
        SaveFormat::OciDir => OutputKind::Oci { tar: false },
        SaveFormat::DockerArchive => OutputKind::Docker,
    };
    let req = ExportRequest {
        annotations: crate::export::LayoutAnnotations::default(),
        kind,
        format: crate::export::ImageFormat::default(),
        dest,
        names: vec![full],
    };
    let client = super::RegistryArgs::default().client(&[])?;
    let targets = ExportTargets {
        store,
        registry: &client,
        mount_from: &[],
        push_progress: None,
    };
    export(&targets, &image, &req, None)?;
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_234_567), "1.2 MB");
    }
}
