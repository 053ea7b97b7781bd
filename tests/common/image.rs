//! Reading rbuild's image outputs without rbuild's code: OCI layouts (directory or tar) and
//! docker-archives are parsed here with every blob checked against its digest, and the
//! independent tools (skopeo, umoci, podman) are driven through small wrappers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::tree::{decompress, FsTree};
use super::{is_root, sha256_hex, tool};

/// OCI media type of an image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI media type of an image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Layer media types the tests can read.
pub const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
];

/// The files of a directory or a tar archive, by relative path, with symlinks kept aside so
/// lookups can follow them (docker-archives may link duplicate layers).
#[derive(Debug, Default)]
pub struct Files {
    files: BTreeMap<String, Vec<u8>>,
    links: BTreeMap<String, String>,
}

impl Files {
    /// Reads every file of a tar archive into memory.
    pub fn from_tar(bytes: &[u8]) -> Result<Files, String> {
        let mut out = Files::default();
        let mut archive = tar::Archive::new(bytes);
        for entry in archive.entries().map_err(|e| format!("not a tar: {e}"))? {
            let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
            let path = entry
                .path()
                .map_err(|e| format!("bad path: {e}"))?
                .to_string_lossy()
                .into_owned();
            let Some(path) = super::tree::normalize(&path)? else {
                continue;
            };
            let path = path.trim_start_matches('/').to_string();
            let et = entry.header().entry_type();
            if et.is_file() {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut buf)
                    .map_err(|e| format!("{path}: {e}"))?;
                out.files.insert(path, buf);
            } else if et.is_symlink() || et.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("{path}: {e}"))?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target = if et.is_hard_link() {
                    format!("/{target}")
                } else {
                    target
                };
                out.links.insert(path, target);
            }
        }
        Ok(out)
    }

    /// Reads every file below a directory into memory.
    pub fn from_dir(dir: &Path) -> Result<Files, String> {
        let mut out = Files::default();
        for entry in walkdir::WalkDir::new(dir).min_depth(1) {
            let entry = entry.map_err(|e| format!("walking {}: {e}", dir.display()))?;
            let rel = entry
                .path()
                .strip_prefix(dir)
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
            if entry.file_type().is_file() {
                let bytes = std::fs::read(entry.path()).map_err(|e| format!("{rel}: {e}"))?;
                out.files.insert(rel, bytes);
            } else if entry.file_type().is_symlink() {
                let t = std::fs::read_link(entry.path()).map_err(|e| format!("{rel}: {e}"))?;
                out.links.insert(rel, t.to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }

    /// The content of `path`, following symlinks (relative to the link's directory, or to
    /// the top for absolute targets).
    pub fn get(&self, path: &str) -> Result<&[u8], String> {
        let mut p = path.trim_start_matches('/').to_string();
        for _ in 0..16 {
            if let Some(b) = self.files.get(&p) {
                return Ok(b);
            }
            let Some(t) = self.links.get(&p) else {
                return Err(format!("{path} is not in the archive"));
            };
            let base = if t.starts_with('/') {
                String::new()
            } else {
                p.rsplit_once('/')
                    .map(|(d, _)| d.to_string())
                    .unwrap_or_default()
            };
            let joined = format!("{base}/{t}");
            let mut parts: Vec<&str> = Vec::new();
            for c in joined.split('/') {
                match c {
                    "" | "." => {}
                    ".." => {
                        parts.pop();
                    }
                    c => parts.push(c),
                }
            }
            p = parts.join("/");
        }
        Err(format!("{path}: too many symlinks"))
    }

    /// Every file and link name.
    pub fn names(&self) -> Vec<String> {
        self.files
            .keys()
            .chain(self.links.keys())
            .cloned()
            .collect()
    }
}

/// Parses JSON, naming what it was on failure.
pub fn parse_json(bytes: &[u8], what: &str) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

/// An image read from an OCI image layout, every blob verified.
#[derive(Debug)]
pub struct OciImage {
    /// `index.json`.
    pub index: Value,
    /// The manifest's descriptor in the index.
    pub manifest_desc: Value,
    /// `sha256:...` of the manifest.
    pub manifest_digest: String,
    /// The manifest.
    pub manifest: Value,
    /// `sha256:...` of the config.
    pub config_digest: String,
    /// The config blob as stored.
    pub config_bytes: Vec<u8>,
    /// The config.
    pub config: Value,
    /// Layer blobs as stored, bottom first.
    pub layers: Vec<Vec<u8>>,
}

/// The blob a descriptor points to, checked against its digest and size.
fn blob<'a>(files: &'a Files, desc: &Value, what: &str) -> Result<&'a [u8], String> {
    let digest = desc["digest"]
        .as_str()
        .ok_or_else(|| format!("{what}: descriptor without digest: {desc}"))?;
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{what}: digest {digest} is not sha256"))?;
    let bytes = files
        .get(&format!("blobs/sha256/{hex}"))
        .map_err(|e| format!("{what}: blob missing: {e}"))?;
    let actual = sha256_hex(bytes);
    if actual != hex {
        return Err(format!(
            "{what}: blob {digest} has content with digest sha256:{actual}"
        ));
    }
    match desc["size"].as_u64() {
        Some(size) if size == bytes.len() as u64 => Ok(bytes),
        other => Err(format!(
            "{what}: descriptor size {other:?} but the blob has {} bytes",
            bytes.len()
        )),
    }
}

/// Checks that the config's `rootfs.diff_ids` are the digests of the uncompressed layers.
fn check_diff_ids(config: &Value, layers: &[Vec<u8>], what: &str) -> Result<(), String> {
    if config["rootfs"]["type"] != "layers" {
        return Err(format!(
            "{what}: config rootfs.type is {}",
            config["rootfs"]["type"]
        ));
    }
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| format!("{what}: config has no rootfs.diff_ids"))?
        .iter()
        .map(|v| v.as_str().unwrap_or(""))
        .collect();
    if diff_ids.len() != layers.len() {
        return Err(format!(
            "{what}: {} diff_ids for {} layers",
            diff_ids.len(),
            layers.len()
        ));
    }
    for (i, (id, layer)) in diff_ids.iter().zip(layers).enumerate() {
        let tar = decompress(layer).map_err(|e| format!("{what}: layer {i}: {e}"))?;
        let actual = format!("sha256:{}", sha256_hex(&tar));
        if *id != actual {
            return Err(format!(
                "{what}: layer {i} has diff_id {actual}, config says {id}"
            ));
        }
    }
    Ok(())
}

impl OciImage {
    /// Reads and verifies the single image of an OCI layout.
    pub fn read(files: &Files, what: &str) -> Result<OciImage, String> {
        let layout = parse_json(files.get("oci-layout")?, "oci-layout")?;
        if layout["imageLayoutVersion"] != "1.0.0" {
            return Err(format!("{what}: oci-layout is {layout}"));
        }
        let index = parse_json(files.get("index.json")?, "index.json")?;
        if index["schemaVersion"] != 2 {
            return Err(format!(
                "{what}: index.json schemaVersion is {}",
                index["schemaVersion"]
            ));
        }
        let manifests = index["manifests"]
            .as_array()
            .ok_or_else(|| format!("{what}: index.json has no manifests"))?;
        // One image; several entries (one per name) may point to it.
        let Some(manifest_desc) = manifests.first().cloned() else {
            return Err(format!("{what}: index.json lists no manifest"));
        };
        if let Some(other) = manifests
            .iter()
            .find(|m| m["digest"] != manifest_desc["digest"])
        {
            return Err(format!(
                "{what}: index.json lists different images: {} and {}",
                manifest_desc["digest"], other["digest"]
            ));
        }
        if manifest_desc["mediaType"] != OCI_MANIFEST {
            return Err(format!(
                "{what}: manifest media type {}",
                manifest_desc["mediaType"]
            ));
        }
        let manifest_bytes = blob(files, &manifest_desc, "manifest")?;
        let manifest = parse_json(manifest_bytes, "manifest")?;
        if manifest["schemaVersion"] != 2 {
            return Err(format!(
                "{what}: manifest schemaVersion {}",
                manifest["schemaVersion"]
            ));
        }
        if !manifest["mediaType"].is_null() && manifest["mediaType"] != OCI_MANIFEST {
            return Err(format!(
                "{what}: manifest says mediaType {}",
                manifest["mediaType"]
            ));
        }
        if manifest["config"]["mediaType"] != OCI_CONFIG {
            return Err(format!(
                "{what}: config media type {}",
                manifest["config"]["mediaType"]
            ));
        }
        let config_bytes = blob(files, &manifest["config"], "config")?.to_vec();
        let config = parse_json(&config_bytes, "config")?;
        let mut layers = Vec::new();
        for (i, desc) in manifest["layers"]
            .as_array()
            .ok_or_else(|| format!("{what}: manifest has no layers array"))?
            .iter()
            .enumerate()
        {
            let mt = desc["mediaType"].as_str().unwrap_or("");
            if !LAYER_TYPES.contains(&mt) {
                return Err(format!("{what}: layer {i} has media type {mt:?}"));
            }
            layers.push(blob(files, desc, &format!("layer {i}"))?.to_vec());
        }
        check_diff_ids(&config, &layers, what)?;
        Ok(OciImage {
            manifest_digest: manifest_desc["digest"].as_str().unwrap_or("").to_string(),
            config_digest: manifest["config"]["digest"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            index,
            manifest_desc,
            manifest,
            config_bytes,
            config,
            layers,
        })
    }

    /// The filesystem the layers make.
    pub fn tree(&self) -> Result<FsTree, String> {
        layers_tree(&self.layers)
    }

    /// The annotation values of the index entries (where names are recorded).
    pub fn annotation_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.index["manifests"].as_array().into_iter().flatten() {
            if let Some(a) = m["annotations"].as_object() {
                out.extend(a.values().filter_map(|v| v.as_str().map(str::to_string)));
            }
        }
        out
    }

    /// The `org.opencontainers.image.ref.name` of the first index entry, if any.
    pub fn ref_name(&self) -> Option<String> {
        self.manifest_desc["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .map(str::to_string)
    }
}

/// Applies layers in order.
pub fn layers_tree(layers: &[Vec<u8>]) -> Result<FsTree, String> {
    let mut t = FsTree::new();
    for (i, l) in layers.iter().enumerate() {
        t.apply_layer(l).map_err(|e| format!("layer {i}: {e}"))?;
    }
    Ok(t)
}

/// An image read from a docker-archive (`docker save` format), verified.
#[derive(Debug)]
pub struct DockerArchive {
    /// `RepoTags` of the image.
    pub repo_tags: Vec<String>,
    /// The config blob.
    pub config_bytes: Vec<u8>,
    /// The config.
    pub config: Value,
    /// Layer tars, bottom first.
    pub layers: Vec<Vec<u8>>,
}

impl DockerArchive {
    /// Reads the single image of a docker-archive.
    pub fn read(bytes: &[u8]) -> Result<DockerArchive, String> {
        let files = Files::from_tar(bytes)?;
        let manifest = parse_json(files.get("manifest.json")?, "manifest.json")?;
        let images = manifest
            .as_array()
            .ok_or_else(|| format!("manifest.json is not an array: {manifest}"))?;
        if images.len() != 1 {
            return Err(format!(
                "manifest.json lists {} images, expected 1",
                images.len()
            ));
        }
        let img = &images[0];
        let config_name = img["Config"]
            .as_str()
            .ok_or_else(|| format!("manifest.json entry without Config: {img}"))?;
        let config_bytes = files.get(config_name)?.to_vec();
        let hex = sha256_hex(&config_bytes);
        if !config_name.contains(&hex) {
            return Err(format!(
                "config {config_name} is not named after its digest sha256:{hex}"
            ));
        }
        let config = parse_json(&config_bytes, "docker-archive config")?;
        let repo_tags = match &img["RepoTags"] {
            Value::Null => Vec::new(),
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            other => return Err(format!("RepoTags is {other}")),
        };
        let mut layers = Vec::new();
        for l in img["Layers"]
            .as_array()
            .ok_or_else(|| format!("manifest.json entry without Layers: {img}"))?
        {
            let name = l.as_str().ok_or_else(|| format!("layer name {l}"))?;
            layers.push(files.get(name)?.to_vec());
        }
        check_diff_ids(&config, &layers, "docker-archive")?;
        Ok(DockerArchive {
            repo_tags,
            config_bytes,
            config,
            layers,
        })
    }
}

/// Runs skopeo with `args` and returns stdout.
pub fn skopeo(args: &[&str]) -> Result<Vec<u8>, String> {
    tool(Command::new("skopeo").args(args))
}

/// Runs skopeo with `args` and parses its JSON output.
pub fn skopeo_json(args: &[&str]) -> Result<Value, String> {
    parse_json(
        &skopeo(args)?,
        &format!("output of skopeo {}", args.join(" ")),
    )
}

/// Copies the image `src_ref` (a name in the index, or None when the index has one entry)
/// of the OCI layout `src` into a new layout `dest` under tag `tag` with skopeo (which
/// verifies every blob), so umoci gets a layout whose tag it knows.
pub fn skopeo_copy_layout(
    src: &Path,
    src_ref: Option<&str>,
    dest: &Path,
    tag: &str,
) -> Result<(), String> {
    let from = match src_ref {
        Some(r) => format!("oci:{}:{r}", src.display()),
        None => format!("oci:{}", src.display()),
    };
    let to = format!("oci:{}:{tag}", dest.display());
    skopeo(&["--insecure-policy", "copy", "--quiet", &from, &to]).map(|_| ())
}

/// Unpacks `layout:tag` into the bundle directory `bundle` with umoci (rootless unless the
/// tests run as root); the filesystem is `bundle/rootfs`.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> Result<PathBuf, String> {
    let image = format!("{}:{tag}", layout.display());
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !is_root() {
        cmd.arg("--rootless");
    }
    cmd.arg("--image").arg(&image).arg(bundle);
    tool(&mut cmd)?;
    Ok(bundle.join("rootfs"))
}

/// A podman with its own storage in a scratch directory (vfs driver, no daemon, nothing of
/// the user's or the system's image store touched). The directory is directly under `/tmp`
/// because podman refuses a runroot path longer than 50 characters.
pub struct Podman {
    base: PathBuf,
}

impl Podman {
    /// Prepares the storage directories.
    pub fn new() -> Result<Podman, String> {
        let base = tempfile::Builder::new()
            .prefix("rbp")
            .tempdir_in("/tmp")
            .map_err(|e| format!("cannot create a podman directory in /tmp: {e}"))?
            .keep();
        for d in ["storage", "run", "tmp"] {
            std::fs::create_dir_all(base.join(d))
                .map_err(|e| format!("{}: {e}", base.display()))?;
        }
        let conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            base.join("storage").display(),
            base.join("run").display()
        );
        std::fs::write(base.join("storage.conf"), conf).map_err(|e| e.to_string())?;
        Ok(Podman { base })
    }

    /// A podman command with the isolated storage.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_STORAGE_CONF", self.base.join("storage.conf"))
            .arg("--root")
            .arg(self.base.join("storage"))
            .arg("--runroot")
            .arg(self.base.join("run"))
            .arg("--tmpdir")
            .arg(self.base.join("tmp"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(["--cgroup-manager", "cgroupfs"]);
        cmd
    }

    /// `podman load -i archive`; returns what podman printed.
    pub fn load(&self, archive: &Path) -> Result<String, String> {
        let out = tool(self.cmd().arg("load").arg("-i").arg(archive))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `podman image inspect NAME` (the first result).
    pub fn inspect(&self, name: &str) -> Result<Value, String> {
        let out = tool(self.cmd().args(["image", "inspect", name]))?;
        let v = parse_json(&out, "podman image inspect output")?;
        v.get(0)
            .cloned()
            .ok_or_else(|| format!("podman image inspect {name} returned {v}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Unprivileged, the storage holds files owned by subordinate ids; remove it from
        // inside the user namespace.
        if !is_root() {
            let mut cmd = self.cmd();
            cmd.arg("unshare")
                .arg("rm")
                .arg("-rf")
                .arg(self.base.join("storage"))
                .arg(self.base.join("run"));
            let _ = super::run_cmd(&mut cmd, None, super::TOOL_TIMEOUT);
            // Rootless podman starts a pause process that holds its user namespace and
            // records it in the tmpdir: end exactly that process.
            if let Ok(pid) = std::fs::read_to_string(self.base.join("tmp/pause.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        }
        if std::env::var("RBUILD_TEST_KEEP").as_deref() != Ok("1") {
            super::remove_tree(&self.base);
        }
    }
}
