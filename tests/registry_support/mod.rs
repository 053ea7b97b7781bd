//! A real `docker-registry` (Debian's distribution 2.x) on 127.0.0.1 for the registry client
//! tests: a free port, filesystem storage and an optional htpasswd file in a temporary
//! directory, killed when dropped. Also builds small images into a store with the library.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbuild::image::config::ImageConfig;
use rbuild::image::{BuiltImage, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST};
use rbuild::snapshot::{write_layer, Content, EntryKind, LayerEntry, LayerOptions};
use rbuild::store::{Digest, Store};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const HTPASSWD_BIN: &str = "/usr/bin/htpasswd";
const OPENSSL_BIN: &str = "/usr/bin/openssl";

/// True (after printing why) when the tools are missing and the test should return; in CI
/// (`CI=true`) a missing tool fails the test instead.
pub fn skip_without_registry() -> bool {
    skip_without(&[REGISTRY_BIN, HTPASSWD_BIN])
}

/// [`skip_without_registry`], also needing `openssl` to make a certificate.
pub fn skip_without_tls_registry() -> bool {
    skip_without(&[REGISTRY_BIN, HTPASSWD_BIN, OPENSSL_BIN])
}

fn skip_without(tools: &[&'static str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return false;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{missing:?} not installed (apt-get install docker-registry apache2-utils openssl)");
    }
    eprintln!("skipping: docker-registry not installed ({missing:?} missing)");
    true
}

/// A running registry; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// For a registry that wants client certificates: a certs.d directory holding
    /// `HOST/client.cert` and `HOST/client.key`, signed by the CA the registry trusts.
    pub certs_d: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// How a test registry speaks.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Plain,
    Tls,
    /// TLS, and every client must present a certificate signed by the test's client CA.
    MutualTls,
}

/// Runs openssl with `args`, failing the test when it fails.
fn openssl(args: &[&std::ffi::OsStr]) {
    let out = Command::new(OPENSSL_BIN)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {out:?}");
}

/// A fresh P-256 key (`key`) and a certificate (`cert`) for `subject`: self-signed, or
/// signed by `ca` (its certificate and key) when given.
fn make_cert(cert: &Path, key: &Path, subject: &str, extra: &[&str], ca: Option<(&Path, &Path)>) {
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args: Vec<&std::ffi::OsStr> = vec![os("req")];
    args.extend(ec.iter().map(|a| os(a)));
    args.extend([
        os("-days"),
        os("1"),
        os("-subj"),
        std::ffi::OsStr::new(subject),
    ]);
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.extend([os("-keyout"), key.as_os_str()]);
    match ca {
        None => {
            args.extend([os("-x509"), os("-out"), cert.as_os_str()]);
            openssl(&args);
        }
        Some((ca_cert, ca_key)) => {
            let csr = cert.with_extension("csr");
            args.extend([os("-out"), csr.as_os_str()]);
            openssl(&args);
            // A version 3 certificate (webpki refuses version 1) for client authentication.
            let ext = cert.with_extension("ext");
            std::fs::write(
                &ext,
                "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            )
            .expect("write the extensions file");
            openssl(&[
                os("x509"),
                os("-extfile"),
                ext.as_os_str(),
                os("-req"),
                os("-days"),
                os("1"),
                os("-in"),
                csr.as_os_str(),
                os("-CA"),
                ca_cert.as_os_str(),
                os("-CAkey"),
                ca_key.as_os_str(),
                os("-CAcreateserial"),
                os("-out"),
                cert.as_os_str(),
            ]);
            std::fs::remove_file(&csr).expect("remove the request");
            std::fs::remove_file(&ext).expect("remove the extensions file");
        }
    }
}

impl Registry {
    /// Starts a plain-HTTP registry, with htpasswd authentication when `user` is given.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        Registry::start_with(user, Transport::Plain)
    }

    /// Starts a registry serving HTTPS with a fresh self-signed certificate for 127.0.0.1.
    pub fn start_tls() -> Registry {
        Registry::start_with(None, Transport::Tls)
    }

    /// [`Registry::start_tls`], refusing clients without a certificate from a fresh CA;
    /// [`Registry::certs_d`] has one.
    pub fn start_mutual_tls() -> Registry {
        Registry::start_with(None, Transport::MutualTls)
    }

    fn start_with(user: Option<(&str, &str)>, transport: Transport) -> Registry {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((name, password)) = user {
            let out = Command::new(HTPASSWD_BIN)
                .args(["-Bbn", name, password])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                file.display()
            ));
        }
        let mut certs_d = None;
        if transport != Transport::Plain {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let san = ["-addext", "subjectAltName=IP:127.0.0.1"];
            make_cert(&cert, &key, "/CN=127.0.0.1", &san, None);
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if transport == Transport::MutualTls {
            let (ca, ca_key) = (
                dir.path().join("client-ca.pem"),
                dir.path().join("client-ca.key"),
            );
            make_cert(&ca, &ca_key, "/CN=rbuild test client CA", &[], None);
            let host_dir = dir.path().join("certs.d").join(&host);
            std::fs::create_dir_all(&host_dir).expect("create certs.d");
            make_cert(
                &host_dir.join("client.cert"),
                &host_dir.join("client.key"),
                "/CN=rbuild test client",
                &[],
                Some((&ca, &ca_key)),
            );
            config.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            certs_d = Some(dir.path().join("certs.d"));
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config).expect("write config.yml");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        // No inherited environment: distribution reads REGISTRY_* variables as settings.
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_file)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child,
            host,
            certs_d,
            _dir: dir,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(&self.host) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
                let mut answer = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log =
            std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry on {} did not start: {log}", self.host);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An auth file with `user:password` for `host`.
pub fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join(format!("auth-{user}-{password}.json"));
    std::fs::write(
        &path,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .expect("write auth file");
    path
}

/// Deterministic bytes that do not compress (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn file(path: &str, bytes: Vec<u8>) -> LayerEntry {
    LayerEntry {
        path: path.into(),
        kind: EntryKind::File {
            size: bytes.len() as u64,
            source: Content::Bytes(bytes),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        xattrs: Vec::new(),
    }
}

/// Builds an image for `arch` in `store` from layers of (path, bytes) files, the way the
/// solver does: gzip layers, an OCI config with their diff ids, an OCI manifest.
pub fn build_image(store: &Store, arch: &str, layers: Vec<Vec<(&str, Vec<u8>)>>) -> BuiltImage {
    let opts = LayerOptions {
        clamp_mtime: None,
        format: rbuild::image::LayerFormat {
            compression: rbuild::image::LayerCompression::Gzip,
            level: 1,
        },
    };
    let layers: Vec<_> = layers
        .into_iter()
        .map(|files| {
            let entries = files.into_iter().map(|(p, b)| file(p, b)).collect();
            write_layer(store, entries, &opts).expect("write layer")
        })
        .collect();
    let mut config = ImageConfig {
        architecture: arch.into(),
        os: "linux".into(),
        ..ImageConfig::default()
    };
    config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.to_string()).collect();
    let config = serde_json::to_vec(&config).expect("config json");
    let config_digest = store.write_blob(&config).expect("store config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest json");
    let manifest_digest = store.write_blob(&manifest).expect("store manifest");
    BuiltImage {
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers,
    }
}

/// An OCI index of (manifest, arch) entries.
pub fn index(entries: &[(&BuiltImage, &str)]) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(img, arch)| {
            let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
            if *arch == "arm64" {
                platform["variant"] = "v8".into();
            }
            serde_json::json!({
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": img.manifest_digest.to_string(),
                "size": img.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": rbuild::image::MEDIA_TYPE_INDEX,
        "manifests": manifests,
    }))
    .expect("index json")
}

/// The bytes of a blob in a store.
pub fn blob(store: &Store, digest: &Digest) -> Vec<u8> {
    store.read_blob(digest).expect("blob in store")
}
