#!/bin/bash
# make-busybox-base.sh [--force] [OUTDIR]
#
# Builds the busybox base image, offline, from Debian's busybox-static package, with rbuild
# itself (`FROM scratch` + `ADD rootfs.tar /`). Writes into OUTDIR (default
# testdata/generated/busybox, git-ignored):
#   busybox-oci.tar      OCI layout tarball, tag busybox:latest   (-o type=oci)
#   busybox-layout/      OCI layout directory, same image          (-o type=oci,tar=false)
#   busybox-docker.tar   docker-archive, busybox:latest            (-o type=docker)
#   rootfs.tar           the root filesystem tar the image is made of (scripts/example.sh
#                        and tests ADD it), plus digest (manifest digest) and image-id.
# The rootfs: /bin/busybox and one relative symlink per applet (`busybox --list-full`),
# /etc/passwd (root, app 1000, nobody), /etc/group (root, staff 50 with app, app 1000,
# nogroup), /tmp 1777, /root 0700, dev proc sys home var; every entry owned 0:0.
# Reproducible: fixed SOURCE_DATE_EPOCH, so a rebuild gives the same digest.
#
# Outputs newer than this script, the busybox binary and rbuild itself are kept (--force
# rebuilds): another rbuild may compress the same layer into other bytes.
# Works as root or as any user. Environment: RBUILD (default target/rbuild).
# Exit codes: 0 ok, 1 failure, 2 busybox-static (or `file`) missing / usage.
set -euo pipefail
umask 022
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
# Fixed, so that every build of the same busybox gives the same image digest.
EPOCH=1700000000
BB=/bin/busybox

FORCE=0
OUT=
while [ $# -gt 0 ]; do
    case $1 in
    --force) FORCE=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; exit 0 ;;
    -*) echo "make-busybox-base.sh: unknown option $1 (usage: $0 [--force] [OUTDIR])" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "make-busybox-base.sh: one OUTDIR only" >&2; exit 2; }; OUT=$1 ;;
    esac
    shift
done
OUT=${OUT:-$ROOT/testdata/generated/busybox}
RBUILD=${RBUILD:-$ROOT/target/rbuild}

log() { echo "make-busybox-base: $*" >&2; }
die() { log "error: $*"; exit 1; }

is_static() { [[ $(file -L "$1" 2>/dev/null) == *"statically linked"* ]]; }

# --- the static busybox ----------------------------------------------------------------
missing=()
command -v file >/dev/null 2>&1 || missing+=(file)
if [ ! -x "$BB" ] || { command -v file >/dev/null 2>&1 && ! is_static "$BB"; }; then
    # Debian's dynamic `busybox` package also ships /bin/busybox; busybox-static replaces it.
    missing+=(busybox-static)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
    else
        log "needs ${missing[*]} (a static /bin/busybox); install it with:"
        echo "    sudo apt-get install -y ${missing[*]}" >&2
        exit 2
    fi
fi
[ -x "$BB" ] || die "$BB not found after installing busybox-static"
is_static "$BB" || die "$BB is not statically linked: $(file -L "$BB")"
BB_VERSION=$("$BB" 2>&1 | sed -n '1s/^BusyBox \(v[^ ]*\).*/\1/p')
BB_PKG=$(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null || true)

# --- up to date? -------------------------------------------------------------------------
OUTPUTS=("$OUT/busybox-oci.tar" "$OUT/busybox-layout/index.json" "$OUT/busybox-docker.tar" "$OUT/rootfs.tar" "$OUT/digest")
if [ $FORCE = 0 ]; then
    fresh=1
    for f in "${OUTPUTS[@]}"; do
        if [ ! -e "$f" ] || [ ! "$f" -nt "$SELF" ] || [ ! "$f" -nt "$(readlink -f "$BB")" ] ||
            { [ -e "$RBUILD" ] && [ ! "$f" -nt "$RBUILD" ]; }; then
            fresh=0
            break
        fi
    done
    if [ $fresh = 1 ]; then
        echo "busybox base image is up to date in ${OUT#"$ROOT"/} ($(cat "$OUT/digest")); --force rebuilds it"
        exit 0
    fi
fi

[ -x "$RBUILD" ] || die "rbuild binary $RBUILD not found: run \`make build\` first (or set RBUILD)"

mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/make-busybox-base.XXXXXX")
STAGE=
cleanup() {
    rm -rf "$WORK"
    if [ -n "$STAGE" ]; then rm -rf "$STAGE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the root filesystem tar -------------------------------------------------------------
R=$WORK/rootfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,etc,home,proc,root,sys,tmp,var}
chmod 0755 "$R" "$R"/{bin,sbin,usr,usr/bin,usr/sbin,dev,etc,home,proc,sys,var}
chmod 1777 "$R/tmp"
chmod 0700 "$R/root"
install -m 0755 "$BB" "$R/bin/busybox"
n=0
while read -r applet; do
    if [ -z "$applet" ] || [ "$applet" = bin/busybox ] || [ -e "$R/$applet" ] || [ -L "$R/$applet" ]; then
        continue
    fi
    mkdir -p "$R/$(dirname "$applet")"
    ln -s "$(realpath -sm --relative-to="$(dirname "/$applet")" /bin/busybox)" "$R/$applet"
    n=$((n + 1))
done < <("$BB" --list-full | sort -u)
[ "$n" -gt 100 ] || die "busybox --list-full gave only $n applets"
cat >"$R/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$R/etc/group" <<'GROUP'
root:x:0:
staff:x:50:app
app:x:1000:
nogroup:x:65534:
GROUP
chmod 0644 "$R/etc/passwd" "$R/etc/group"
# Owners, order and times fixed: the tar is the same bytes for the same busybox.
tar -C "$R" --sort=name --format=gnu --numeric-owner --owner=0 --group=0 \
    --mtime="@$EPOCH" -cf "$WORK/ctx-rootfs.tar" .

# --- the image, built by rbuild ------------------------------------------------------------
CTX=$WORK/context
mkdir -p "$CTX"
mv "$WORK/ctx-rootfs.tar" "$CTX/rootfs.tar"
cat >"$CTX/Dockerfile" <<DOCKERFILE
# busybox base image, generated by scripts/make-busybox-base.sh
FROM scratch
ADD rootfs.tar /
LABEL org.opencontainers.image.title="busybox" \\
      org.opencontainers.image.version="${BB_VERSION:-unknown}" \\
      org.opencontainers.image.description="BusyBox from Debian busybox-static ${BB_PKG:-}"
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["sh"]
DOCKERFILE

STAGE=$(mktemp -d "$OUT.new.XXXXXX")
log "building busybox:latest ($BB_VERSION, $n applets) with $RBUILD"
SOURCE_DATE_EPOCH=$EPOCH "$RBUILD" build \
    --cache-dir "$WORK/cache" --progress plain \
    -t busybox:latest \
    --iidfile "$STAGE/image-id" --metadata-file "$WORK/metadata.json" \
    -o "type=oci,dest=$STAGE/busybox-oci.tar" \
    -o "type=oci,tar=false,dest=$STAGE/busybox-layout" \
    -o "type=docker,dest=$STAGE/busybox-docker.tar" \
    "$CTX" || die "rbuild failed to build the busybox image"
for f in busybox-oci.tar busybox-layout/index.json busybox-docker.tar image-id; do
    [ -s "$STAGE/$f" ] || die "rbuild reported success but wrote no $f"
done
digest=$(sed -n 's/.*"containerimage.digest": *"\([^"]*\)".*/\1/p' "$WORK/metadata.json")
[ -n "$digest" ] || die "no containerimage.digest in the metadata file"
echo "$digest" >"$STAGE/digest"
cp "$CTX/rootfs.tar" "$STAGE/rootfs.tar"

if command -v skopeo >/dev/null 2>&1; then
    skopeo inspect --raw "oci-archive:$STAGE/busybox-oci.tar" >/dev/null ||
        die "skopeo cannot read the OCI archive rbuild wrote"
    skopeo inspect --raw "oci:$STAGE/busybox-layout:latest" >/dev/null ||
        die "skopeo cannot read the OCI layout rbuild wrote (as oci:DIR:latest)"
    skopeo inspect --raw "docker-archive:$STAGE/busybox-docker.tar" >/dev/null ||
        die "skopeo cannot read the docker-archive rbuild wrote"
fi

old=
[ -f "$OUT/digest" ] && old=$(cat "$OUT/digest")
chmod -R a+rX "$STAGE"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
STAGE=
echo "wrote ${OUT#"$ROOT"/}/{busybox-oci.tar,busybox-layout/,busybox-docker.tar,rootfs.tar}: busybox:latest $digest"
if [ -n "$old" ]; then
    if [ "$old" = "$digest" ]; then echo "digest unchanged (reproducible rebuild)"; else echo "digest changed (was $old)"; fi
fi
