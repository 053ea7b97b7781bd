#!/bin/bash
# bench.sh [--list] [BENCH...]: rbuild benchmarks (`make bench`). Not a test: it measures
# and reports, and fails only when a build fails.
#
# Each benchmark is a function bench_NAME (BENCH may be spelled copy-many or copy_many);
# with no argument every benchmark in BENCHES runs. Available:
#   copy-many  FROM scratch + `COPY . /data/` of a generated 20,000-file / 150 MB context
#              (scripts/bench/gen-context.py, cached under _work/bench/): rbuild
#              `-o type=oci,dest=out.tar` with a cold --cache-dir against `tar -c . | gzip`
#              of the same context. Targets: wall <= 1.2x tar|gzip, rbuild peak RSS <= 64 MiB.
#   pull       a 6-layer, 300 MB image (scripts/bench/gen-big-image.py: each layer half
#              random, half text; built once by rbuild into an OCI layout) pushed by skopeo
#              to a local docker-registry (Debian `docker-registry`; started on 127.0.0.1, a
#              free port, storage under _work/bench/pull/, stopped at the end). Into an empty
#              store each run: rbuild `FROM 127.0.0.1:PORT/bench/big:1` + LABEL with
#              --pull=always and no output, against `skopeo copy docker://... oci:DIR:x`.
#              Target: wall <= 1.0x skopeo.
#   run        RUN steps on the busybox base (testdata/generated/busybox/rootfs.tar, `make
#              base`), rootless: as rbuild-tester when run as root (created, with sub-ids,
#              if missing), else as the calling user, in a directory under /tmp it owns.
#              (i) per-step cost of `RUN true`: FROM scratch + ADD rootfs.tar + 20 RUN lines
#              minus the same without them, / 20 (no output). Target <= 30 ms per step.
#              (ii) one RUN writing 200 MB (100 MB random, 100 MB text) with
#              `-o type=oci,dest=out.tar`. Both side by side with `buildah bud --isolation
#              chroot --storage-driver vfs` (+ `buildah push oci-archive:` in (ii)) as the
#              same user, when buildah runs here (else n/a, with the reason).
#              Target (ii): wall <= 0.7x buildah. If a step starts with SIGPIPE ignored
#              (`yes | head` would never end), (ii) feeds head from a fifo and says so.
#   cache      the shared harness (../shared/bench, run-matrix.sh; as root, builds as its
#              user `tester`) in one run for rbuild, buildah-overlay and docker-buildkit
#              (BuildKit in Docker Engine: docker.io installed and the private dockerd of
#              start-dockerd.sh started; left out, with the reason, when that fails) on
#              CACHE_WORKLOADS (default: multistage debian-extract): cold, warm and
#              incremental (one context file of the last COPY changed). Targets: warm <=
#              0.2x buildah and <= 1.0x BuildKit and <= 5% of rbuild's own cold; incremental
#              <= 0.3x buildah and <= 1.0x BuildKit.
#   diff       a step that changes one file on a ~1 GiB / 50,000-file base (FROM scratch +
#              ADD busybox rootfs.tar + ADD of scripts/bench/gen-tree-tar.py's tar, kept as
#              the image diffbase:1 in each store, untimed), rootless as in `run`: for each
#              snapshotter (overlay, fuse-overlayfs when /dev/fuse is usable, walk), a warm
#              store and --no-cache: `FROM diffbase:1` + one RUN appending to one file
#              (wall), and the same + 10 more such RUNs: ms per step = the difference / 10
#              (sandbox start, the diff and the layer together), beside buildah bud
#              --isolation chroot --storage-driver overlay on the same Dockerfiles (base
#              committed once as localhost/diffbase). Target: ms per step <= 100 on overlay.
#   gc         one build of GC_LAYERS (default 50) RUN steps writing GC_LAYER_MB (default
#              100) MB of random bytes each (5 GB of step records, untimed), then
#              `rbuild prune --max-used-space 1GB`, timed. Target: <= 5 s.
# Every measurement runs REPS times (default 3); tables show the median and all runs.
# Page caches are kept (contexts are hot, as in CI after a checkout); `sync` before each run.
# Environment: RBUILD (default target/rbuild), REPS, SETTLE (seconds to wait after wiping a
# cache, default 0: on ext4 creating files right after deleting many costs extra sys time),
# COPY_MANY_SCALE (default 1; e.g. 0.1 for a quick try), PULL_LAYERS (default 6),
# PULL_LAYER_MB (default 50), RUN_STEPS (default 20), RUN_SNAPSHOTTER (walk or copy, default
# walk), RUN_USER (default rbuild-tester, when
# run as root), RUN_TIMEOUT (seconds per (ii) build, default 600). Missing tools (skopeo,
# docker-registry, buildah, uidmap) are installed with apt-get when run as root. Results: _work/bench/results.md: the machine, then the latest
# section of every benchmark (each in _work/bench/sections/NAME.md, dated): running one
# benchmark replaces its own section and keeps the others.
#
# The shared harness (/work/shared/bench: run.sh TOOL WORKLOAD SCENARIO) calls rbuild via
# adapters/rbuild.sh: `$RBUILD build --cache-dir STATE/cache -f DF -o type=oci,dest=OUT
# --build-context busybox=oci-layout://images/busybox:latest ... CONTEXT`, binary from
# RBUILD=/work/main/target/rbuild, `reset` = rm -rf STATE/cache (else `rbuild prune --all`).
# rbuild has --build-context, FROM <image>, RUN and `rbuild prune --all --force` (the
# adapter's reset), not RBUILD_BASE=oci-archive's `FROM oci-archive:…` spelling. The
# `cache` benchmark below runs the shared matrix for the workloads it names.
# shellcheck disable=SC2317  # the bench_* functions are called by name
set -euo pipefail
umask 022
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RBUILD=${RBUILD:-$ROOT/target/rbuild}
WORK=$ROOT/_work/bench
REPS=${REPS:-3}
SETTLE=${SETTLE:-0}
TIME=/usr/bin/time
BENCHES=(copy-many pull run cache diff gc)

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- helpers ---------------------------------------------------------------------------

# median N...: the median of the numbers (mean of the middle two for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# ratio A B [DIGITS]: A / B, or "-".
ratio() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.*f", d, a / b; else print "-" }'; }
# le A B: exit 0 if A <= B.
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "-" && a + 0 <= b + 0) }'; }
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
bytes_to_mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

# timed RESULTVAR -- CMD...: runs CMD under GNU time; sets RESULTVAR to
# "WALL_S PEAK_RSS_KIB CPU_S" (peak RSS: the largest single process of CMD's tree) or
# "FAIL" if CMD failed. CMD's own stdout/stderr are untouched.
timed() {
    local -n _res=$1
    shift 2
    local tf rc=0
    tf=$(mktemp "${TMPDIR:-/tmp}/bench-time.XXXXXX")
    sync
    "$TIME" -f '%e %M %U %S' -o "$tf" "$@" || rc=$?
    if [ "$rc" = 0 ]; then
        _res=$(awk 'END { printf "%s %s %.2f", $1, $2, $3 + $4 }' "$tf")
    else
        _res=FAIL
    fi
    rm -f "$tf"
    return 0
}

# wipe DIR: remove a cache (then wait SETTLE seconds).
wipe() {
    rm -rf "$1"
    sync
    if [ "$SETTLE" != 0 ]; then sleep "$SETTLE"; fi
}

# gen_context NAME GENERATOR ARGS...: a generated context under _work/bench/NAME/context,
# regenerated only when the generator or its arguments change. Prints its path.
gen_context() {
    local name=$1 gen=$2
    shift 2
    local dir=$WORK/$name/context stamp key
    key=$( { sha256sum "$gen" | cut -d' ' -f1; echo "$*" "${BENCH_EPOCH:-1700000000}"; } | sha256sum | cut -d' ' -f1)
    stamp=$WORK/$name/context.stamp
    if [ -d "$dir" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        log "$name: context cached in ${dir#"$ROOT"/}"
    else
        log "$name: generating the context (once; cached in ${dir#"$ROOT"/}) ..."
        rm -rf "$dir" "$dir.tmp" "$stamp"
        mkdir -p "$WORK/$name"
        /usr/bin/python3 "$gen" "$dir.tmp" "$@" >&2 || { log "$name: $gen failed"; return 1; }
        mv "$dir.tmp" "$dir" && echo "$key" >"$stamp" || return 1
    fi
    # hot page cache: read everything once, untimed
    tar -C "$dir" -cf - . | cksum >/dev/null
    echo "$dir"
}

# check_oci_archive FILE CONTEXT: the OCI archive is readable and its layers hold as many
# entries as CONTEXT (plus the directories the destination adds); prints a short note.
check_oci_archive() {
    local ctx_entries
    ctx_entries=$(find "$2" -mindepth 1 | wc -l)
    if command -v skopeo >/dev/null 2>&1; then
        skopeo inspect --raw "oci-archive:$1" >/dev/null || { echo "skopeo cannot read it"; return 1; }
    fi
    /usr/bin/python3 - "$1" "$ctx_entries" <<'PY'
import json, sys, tarfile
path, want = sys.argv[1], int(sys.argv[2])
with tarfile.open(path) as t:
    members = {m.name.removeprefix("./"): m for m in t.getmembers()}
    blob = lambda d: t.extractfile(members["blobs/" + d.replace(":", "/")])
    index = json.load(t.extractfile(members["index.json"]))
    manifest = json.load(blob(index["manifests"][0]["digest"]))
    n = 0
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=blob(layer["digest"]), mode="r|*") as lt:
            n += sum(1 for e in lt if e.name.rstrip("/").startswith(("data/", "./data/")))
ok = n == want
print(f"{len(manifest['layers'])} layer(s), {n} entries under /data (context: {want})"
      + ("" if ok else ": MISMATCH"))
sys.exit(0 if ok else 1)
PY
}

machine_info() {
    local rv
    rv=$("$RBUILD" --version 2>/dev/null | sed -n 1p) || rv="(--version failed)"
    echo "## Machine"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| nproc | $(nproc) |"
    echo "| CPU | $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sed -n 1p) |"
    echo "| memory | $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |"
    echo "| kernel | $(uname -sr) |"
    echo "| filesystem of _work | $(df -PT "$WORK" | awk 'NR == 2 { print $2 }') |"
    echo "| load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |"
    echo "| rbuild | $rv (${RBUILD#"$ROOT"/}) |"
    echo "| tar, gzip | $(tar --version | sed -n 1p), $(gzip --version | sed -n 1p) |"
    local t v tools=
    for t in skopeo buildah docker-registry; do
        v=$(dpkg-query -W -f '${Version}' "$t" 2>/dev/null) || v="not installed"
        tools+="${tools:+, }$t ${v:-not installed}"
    done
    echo "| skopeo, buildah, docker-registry (Debian) | $tools |"
    echo
}

# split_results RESULTS WALLS RSS_MIB CPUS NFAIL: the successful runs of RESULTS (an array
# of "WALL RSS_KIB CPU" or FAIL) split into three arrays, and the number of failed runs
# (all by name).
split_results() {
    local -n _in=$1 _w=$2 _m=$3 _c=$4 _nf=$5
    local r w m c
    _w=() _m=() _c=() _nf=0
    for r in "${_in[@]}"; do
        if [ "$r" = FAIL ]; then _nf=$((_nf + 1)); continue; fi
        read -r w m c <<<"$r"
        _w+=("$w") _m+=("$(kib_to_mib "$m")") _c+=("$c")
    done
}
# all_runs VALUES... [FAILED]: the "all runs" cell.
all_runs() {
    local nf=${*: -1}
    local -a v=("${@:1:$#-1}")
    echo "${v[*]:--}$( [ "$nf" = 0 ] || echo " ($nf FAIL)")"
}

# table TITLE NAME_A NAME_B RESULTS_A RESULTS_B SIZE_A SIZE_B [WALL_MAX [RSS_MAX [SIZE_ROW [NA_B]]]]:
# the side-by-side markdown table; RESULTS_* are arrays of "WALL RSS CPU" (or FAIL), by
# name. Targets: A/B wall ratio <= WALL_MAX (default 1.2), A's peak RSS <= RSS_MAX MiB
# (default 64; empty: no target). SIZE_ROW labels the size row (default "output MB").
# NA_B: why B was not measured (its cells say n/a).
table() {
    # (the arrays' names are not kept in locals that could shadow them)
    local title=$1 na=$2 nb=$3 sa=$6 sb=$7
    local wmax=${8:-1.2} rmax=${9-64} srow=${10:-output MB} nab=${11:-}
    local -a wa=() wb=() ma=() mb=() ca=() cb=()
    local fa fb
    split_results "$4" wa ma ca fa
    split_results "$5" wb mb cb fb
    local mwa mwb mma mmb mca mcb wr mr
    mwa=$(median "${wa[@]}"); mwb=$(median "${wb[@]}")
    mma=$(median "${ma[@]}"); mmb=$(median "${mb[@]}")
    mca=$(median "${ca[@]}"); mcb=$(median "${cb[@]}")
    wr=$(ratio "$mwa" "$mwb"); mr=$(ratio "$mma" "$mmb" 1)
    local wmet=no mmet=no rtarget=
    le "$wr" "$wmax" && wmet=yes
    if [ -n "$rmax" ]; then
        rtarget="<= $rmax MiB"
        le "$mma" "$rmax" && mmet=yes
    else
        mmet=
    fi
    if [ ${#wb[@]} = 0 ]; then
        wmet="n/a (no $nb result)"
        if [ -n "$nab" ]; then
            wmet="n/a"
            mwb=n/a mmb=n/a mcb=n/a sb=n/a
        fi
    fi
    if [ ${#wa[@]} = 0 ]; then
        wmet="no (${na%% *} failed)"
        if [ -n "$rmax" ]; then mmet=$wmet; fi
    fi
    echo "### $title"
    echo
    echo "| | $na | $nb | ratio | target | met |"
    echo "|---|---:|---:|---:|---|---|"
    echo "| wall s, median | $mwa | $mwb | ${wr}x | <= ${wmax}x | $wmet |"
    echo "| peak RSS MiB, median | $mma | $mmb | ${mr}x | $rtarget | $mmet |"
    echo "| CPU s (user+sys), median | $mca | $mcb | $(ratio "$mca" "$mcb")x | | |"
    echo "| $srow | $sa | $sb | $(ratio "$sa" "$sb")x | | |"
    local awb amb acb
    awb=$(all_runs "${wb[@]}" "$fb") amb=${mb[*]:--} acb=${cb[*]:--}
    if [ -n "$nab" ] && [ ${#wb[@]} = 0 ]; then awb=n/a amb=n/a acb=n/a; fi
    echo "| wall s, all runs | $(all_runs "${wa[@]}" "$fa") | $awb | | | |"
    echo "| peak RSS MiB, all runs | ${ma[*]:--} | $amb | | | |"
    echo "| CPU s, all runs | ${ca[*]:--} | $acb | | | |"
    echo
    if [ -n "$nab" ]; then
        echo "$nb: n/a: $nab"
        echo
    fi
}

# ensure_cmd CMD PACKAGE...: CMD is on PATH, or (as root, with apt-get) gets installed
# from PACKAGE...; exit 1 if it still is not there.
ensure_cmd() {
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing $* (for $cmd)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2; } ||
            log "apt-get install $* failed"
    fi
    command -v "$cmd" >/dev/null 2>&1
}

# free_port: a TCP port free on 127.0.0.1 right now.
free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# http_ok URL: the URL answers 200.
http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
    else
        /usr/bin/python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
    fi
}

# Things to undo when the script (or the subshell a benchmark runs in) ends.
REG_PID=
RUN_TMP=
cleanup() {
    stop_registry
    if [ -n "$RUN_TMP" ]; then rm -rf "$RUN_TMP"; RUN_TMP=; fi
}

# start_registry DIR: a docker-registry on 127.0.0.1, a free port, storage DIR/storage
# (emptied first), config DIR/config.yml, log DIR/registry.log. Sets REG_PID, REG_PORT.
start_registry() {
    local dir=$1 try i
    mkdir -p "$dir"
    for try in 1 2 3; do
        REG_PORT=$(free_port) || return 1
        rm -rf "$dir/storage"
        mkdir -p "$dir/storage"
        cat >"$dir/config.yml" <<EOF
# written by scripts/bench.sh: a throw-away registry for the pull benchmark
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REG_PORT
EOF
        docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
        REG_PID=$!
        for i in $(seq 1 100); do
            if http_ok "http://127.0.0.1:$REG_PORT/v2/"; then
                log "registry on 127.0.0.1:$REG_PORT (pid $REG_PID, log ${dir#"$ROOT"/}/registry.log)"
                return 0
            fi
            kill -0 "$REG_PID" 2>/dev/null || break
            sleep 0.1
        done
        log "registry did not come up on port $REG_PORT (try $try):"
        tail -n 3 "$dir/registry.log" >&2
        stop_registry
    done
    return 1
}
stop_registry() {
    if [ -n "$REG_PID" ]; then
        kill "$REG_PID" 2>/dev/null || true
        wait "$REG_PID" 2>/dev/null || true
        REG_PID=
    fi
}

# dir_mb DIR: the apparent size of DIR in MB, or "-".
dir_mb() {
    if [ -d "$1" ]; then bytes_to_mb "$(du -sb --apparent-size "$1" | cut -f1)"; else echo -; fi
}
# file_mb FILE: its size in MB, or "-".
file_mb() {
    if [ -f "$1" ]; then bytes_to_mb "$(stat -c %s "$1")"; else echo -; fi
}

# --- benchmarks ---------------------------------------------------------------------------

bench_copy_many() {
    local B=$WORK/copy-many ctx
    ctx=$(gen_context copy-many "$HERE/bench/gen-context.py" "${COPY_MANY_SCALE:-1}") || return 1
    # the Dockerfile lives outside the context, so the context is exactly the tree
    printf '# copy-many: one COPY of the whole generated context\nFROM scratch\nCOPY . /data/\n' >"$B/Dockerfile"
    mkdir -p "$B/logs" || return 1
    local nfiles size
    nfiles=$(find "$ctx" ! -type d | wc -l)
    size=$(du -sb --apparent-size "$ctx" | cut -f1)

    local -a rb=() tg=()
    local i res out_rb=$B/out.tar out_tg=$B/out.tar.gz failed=0 note=
    for i in $(seq 1 "$REPS"); do
        # (a) rbuild, cold cache
        wipe "$B/cache"
        rm -f "$out_rb"
        log "copy-many: rbuild run $i/$REPS"
        timed res -- "$RBUILD" build --cache-dir "$B/cache" --progress plain -f "$B/Dockerfile" \
            -o "type=oci,dest=$out_rb" "$ctx" 2>"$B/logs/rbuild-$i.log"
        if [ "$res" = FAIL ]; then
            log "copy-many: rbuild run $i failed (${B#"$ROOT"/}/logs/rbuild-$i.log):"
            tail -n 5 "$B/logs/rbuild-$i.log" >&2
            failed=1
        elif [ "$i" = 1 ]; then
            note=$(check_oci_archive "$out_rb" "$ctx") || { log "copy-many: bad output: $note"; failed=1; res=FAIL; }
        fi
        rb+=("$res")
        # (b) tar | gzip of the same context
        rm -f "$out_tg"
        log "copy-many: tar|gzip run $i/$REPS"
        # shellcheck disable=SC2016  # expanded by the inner bash
        timed res -- bash -c 'set -o pipefail; tar -C "$1" -cf - . | gzip -c >"$2"' _ "$ctx" "$out_tg"
        tg+=("$res")
    done
    wipe "$B/cache"
    local sa=- sb=-
    [ -f "$out_rb" ] && sa=$(bytes_to_mb "$(stat -c %s "$out_rb")")
    [ -f "$out_tg" ] && sb=$(bytes_to_mb "$(stat -c %s "$out_tg")")
    table "copy-many: FROM scratch + COPY . /data/ of $nfiles files, $(bytes_to_mb "$size") MB; $REPS runs, cold cache" \
        "rbuild \`-o type=oci\`" "\`tar -c . \\| gzip\`" rb tg "$sa" "$sb"
    echo "rbuild output check: ${note:-not checked}. tar|gzip: gzip -6 (default), peak RSS is the largest of bash, tar, gzip."
    echo
    return "$failed"
}

# layout_info LAYOUT: "DIGEST LAYERS COMPRESSED_BYTES" of the first image in an OCI layout.
layout_info() {
    /usr/bin/python3 - "$1" <<'PY'
import json, os, sys
d = sys.argv[1]
desc = json.load(open(os.path.join(d, "index.json")))["manifests"][0]
m = json.load(open(os.path.join(d, "blobs", *desc["digest"].split(":"))))
print(desc["digest"], len(m["layers"]), sum(l["size"] for l in m["layers"]))
PY
}

bench_pull() {
    local B=$WORK/pull ctx layers=${PULL_LAYERS:-6} layer_mb=${PULL_LAYER_MB:-50}
    if ! ensure_cmd docker-registry docker-registry apache2-utils || ! ensure_cmd skopeo skopeo; then
        log "pull: needs docker-registry and skopeo (apt-get install -y docker-registry apache2-utils skopeo)"
        printf '### pull\n\nnot run: docker-registry or skopeo is missing.\n\n'
        return 1
    fi
    ctx=$(gen_context pull "$HERE/bench/gen-big-image.py" "$layers" "$layer_mb") || return 1
    mkdir -p "$B/logs" "$B/empty-context" || return 1

    # the image: built by rbuild once per generated context, kept as an OCI layout
    local i key
    {
        echo "# pull: the image pushed to the local registry, one layer per COPY"
        echo "FROM scratch"
        for i in $(seq 1 "$layers"); do echo "COPY layer$i/ /layer$i/"; done
    } >"$B/Dockerfile.image"
    key=$(cat "$B/context.stamp" "$B/Dockerfile.image" | sha256sum | cut -d' ' -f1)
    if [ ! -f "$B/layout/index.json" ] || [ ! -f "$B/layout.stamp" ] || [ "$(cat "$B/layout.stamp")" != "$key" ]; then
        log "pull: building the $layers-layer image with rbuild (once; cached in ${B#"$ROOT"/}/layout) ..."
        rm -rf "$B/layout" "$B/layout.tmp" "$B/layout.stamp" "$B/image-cache"
        SOURCE_DATE_EPOCH=${BENCH_EPOCH:-1700000000} "$RBUILD" build --cache-dir "$B/image-cache" \
            --progress plain -t bench/big:1 -f "$B/Dockerfile.image" \
            -o "type=oci,tar=false,dest=$B/layout.tmp" "$ctx" >"$B/logs/image.log" 2>&1 || {
            log "pull: building the image failed (${B#"$ROOT"/}/logs/image.log):"
            tail -n 5 "$B/logs/image.log" >&2
            rm -rf "$B/image-cache"
            return 1
        }
        rm -rf "$B/image-cache"
        mv "$B/layout.tmp" "$B/layout" && echo "$key" >"$B/layout.stamp" || return 1
    fi
    local digest nlayers zbytes
    read -r digest nlayers zbytes < <(layout_info "$B/layout") || return 1
    # hot page cache for the blobs, as for the contexts
    cat "$B/layout/blobs/sha256/"* | cksum >/dev/null

    # the registry, and the image in it
    start_registry "$B/registry" || { log "pull: cannot start docker-registry"; return 1; }
    local ref=127.0.0.1:$REG_PORT/bench/big:1 push
    log "pull: pushing the image to $ref"
    timed push -- skopeo copy --dest-tls-verify=false "oci:$B/layout:1" "docker://$ref" >"$B/logs/push.log" 2>&1
    if [ "$push" = FAIL ]; then
        log "pull: skopeo push failed (${B#"$ROOT"/}/logs/push.log):"
        tail -n 5 "$B/logs/push.log" >&2
        stop_registry
        return 1
    fi
    printf '# pull: rbuild fetches the base image; nothing to unpack (no RUN, COPY)\nFROM %s\nLABEL x=y\n' "$ref" >"$B/Dockerfile"

    local -a rb=() sk=()
    local res failed=0 ls_line=- got
    local st_rb=$B/store-rbuild st_sk=$B/store-skopeo sa=- sb=-
    for i in $(seq 1 "$REPS"); do
        # (a) rbuild, empty store
        wipe "$st_rb"
        log "pull: rbuild run $i/$REPS"
        timed res -- "$RBUILD" build --pull=always --cache-dir "$st_rb" --progress plain \
            -f "$B/Dockerfile" "$B/empty-context" >"$B/logs/rbuild-$i.log" 2>&1
        if [ "$res" = FAIL ]; then
            log "pull: rbuild run $i failed (${B#"$ROOT"/}/logs/rbuild-$i.log):"
            tail -n 5 "$B/logs/rbuild-$i.log" >&2
            failed=1
        else
            ls_line=$("$RBUILD" image ls --cache-dir "$st_rb" 2>&1 | grep -F "$ref " | sed 's/  */ /g') || true
            if [[ $ls_line != *"${digest:0:19}"* ]]; then
                log "pull: rbuild run $i: \`rbuild image ls\` does not show $ref ${digest:0:19}: ${ls_line:-nothing}"
                "$RBUILD" image ls --cache-dir "$st_rb" >&2 || true
                failed=1 res=FAIL ls_line="MISSING"
            fi
            sa=$(dir_mb "$st_rb")
        fi
        rb+=("$res")
        # (b) skopeo copy into an empty OCI layout
        wipe "$st_sk"
        log "pull: skopeo run $i/$REPS"
        timed res -- skopeo copy --src-tls-verify=false "docker://$ref" "oci:$st_sk:x" >"$B/logs/skopeo-$i.log" 2>&1
        if [ "$res" != FAIL ]; then
            read -r got _ < <(layout_info "$st_sk") || got=
            [ "$got" = "$digest" ] || { log "pull: skopeo run $i: got manifest ${got:-none}, pushed $digest"; res=FAIL; }
            sb=$(dir_mb "$st_sk")
        fi
        sk+=("$res")
    done
    stop_registry
    wipe "$st_rb"
    wipe "$st_sk"
    rm -rf "$B/registry/storage"
    local push_s=${push%% *}
    table "pull: $nlayers-layer image, $(bytes_to_mb $((layers * layer_mb * 1000000))) MB ($(bytes_to_mb "$zbytes") MB gzip), from a local docker-registry into an empty store; $REPS runs" \
        "rbuild \`FROM\` + \`--pull=always\`" "\`skopeo copy\` to \`oci:\`" rb sk "$sa" "$sb" 1.0 "" "store MB"
    echo "Image $digest pushed by \`skopeo copy\` to docker-registry $(dpkg-query -W -f '${Version}' docker-registry 2>/dev/null || echo '?') on 127.0.0.1 in ${push_s}s."
    echo "rbuild: \`rbuild build --pull=always --cache-dir EMPTY -f Dockerfile\` (\`FROM $ref\` + \`LABEL x=y\`, no -o);"
    echo "\`rbuild image ls\`: \`${ls_line}\`. skopeo $(skopeo --version | awk '{ print $3 }'): \`skopeo copy --src-tls-verify=false docker://... oci:EMPTY:x\`, manifest digest checked."
    echo
    return "$failed"
}

# setup_run_user DIR: who runs the RUN benchmark, and DIR (under /tmp) owned by them.
# Sets RUN_AS (command prefix: that user, cwd DIR) and RUN_WHO (a description).
bench_cache() {
    local SB
    SB=$(cd "$ROOT/../shared/bench" 2>/dev/null && pwd) || { echo "no shared bench next to the project (../shared/bench)"; return 1; }
    [ "$(id -u)" = 0 ] || { echo "cache: the shared harness runs as root (builds run as its user tester)"; return 1; }
    local tools="rbuild buildah-overlay" na_bk='' wls=${CACHE_WORKLOADS:-multistage debian-extract}
    ensure_cmd buildah buildah fuse-overlayfs crun || { echo "cache: buildah cannot be installed"; return 1; }
    ensure_cmd debootstrap debootstrap >/dev/null || true
    if ensure_cmd dockerd docker.io && "$SB/start-dockerd.sh" >&2; then
        tools+=" docker-buildkit"
    else
        na_bk="BuildKit (docker-buildkit) left out: docker.io or its daemon is not available here"
    fi
    if ! id tester >/dev/null 2>&1; then
        useradd -m -s /bin/bash tester && usermod --add-subuids 100000-165535 --add-subgids 100000-165535 tester || return 1
    fi
    [ -f "$SB/images/busybox-oci.tar" ] || "$SB/make-busybox-base.sh" >&2 || return 1
    case " $wls " in *" debian-extract "* | *" run-steps "*)
        [ -f "$SB/images/debian-oci.tar" ] || "$SB/make-debian-base.sh" >&2 || return 1 ;;
    esac
    local bw=$WORK/shared id
    id=cache-$(date +%Y%m%d-%H%M%S)
    mkdir -p "$bw"
    # the harness's own directories belong to its build user
    chown -R tester: "$bw"
    log "cache: run-matrix.sh -r $REPS -t \"$tools\" -w \"$wls\" (run $id; log ${bw#"$ROOT"/}/matrix-$id.log)"
    RBUILD=$RBUILD BENCH_WORK=$bw RUN_ID=$id "$SB/run-matrix.sh" -r "$REPS" -t "$tools" -w "$wls" \
        >"$bw/matrix-$id.log" 2>&1 || log "cache: run-matrix.sh failed (see the log)"
    echo "## cache: warm and incremental rebuilds beside buildah and BuildKit (shared harness, run $id)"
    echo
    [ -z "$na_bk" ] || { echo "$na_bk"; echo; }
    /usr/bin/python3 - "$bw/results/raw.tsv" "$id" <<'PY'
import statistics, sys
from collections import defaultdict
path, run = sys.argv[1], sys.argv[2]
walls = defaultdict(list)
fails = defaultdict(int)
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if len(f) < 8 or f[0] != run:
        continue
    key = (f[3], f[4], f[2])
    if f[6] == "ok":
        walls[key].append(float(f[7]))
    else:
        fails[key] += 1
med = {k: statistics.median(v) for k, v in walls.items()}
tools = sorted({k[2] for k in list(walls) + list(fails)})
print("| workload | scenario | " + " | ".join(f"{t} wall s" for t in tools)
      + " | rbuild / buildah | rbuild / BuildKit | rbuild / own cold | targets |")
print("|---|---|" + "---:|" * len(tools) + "---:|---:|---:|---|")
targets = {"warm": (0.2, 1.0, 0.05), "incremental": (0.3, 1.0, None)}
for wl in sorted({k[0] for k in walls}):
    for sc in ("cold", "warm", "incremental"):
        cells = []
        for t in tools:
            v = med.get((wl, sc, t))
            cells.append("-" if v is None else f"{v:.2f}" + (f" ({fails[(wl, sc, t)]} FAIL)" if fails[(wl, sc, t)] else ""))
        rb = med.get((wl, sc, "rbuild"))
        def r(other):
            o = med.get((wl, sc, other))
            return rb / o if rb is not None and o else None
        cold = med.get((wl, "cold", "rbuild"))
        own = rb / cold if rb is not None and cold and sc != "cold" else None
        rs = [r("buildah-overlay"), r("docker-buildkit"), own]
        verdict = "-"
        if sc in targets:
            lim = targets[sc]
            ok = all(x is None or l is None or x <= l for x, l in zip(rs, lim))
            verdict = ("met" if ok else "NOT met") + " (" + ", ".join(
                f"<= {l}" for l in lim if l is not None) + ")"
        fmt = lambda x: "-" if x is None else f"{x:.2f}x"
        print(f"| {wl} | {sc} | " + " | ".join(cells) + f" | {fmt(rs[0])} | {fmt(rs[1])} | {fmt(rs[2])} | {verdict} |")
PY
    echo
    echo "Full medians (CPU, RSS, output and store sizes): ${bw#"$ROOT"/}/results/matrix-$id.md"
    echo
}

bench_diff() {
    local B=$WORK/diff rootfs=$ROOT/testdata/generated/busybox/rootfs.tar n=10 i s res
    mkdir -p "$B/logs" || return 1
    [ -f "$rootfs" ] || RBUILD=$RBUILD "$HERE/make-busybox-base.sh" >&2 || return 1
    local T
    T=$(mktemp -d /tmp/rbuild-bench-diff.XXXXXX) || return 1
    RUN_TMP=$T
    chmod 0755 "$T"
    local -a RUN_AS=()
    local RUN_WHO
    setup_run_user "$T" || return 1
    mkdir -p "$T/context" && cp "$rootfs" "$T/context/rootfs.tar" && cp "$RBUILD" "$T/rbuild" || return 1
    log "diff: generating the 50,000-file tree"
    /usr/bin/python3 "$HERE/bench/gen-tree-tar.py" "$T/context/tree.tar" || return 1
    printf 'FROM scratch\nADD rootfs.tar /\nADD tree.tar /data/\n' >"$T/Dockerfile.base"
    printf 'FROM %s\nRUN echo x >> /data/d0/f0\n' diffbase:1 >"$T/Dockerfile.one"
    printf 'FROM %s\nRUN echo x >> /data/d0/f0\n' localhost/diffbase >"$T/Dockerfile.bh-one"
    cp "$T/Dockerfile.one" "$T/Dockerfile.many"
    cp "$T/Dockerfile.bh-one" "$T/Dockerfile.bh-many"
    for i in $(seq 1 "$n"); do
        echo "RUN echo x >> /data/d$i/f$i" | tee -a "$T/Dockerfile.many" >>"$T/Dockerfile.bh-many"
    done
    if [ "$(id -u)" = 0 ]; then chown -R --reference="$T" "$T" || return 1; fi
    cp "$T"/Dockerfile.* "$B/"
    local snaps="overlay walk"
    if "${RUN_AS[@]}" test -r /dev/fuse -a -w /dev/fuse && command -v fuse-overlayfs >/dev/null; then
        snaps="overlay fuse-overlayfs walk"
    else
        log "diff: fuse-overlayfs left out: not installed, or /dev/fuse not usable by the build user"
    fi
    echo "### diff: one changed file on a 1 GiB / 50,000-file base, rootless, warm store, --no-cache; $REPS runs"
    echo
    echo "| snapshotter | wall s, 1 RUN, median | ms per RUN step, median | target | all runs (wall s / ms) |"
    echo "|---|---:|---:|---|---|"
    local failed=0
    for s in $snaps; do
        local C=$T/cache-$s rb=(--snapshotter "$s" --cache-dir "$T/cache-$s" --progress plain)
        local -a one=() many=() ms=() w1=() m1=() c1=() w2=() m2=() c2=() f1 f2
        timed res -- "${RUN_AS[@]}" "$T/rbuild" build "${rb[@]}" -f "$T/Dockerfile.base" \
            -o type=image,name=diffbase:1 "$T/context" >"$B/logs/$s-base.log" 2>&1
        if [ "$res" = FAIL ]; then
            log "diff: the base build failed with $s (${B#"$ROOT"/}/logs/$s-base.log)"
            echo "| $s | FAIL | | | |"
            failed=1
            continue
        fi
        # The first step on the base unpacks its snapshots (overlay): untimed.
        "${RUN_AS[@]}" "$T/rbuild" build "${rb[@]}" --no-cache -f "$T/Dockerfile.one" "$T/context" \
            >"$B/logs/$s-first.log" 2>&1 || failed=1
        for i in $(seq 1 "$REPS"); do
            timed res -- "${RUN_AS[@]}" "$T/rbuild" build "${rb[@]}" --no-cache -f "$T/Dockerfile.one" \
                "$T/context" >"$B/logs/$s-one-$i.log" 2>&1
            one+=("$res")
            timed res -- "${RUN_AS[@]}" "$T/rbuild" build "${rb[@]}" --no-cache -f "$T/Dockerfile.many" \
                "$T/context" >"$B/logs/$s-many-$i.log" 2>&1
            many+=("$res")
        done
        step_ms one many ms "$n"
        split_results one w1 m1 c1 f1
        split_results many w2 m2 c2 f2
        local mr target=''
        mr=$(median "${ms[@]}")
        if [ "$s" = overlay ]; then
            if le "$mr" 100; then target="<= 100 ms: met"; else target="<= 100 ms: NOT met"; fi
        fi
        echo "| $s | $(median "${w1[@]}") | $mr | $target | $(all_runs "${w1[@]}" "$f1") / ${ms[*]:--} |"
        wipe "$C"
    done
    # buildah, overlay storage, same user
    local -a BH=(buildah --root "$T/buildah/root" --runroot "$T/buildah/run" --storage-driver overlay)
    local nab=''
    if ! ensure_cmd buildah buildah; then
        nab="buildah is not installed"
    elif ! "${RUN_AS[@]}" "${BH[@]}" bud --isolation chroot -t diffbase -f "$T/Dockerfile.base" "$T/context" \
        >"$B/logs/buildah-base.log" 2>&1; then
        nab="buildah fails here: $(bh_fail "$B/logs/buildah-base.log")"
    fi
    if [ -z "$nab" ]; then
        local -a one=() many=() ms=() w1=() m1=() c1=() w2=() m2=() c2=() f1 f2
        "${RUN_AS[@]}" "${BH[@]}" bud --isolation chroot -f "$T/Dockerfile.bh-one" "$T/context" \
            >"$B/logs/buildah-first.log" 2>&1 || true
        for i in $(seq 1 "$REPS"); do
            timed res -- "${RUN_AS[@]}" "${BH[@]}" bud --isolation chroot -f "$T/Dockerfile.bh-one" \
                "$T/context" >"$B/logs/buildah-one-$i.log" 2>&1
            one+=("$res")
            timed res -- "${RUN_AS[@]}" "${BH[@]}" bud --isolation chroot -f "$T/Dockerfile.bh-many" \
                "$T/context" >"$B/logs/buildah-many-$i.log" 2>&1
            many+=("$res")
        done
        step_ms one many ms "$n"
        split_results one w1 m1 c1 f1
        echo "| buildah bud (overlay storage) | $(median "${w1[@]}") | $(median "${ms[@]}") | | $(all_runs "${w1[@]}" "$f1") / ${ms[*]:--} |"
    else
        echo "| buildah bud (overlay storage) | n/a | n/a | | $nab |"
    fi
    "${RUN_AS[@]}" "${BH[@]}" rm -a >/dev/null 2>&1 || true
    "${RUN_AS[@]}" buildah unshare rm -rf "$T/buildah" >/dev/null 2>&1 || true
    echo
    echo "ms per RUN step = (wall of FROM diffbase + 11 RUNs - wall of FROM diffbase + 1 RUN) / 10: the"
    echo "sandbox, the step, reading its changes and writing its layer. Each build has --no-cache and"
    echo "no output (buildah: bud without --layers, committed to its store). Run as $RUN_WHO."
    echo
    rm -rf "$T"
    RUN_TMP=
    return "$failed"
}

bench_gc() {
    local T=$WORK/gc n=${GC_LAYERS:-50} mb=${GC_LAYER_MB:-100} i res
    local oci=$ROOT/testdata/generated/busybox/busybox-oci.tar
    if [ ! -f "$oci" ]; then
        RBUILD=$RBUILD "$HERE/make-busybox-base.sh" >&2 || { log "gc: make-busybox-base.sh failed"; return 1; }
    fi
    rm -rf "$T"
    mkdir -p "$T/ctx"
    {
        echo "FROM busybox"
        for i in $(seq 1 "$n"); do echo "RUN head -c $((mb * 1000000)) /dev/urandom > /f$i"; done
    } >"$T/ctx/Dockerfile"
    "$RBUILD" image load --cache-dir "$T/cache" "$oci" >/dev/null || return 1
    log "gc: filling a cache with $n x $mb MB step records (untimed) ..."
    "$RBUILD" build --cache-dir "$T/cache" --pull=never --progress=plain --max-used-space 1TB \
        "$T/ctx" >"$T/fill.log" 2>&1 || { log "gc: the filling build failed (${T#"$ROOT"/}/fill.log)"; return 1; }
    local before after
    before=$(du -sb "$T/cache" | cut -f1)
    timed res -- "$RBUILD" prune --cache-dir "$T/cache" --force --max-used-space 1GB >"$T/prune.log" 2>&1
    after=$(du -sb "$T/cache" | cut -f1)
    local wall=${res%% *}
    echo "## gc: a $(bytes_to_mb "$before") MB cache collected to 1 GB"
    echo
    echo "| measurement | value | target |"
    echo "|---|---:|---|"
    echo "| \`rbuild prune --max-used-space 1GB\`, wall | ${wall} s | <= 5 s: $(le "$wall" 5 && echo met || echo NOT met) |"
    echo "| cache before (du -sb) | $(bytes_to_mb "$before") MB | |"
    echo "| cache after (du -sb) | $(bytes_to_mb "$after") MB | <= 1073.7 MB: $(le "$after" 1073741824 && echo met || echo NOT met) |"
    echo "| records removed | $(grep -c '^[0-9a-f]\{6\}' "$T/prune.log" || true) | |"
    echo
    rm -rf "$T"
}

setup_run_user() {
    local dir=$1
    if [ "$(id -u)" != 0 ]; then
        RUN_AS=(env -C "$dir")
        RUN_WHO="$(id -un) (uid $(id -u), the calling user; sub-uids: $(grep "^$(id -un):" /etc/subuid 2>/dev/null | cut -d: -f2,3 | paste -sd' ' || true))"
        return 0
    fi
    local u=${RUN_USER:-rbuild-tester}
    ensure_cmd newuidmap uidmap || log "run: no newuidmap: only $u's own id can be mapped"
    ensure_cmd setpriv util-linux || return 1
    if ! id "$u" >/dev/null 2>&1; then
        log "run: creating the user $u"
        useradd -m "$u" || return 1
    fi
    if ! grep -q "^$u:" /etc/subuid || ! grep -q "^$u:" /etc/subgid; then
        log "run: giving $u sub-ids 200000-265535"
        usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$u" || return 1
    fi
    chown "$u:$(id -gn "$u")" "$dir" || return 1
    RUN_AS=(setpriv --reuid="$u" --regid="$u" --init-groups --reset-env env -C "$dir")
    RUN_WHO="$u (uid $(id -u "$u"), sub-uids $(grep "^$u:" /etc/subuid | cut -d: -f2,3 | paste -sd' '))"
}

# check_run_output FILE: an OCI archive whose last layer has /big and /text of 100 MiB each.
check_run_output() {
    /usr/bin/python3 - "$1" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    members = {m.name.removeprefix("./"): m for m in t.getmembers()}
    blob = lambda d: t.extractfile(members["blobs/" + d.replace(":", "/")])
    desc = json.load(t.extractfile(members["index.json"]))["manifests"][0]
    manifest = json.load(blob(desc["digest"]))
    sizes = {}
    with tarfile.open(fileobj=blob(manifest["layers"][-1]["digest"]), mode="r|*") as lt:
        for e in lt:
            sizes[e.name.removeprefix("./").lstrip("/")] = e.size
ok = sizes.get("big") == sizes.get("text") == 104857600
print(f"{len(manifest['layers'])} layers, last: /big {sizes.get('big')} B, /text {sizes.get('text')} B"
      + ("" if ok else ": MISMATCH"))
sys.exit(0 if ok else 1)
PY
}

# step_ms BASE STEPS OUT N: OUT (by name) = per run, (wall of STEPS - wall of BASE) / N in ms.
step_ms() {
    local -n _b=$1 _s=$2 _o=$3
    local n=$4 i
    _o=()
    for i in "${!_s[@]}"; do
        if [ "${_s[$i]}" = FAIL ] || [ "${_b[$i]:-FAIL}" = FAIL ]; then continue; fi
        _o+=("$(awk -v s="${_s[$i]%% *}" -v b="${_b[$i]%% *}" -v n="$n" 'BEGIN { printf "%.1f", (s - b) * 1000 / n }')")
    done
}

# bh_fail LOG: why buildah failed, from its log (the last non-empty line).
bh_fail() { grep -v '^[[:space:]]*$' "$1" | tail -n 1 | cut -c1-200 | tr '|' '/'; }

bench_run() {
    local B=$WORK/run n=${RUN_STEPS:-20} rootfs=$ROOT/testdata/generated/busybox/rootfs.tar
    # RUN_SNAPSHOTTER=copy measures the copy snapshotter (default walk).
    local SNAPSHOTTER=${RUN_SNAPSHOTTER:-walk}
    mkdir -p "$B/logs" || return 1
    if [ ! -f "$rootfs" ]; then
        log "run: no $rootfs: building the busybox base (scripts/make-busybox-base.sh)"
        RBUILD=$RBUILD "$HERE/make-busybox-base.sh" >&2 || { log "run: make-busybox-base.sh failed"; return 1; }
    fi
    local T i
    T=$(mktemp -d /tmp/rbuild-bench-run.XXXXXX) || return 1
    RUN_TMP=$T
    chmod 0755 "$T"
    local -a RUN_AS=()
    local RUN_WHO
    setup_run_user "$T" || { log "run: cannot set up the user to run as"; return 1; }
    mkdir -p "$T/context" && cp "$rootfs" "$T/context/rootfs.tar" && cp "$RBUILD" "$T/rbuild" || return 1
    {
        echo "# run (i): the base, no RUN step"
        echo "FROM scratch"
        echo "ADD rootfs.tar /"
    } >"$T/Dockerfile.base"
    {
        cat "$T/Dockerfile.base"
        for i in $(seq 1 "$n"); do echo "RUN true # $i"; done
    } >"$T/Dockerfile.steps"
    {
        echo "# probe: the signal dispositions a RUN step starts with"
        echo "FROM scratch"
        echo "ADD rootfs.tar /"
        echo "RUN grep '^SigIgn' /proc/self/status"
    } >"$T/Dockerfile.probe"
    if [ "$(id -u)" = 0 ]; then chown -R --reference="$T" "$T" || return 1; fi
    # `yes | head` ends only by SIGPIPE (busybox yes ignores write errors): if RUN steps
    # start with SIGPIPE ignored, it never ends, so (ii) feeds head from a fifo instead
    # (the same bytes) and says why.
    local sigign sigpipe_note='' text_cmd='yes rbuild | head -c 104857600 > /text'
    timeout 60 "${RUN_AS[@]}" "$T/rbuild" build --snapshotter "$SNAPSHOTTER" --cache-dir "$T/cache" --progress plain \
        -f "$T/Dockerfile.probe" "$T/context" >"$B/logs/rbuild-probe.log" 2>&1 || log "run: the SigIgn probe failed"
    sigign=$(sed -n 's/.*SigIgn:[[:space:]]*\([0-9a-f]*\).*/\1/p' "$B/logs/rbuild-probe.log" | head -n 1)
    wipe "$T/cache"
    if [ -n "$sigign" ] && (( (16#$sigign >> 12) & 1 )); then
        log "run: rbuild BUG: RUN steps start with SIGPIPE ignored (SigIgn $sigign): \`yes | head\` would never end"
        sigpipe_note="rbuild BUG: a RUN step starts with SIGPIPE ignored (\`grep SigIgn /proc/self/status\` in a step: $sigign), so \`yes rbuild | head -c 104857600\` never ends (busybox yes loops on EPIPE); (ii) writes the same /text through a fifo and kills yes instead, for both tools."
        text_cmd='mkfifo /tmp/yes.fifo && { yes rbuild > /tmp/yes.fifo & head -c 104857600 < /tmp/yes.fifo > /text; kill $!; rm /tmp/yes.fifo; }'
    fi
    {
        echo "# run (ii): one step writing 200 MB"
        echo "FROM scratch"
        echo "ADD rootfs.tar /"
        echo "RUN dd if=/dev/urandom of=/big bs=1M count=100 && $text_cmd"
    } >"$T/Dockerfile.big"
    if [ "$(id -u)" = 0 ]; then chown -R --reference="$T" "$T" || return 1; fi
    cp "$T"/Dockerfile.* "$B/"

    # buildah, when it can run here
    local nab='' bv=''
    if ensure_cmd buildah buildah; then
        bv=$(buildah --version | awk '{ print $3 }')
    else
        nab="buildah is not installed (apt-get install -y buildah failed, or not root)"
    fi
    local -a BH=(buildah --root "$T/buildah/root" --runroot "$T/buildah/run" --storage-driver vfs)

    local -a rbb=() rbs=() bhb=() bhs=() rbg=() bhg=()
    local res failed=0 note_rb='' note_bh=''
    log "run: as $RUN_WHO, in $T"
    for i in $(seq 1 "$REPS"); do
        log "run: (i) rbuild run $i/$REPS"
        wipe "$T/cache"
        timed res -- "${RUN_AS[@]}" "$T/rbuild" build --snapshotter "$SNAPSHOTTER" --cache-dir "$T/cache" --progress plain \
            -f "$T/Dockerfile.base" "$T/context" >"$B/logs/rbuild-base-$i.log" 2>&1
        rbb+=("$res")
        wipe "$T/cache"
        timed res -- "${RUN_AS[@]}" "$T/rbuild" build --snapshotter "$SNAPSHOTTER" --cache-dir "$T/cache" --progress plain \
            -f "$T/Dockerfile.steps" "$T/context" >"$B/logs/rbuild-steps-$i.log" 2>&1
        rbs+=("$res")
        if [ "${rbb[-1]}" = FAIL ] || [ "$res" = FAIL ]; then
            log "run: (i) rbuild run $i failed (${B#"$ROOT"/}/logs/rbuild-{base,steps}-$i.log):"
            tail -n 5 "$B/logs/rbuild-base-$i.log" "$B/logs/rbuild-steps-$i.log" >&2
            failed=1
        fi
        [ -z "$nab" ] || continue
        log "run: (i) buildah run $i/$REPS"
        wipe "$T/buildah"
        timed res -- "${RUN_AS[@]}" "${BH[@]}" bud --isolation chroot -f "$T/Dockerfile.base" "$T/context" \
            >"$B/logs/buildah-base-$i.log" 2>&1
        bhb+=("$res")
        wipe "$T/buildah"
        timed res -- "${RUN_AS[@]}" "${BH[@]}" bud --isolation chroot -f "$T/Dockerfile.steps" "$T/context" \
            >"$B/logs/buildah-steps-$i.log" 2>&1
        bhs+=("$res")
        if [ "${bhb[-1]}" = FAIL ] || [ "$res" = FAIL ]; then
            log "run: (i) buildah run $i failed (${B#"$ROOT"/}/logs/buildah-{base,steps}-$i.log)"
            if [ "$i" = 1 ]; then
                if [ "${bhb[-1]}" = FAIL ]; then
                    nab="buildah fails here: $(bh_fail "$B/logs/buildah-base-$i.log")"
                else
                    nab="buildah fails here: $(bh_fail "$B/logs/buildah-steps-$i.log")"
                fi
            fi
        fi
    done
    wipe "$T/buildah"
    local nab2=$nab tmo=${RUN_TIMEOUT:-600}
    for i in $(seq 1 "$REPS"); do
        log "run: (ii) rbuild run $i/$REPS"
        wipe "$T/cache"
        rm -f "$T/out-rbuild.tar"
        timed res -- timeout -k 10 "$tmo" "${RUN_AS[@]}" "$T/rbuild" build --snapshotter "$SNAPSHOTTER" --cache-dir "$T/cache" --progress plain \
            -f "$T/Dockerfile.big" -o "type=oci,dest=$T/out-rbuild.tar" "$T/context" >"$B/logs/rbuild-big-$i.log" 2>&1
        if [ "$res" = FAIL ]; then
            log "run: (ii) rbuild run $i failed (${B#"$ROOT"/}/logs/rbuild-big-$i.log):"
            tail -n 5 "$B/logs/rbuild-big-$i.log" >&2
            failed=1
        elif [ -z "$note_rb" ]; then
            note_rb=$(check_run_output "$T/out-rbuild.tar") || { log "run: bad rbuild output: $note_rb"; failed=1; res=FAIL; }
        fi
        rbg+=("$res")
        [ -z "$nab2" ] || continue
        log "run: (ii) buildah run $i/$REPS"
        wipe "$T/buildah"
        rm -f "$T/out-buildah.tar"
        # shellcheck disable=SC2016  # expanded by the inner bash
        timed res -- timeout -k 10 "$tmo" "${RUN_AS[@]}" bash -c '"${@:4}" bud --isolation chroot -t bench-big -f "$1" "$2" &&
            "${@:4}" push bench-big "oci-archive:$3:bench-big"' _ \
            "$T/Dockerfile.big" "$T/context" "$T/out-buildah.tar" "${BH[@]}" >"$B/logs/buildah-big-$i.log" 2>&1
        if [ "$res" = FAIL ]; then
            log "run: (ii) buildah run $i failed (${B#"$ROOT"/}/logs/buildah-big-$i.log)"
            if [ "$i" = 1 ]; then nab2="buildah fails here: $(bh_fail "$B/logs/buildah-big-$i.log")"; fi
        elif [ -z "$note_bh" ]; then
            note_bh=$(check_run_output "$T/out-buildah.tar") || log "run: odd buildah output: $note_bh"
        fi
        bhg+=("$res")
    done
    wipe "$T/buildah"
    local sa sb
    sa=$(file_mb "$T/out-rbuild.tar") sb=$(file_mb "$T/out-buildah.tar")
    if [ -n "$nab" ]; then bhb=() bhs=(); fi
    if [ -n "$nab2" ]; then bhg=(); fi

    # (i)
    local -a msr=() msb=() w1=() m1=() c1=() w2=() m2=() c2=() w3=() m3=() c3=() w4=() m4=() c4=()
    local f1 f2 f3 f4
    step_ms rbb rbs msr "$n"
    step_ms bhb bhs msb "$n"
    split_results rbb w1 m1 c1 f1
    split_results rbs w2 m2 c2 f2
    split_results bhb w3 m3 c3 f3
    split_results bhs w4 m4 c4 f4
    local mr mb met=no na=
    mr=$(median "${msr[@]}") mb=$(median "${msb[@]}")
    le "$mr" 30 && met=yes
    [ ${#msr[@]} -gt 0 ] || met="no (rbuild failed)"
    [ -z "$nab" ] || na=n/a
    echo "### run (i): per-step cost of \`RUN true\` ($n steps) on the busybox base, rootless, no output, rbuild --snapshotter=$SNAPSHOTTER; $REPS runs, cold cache"
    echo
    echo "| | rbuild | buildah bud | ratio | target | met |"
    echo "|---|---:|---:|---:|---|---|"
    echo "| ms per RUN step, median | $mr | ${na:-$mb} | $(ratio "$mr" "$mb")x | <= 30 ms | $met |"
    echo "| wall s, FROM scratch + ADD rootfs.tar, median | $(median "${w1[@]}") | ${na:-$(median "${w3[@]}")} | $(ratio "$(median "${w1[@]}")" "$(median "${w3[@]}")")x | | |"
    echo "| wall s, + $n x \`RUN true\`, median | $(median "${w2[@]}") | ${na:-$(median "${w4[@]}")} | $(ratio "$(median "${w2[@]}")" "$(median "${w4[@]}")")x | | |"
    echo "| peak RSS MiB, base / + $n RUN, median | $(median "${m1[@]}") / $(median "${m2[@]}") | ${na:-$(median "${m3[@]}") / $(median "${m4[@]}")} | | | |"
    echo "| CPU s (user+sys), base / + $n RUN, median | $(median "${c1[@]}") / $(median "${c2[@]}") | ${na:-$(median "${c3[@]}") / $(median "${c4[@]}")} | | | |"
    echo "| ms per step, all runs | ${msr[*]:--} | ${na:-${msb[*]:--}} | | | |"
    echo "| wall s, base, all runs | $(all_runs "${w1[@]}" "$f1") | ${na:-$(all_runs "${w3[@]}" "$f3")} | | | |"
    echo "| wall s, + $n RUN, all runs | $(all_runs "${w2[@]}" "$f2") | ${na:-$(all_runs "${w4[@]}" "$f4")} | | | |"
    echo
    echo "ms per step = (wall of the $n-RUN build - wall of the base build) / $n, run by run. rbuild: no -o"
    echo "(the result stays in its store). buildah ${bv:-n/a}: \`buildah bud --isolation chroot --storage-driver vfs\`"
    echo "(default --layers=false), which commits the image to its store."
    if [ -n "$nab" ]; then echo "buildah: n/a: $nab"; fi
    echo
    # (ii)
    table "run (ii): one RUN writing 200 MB (100 MB urandom + 100 MB text) on the busybox base, rootless, to an OCI archive, rbuild --snapshotter=$SNAPSHOTTER; $REPS runs, cold cache" \
        "rbuild \`-o type=oci\`" "buildah bud + push \`oci-archive:\`" rbg bhg "$sa" "$sb" 0.7 "" "output MB" "$nab2"
    echo "Run as $RUN_WHO, in a directory it owns under /tmp; rbuild isolation:"
    echo "$("${RUN_AS[@]}" "$T/rbuild" info 2>/dev/null | sed -n 's/^isolation: *//p' | head -n 1) (\`rbuild info\`)."
    echo "rbuild output check: ${note_rb:-not checked}. buildah output check: ${note_bh:-n/a}."
    echo "Each (ii) build is limited to ${tmo}s (RUN_TIMEOUT); the Dockerfile is ${B#"$ROOT"/}/Dockerfile.big."
    if [ -n "$sigpipe_note" ]; then echo; echo "$sigpipe_note"; fi
    echo
    rm -rf "$T"
    RUN_TMP=
    return "$failed"
}

# --- main ------------------------------------------------------------------------------------

list=0
sel=()
for a in "$@"; do
    case $a in
    --list) list=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) echo "bench.sh: unknown option $a (usage: $0 [--list] [BENCH...])" >&2; exit 2 ;;
    *) sel+=("${a//_/-}") ;;
    esac
done
if [ $list = 1 ]; then printf '%s\n' "${BENCHES[@]}"; exit 0; fi
[ ${#sel[@]} -gt 0 ] || sel=("${BENCHES[@]}")
for b in "${sel[@]}"; do
    declare -F "bench_${b//-/_}" >/dev/null || { echo "bench.sh: unknown benchmark $b (have: ${BENCHES[*]})" >&2; exit 2; }
done
[ -x "$TIME" ] || { echo "bench.sh: needs GNU time: apt-get install -y time" >&2; exit 2; }
[ -x /usr/bin/python3 ] || { echo "bench.sh: needs python3: apt-get install -y python3" >&2; exit 2; }
[ -x "$RBUILD" ] || die "$RBUILD not found: run \`make build\` (or set RBUILD)"
mkdir -p "$WORK"

# run_bench NAME: one benchmark, its section headed by when it ran.
run_bench() {
    echo "_$1: measured $(date -u '+%Y-%m-%d %H:%M UTC'), load average at start $(cut -d' ' -f1-3 /proc/loadavg)_"
    echo
    "bench_${1//-/_}"
}
# the registry and temp dirs go however the script ends
trap cleanup EXIT
trap 'exit 130' INT TERM
rc=0
mkdir -p "$WORK/sections"
machine_info >"$WORK/machine.md.tmp"
cat "$WORK/machine.md.tmp"
for b in "${sel[@]}"; do
    # (errexit does not reach into run_bench here: every step checks what it needs)
    exec {out}> >(tee "$WORK/sections/$b.md.tmp")
    tee_pid=$!
    run_bench "$b" >&"$out" || rc=1
    exec {out}>&-
    wait "$tee_pid" || true
    mv "$WORK/sections/$b.md.tmp" "$WORK/sections/$b.md"
done
{
    echo "# rbuild benchmarks"
    echo
    cat "$WORK/machine.md.tmp"
    for b in "${BENCHES[@]}"; do
        if [ -f "$WORK/sections/$b.md" ]; then cat "$WORK/sections/$b.md"; fi
    done
} >"$WORK/results.md.tmp"
rm -f "$WORK/machine.md.tmp"
mv "$WORK/results.md.tmp" "$WORK/results.md"
log "results in ${WORK#"$ROOT"/}/results.md (this run: ${sel[*]}; other sections from earlier runs)"
exit $rc
