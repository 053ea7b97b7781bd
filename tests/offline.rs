//! Base images without a registry: `rbuild image load|ls|rm` with the generated busybox
//! base (`make base`) as OCI archive, docker-archive and OCI layout; a tampered archive;
//! builds inside a network namespace with no interfaces (`--pull` policies);
//! `--build-context` with an OCI layout and a directory; the metadata file's base images;
//! and hostile layers (hand-made OCI archives) that try to write outside the root.
//! Cases are under `testdata/offline/`. Nothing here needs the internet.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use common::build::{
    busybox, file_content, files_of_tar, needs, oci_archive, tar_of_files, unshare_works,
    ArchiveLayer, Build, Busybox, RawEntry,
};
use common::case::copy_tree;
use common::{is_root, require_tools, run_cmd, sha256_hex, RBUILD_TIMEOUT};

/// The testdata group of these cases.
const GROUP: &str = "offline";

/// The full name rbuild records for `busybox` (`busybox-oci.tar`'s own name).
const BUSYBOX: &str = "docker.io/library/busybox:latest";

/// `rbuild image ls -q`: the names in the store, sorted.
fn stored_names(b: &Build) -> Vec<String> {
    let ran = b.image_cmd("ls", &["-q"]);
    ran.assert_ok("rbuild image ls -q");
    let mut names: Vec<String> = ran.stdout_text().lines().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn image_load_ls_rm() {
    let test = "image_load_ls_rm";
    let Some(bb) = busybox(test) else {
        return;
    };
    let b = Build::scratch(test);
    let digest = bb.digest();

    let oci = b.load(&bb.oci_tar(), None);
    oci.assert_ok("image load busybox-oci.tar");
    assert!(
        oci.stdout_text()
            .contains(&format!("Loaded image: {BUSYBOX} ({digest})")),
        "image load of the OCI archive: {}",
        oci.stdout_text()
    );
    let docker = b.load(&bb.docker_tar(), Some("bb:docker"));
    docker.assert_ok("image load --name bb:docker busybox-docker.tar");
    assert!(
        docker
            .stdout_text()
            .contains("Loaded image: docker.io/library/bb:docker (sha256:"),
        "image load of the docker-archive: {}",
        docker.stdout_text()
    );
    let layout = b.load(&bb.layout(), Some("bb:layout"));
    layout.assert_ok("image load --name bb:layout busybox-layout/");
    assert!(
        layout.stdout_text().contains(&format!(
            "Loaded image: docker.io/library/bb:layout ({digest})"
        )),
        "image load of the layout directory: {}",
        layout.stdout_text()
    );

    let all = [
        "docker.io/library/bb:docker",
        "docker.io/library/bb:layout",
        BUSYBOX,
    ];
    assert_eq!(stored_names(&b), all, "image ls -q");
    let ls = b.image_cmd("ls", &[]);
    ls.assert_ok("image ls");
    let table = ls.stdout_text();
    for name in all {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("image ls has no row for {name}:\n{table}"));
        assert!(
            row.contains("sha256:") && !row.contains("incomplete") && row.contains("load "),
            "image ls row for {name} (digest, size, source): {row}"
        );
    }
    let busybox_row = table.lines().find(|l| l.starts_with(BUSYBOX)).unwrap();
    assert!(
        busybox_row.contains(&digest[..19]),
        "the busybox row shows its digest {digest}: {busybox_row}"
    );

    let rm = b.image_cmd("rm", &["bb:docker"]);
    rm.assert_ok("image rm bb:docker");
    assert!(
        rm.stdout_text()
            .contains("Removed docker.io/library/bb:docker"),
        "image rm: {}",
        rm.stdout_text()
    );
    assert_eq!(
        stored_names(&b),
        ["docker.io/library/bb:layout", BUSYBOX],
        "after image rm"
    );
    let again = b.image_cmd("rm", &["bb:docker"]);
    assert_eq!(
        again.code,
        1,
        "removing a missing image: {}",
        again.summary()
    );
    assert!(
        again
            .stderr_text()
            .contains("no such image: docker.io/library/bb:docker"),
        "{}",
        again.summary()
    );
    assert_eq!(b.leftover_temp_files(), Vec::<String>::new(), "store tmp/");
}

#[test]
fn tampered_archive_is_refused() {
    let test = "tampered_archive_is_refused";
    let Some(bb) = busybox(test) else {
        return;
    };
    let b = Build::scratch(test);
    let mut files = files_of_tar(&std::fs::read(bb.oci_tar()).unwrap());
    // The largest blob is the layer; change one byte in its middle, keep its name.
    let (name, blob) = files
        .iter_mut()
        .filter(|(n, _)| n.starts_with("blobs/sha256/"))
        .max_by_key(|(_, d)| d.len())
        .expect("the archive has blobs");
    let mid = blob.len() / 2;
    blob[mid] ^= 0x55;
    let tampered_sha = sha256_hex(blob);
    let name = name.clone();
    let tampered = b.dir.join("tampered.tar");
    std::fs::write(&tampered, tar_of_files(&files)).unwrap();

    let ran = b.load(&tampered, None);
    assert_eq!(ran.code, 1, "loading a tampered archive: {}", ran.summary());
    assert!(
        ran.stderr_text().contains("does not match"),
        "the error must say the blob does not match its digest: {}",
        ran.summary()
    );
    assert_eq!(
        stored_names(&b),
        Vec::<String>::new(),
        "a tampered image was recorded"
    );
    // Nor is the tampered content kept anywhere in the store.
    for e in walkdir::WalkDir::new(&b.cache).into_iter().flatten() {
        if e.file_type().is_file() {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            assert_ne!(
                sha256_hex(&bytes),
                tampered_sha,
                "the tampered {name} was stored as {}",
                e.path().display()
            );
        }
    }
    assert_eq!(b.leftover_temp_files(), Vec::<String>::new(), "store tmp/");
}

/// The command prefix that runs a program in a new network namespace with no interfaces
/// but loopback (unprivileged: in a user namespace as well), or `None` after printing why
/// that is not possible here.
fn no_network(test: &str) -> Option<Vec<&'static str>> {
    if !require_tools(test, &["unshare"]) {
        return None;
    }
    let wrapper: Vec<&str> = if is_root() {
        vec!["unshare", "-n"]
    } else {
        vec!["unshare", "-rn"]
    };
    match unshare_works(&wrapper[1..]) {
        Ok(()) => Some(wrapper),
        Err(why) => {
            needs(test, &why);
            None
        }
    }
}

#[test]
fn air_gapped_build_uses_the_store() {
    let test = "air_gapped_build_uses_the_store";
    let Some(wrapper) = no_network(test) else {
        return;
    };
    let Some(bb) = busybox(test) else {
        return;
    };
    let b = Build::case(GROUP, "air-gapped");
    b.load_busybox(&bb);
    let outs = b.output_args();
    let outs: Vec<&str> = outs.iter().map(String::as_str).collect();

    let built = b.run_built(&mut b.wrapped_cmd(&wrapper, &outs));
    built
        .ran
        .assert_ok("air-gapped build with the default --pull (missing)");
    assert_eq!(file_content(&built.fs(), "/ok").as_deref(), Some("ok\n"));
    let image = built.image();
    assert_eq!(
        image.manifest["layers"][0]["digest"],
        bb.image().manifest["layers"][0]["digest"],
        "the build's first layer is busybox's"
    );

    std::fs::remove_dir_all(&b.out).unwrap();
    std::fs::create_dir(&b.out).unwrap();
    let mut always = vec!["--pull=always"];
    always.extend_from_slice(&outs);
    let ran = run_cmd(&mut b.wrapped_cmd(&wrapper, &always), None, RBUILD_TIMEOUT);
    assert_eq!(
        ran.code,
        1,
        "--pull=always without a network must fail: {}",
        ran.summary()
    );
    let err = ran.stderr_text();
    assert!(
        err.contains(BUSYBOX) && err.contains("Dockerfile:"),
        "the error must name the image and the Dockerfile line: {err}"
    );
    assert!(
        !b.fs_out().exists(),
        "a failed build wrote {}",
        b.fs_out().display()
    );
}

#[test]
fn missing_base_is_named_without_network() {
    let test = "missing_base_is_named_without_network";
    let Some(wrapper) = no_network(test) else {
        return;
    };
    let b = Build::case(GROUP, "not-in-store");
    for pull in ["--pull=never", "--pull=missing"] {
        let ran = run_cmd(&mut b.wrapped_cmd(&wrapper, &[pull]), None, RBUILD_TIMEOUT);
        assert_eq!(ran.code, 1, "{pull}: {}", ran.summary());
        let err = ran.stderr_text();
        assert!(
            err.contains("registry.invalid/rbuild-test/absent:1") && err.contains("Dockerfile:2"),
            "{pull}: the error must name the image and its line: {err}"
        );
    }
}

/// A copy of the busybox layout in the scratch directory of `b` (the build reads it, and
/// must not be able to change the test data).
fn layout_copy(b: &Build, bb: &Busybox) -> PathBuf {
    let dest = b.dir.join("busybox-layout");
    copy_tree(&bb.layout(), &dest);
    dest
}

#[test]
fn build_contexts_from_an_oci_layout_and_a_directory() {
    let test = "build_contexts_from_an_oci_layout_and_a_directory";
    let Some(bb) = busybox(test) else {
        return;
    };
    let b = Build::case(GROUP, "build-context");
    let layout = layout_copy(&b, &bb);
    let files = format!("files={}", b.case.join("files").display());
    // The store stays empty: `base` can only come from the layout.
    for base in [
        format!("base=oci-layout://{}:latest", layout.display()),
        format!("base=oci-layout://{}@{}", layout.display(), bb.digest()),
    ] {
        std::fs::remove_dir_all(&b.out).unwrap();
        std::fs::create_dir(&b.out).unwrap();
        let built = b.build_ok(&[
            "--pull=never",
            "--build-context",
            &base,
            "--build-context",
            &files,
        ]);
        let fs = built.fs();
        assert_eq!(
            file_content(&fs, "/x").as_deref(),
            Some("from the files context\n"),
            "{base}: COPY --from=files /x"
        );
        assert_eq!(
            file_content(&fs, "/sub/y").as_deref(),
            Some("nested\n"),
            "{base}: COPY --from=files /sub/"
        );
        assert_eq!(
            file_content(&fs, "/x-copy").as_deref(),
            Some("from the files context\n"),
            "{base}: RUN on the layout's busybox"
        );
        assert_eq!(
            built.image().manifest["layers"][0]["digest"],
            bb.image().manifest["layers"][0]["digest"],
            "{base}: the first layer is busybox's"
        );
    }
    assert_eq!(
        b.image_cmd("ls", &["-q"]).stdout_text(),
        "",
        "a build context is not recorded in the store"
    );
}

#[test]
fn metadata_file_lists_base_images() {
    let test = "metadata_file_lists_base_images";
    let Some(bb) = busybox(test) else {
        return;
    };
    let b = Build::case(GROUP, "metadata");
    b.load_busybox(&bb);
    let meta = b.dir.join("metadata.json");
    let meta_s = meta.to_string_lossy().into_owned();
    b.build_ok(&["--pull=never", "--metadata-file", &meta_s]);
    let v: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let bases = v["rbuild.base-images"]
        .as_array()
        .unwrap_or_else(|| panic!("no rbuild.base-images list in {v}"));
    assert!(
        bases
            .iter()
            .any(|e| e["name"] == BUSYBOX && e["digest"] == bb.digest().as_str()),
        "rbuild.base-images must list {BUSYBOX} with digest {}: {v}",
        bb.digest()
    );
}

// ------------------------------------------------------------------ hostile layers

/// `n` times `../`: enough to climb from any stage root in a scratch directory to `/`.
fn climb(n: usize) -> String {
    "../".repeat(n)
}

/// A directory directly under `/tmp` (short, so that paths into it fit a tar header)
/// where a hostile layer would write; removed when dropped.
fn outside_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rbe")
        .tempdir_in("/tmp")
        .expect("a directory under /tmp")
}

/// Every path named `evil` below `dir`.
fn evil_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "evil")
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// An image of busybox's layer plus `top`, loaded into `b`'s store as `evil:latest`.
/// Loading only stores blobs; should rbuild refuse at load time, the error must name the
/// offending entry (`entry`), and `false` is returned.
fn load_evil(b: &Build, bb: &Busybox, top: &ArchiveLayer, entry: &str) -> bool {
    let base = bb.image();
    let lower = ArchiveLayer {
        blob: base.layers[0].clone(),
        diff_id: base.config["rootfs"]["diff_ids"][0]
            .as_str()
            .expect("busybox has a diff_id")
            .to_string(),
    };
    let archive = b.dir.join("evil.tar");
    std::fs::write(&archive, oci_archive(&[lower, top.clone()])).unwrap();
    let ran = b.load(&archive, Some("evil:latest"));
    if ran.code == 0 {
        return true;
    }
    assert!(
        ran.stderr_text().contains(entry),
        "image load refused the archive without naming {entry:?}: {}",
        ran.summary()
    );
    false
}

/// Builds `case` (`FROM evil` ...) on an image whose top layer is `entries` and checks that
/// the build fails naming the layer's digest and `entry`, and that nothing named `evil`
/// appeared in `outside`, the scratch directory or `/tmp`.
fn assert_refused(case: &str, entries: Vec<RawEntry>, entry: &str, outside: &Path) {
    let test = format!("hostile layer {entry:?} ({case})");
    let Some(bb) = busybox(&test) else {
        return;
    };
    let b = Build::case(GROUP, case);
    let top = ArchiveLayer::of(&entries);
    if load_evil(&b, &bb, &top, entry) {
        let ran = b.build(&["--pull=never"]);
        let err = ran.stderr_text();
        assert_eq!(
            ran.code,
            1,
            "{test}: the build must fail: {}",
            ran.summary()
        );
        assert!(
            err.contains(&top.digest()) && err.contains(entry),
            "{test}: the error must name the layer {} and the entry: {err}",
            top.digest()
        );
        assert_eq!(
            b.leftover_temp_files(),
            Vec::<String>::new(),
            "{test}: store tmp/"
        );
    }
    let mut found = evil_files(outside);
    found.extend(evil_files(b.dir.path()));
    found.extend(
        ["/evil", "/tmp/evil"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.symlink_metadata().is_ok()),
    );
    assert!(
        found.is_empty(),
        "{test}: written outside the root: {found:?}"
    );
}

#[test]
fn well_formed_hand_made_image_builds() {
    // The control for the hostile cases: the same archive builder with a harmless layer.
    let test = "well_formed_hand_made_image_builds";
    let Some(bb) = busybox(test) else {
        return;
    };
    let b = Build::case(GROUP, "good");
    let top = ArchiveLayer::of(&[RawEntry::File("ok.txt".into(), b"fine\n".to_vec())]);
    assert!(
        load_evil(&b, &bb, &top, "ok.txt"),
        "the control image loads"
    );
    let fs = b.build_ok(&["--pull=never"]).fs();
    assert_eq!(file_content(&fs, "/ok-copy").as_deref(), Some("fine\n"));
}

#[test]
fn layers_write_through_absolute_symlinks_inside_the_image() {
    let test = "layers_write_through_absolute_symlinks_inside_the_image";
    let Some(bb) = busybox(test) else {
        return;
    };
    let b = Build::case(GROUP, "absolute-link");
    let top = ArchiveLayer::of(&[
        RawEntry::Dir("run".into()),
        RawEntry::Dir("var".into()),
        RawEntry::Symlink("var/run".into(), "/run".into()),
        RawEntry::File("var/run/app.pid".into(), b"42\n".to_vec()),
        // As in images made with systemd-resolved: RUN still gets its generated one.
        RawEntry::Symlink(
            "etc/resolv.conf".into(),
            "../run/systemd/resolve/stub-resolv.conf".into(),
        ),
    ]);
    assert!(load_evil(&b, &bb, &top, "var/run"), "the image loads");
    let fs = b.build_ok(&["--pull=never"]).fs();
    assert_eq!(file_content(&fs, "/seen").as_deref(), Some("42\n"));
    assert_eq!(file_content(&fs, "/link").as_deref(), Some("/run\n"));
    // The symlinked resolv.conf gets the host's name servers, bound where it points.
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(file_content(&fs, "/resolv-seen").unwrap_or_default(), host);
    assert!(
        !fs.nodes.contains_key("/run/systemd"),
        "the mount point behind the symlink stayed in the image"
    );
}

#[test]
fn layer_with_dotdot_path_is_refused() {
    let outside = outside_dir();
    let deep = format!(
        "{}{}/evil",
        climb(20),
        &outside.path().display().to_string()[1..]
    );
    for name in ["../evil".to_string(), deep] {
        assert_refused(
            "malicious",
            vec![RawEntry::File(name.clone(), b"evil\n".to_vec())],
            &name,
            outside.path(),
        );
    }
}

#[test]
fn layer_with_absolute_path_is_refused() {
    let outside = outside_dir();
    let name = format!("{}/evil", outside.path().display());
    assert_refused(
        "malicious",
        vec![RawEntry::File(name.clone(), b"evil\n".to_vec())],
        &name,
        outside.path(),
    );
}

#[test]
fn layer_writing_through_a_symlink_out_of_the_root_is_refused() {
    let outside = outside_dir();
    let absolute = outside.path().display().to_string();
    let relative = format!("{}{}", climb(20), &absolute[1..]);
    for (link, target) in [("link", absolute), ("rel", relative)] {
        let entry = format!("{link}/evil");
        let entries = vec![
            RawEntry::Symlink(link.into(), target),
            RawEntry::File(entry.clone(), b"evil\n".to_vec()),
        ];
        assert_refused("malicious", entries.clone(), &entry, outside.path());
        // The same layer for COPY --from, which must make the image's filesystem too.
        assert_refused("malicious-copy", entries, &entry, outside.path());
    }
}

#[test]
fn layer_hard_linking_a_host_file_is_refused() {
    let outside = outside_dir();
    let before = std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
    for target in [
        "/etc/passwd".to_string(),
        format!("{}etc/passwd", climb(20)),
    ] {
        let name = "passwd-link";
        assert_refused(
            "malicious",
            vec![RawEntry::HardLink(name.into(), target)],
            name,
            outside.path(),
        );
    }
    assert_eq!(
        std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
        before,
        "the host's /etc/passwd got a new hard link"
    );
}

/// Rewrites the single image of the OCI layout at `dir` through `edit(manifest, config)`
/// (both JSON documents), storing the new blobs and pointing `index.json` at them.
fn rewrite_layout(dir: &Path, edit: impl Fn(&mut Value, &mut Value)) {
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest_digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(blob(&config_digest)).unwrap()).unwrap();
    edit(&mut manifest, &mut config);
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = ms.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn images_that_lie_about_their_layers_are_refused() {
    let test = "images_that_lie_about_their_layers_are_refused";
    let Some(bb) = busybox(test) else {
        return;
    };
    let wrong_diff_id = |_: &mut Value, c: &mut Value| {
        c["rootfs"]["diff_ids"][0] = format!("sha256:{}", sha256_hex(b"not this layer")).into();
    };
    let sizes: [(&str, Value); 3] = [
        ("10", 10.into()),
        ("2^62", (1u64 << 62).into()),
        ("-1", (-1i64).into()),
    ];
    // A wrong diff_id: refused by `image load`, and by a build whether or not a step
    // applies the layer (the output would name the wrong diff_id, which umoci refuses).
    let b = Build::case(GROUP, "build-context");
    let layout = layout_copy(&b, &bb);
    rewrite_layout(&layout, wrong_diff_id);
    let ran = b.image_cmd("load", &[layout.to_str().unwrap()]);
    assert_eq!(ran.code, 1, "image load: {}", ran.summary());
    assert!(
        ran.stderr_text().contains("is not what its image says"),
        "image load: {}",
        ran.summary()
    );
    let base = format!("base=oci-layout://{}", layout.display());
    for (what, dockerfile) in [
        ("no step applies it", "FROM base\nLABEL x=y\n"),
        ("a RUN applies it", "FROM base\nRUN true\n"),
    ] {
        std::fs::write(&b.dockerfile, dockerfile).unwrap();
        let ran = b.build(&["--pull=never", "--build-context", &base]);
        assert_eq!(ran.code, 1, "{what}: {}", ran.summary());
        assert!(
            ran.stderr_text().contains("is not what its image says"),
            "{what}: {}",
            ran.summary()
        );
    }
    // Layer sizes that are not the blob's.
    for (what, size) in sizes {
        let b = Build::case(GROUP, "build-context");
        let layout = layout_copy(&b, &bb);
        rewrite_layout(&layout, |m, _| m["layers"][0]["size"] = size.clone());
        std::fs::write(&b.dockerfile, "FROM base\nLABEL x=y\n").unwrap();
        let base = format!("base=oci-layout://{}", layout.display());
        let ran = b.build(&["--pull=never", "--build-context", &base]);
        assert_eq!(ran.code, 1, "layer size {what}: {}", ran.summary());
        assert!(
            ran.stderr_text().contains("descriptor"),
            "layer size {what}: {}",
            ran.summary()
        );
    }
}
