#!/bin/bash
# example.sh: the README's one-command demo (`make example`, after `make build base`).
#
# Builds examples/hello/ (multi-stage, ADD of the busybox rootfs tar, COPY --chmod/--chown/
# --from, heredocs, LABEL, ENV, USER, WORKDIR, ENTRYPOINT + CMD) with target/rbuild into
#   _work/example/hello-oci.tar      OCI layout tarball, hello:latest
#   _work/example/hello-docker.tar   docker-archive, hello:latest
# then checks both with skopeo (when installed) and prints a summary and how to load it.
# The build context is a temp copy of examples/hello/ plus busybox-rootfs.tar (from
# testdata/generated/busybox/rootfs.tar, written by `make base`). Fully offline; no args.
# Environment: RBUILD (default target/rbuild), RBUILD_CACHE_DIR (default _work/example/cache).
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RBUILD=${RBUILD:-$ROOT/target/rbuild}
SRC=$ROOT/examples/hello
BASE=$ROOT/testdata/generated/busybox
OUT=$ROOT/_work/example
CACHE=${RBUILD_CACHE_DIR:-$OUT/cache}
EPOCH=1700000000 # the busybox base's: the base layer comes out identical to busybox:latest's

log() { echo "example: $*" >&2; }
die() { log "error: $*"; exit 1; }
rel() { echo "${1#"$ROOT"/}"; }
human() { numfmt --to=iec --suffix=B --format='%.1f' "$1" 2>/dev/null || echo "$1 B"; }

[ $# -eq 0 ] || { echo "usage: $0 (no arguments)" >&2; exit 2; }
[ -x "$RBUILD" ] || die "$RBUILD not found: run \`make build\` (or set RBUILD)"
[ -f "$BASE/rootfs.tar" ] || die "$(rel "$BASE")/rootfs.tar not found: run \`make base\` (scripts/make-busybox-base.sh)"
[ -f "$SRC/Dockerfile" ] || die "$(rel "$SRC")/Dockerfile not found"

CTX=$(mktemp -d "${TMPDIR:-/tmp}/rbuild-example.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
trap 'exit 130' INT TERM
cp -a "$SRC/." "$CTX/"
cp "$BASE/rootfs.tar" "$CTX/busybox-rootfs.tar"

mkdir -p "$OUT"
rm -f "$OUT/hello-oci.tar" "$OUT/hello-docker.tar" "$OUT/metadata.json" "$OUT/image-id"
log "building $(rel "$SRC") with $(rel "$RBUILD") ..."
SOURCE_DATE_EPOCH=$EPOCH "$RBUILD" build \
    --cache-dir "$CACHE" \
    -f "$CTX/Dockerfile" \
    -t hello:latest \
    --iidfile "$OUT/image-id" --metadata-file "$OUT/metadata.json" \
    -o "type=oci,dest=$OUT/hello-oci.tar" \
    -o "type=docker,dest=$OUT/hello-docker.tar" \
    "$CTX" || die "rbuild failed"
for f in hello-oci.tar hello-docker.tar metadata.json image-id; do
    [ -s "$OUT/$f" ] || die "rbuild succeeded but wrote no $(rel "$OUT/$f")"
done

json_get() { # json_get KEY FILE: a top-level string value (jq when there is one)
    if command -v jq >/dev/null 2>&1; then
        jq -r --arg k "$1" '.[$k] // empty' "$2"
    else
        sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" "$2" | sed -n 1p
    fi
}
digest=$(json_get containerimage.digest "$OUT/metadata.json")
image_id=$(cat "$OUT/image-id")

echo
echo "hello:latest built by $("$RBUILD" --version 2>/dev/null | sed -n 1p)"
echo "  image digest  $digest"
echo "  image id      $image_id (config digest)"
if command -v skopeo >/dev/null 2>&1 && command -v jq >/dev/null 2>&1; then
    manifest=$(skopeo inspect --raw "oci-archive:$OUT/hello-oci.tar") ||
        die "skopeo cannot read $(rel "$OUT/hello-oci.tar")"
    inspect=$(skopeo inspect "oci-archive:$OUT/hello-oci.tar") ||
        die "skopeo inspect oci-archive:$(rel "$OUT/hello-oci.tar") failed"
    config=$(skopeo inspect --config "oci-archive:$OUT/hello-oci.tar") ||
        die "skopeo cannot read the image config"
    dinspect=$(skopeo inspect "docker-archive:$OUT/hello-docker.tar") ||
        die "skopeo cannot read $(rel "$OUT/hello-docker.tar")"
    sdigest=$(jq -r .Digest <<<"$inspect")
    [ "$sdigest" = "$digest" ] || die "skopeo sees digest $sdigest, rbuild reported $digest"
    # skopeo names a docker-archive's layers by their uncompressed digests (diff_ids)
    [ "$(jq -c .Layers <<<"$dinspect")" = "$(jq -c .rootfs.diff_ids <<<"$config")" ] ||
        die "the docker-archive's layers are not the image's (config rootfs.diff_ids)"
    [ "$(jq -r .Digest <<<"$dinspect")" != null ] || die "skopeo sees no digest in the docker-archive"
    nlayers=$(jq '.layers | length' <<<"$manifest")
    lsize=$(jq '[.layers[].size] | add // 0' <<<"$manifest")
    echo "  layers        $nlayers, $(human "$lsize") compressed:"
    jq -r '.layers[] | "                \(.digest[7:19])  \(.size) B"' <<<"$manifest" |
        paste -d' ' - <(jq -r '.history[] | select(.empty_layer != true) | .created_by' <<<"$config" | cut -c1-60)
    echo "  config        user=$(jq -r '.config.User // ""' <<<"$config") workdir=$(jq -r '.config.WorkingDir // ""' <<<"$config")" \
        "entrypoint=$(jq -c '.config.Entrypoint' <<<"$config") cmd=$(jq -c '.config.Cmd' <<<"$config")"
    echo "  labels        $(jq -c '.config.Labels // {}' <<<"$config")"
    if [ -f "$BASE/busybox-oci.tar" ]; then
        base_layer=$(skopeo inspect --raw "oci-archive:$BASE/busybox-oci.tar" | jq -r '.layers[0].digest')
        if [ "$(jq -r '.layers[0].digest' <<<"$manifest")" = "$base_layer" ]; then
            echo "  base layer    identical to busybox:latest's ($(rel "$BASE")/busybox-oci.tar)"
        else
            echo "  base layer    differs from busybox:latest's (rootfs.tar ADDed, same epoch: expected identical)"
        fi
    fi
    echo "  verified      skopeo inspect oci-archive: and docker-archive: OK"
else
    echo "  (install skopeo and jq to verify the archives: apt-get install -y skopeo jq)"
fi
echo "  outputs       $(rel "$OUT/hello-oci.tar") ($(human "$(stat -c %s "$OUT/hello-oci.tar")")), $(rel "$OUT/hello-docker.tar") ($(human "$(stat -c %s "$OUT/hello-docker.tar")"))"
echo
echo "Load and run it:"
echo "  podman load -i $(rel "$OUT/hello-docker.tar") && podman run --rm hello:latest"
echo "  docker load -i $(rel "$OUT/hello-docker.tar")   # or with docker"
echo "  skopeo copy oci-archive:$(rel "$OUT/hello-oci.tar") containers-storage:localhost/hello:latest"
