//! `rbuild image load|ls|rm`: the images kept in the store (base images for offline
//! builds).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

use super::{EXIT_BUILD_FAILED, EXIT_OK, EXIT_USAGE};
use crate::image::reference::Reference;
use crate::plan::Platform;
use crate::source::archive::import;
use crate::source::image::open_stored;

/// Manage the images in rbuild's store.
#[derive(Debug, Parser)]
#[command(name = "rbuild image")]
struct ImageArgs {
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
}

/// Runs `rbuild image …` (`argv[1]` is `image`) and returns the exit code.
pub fn main(mut argv: Vec<OsString>) -> i32 {
    let program = argv.remove(0);
    argv[0] = program; // "image" takes the program's place for clap
    let args = match ImageArgs::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
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
    }
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
