//! Exporters: a built image (blobs in the store) written as an OCI layout (tar or
//! directory), a docker-archive, the final root filesystem as a directory, or that
//! filesystem as one tar.
//!
//! Every file destination is written under a temporary name in its directory and renamed
//! into place when complete, so a failure never leaves a half-written output.

mod convert;
mod docker;
mod filesystem;
mod oci;
mod podman;
mod registry;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::image::reference::Reference;
use crate::image::{BuiltImage, LayerFormat};
use crate::snapshot::tar_writer::{TarHeader, TarKind, TarWriter};
use crate::source::registry::{Client, TransferProgress};
use crate::store::{Digest, Store};

/// Which exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// OCI image layout; `tar` chooses a tarball over a directory.
    Oci {
        /// Write a tar archive (true) or a directory (false).
        tar: bool,
    },
    /// docker-archive (`docker load`, `podman load`).
    Docker,
    /// The final root filesystem in a directory.
    Local,
    /// The final root filesystem as one tar.
    Tar,
    /// The image handed to `podman load` under its names (`--load=podman`).
    Podman,
    /// The image under its names in rbuild's store (`type=image`), and with `push` in
    /// their registries too (`type=image,push=true`, `type=registry`).
    Image {
        /// Push to the registries.
        push: bool,
    },
}

/// Where an exporter writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard output (tar outputs only).
    Stdout,
    /// A file or directory path.
    Path(PathBuf),
    /// No file: the output goes to the store and registries (`type=image`).
    Names,
}

/// How an image output writes its layers and manifest (`compression=`,
/// `compression-level=`, `force-compression=`, `oci-mediatypes=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFormat {
    /// How the build's new layers are compressed.
    pub layers: LayerFormat,
    /// Recompress every layer that is compressed otherwise (base and cached ones too).
    pub force: bool,
    /// OCI media types (else Docker's).
    pub oci_mediatypes: bool,
}

impl Default for ImageFormat {
    fn default() -> ImageFormat {
        ImageFormat {
            layers: LayerFormat::default(),
            force: false,
            oci_mediatypes: true,
        }
    }
}

/// Annotations an OCI layout's `index.json` carries (`--annotation index:K=V` and
/// `manifest-descriptor:K=V`); the manifest's own are in the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutAnnotations {
    /// Of the index.
    pub index: BTreeMap<String, String>,
    /// Of the manifest's descriptor in the index.
    pub manifest_descriptor: BTreeMap<String, String>,
}

/// One `-o` output to produce.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Annotations of an OCI layout's index.
    pub annotations: LayoutAnnotations,
    /// The exporter.
    pub kind: OutputKind,
    /// Layer compression and media types of image outputs.
    pub format: ImageFormat,
    /// Where to.
    pub dest: Destination,
    /// Image names (`-t` and `name=`), recorded where the format has a place for them.
    pub names: Vec<String>,
}

/// Where an export goes besides the files it writes.
pub struct ExportTargets<'a> {
    /// The store the image's blobs are in (and `type=image` names it in).
    pub store: &'a Store,
    /// The registry client, for pushes.
    pub registry: &'a Client,
    /// Repositories of base images, offered to registries for cross-repository mounts.
    pub mount_from: &'a [Reference],
    /// Where pushes report each blob's bytes.
    pub push_progress: TransferProgress<'a>,
}

/// What an export pushed: each name with the manifest digest the registry holds.
pub type Pushed = Vec<(String, Digest)>;

/// Writes `image` as `req` asks. `epoch` (SOURCE_DATE_EPOCH) is the mtime of the files an
/// archive format adds around the blobs (0 without it), so outputs are reproducible.
pub fn export(
    targets: &ExportTargets<'_>,
    image: &BuiltImage,
    req: &ExportRequest,
    epoch: Option<i64>,
) -> Result<Pushed> {
    let store = targets.store;
    let names = req
        .names
        .iter()
        .map(|n| Reference::parse(n).map(Reference::with_default_tag))
        .collect::<Result<Vec<_>>>()?;
    let mtime = epoch.unwrap_or(0).max(0);
    let converted = match req.kind {
        OutputKind::Local | OutputKind::Tar => None,
        _ => convert::for_output(store, image, &req.format)?,
    };
    let image = converted.as_ref().unwrap_or(image);
    if let OutputKind::Image { push } = req.kind {
        return registry::export_image(targets, image, &names, push);
    }
    match (&req.kind, &req.dest) {
        (OutputKind::Oci { tar: true }, dest) => {
            let index = oci::index_json(image, &names, &req.annotations)?;
            write_stream(dest, |w| oci::write_archive(store, image, &index, mtime, w))
        }
        (OutputKind::Oci { tar: false }, Destination::Path(p)) => {
            let index = oci::index_json(image, &names, &req.annotations)?;
            replace_dir(p, |tmp| oci::write_dir(store, image, &index, tmp))
        }
        (OutputKind::Docker, dest) => write_stream(dest, |w| {
            docker::write_archive(store, image, &names, mtime, w)
        }),
        (OutputKind::Local, Destination::Path(p)) => filesystem::write_dir(store, image, p),
        (OutputKind::Tar, dest) => write_stream(dest, |w| filesystem::write_tar(store, image, w)),
        (OutputKind::Podman, _) => podman::load(store, image, &names, mtime),
        (OutputKind::Image { .. }, _) => unreachable!("handled above"),
        (_, Destination::Names) => bail!("this output needs dest=PATH"),
        (_, Destination::Stdout) => bail!("a directory output cannot be written to stdout"),
    }
    .map(|()| Vec::new())
}

/// A blob of the image, for the archive writers.
struct Blob {
    digest: Digest,
    size: u64,
}

/// Manifest, config and layers, each once, sorted by digest.
fn image_blobs(image: &BuiltImage) -> Vec<Blob> {
    let mut blobs = vec![
        Blob {
            digest: image.manifest_digest.clone(),
            size: image.manifest.len() as u64,
        },
        Blob {
            digest: image.config_digest.clone(),
            size: image.config.len() as u64,
        },
    ];
    for l in &image.layers {
        blobs.push(Blob {
            digest: l.digest.clone(),
            size: l.size,
        });
    }
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    blobs.dedup_by(|a, b| a.digest == b.digest);
    blobs
}

/// Adds a directory entry to an output archive.
fn archive_dir<W: Write>(tar: &mut TarWriter<W>, path: &str, mtime: i64) -> Result<()> {
    tar.append(
        &archive_header(path, TarKind::Dir, 0o755, mtime),
        &mut std::io::empty(),
    )
}

/// Adds a file held in memory to an output archive.
fn archive_bytes<W: Write>(
    tar: &mut TarWriter<W>,
    path: &str,
    bytes: &[u8],
    mtime: i64,
) -> Result<()> {
    let h = archive_header(
        path,
        TarKind::File {
            size: bytes.len() as u64,
        },
        0o644,
        mtime,
    );
    tar.append(&h, &mut &bytes[..])
}

/// Streams a blob of the store into an output archive.
fn archive_blob<W: Write>(
    tar: &mut TarWriter<W>,
    store: &Store,
    path: &str,
    blob: &Blob,
    mtime: i64,
) -> Result<()> {
    let mut f = store.open_blob(&blob.digest)?;
    let h = archive_header(path, TarKind::File { size: blob.size }, 0o644, mtime);
    tar.append(&h, &mut f)
        .with_context(|| format!("cannot export blob {}", blob.digest))
}

fn archive_header(path: &str, kind: TarKind, mode: u32, mtime: i64) -> TarHeader {
    TarHeader {
        path: path.to_string(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime,
        xattrs: Vec::new(),
    }
}

/// Runs `write` against stdout or a temporary file renamed to `dest` on success.
fn write_stream(
    dest: &Destination,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    match dest {
        Destination::Stdout => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            write(&mut out)?;
            out.flush().context("cannot write to stdout")?;
            Ok(())
        }
        Destination::Names => bail!("this output needs dest=PATH"),
        Destination::Path(path) => {
            let dir = parent_dir(path);
            let tmp = tempfile::Builder::new()
                .prefix(".rbuild-")
                .tempfile_in(dir)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
            write(&mut out).with_context(|| format!("cannot write {}", path.display()))?;
            out.flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
            drop(out);
            set_default_file_mode(tmp.path())?;
            tmp.persist(path)
                .map_err(|e| e.error)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(())
        }
    }
}

/// Builds a directory output in a temporary directory next to `dest`, then puts it in
/// place of `dest` (an existing directory there is replaced as a whole).
fn replace_dir(dest: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dest.exists() && !dest.is_dir() {
        bail!(
            "cannot write {}: it exists and is not a directory",
            dest.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix(".rbuild-")
        .tempdir_in(parent_dir(dest))
        .with_context(|| format!("cannot write {}", dest.display()))?;
    build(tmp.path()).with_context(|| format!("cannot write {}", dest.display()))?;
    set_default_dir_mode(tmp.path())?;
    let tmp = tmp.keep();
    if dest.exists() {
        let old = tempfile::Builder::new()
            .prefix(".rbuild-old-")
            .tempdir_in(parent_dir(dest))?
            .keep();
        fs::rename(dest, old.join("d"))
            .and_then(|()| fs::rename(&tmp, dest))
            .map_err(|e| anyhow!("cannot replace {}: {e}", dest.display()))?;
        fs::remove_dir_all(&old).ok();
    } else if let Err(e) = fs::rename(&tmp, dest) {
        fs::remove_dir_all(&tmp).ok();
        bail!("cannot write {}: {e}", dest.display());
    }
    Ok(())
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Temporary files are created 0600; outputs get the usual 0644 (less the umask).
fn set_default_file_mode(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o666 & !umask()))?;
    Ok(())
}

fn set_default_dir_mode(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o777 & !umask()))?;
    Ok(())
}

/// The process umask, from /proc (setting and restoring it would race with other threads).
fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_stream_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        let err = write_stream(&Destination::Path(dest.clone()), |w| {
            w.write_all(b"partial")?;
            bail!("boom")
        });
        assert!(err.is_err());
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn replace_dir_swaps_whole_directories() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layout");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old"), b"x").unwrap();
        replace_dir(&dest, |t| Ok(fs::write(t.join("new"), b"y")?)).unwrap();
        assert!(dest.join("new").is_file());
        assert!(!dest.join("old").exists());
        assert!(replace_dir(&dest, |_| bail!("boom")).is_err());
        assert!(dest.join("new").is_file());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
