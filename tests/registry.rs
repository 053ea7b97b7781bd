//! The registry client against a real `docker-registry` on 127.0.0.1: push and pull round
//! trips (monolithic and chunked uploads, mounts), cached pulls, multi-platform indexes,
//! htpasswd authentication and the errors a person sees; and the command line: a build
//! pushed with `-o type=registry`, then a second build `FROM 127.0.0.1:PORT/...` that pulls it.

mod common;
mod registry_support;

use std::sync::atomic::{AtomicUsize, Ordering};

use rbuild::image::reference::Reference;
use rbuild::image::MEDIA_TYPE_INDEX;
use rbuild::plan::platform::Platform;
use rbuild::source::registry::{Client, RegistryConfig, RegistryError, TransferEvent};
use rbuild::store::Store;
use serde_json::Value;

use common::build::{busybox, file_content, Build};
use common::{require_tools, tool};
use std::process::Command;

use registry_support::{
    auth_file, blob, build_image, index, noise, skip_without_registry, skip_without_tls_registry,
    Registry,
};

fn reference(s: &str) -> Reference {
    Reference::parse(s).expect("reference").with_default_tag()
}

fn empty_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(dir.path()).expect("store");
    (dir, store)
}

#[test]
fn push_then_pull_round_trip() {
    if skip_without_registry() {
        return;
    }
    let registry = Registry::start(None);
    let host = &registry.host;
    let (_src_dir, src) = empty_store();
    // The second layer is larger than one upload chunk (8 MiB) and incompressible.
    let image = build_image(
        &src,
        "amd64",
        vec![
            vec![
                ("etc/hello", b"hello\n".to_vec()),
                ("bin/tool", noise(3000, 1)),
            ],
            vec![("data/big", noise(9 << 20, 2))],
        ],
    );
    assert!(image.layers[1].size > 8 << 20);
    let client = Client::new(RegistryConfig::default()).expect("client");
    let r = reference(&format!("{host}/test/app:v1"));
    let pushed = client.push(&r, &image, &src, &[]).expect("push");
    assert_eq!(pushed, image.manifest_digest);

    let (_dst_dir, dst) = empty_store();
    let downloads = AtomicUsize::new(0);
    let count = |e: &TransferEvent| {
        if matches!(e, TransferEvent::Moved { .. }) {
            downloads.fetch_add(1, Ordering::SeqCst);
        }
    };
    let pulled = client
        .pull(
            &r,
            &Platform::parse("linux/amd64").unwrap(),
            &dst,
            Some(&count),
        )
        .expect("pull");
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(pulled.manifest, image.manifest);
    assert_eq!(pulled.config_digest, image.config_digest);
    assert_eq!(pulled.config, image.config);
    assert_eq!(pulled.layers, image.layers);
    for l in &image.layers {
        assert_eq!(blob(&dst, &l.digest), blob(&src, &l.digest));
    }
    assert_eq!(downloads.load(Ordering::SeqCst), 3, "config and two layers");

    // A second pull downloads nothing.
    downloads.store(0, Ordering::SeqCst);
    let again = client
        .pull(
            &r,
            &Platform::parse("linux/amd64").unwrap(),
            &dst,
            Some(&count),
        )
        .expect("second pull");
    assert_eq!(again.manifest_digest, image.manifest_digest);
    assert_eq!(downloads.load(Ordering::SeqCst), 0);

    // Pushing again, and to another repository mounting from the first, works too.
    assert_eq!(
        client.push(&r, &image, &src, &[]).expect("push again"),
        pushed
    );
    let other = reference(&format!("{host}/test/other"));
    client
        .push(&other, &image, &src, &["test/app".to_string()])
        .expect("push with mount");
    let (_d3, third) = empty_store();
    let from_other = client
        .pull(
            &other,
            &Platform::parse("linux/amd64").unwrap(),
            &third,
            None,
        )
        .expect("pull mounted");
    assert_eq!(from_other.manifest_digest, image.manifest_digest);

    // By digest, and unknown tags.
    let by_digest = reference(&format!("{host}/test/app@{}", image.manifest_digest));
    assert_eq!(
        client.get_manifest(&by_digest).expect("by digest").digest,
        pushed
    );
    let e = client
        .get_manifest(&reference(&format!("{host}/test/app:nope")))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("\"{host}/test/app:nope\": not found in {host}")
    );
    assert!(matches!(
        e.downcast_ref::<RegistryError>(),
        Some(RegistryError::NotFound { .. })
    ));
}

#[test]
fn multi_platform_index_pulls_the_host_platform() {
    if skip_without_registry() {
        return;
    }
    let registry = Registry::start(None);
    let host = &registry.host;
    let (_src_dir, src) = empty_store();
    let amd64 = build_image(&src, "amd64", vec![vec![("arch", b"amd64\n".to_vec())]]);
    let arm64 = build_image(&src, "arm64", vec![vec![("arch", b"arm64\n".to_vec())]]);
    let client = Client::new(RegistryConfig::default()).expect("client");
    for img in [&amd64, &arm64] {
        let by_digest = reference(&format!("{host}/test/multi@{}", img.manifest_digest));
        client
            .push(&by_digest, img, &src, &[])
            .expect("push by digest");
    }
    let idx = index(&[(&amd64, "amd64"), (&arm64, "arm64")]);
    let r = reference(&format!("{host}/test/multi:1.0"));
    let idx_digest = client
        .push_manifest(&r, &idx, MEDIA_TYPE_INDEX)
        .expect("push index");
    let top = client.get_manifest(&r).expect("index");
    assert!(top.is_index());
    assert_eq!(top.digest, idx_digest);

    let host_platform = Platform::host();
    let expected = match host_platform.arch.as_str() {
        "amd64" => Some(&amd64),
        "arm64" => Some(&arm64),
        _ => None,
    };
    let (_dst_dir, dst) = empty_store();
    match expected {
        Some(img) => {
            let pulled = client
                .pull(&r, &host_platform, &dst, None)
                .expect("pull host");
            assert_eq!(pulled.manifest_digest, img.manifest_digest);
            assert_eq!(pulled.layers, img.layers);
        }
        None => {
            let e = client
                .pull(&r, &host_platform, &dst, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("available: linux/amd64, linux/arm64/v8"), "{e}");
        }
    }
    let arm = client
        .resolve(&r, &Platform::parse("linux/arm64").unwrap())
        .expect("resolve arm64");
    assert_eq!(arm.digest, arm64.manifest_digest);
    let e = client
        .resolve(&r, &Platform::parse("linux/riscv64").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no image for platform linux/riscv64; available: linux/amd64, linux/arm64/v8"),
        "{e}"
    );
}

#[test]
fn htpasswd_registry_needs_the_right_password() {
    if skip_without_registry() {
        return;
    }
    let registry = Registry::start(Some(("tester", "right-pass")));
    let host = &registry.host;
    let (auth_dir, src) = empty_store();
    let image = build_image(&src, "amd64", vec![vec![("f", b"private\n".to_vec())]]);
    let r = reference(&format!("{host}/private/app:v1"));

    // Credentials from $REGISTRY_AUTH_FILE.
    let good = auth_file(auth_dir.path(), host, "tester", "right-pass");
    let cfg = RegistryConfig::from_vars(|name| {
        (name == "REGISTRY_AUTH_FILE").then(|| good.display().to_string())
    });
    let client = Client::new(cfg).expect("client");
    assert_eq!(
        client.push(&r, &image, &src, &[]).expect("push"),
        image.manifest_digest
    );
    let (_dst_dir, dst) = empty_store();
    let pulled = client
        .pull(&r, &Platform::parse("linux/amd64").unwrap(), &dst, None)
        .expect("pull");
    assert_eq!(pulled.layers, image.layers);

    // A wrong password: one clear error naming the registry.
    let bad = auth_file(auth_dir.path(), host, "tester", "wrong-pass");
    let client = Client::new(RegistryConfig {
        auth_file: Some(bad.clone()),
        ..RegistryConfig::default()
    })
    .expect("client");
    let e = client.get_manifest(&r).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("authentication to {host} failed (401): ")),
        "{msg}"
    );
    assert!(msg.contains(&bad.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    let e = client.push(&r, &image, &src, &[]).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("authentication to {host} failed (401): ")),
        "{e}"
    );

    // No credentials at all.
    let anonymous = Client::new(RegistryConfig::default()).expect("client");
    let e = anonymous.get_manifest(&r).unwrap_err().to_string();
    assert!(
        e.contains(&format!("no credentials found for {host}")),
        "{e}"
    );
}

#[test]
fn loopback_registry_speaking_tls() {
    if skip_without_tls_registry() {
        return;
    }
    // Loopback registries may speak either; the client finds out which.
    let registry = Registry::start_tls();
    let (_src_dir, src) = empty_store();
    let image = build_image(&src, "amd64", vec![vec![("tls", b"over TLS\n".to_vec())]]);
    let client = Client::new(RegistryConfig::default()).expect("client");
    let r = reference(&format!("{}/test/tls:v1", registry.host));
    client.push(&r, &image, &src, &[]).expect("push over TLS");
    let (_dst_dir, dst) = empty_store();
    let pulled = client
        .pull(&r, &Platform::parse("linux/amd64").unwrap(), &dst, None)
        .expect("pull over TLS");
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(pulled.layers, image.layers);
}

#[test]
fn client_certificates_from_certs_d() {
    if skip_without_tls_registry() {
        return;
    }
    let registry = Registry::start_mutual_tls();
    let certs_d = registry.certs_d.clone().expect("a certs.d directory");
    let (_src_dir, src) = empty_store();
    let image = build_image(
        &src,
        "amd64",
        vec![vec![("mtls", b"client certs\n".to_vec())]],
    );
    let r = reference(&format!("{}/test/mtls:v1", registry.host));

    // Without the certificate the registry refuses the handshake.
    let without = Client::new(RegistryConfig::default()).expect("client");
    assert!(without.push(&r, &image, &src, &[]).is_err());

    // With certs.d/HOST/client.{cert,key} it takes the push and the pull.
    let client = Client::new(RegistryConfig {
        certs_dirs: vec![certs_d],
        ..RegistryConfig::default()
    })
    .expect("client");
    client
        .push(&r, &image, &src, &[])
        .expect("push with a client certificate");
    let (_dst_dir, dst) = empty_store();
    let pulled = client
        .pull(&r, &Platform::parse("linux/amd64").unwrap(), &dst, None)
        .expect("pull with a client certificate");
    assert_eq!(pulled.manifest_digest, image.manifest_digest);

    // From the command line: `--cert-dir` finds the certificate for FROM; a key that does
    // not belong to the certificate is a clear error, not a crash.
    let b = Build::scratch("client_certificates_from_certs_d");
    std::fs::write(&b.dockerfile, "ARG BASE\nFROM ${BASE}\n").expect("write the Dockerfile");
    let base_arg = format!("BASE={r}");
    let cert_dir = client.config().certs_dirs[0].display().to_string();
    let built = b.build_ok(&["--build-arg", &base_arg, "--cert-dir", &cert_dir]);
    assert_eq!(
        file_content(&built.fs(), "/mtls").as_deref(),
        Some("client certs\n")
    );
    let bad = tempfile::tempdir().expect("temporary directory");
    let bad_host = bad.path().join(&registry.host);
    std::fs::create_dir(&bad_host).expect("create the bad certs.d entry");
    std::fs::copy(
        client.config().certs_dirs[0]
            .join(&registry.host)
            .join("client.cert"),
        bad_host.join("client.cert"),
    )
    .expect("copy the certificate");
    let other_key = tool(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ]))
    .unwrap_or_else(|e| panic!("openssl genpkey: {e}"));
    std::fs::write(bad_host.join("client.key"), other_key).expect("write the other key");
    let bad_arg = bad.path().display().to_string();
    let ran = b.build(&[
        "--build-arg",
        &base_arg,
        "--cert-dir",
        &bad_arg,
        "--pull=always",
    ]);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    let stderr = ran.stderr_text();
    assert!(
        stderr.contains(&format!(
            "client certificate {}",
            bad_host.join("client.cert").display()
        )) && !stderr.contains("panicked"),
        "{}",
        ran.summary()
    );
}

// --------------------------------------------------------------------- the command line

/// The testdata group of the command-line cases.
const GROUP: &str = "registry";

/// The metadata file a build wrote, parsed.
fn metadata(path: &std::path::Path) -> Value {
    let text = std::fs::read(path).expect("the build wrote its metadata file");
    serde_json::from_slice(&text).expect("the metadata file is JSON")
}

/// Builds `registry/push` on the loaded busybox base and pushes it as `name`; returns the
/// pushed manifest digest after checking the progress output and the metadata file agree.
fn push_case(extra: &[&str], names: &[&str]) -> String {
    let test = "push_case";
    let bb = busybox(test).expect("the busybox base (checked by the caller)");
    let b = Build::case(GROUP, "push");
    b.load_busybox(&bb);
    let meta = b.out.join("metadata.json");
    // buildx spelling: several names in one quoted field.
    let output = format!("type=registry,\"name={}\"", names.join(","));
    let mut args = vec!["--pull=never", "-o", &output, "--metadata-file"];
    let meta_arg = meta.display().to_string();
    args.push(&meta_arg);
    args.extend_from_slice(extra);
    let ran = b.build(&args);
    ran.assert_ok("build pushed with -o type=registry");
    let m = metadata(&meta);
    let digest = m["containerimage.digest"]
        .as_str()
        .expect("containerimage.digest")
        .to_string();
    let pushed: Vec<Value> = names
        .iter()
        .map(|name| serde_json::json!({ "name": name, "digest": digest }))
        .collect();
    assert_eq!(
        m["rbuild.pushed"],
        Value::Array(pushed),
        "the metadata file lists the pushes"
    );
    for name in names {
        assert!(
            ran.stderr_text()
                .contains(&format!("pushed {name}@{digest}")),
            "the progress output names the pushed digest: {}",
            ran.summary()
        );
    }
    assert!(b.leftover_temp_files().is_empty(), "temp files left");
    digest
}

#[test]
fn cli_push_then_build_from_the_registry() {
    let test = "cli_push_then_build_from_the_registry";
    if skip_without_registry() || !require_tools(test, &["skopeo"]) || busybox(test).is_none() {
        return;
    }
    let registry = Registry::start(None);
    let host = registry.host.clone();
    let name = format!("{host}/cli/app:v1");
    let latest = format!("{host}/cli/app:latest");
    let digest = push_case(&[], &[&name, &latest]);

    // skopeo sees the pushed image with that digest and the two new layers on the base.
    let raw = tool(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{name}")),
    )
    .unwrap_or_else(|e| panic!("skopeo inspect --raw: {e}"));
    assert_eq!(format!("sha256:{}", common::sha256_hex(&raw)), digest);
    let raw_latest = tool(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{latest}")),
    )
    .unwrap_or_else(|e| panic!("skopeo inspect --raw {latest}: {e}"));
    assert_eq!(raw_latest, raw, "both tags name the same manifest");
    let manifest: Value = serde_json::from_slice(&raw).expect("the manifest is JSON");
    let pushed_layers: Vec<String> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();

    // A second build with an empty store: FROM the registry, pulled with the default --pull.
    let pull = Build::case(GROUP, "pull");
    let meta = pull.out.join("metadata.json");
    let base_arg = format!("BASE={name}");
    let meta_arg = meta.display().to_string();
    let built = pull.build_ok(&["--build-arg", &base_arg, "--metadata-file", &meta_arg]);
    assert_eq!(
        file_content(&built.fs(), "/srv/seen").as_deref(),
        Some("hello from the build context\nbuilt by rbuild\n"),
        "the RUN step read the files of the pulled image"
    );
    let image = built.image();
    let layers: Vec<String> = image.manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        layers.len(),
        pushed_layers.len() + 1,
        "one layer on the base"
    );
    assert_eq!(layers[..pushed_layers.len()], pushed_layers[..]);
    // The pull shows as buildx shows it: a metadata step, each blob's bytes, the FROM step.
    let err = built.ran.stderr_text();
    assert!(
        err.contains(&format!("[internal] load metadata for {name}")),
        "{err}"
    );
    assert!(err.contains(&format!("resolve {name}@sha256:")), "{err}");
    for l in &pushed_layers {
        assert!(
            err.lines().any(|line| line.contains(l.as_str())
                && line.contains(" / ")
                && line.ends_with(" done")),
            "no byte count for {l}: {err}"
        );
    }
    assert!(err.contains(&format!("FROM {name}@sha256:")), "{err}");
    assert_eq!(
        metadata(&meta)["rbuild.base-images"],
        serde_json::json!([{ "name": name, "digest": digest }])
    );
    let ls = pull.image_cmd("ls", &["-q"]);
    ls.assert_ok("image ls -q");
    assert!(
        ls.stdout_text().lines().any(|l| l == name),
        "the pulled base keeps its name in the store: {}",
        ls.stdout_text()
    );

    // With the registry gone, the default --pull builds from the store; --pull=always fails
    // naming the registry.
    drop(registry);
    pull.build_ok(&["--build-arg", &base_arg])
        .ran
        .assert_ok("a rebuild from the store with the registry down");
    let ran = pull.build(&["--build-arg", &base_arg, "--pull=always"]);
    assert_eq!(
        ran.code,
        1,
        "--pull=always with the registry down: {}",
        ran.summary()
    );
    assert!(
        ran.stderr_text().contains(&host),
        "the error names the registry: {}",
        ran.summary()
    );
    assert!(!ran.stderr_text().contains("panicked"), "{}", ran.summary());
}

#[test]
fn cli_registry_with_htpasswd() {
    let test = "cli_registry_with_htpasswd";
    if skip_without_registry() || busybox(test).is_none() {
        return;
    }
    let registry = Registry::start(Some(("builder", "s3cret")));
    let host = registry.host.clone();
    let name = format!("{host}/private/app:v1");
    let auth = tempfile::tempdir().expect("temporary directory");
    let good = auth_file(auth.path(), &host, "builder", "s3cret");
    let good_arg = good.display().to_string();
    let digest = push_case(&["--authfile", &good_arg], &[&name]);

    let pull = Build::case(GROUP, "pull");
    let base_arg = format!("BASE={name}");
    // No credentials: refused, naming the registry.
    let ran = pull.build(&["--build-arg", &base_arg]);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    assert!(
        ran.stderr_text()
            .contains(&format!("no credentials found for {host}")),
        "{}",
        ran.summary()
    );
    // A wrong password: one clear error naming the registry and where the password came from.
    let bad = auth_file(auth.path(), &host, "builder", "wrong");
    let bad_arg = bad.display().to_string();
    let ran = pull.build(&["--build-arg", &base_arg, "--authfile", &bad_arg]);
    assert_eq!(ran.code, 1, "{}", ran.summary());
    let stderr = ran.stderr_text();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("authentication to"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {}", ran.summary());
    assert!(
        errors[0].contains(&format!("authentication to {host} failed (401)"))
            && errors[0].contains(&bad_arg),
        "{}",
        ran.summary()
    );
    assert!(pull.leftover_temp_files().is_empty(), "temp files left");
    // The right password pulls it.
    let meta = pull.out.join("metadata.json");
    let meta_arg = meta.display().to_string();
    let built = pull.build_ok(&[
        "--build-arg",
        &base_arg,
        "--authfile",
        &good_arg,
        "--metadata-file",
        &meta_arg,
    ]);
    assert_eq!(
        file_content(&built.fs(), "/srv/seen").as_deref(),
        Some("hello from the build context\nbuilt by rbuild\n")
    );
    assert_eq!(
        metadata(&meta)["rbuild.base-images"],
        serde_json::json!([{ "name": name, "digest": digest }]),
        "the pulled base is the pushed image"
    );
}

#[test]
fn push_flag_pushes_under_the_tags() {
    let test = "push_flag_pushes_under_the_tags";
    if skip_without_registry() || busybox(test).is_none() {
        return;
    }
    let registry = Registry::start(None);
    let name = format!("{}/flag/app:v1", registry.host);
    let b = Build::case(GROUP, "push");
    b.load_busybox(&busybox(test).unwrap());
    let ran = b.build(&["--pull=never", "--push", "-t", &name]);
    ran.assert_ok("--push -t NAME");
    assert!(
        ran.stderr_text()
            .contains(&format!("pushed {name}@sha256:")),
        "{}",
        ran.summary()
    );
    // Each blob's bytes, as buildx shows a push.
    assert!(
        ran.stderr_text()
            .lines()
            .any(|l| l.contains(" pushing sha256:") && l.contains(" / ") && l.ends_with(" done")),
        "no byte counts of the push: {}",
        ran.summary()
    );

    // `image push NAME DEST` sends the stored image under another name: the registry then
    // serves the same manifest bytes under both.
    if !require_tools(test, &["skopeo"]) {
        return;
    }
    let copy = format!("{}/flag/copy:v2", registry.host);
    let ran = b.image_cmd("push", &[&name, &copy]);
    ran.assert_ok("image push NAME DEST");
    assert!(
        ran.stdout_text()
            .contains(&format!("pushed {copy}@sha256:")),
        "{}",
        ran.summary()
    );
    let raw = |n: &str| {
        tool(
            Command::new("skopeo")
                .args(["inspect", "--tls-verify=false", "--raw"])
                .arg(format!("docker://{n}")),
        )
        .unwrap_or_else(|e| panic!("skopeo inspect --raw {n}: {e}"))
    };
    assert_eq!(
        raw(&copy),
        raw(&name),
        "image push sent the stored manifest"
    );

    // Docker media types for registries without OCI ones, and zstd layers: the registry
    // serves them as pushed, and skopeo reads both back.
    let docker = format!("{}/flag/docker:v1", registry.host);
    let zstd = format!("{}/flag/zstd:v1", registry.host);
    let outputs = [
        format!("type=registry,name={docker},oci-mediatypes=false"),
        format!("type=registry,name={zstd},compression=zstd,force-compression=true"),
    ];
    b.build(&["--pull=never", "-o", &outputs[0], "-o", &outputs[1]])
        .assert_ok("pushes with oci-mediatypes=false and zstd");
    let m: Value = serde_json::from_slice(&raw(&docker)).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let m: Value = serde_json::from_slice(&raw(&zstd)).unwrap();
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for (n, sub) in [(&docker, "docker"), (&zstd, "zstd")] {
        tool(
            Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false", "--dest-decompress"])
                .arg(format!("docker://{n}"))
                .arg(format!("dir:{}", dir.path().join(sub).display())),
        )
        .unwrap_or_else(|e| panic!("skopeo copy {n}: {e}"));
    }
}
