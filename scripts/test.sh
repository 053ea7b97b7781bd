#!/bin/bash
# scripts/test.sh: what `make test` (and so CI's .ci/run) runs.
#
#  1. installs the Debian packages the tests need, if any is missing (as root; otherwise
#     prints the apt-get command to run and fails);
#  2. lints: cargo fmt --check, cargo clippy --all-targets -D warnings;
#  3. builds the static binary (make build -> target/rbuild);
#  4. runs every unit and integration test (cargo test) against that static binary;
#  5. as root only: runs the integration test binaries again as the unprivileged user
#     rbuild-tester (created with subordinate uid/gid ranges), from a world-readable copy
#     under /tmp, so the rootless code paths (and rootless podman/umoci) are tested too;
#     The RUN and cache suites run once more as rbuild-tester on the walk snapshotter
#     (the default, auto, picks the kernel overlay where it works), and the RUN and
#     COPY/ADD suites once more on fuse-overlayfs, for which /dev/fuse is made usable by
#     every user (chmod 666; it is 0600 root on these machines);
#  6. as root only: runs the RUN and offline suites once more as rbuild-single, a user
#     with no sub-id ranges, so rbuild falls back to mapping that user's id alone (what
#     needs other ids skips, saying why).
#
# Environment: CI=true makes a missing checking tool a test failure instead of a skip.
# RBUILD_TEST_KEEP=1 keeps the tests' scratch directories.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C.UTF-8

TEST_USER=rbuild-tester
SUBID_RANGE=200000-265535
SINGLE_USER=rbuild-single
PACKAGES=(
    skopeo umoci podman uidmap busybox-static jq
    tar gzip xz-utils zstd bzip2 file make gcc libc6-dev
    docker-registry apache2-utils openssl iproute2 util-linux fuse-overlayfs git
)

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------- packages
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    install_cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ $EUID -ne 0 ]]; then
        printf 'error: the tests need packages that are not installed. As root, run:\n' >&2
        printf '  apt-get update && %s\n' "$install_cmd" >&2
        exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------------------- lint, build
log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets"
cargo clippy --all-targets --locked -- -D warnings
log "make build (static target/rbuild)"
make build
RBUILD_STATIC=$PWD/target/rbuild
[[ -x $RBUILD_STATIC ]] || die "make build did not produce $RBUILD_STATIC"
log "busybox base image (testdata/generated/busybox, made by rbuild itself)"
RBUILD=$RBUILD_STATIC scripts/make-busybox-base.sh

# ---------------------------------------------------------------------------- tests
# A failure is remembered and reported at the end, so one run shows every failing test.
failed=()
log "cargo test as $(id -un) (unit tests, the parser property test, integration tests)"
RBUILD_BIN=$RBUILD_STATIC timeout 45m cargo test --locked --no-fail-fast || failed+=("cargo test as $(id -un)")

if [[ $EUID -ne 0 ]]; then
    log "not root: skipping the run as the unprivileged user $TEST_USER (needs root to set up)"
    ((${#failed[@]} == 0)) || die "failed: $(IFS=,; echo "${failed[*]}")"
    exit 0
fi

log "setting up the unprivileged user $TEST_USER"
if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/sh "$TEST_USER"
fi
if ! grep -q "^$TEST_USER:" /etc/subuid 2>/dev/null; then
    usermod --add-subuids "$SUBID_RANGE" "$TEST_USER"
fi
if ! grep -q "^$TEST_USER:" /etc/subgid 2>/dev/null; then
    usermod --add-subgids "$SUBID_RANGE" "$TEST_USER"
fi

RUN_DIR=$(mktemp -d /tmp/rbuild-usertest.XXXXXX)
cleanup() {
    # Rootless podman leaves a pause process holding its user namespace; end exactly that.
    local pidfile
    for pidfile in "$RUN_DIR"/xdg-*/libpod/tmp/pause.pid; do
        if [[ -f $pidfile ]]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT

log "building the integration test binaries"
cargo test --locked --no-run --message-format=json >"$RUN_DIR/build.json"
mapfile -t TEST_BINS < <(jq -r 'select(.reason == "compiler-artifact" and .target.kind == ["test"]
    and .profile.test == true and .executable != null) | .executable' "$RUN_DIR/build.json")
((${#TEST_BINS[@]})) || die "cargo built no integration test binaries"

mkdir -p "$RUN_DIR/bin" "$RUN_DIR/home" "$RUN_DIR/tmp" "$RUN_DIR/xdg-$TEST_USER"
cp "${TEST_BINS[@]}" "$RUN_DIR/bin/"
cp "$RBUILD_STATIC" "$RUN_DIR/rbuild"
cp -a testdata "$RUN_DIR/testdata"
rm -f "$RUN_DIR/build.json"
chmod 755 "$RUN_DIR"
chmod 700 "$RUN_DIR/xdg-$TEST_USER"
chown -R "$TEST_USER:" "$RUN_DIR"

# as_user USER BIN [ARG...]: runs one test binary as USER in the copy under $RUN_DIR.
as_user() {
    (cd "$RUN_DIR" && runuser -u "$1" -- env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$RUN_DIR/home" TMPDIR="$RUN_DIR/tmp" XDG_RUNTIME_DIR="$RUN_DIR/xdg-$1" \
        LC_ALL=C.UTF-8 CI="${CI:-}" RUST_BACKTRACE=1 \
        ${RBUILD_SNAPSHOTTER:+RBUILD_SNAPSHOTTER=$RBUILD_SNAPSHOTTER} \
        RBUILD_BIN="$RUN_DIR/rbuild" RBUILD_TESTDATA="$RUN_DIR/testdata" \
        timeout 30m "${@:2}")
}

# fuse-overlayfs (compared with the other snapshotters in the RUN suite, and the whole
# RUN and COPY/ADD suites below): every FUSE mount opens /dev/fuse, which must be usable
# by the unprivileged users.
[[ -c /dev/fuse ]] || die "/dev/fuse is missing: the fuse-overlayfs tests need it"
chmod 666 /dev/fuse
for bin in "$RUN_DIR"/bin/*; do
    log "$(basename "$bin") as $TEST_USER"
    as_user "$TEST_USER" "$bin" || failed+=("$(basename "$bin") as $TEST_USER")
done
# The default snapshotter is auto (the kernel overlay here); the RUN and cache suites run
# once more on walk, the fallback where overlay cannot be used. (copy is compared with
# both, layer by layer, inside the RUN suite.)
for bin in "$RUN_DIR"/bin/run-* "$RUN_DIR"/bin/cache-*; do
    log "$(basename "$bin") as $TEST_USER with RBUILD_SNAPSHOTTER=walk"
    RBUILD_SNAPSHOTTER=walk as_user "$TEST_USER" "$bin" ||
        failed+=("$(basename "$bin") as $TEST_USER, walk")
done
for bin in "$RUN_DIR"/bin/run-* "$RUN_DIR"/bin/cases-*; do
    log "$(basename "$bin") as $TEST_USER with RBUILD_SNAPSHOTTER=fuse-overlayfs"
    RBUILD_SNAPSHOTTER=fuse-overlayfs as_user "$TEST_USER" "$bin" ||
        failed+=("$(basename "$bin") as $TEST_USER, fuse-overlayfs")
done

log "setting up $SINGLE_USER, a user with no sub-id ranges (rbuild maps only its own id)"
if ! id -u "$SINGLE_USER" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/sh "$SINGLE_USER"
fi
# useradd may have given it ranges (SUB_UID_COUNT in login.defs): take them away.
sed -i "/^$SINGLE_USER:/d" /etc/subuid /etc/subgid
rm -rf "$RUN_DIR/tmp" "$RUN_DIR/home"
mkdir -p "$RUN_DIR/tmp" "$RUN_DIR/home" "$RUN_DIR/xdg-$SINGLE_USER"
chmod 700 "$RUN_DIR/xdg-$SINGLE_USER"
chown -R "$SINGLE_USER:" "$RUN_DIR/bin" "$RUN_DIR/rbuild" "$RUN_DIR/testdata" "$RUN_DIR/tmp" \
    "$RUN_DIR/home" "$RUN_DIR/xdg-$SINGLE_USER"
for bin in "$RUN_DIR"/bin/run-* "$RUN_DIR"/bin/offline-*; do
    log "$(basename "$bin") as $SINGLE_USER (single-id mapping)"
    # --show-output: the log says which tests skipped, and why.
    as_user "$SINGLE_USER" "$bin" --show-output || failed+=("$(basename "$bin") as $SINGLE_USER")
done
((${#failed[@]} == 0)) || die "failed: $(IFS=,; echo "${failed[*]}")"
log "all tests passed (as root, as $TEST_USER and as $SINGLE_USER)"
