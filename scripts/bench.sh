#!/usr/bin/env bash
# Layer index benchmarks (issue 4): how fast the one pass over a layer runs against the
# conventional `gzip -dc | tar -t`, how big the index is, and how fast a cached index loads.
#
# Builds two gzip -6 layers from this machine (a sample of /usr/lib and /usr/share of about
# 150-200 MB, and a layer of 100,000 small text files), pushes each as a one-layer image to a local docker-registry,
# and times, interleaved, RUNS times each (median reported):
#   - `lazypull index` with a fresh empty cache: loopback HTTP download, sha256 of the blob and
#     of the tar, inflate with seek points, tar headers, blob kept (fsynced) and index written;
#   - `lazypull index` with the blob already in the cache (no blob download, nothing kept);
#   - the baseline `gzip -dc LAYER | tar -t >/dev/null` on the same layer file.
# Then index sizes at three spans, and the load time of each persisted index.
#
# Runs as root on Debian 12 and installs what it needs. RUNS=N (default 5) sets the repeats;
# KEEP_WORK=1 keeps the work directory (layers, registry storage, caches) for profiling.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${RUNS:-5}

# step MESSAGE: a progress line with the seconds since the start.
step() { echo "$1 [${SECONDS}s]"; }
usr_target=$((200 * 1000 * 1000))

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_packages docker-registry curl gcc libc6-dev
export PATH="$HOME/.cargo/bin:$PATH"

step "== building (release)"
cargo build --release --quiet --bin lazypull --example index_load
lazypull="$PWD/target/release/lazypull"
index_load="$PWD/target/release/examples/index_load"

work=$(mktemp -d "${TMPDIR:-/tmp}/lazypull-bench.XXXXXX")
registry_pid=""
cleanup() {
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# --- layers -------------------------------------------------------------------------------

# Writes $1.tar.gz (gzip -6) from the tar $1.tar and records its digests.
compress_layer() {
    local name=$1
    sha256sum "$work/$name.tar" | awk '{print "sha256:" $1}' >"$work/$name.diff_id"
    tar -tf "$work/$name.tar" | wc -l >"$work/$name.entries"
    stat -c %s "$work/$name.tar" >"$work/$name.tar_size"
    gzip -6 -n "$work/$name.tar"
    sha256sum "$work/$name.tar.gz" | awk '{print "sha256:" $1}' >"$work/$name.digest"
    stat -c %s "$work/$name.tar.gz" >"$work/$name.size"
}

step "== layer 'usr': every k-th file of /usr/lib and /usr/share (k for about 200 MB), gzip -6"
# Every k-th file in path order samples both trees evenly (binaries, libraries, text, locales);
# each file's parent directories come before it, as in a real layer.
(cd / && find usr/lib usr/share -xdev \( -type f -o -type l \) -printf '%s\t%p\n') |
    LC_ALL=C sort -t "$(printf '\t')" -k2 >"$work/usr.all"
# %.0f, not %d: mawk's %d stops at 2^31.
total=$(awk -F'\t' '{ s += $1 } END { printf "%.0f", s }' "$work/usr.all")
awk -F'\t' -v k=$((total / usr_target + 1)) '
    NR % k == 0 {
        n = split($2, part, "/"); d = part[1]
        for (i = 2; i < n; i++) { d = d "/" part[i]; if (!(d in seen)) { seen[d] = 1; print d } }
        print $2
    }' "$work/usr.all" >"$work/usr.list"
tar --no-recursion --verbatim-files-from -C / -cf "$work/usr.tar" -T "$work/usr.list"
compress_layer usr

step "== layer 'small': 100,000 entries (400 directories, 99,600 text files of 0-16 KiB), gzip -6"
# File contents are pieces of text files of this machine (licenses, docs, scripts, sources),
# so they compress like real text. Sizes are skewed like a source tree's: 16 KiB times
# the cube of a uniform variable (median 2 KiB, mean 4 KiB).
find /usr/share/doc /usr/share/common-licenses /usr/share/perl* /usr/lib/python3* -xdev -type f \
    -size -64k \( -name copyright -o -name '*.txt' -o -name '*.pm' -o -name '*.py' -o -name '*.sh' \) \
    -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 cat 2>/dev/null | tr -d '\001' |
    head -c $((16 << 20)) >"$work/corpus" || true
# The corpus is read as one record (it holds no \001), and each file is one substring of it.
mkdir "$work/small"
awk -v root="$work/small" 'BEGIN { RS = "\001" } NR == 1 { text = $0 } END {
    n = length(text)
    if (n < 65536) { print "too little text for the corpus" > "/dev/stderr"; exit 1 }
    for (d = 0; d < 400; d++) {
        dir = sprintf("%s/pkg%03d", root, d)
        system("mkdir " dir)
        for (f = 0; f < 249; f++) {
            i = d * 249 + f
            x = (i * 7919 % 10007) / 10007
            size = int(x * x * x * 16384)
            path = sprintf("%s/file%05d.txt", dir, i)
            printf "%s", substr(text, 1 + (i * 104729) % (n - 16384), size) > path
            close(path)
        }
    }
}' "$work/corpus"
tar --sort=name -C "$work/small" -cf "$work/small.tar" $(cd "$work/small" && ls)
compress_layer small
rm -rf "$work/small"

# --- registry and images ------------------------------------------------------------------

step "== local registry"
start_registry "$work"
addr=$registry_addr
echo "registry at $addr"

# push_blob REPO FILE DIGEST: a monolithic upload through the registry API.
push_blob() {
    local location sep
    location=$(curl -fsS -X POST -D - -o /dev/null "http://$addr/v2/$1/blobs/uploads/" |
        awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')
    case $location in /*) location="http://$addr$location" ;; esac
    case $location in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' -T "$2" \
        "$location${sep}digest=$3" -o /dev/null
}

# push_image NAME: image bench/NAME:1 with the one layer NAME.
push_image() {
    local name=$1 repo="bench/$1"
    local config="$work/$name.config.json" manifest="$work/$name.manifest.json"
    printf '{"architecture":"%s","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "$(dpkg --print-architecture)" "$(cat "$work/$name.diff_id")" >"$config"
    local config_digest
    config_digest=sha256:$(sha256sum "$config" | awk '{print $1}')
    push_blob "$repo" "$work/$name.tar.gz" "$(cat "$work/$name.digest")"
    push_blob "$repo" "$config" "$config_digest"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",%s,%s}' \
        "$(printf '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s}' \
            "$config_digest" "$(stat -c %s "$config")")" \
        "$(printf '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]' \
            "$(cat "$work/$name.digest")" "$(cat "$work/$name.size")")" >"$manifest"
    curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary @"$manifest" "http://$addr/v2/$repo/manifests/1" -o /dev/null
}

for name in usr small; do
    push_image "$name"
done

# --- timing -------------------------------------------------------------------------------

# timed KEY COMMAND...: runs COMMAND (output discarded) and appends "wall user+sys" seconds to
# $work/KEY.times. CPU time counts the command's processes, not the registry's.
timed() {
    local key=$1 t
    shift
    t=$( { TIMEFORMAT='%R %U %S'; time "$@" >/dev/null 2>"$work/last.err"; } 2>&1 ) || {
        cat "$work/last.err" >&2
        return 1
    }
    awk '{ printf "%s %.3f\n", $1, $2 + $3 }' <<<"$t" >>"$work/$key.times"
}

median() { # median of column $2 of file $1
    awk -v c="$2" '{ print $c }' "$1" | sort -g |
        awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

baseline() { gzip -dc "$1" | tar -t >/dev/null; }

index_fresh() { # NAME: a fresh empty cache
    rm -rf "$work/cache-fresh"
    mkdir "$work/cache-fresh"
    timed "$1.fresh" "$lazypull" index --cache-dir "$work/cache-fresh" "$addr/bench/$1:1"
}

index_local() { # NAME: the blob is in the cache, its index is not
    local hex
    hex=$(cut -d: -f2 "$work/$1.digest")
    rm -f "$work/cache-local/index/sha256/$hex"
    timed "$1.local" "$lazypull" index --cache-dir "$work/cache-local" "$addr/bench/$1:1"
}

step "== checking what each command does (and warming the page cache)"
mkdir -p "$work/cache-local/blobs/sha256"
for name in usr small; do
    cp "$work/$name.tar.gz" "$work/cache-local/blobs/sha256/$(cut -d: -f2 "$work/$name.digest")"
    rm -rf "$work/cache-check"
    "$lazypull" index --cache-dir "$work/cache-check" "$addr/bench/$name:1" | tee "$work/check.out"
    grep -q downloaded "$work/check.out"
    "$lazypull" index --cache-dir "$work/cache-local" "$addr/bench/$name:1" | grep -q 'local blob'
    "$lazypull" index --cache-dir "$work/cache-local" "$addr/bench/$name:1" | grep -q 'cached'
    baseline "$work/$name.tar.gz"
done
rm -rf "$work/cache-check"

step "== timing, $runs rounds (each round: every command once, in turn)"
for round in $(seq "$runs"); do
    for name in usr small; do
        index_fresh "$name"
        index_local "$name"
        timed "$name.baseline" baseline "$work/$name.tar.gz"
        timed "$name.cached" "$lazypull" index --cache-dir "$work/cache-local" "$addr/bench/$name:1"
    done
    echo "round $round done [${SECONDS}s]"
done

# --- report -------------------------------------------------------------------------------

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

echo
echo "== machine"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; kernel $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "== layers"
for name in usr small; do
    echo "$name: $(cat "$work/$name.entries") entries, $(mb "$(cat "$work/$name.tar_size")") MB tar," \
        "$(mb "$(cat "$work/$name.size")") MB gzip -6"
done
echo
echo "== index pass: median of $runs runs (wall seconds; CPU = user+sys of our processes)"
printf '%-6s %-40s %7s %7s %8s %8s %8s\n' LAYER COMMAND WALL_S CPU_S "MB/s_IN" "VS_BASE" "CPU_VS"
for name in usr small; do
    size=$(cat "$work/$name.size")
    base=$(median "$work/$name.baseline.times" 1)
    base_cpu=$(median "$work/$name.baseline.times" 2)
    for kind in fresh local baseline cached; do
        case $kind in
            fresh) label="lazypull index, empty cache (download)" ;;
            local) label="lazypull index, blob in cache" ;;
            baseline) label="gzip -dc | tar -t (baseline)" ;;
            cached) label="lazypull index, index cached" ;;
        esac
        wall=$(median "$work/$name.$kind.times" 1)
        cpu=$(median "$work/$name.$kind.times" 2)
        if [ "$kind" = cached ]; then
            printf '%-6s %-40s %7.3f %7.3f %8s %8s %8s\n' "$name" "$label" "$wall" "$cpu" - - -
        else
            printf '%-6s %-40s %7.3f %7.3f %8.1f %7.2fx %7.2fx\n' "$name" "$label" "$wall" "$cpu" \
                "$(awk -v s="$size" -v t="$wall" 'BEGIN { print s / 1e6 / t }')" \
                "$(awk -v b="$base" -v t="$wall" 'BEGIN { print b / t }')" \
                "$(awk -v b="$base_cpu" -v t="$cpu" 'BEGIN { print b / t }')"
        fi
    done
done
echo "(MB/s_IN: compressed MB per wall second; VS_BASE: baseline wall / this wall; CPU_VS: the"
echo " same for CPU time; above 1 is faster than the baseline)"

# field KEY: the value of KEY=VALUE in $out (index_load's output).
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$out"; }

echo
echo "== index size by span (index file / compressed layer) and load time (median of 21 loads)"
printf '%-6s %8s %8s %7s %11s %11s %8s %9s\n' LAYER SPAN ENTRIES POINTS INDEX_B WINDOWS_B "%" LOAD_MS
for name in usr small; do
    digest=$(cat "$work/$name.digest")
    for span in 1048576 4194304 16777216; do
        rm -rf "$work/cache-span"
        mkdir -p "$work/cache-span/blobs/sha256"
        ln "$work/cache-local/blobs/sha256/${digest#sha256:}" "$work/cache-span/blobs/sha256/"
        "$lazypull" index --span "$span" --cache-dir "$work/cache-span" "$addr/bench/$name:1" >/dev/null
        out=$("$index_load" "$work/cache-span" "$digest" 21)
        label="$((span >> 20)) MiB"
        [ "$span" = 4194304 ] && label="$label*"
        printf '%-6s %8s %8s %7s %11s %11s %7.2f%% %9s\n' "$name" "$label" "$(field entries)" \
            "$(field points)" "$(field bytes)" "$(field windows)" \
            "$(awk -v i="$(field bytes)" -v s="$(cat "$work/$name.size")" 'BEGIN { print 100 * i / s }')" \
            "$(field median_ms)"
    done
done
echo "(* the default span; WINDOWS_B: stored 32 KiB windows, most of the rest is tar entries)"
echo
echo "bench took ${SECONDS}s"
