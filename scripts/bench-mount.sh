#!/usr/bin/env bash
# Benchmark of `lazypull mount` against pull-and-unpack (skopeo + umoci) over a
# shaped link: 200 Mbit/s (tbf on a veth pair into a network namespace that
# holds the registry) and 20 ms round trip (scripts/delay-proxy.py on loopback).
#
#   A  skopeo copy + umoci unpack + chroot python3      (the conventional path)
#   A2 skopeo copy + tar -xzf of each layer + chroot     (docker's way of unpacking)
#   B  lazypull mount, empty cache + chroot python3      (first mount)
#   C  lazypull mount, index cached, no blobs + chroot   (lazy path; what
#      `cache prune --blobs` leaves: the indexes and B's prefetch list)
#   C0 as C, with --no-prefetch                          (lazy reads only)
#   C1 as C0, with an index of 4 MiB seek spans          (the default is 1 MiB)
#   D  sequential read of a 1 GiB file and `find -ls` of the Debian tree on a
#      mount whose layers are ready, against the same on local disk
#   E  CPU time of completing the Debian image's layers in the background (index
#      cached, no blobs, nothing read): the daemon's CPU from mount to every layer
#      ready and its files extracted; BASELINE=PATH (another lazypull binary)
#      runs the same in alternation, for a before/after in one run
#
# Runs on a fresh Debian 12 machine as root; installs what it needs. Built
# images are kept in $LAZYPULL_BENCH_DIR (default /var/tmp/lazypull-bench), so
# a rerun skips debootstrap. Environment: RUNS (default 5), D_RUNS (default 9),
# RATE (200mbit), DELAY_MS (one way, default 10). Results are printed and kept
# in $LAZYPULL_BENCH_DIR/results-DATE.md; the daemons' logs of the last run in
# $LAZYPULL_BENCH_DIR/last-logs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${RUNS:-5}
D_RUNS=${D_RUNS:-9} # the reads of D are quick: more runs for steadier medians
RATE=${RATE:-200mbit}
DELAY_MS=${DELAY_MS:-10}
STORE=${LAZYPULL_BENCH_DIR:-/var/tmp/lazypull-bench}
NET=192.168.231 # a /30 on the veth pair we create; never leaves this machine

[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, tc, chroot, drop_caches)" >&2; exit 1; }

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_packages debootstrap skopeo umoci docker-registry iproute2 python3 fuse3 curl jq \
    ca-certificates gcc libc6-dev
export PATH="$HOME/.cargo/bin:$PATH"

log() { echo "== $*" >&2; }
# Microseconds since the epoch, without forking.
now_us() { echo "${EPOCHREALTIME/./}"; }
ms_since() { echo $((($(now_us) - $1) / 1000)); }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

log "building lazypull"
cargo build --release --quiet
lazypull="${CARGO_TARGET_DIR:-$PWD/target}/release/lazypull"

mkdir -p "$STORE"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# --- images (built once, kept as OCI layouts) ---------------------------------

build_debian() {
    local tmp
    tmp=$(mktemp -d "$STORE/build.XXXXXX")
    log "building the Debian bookworm + python3 image (debootstrap, ~1 min)"
    umoci init --layout "$tmp/layout"
    umoci new --image "$tmp/layout:py"
    umoci unpack --image "$tmp/layout:py" "$tmp/bundle" >/dev/null
    debootstrap --variant=minbase --include=python3 bookworm "$tmp/bundle/rootfs" \
        http://deb.debian.org/debian >"$tmp/debootstrap.log" 2>&1 ||
        { tail -20 "$tmp/debootstrap.log"; exit 1; }
    # As published images are: no package archives or lists.
    rm -rf "$tmp/bundle/rootfs/var/cache/apt/archives/"*.deb "$tmp/bundle/rootfs/var/lib/apt/lists/"*
    umoci repack --refresh-bundle --image "$tmp/layout:py" "$tmp/bundle"
    # A small application layer on top, as most images have.
    mkdir -p "$tmp/bundle/rootfs/app"
    printf 'import json\nprint(json.dumps({"hello": "world"}))\n' >"$tmp/bundle/rootfs/app/hello.py"
    umoci repack --image "$tmp/layout:py" "$tmp/bundle"
    umoci config --image "$tmp/layout:py" --config.cmd python3 --config.cmd /app/hello.py
    umoci gc --layout "$tmp/layout"
    mv "$tmp/layout" "$STORE/debian-py"
    rm -rf "$tmp"
}

build_big() {
    local tmp
    tmp=$(mktemp -d "$STORE/build.XXXXXX")
    log "building the image with one 1 GiB file (half random, half zeros: gzip halves it)"
    python3 - "$STORE/big.bin.tmp" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    for _ in range(1024):
        f.write(os.urandom(512 << 10))
        f.write(bytes(512 << 10))
PY
    mv "$STORE/big.bin.tmp" "$STORE/big.bin"
    umoci init --layout "$tmp/layout"
    umoci new --image "$tmp/layout:big"
    umoci unpack --image "$tmp/layout:big" "$tmp/bundle" >/dev/null
    ln "$STORE/big.bin" "$tmp/bundle/rootfs/big"
    umoci repack --image "$tmp/layout:big" "$tmp/bundle"
    mv "$tmp/layout" "$STORE/big"
    rm -rf "$tmp"
}

[ -f "$STORE/debian-py/index.json" ] || build_debian
[ -f "$STORE/big/index.json" ] && [ -f "$STORE/big.bin" ] || build_big

# --- network: registry in a namespace behind tbf, delay proxy on loopback ------

work=$(mktemp -d "$STORE/run.XXXXXX")
ns=lpbench$$
veth_host=lpb$$h
veth_ns=lpb$$n
registry_pid=""
proxy_pid=""
cleanup() {
    set +e
    for m in "$work"/mnt*; do
        mountpoint -q "$m" 2>/dev/null && { "$lazypull" umount "$m" || umount -l "$m"; }
    done
    [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    ip link del "$veth_host" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

ip route show | grep -q "^$NET\." && { echo "$NET.0/30 is in use here; set NET" >&2; exit 1; }
log "network namespace $ns, veth $veth_host <-> $veth_ns, tbf $RATE each way, ${DELAY_MS} ms each way in the proxy"
ip netns add "$ns"
ip link add "$veth_host" type veth peer name "$veth_ns"
ip link set "$veth_ns" netns "$ns"
ip addr add "$NET.1/30" dev "$veth_host"
ip link set "$veth_host" up
ip -n "$ns" addr add "$NET.2/30" dev "$veth_ns"
ip -n "$ns" link set "$veth_ns" up
ip -n "$ns" link set lo up
tc qdisc add dev "$veth_host" root tbf rate "$RATE" burst 256kb latency 50ms
tc -n "$ns" qdisc add dev "$veth_ns" root tbf rate "$RATE" burst 256kb latency 50ms

cat >"$work/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 0.0.0.0:5000
log:
  level: warn
YML
ip netns exec "$ns" docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
    ip netns exec "$ns" curl -sf -o /dev/null http://127.0.0.1:5000/v2/ && break
    sleep 0.1
done

log "pushing the images (inside the namespace, unshaped)"
ip netns exec "$ns" skopeo copy --quiet --dest-tls-verify=false \
    "oci:$STORE/debian-py:py" docker://127.0.0.1:5000/bench/debian-py:1
ip netns exec "$ns" skopeo copy --quiet --dest-tls-verify=false \
    "oci:$STORE/big:big" docker://127.0.0.1:5000/bench/big:1

python3 scripts/delay-proxy.py 127.0.0.1 "$NET.2" 5000 "$DELAY_MS" "$work/proxy.stats" >"$work/proxy.port" &
proxy_pid=$!
for _ in $(seq 50); do [ -s "$work/proxy.port" ] && break; sleep 0.1; done
reg=127.0.0.1:$(cat "$work/proxy.port")
debian=$reg/bench/debian-py:1
big=$reg/bench/big:1
# Bytes the proxy has sent to clients so far: all, and those answering Range requests.
proxy_stats() {
    rm -f "$work/proxy.stats"
    kill -USR1 "$proxy_pid"
    for _ in $(seq 100); do [ -s "$work/proxy.stats" ] && break; sleep 0.01; done
    awk '{print $1, $4}' "$work/proxy.stats"
}

# --- the link, checked --------------------------------------------------------

log "checking the link"
tiny=() tiny_reuse=()
for _ in 1 2 3 4 5; do
    tiny+=("$(curl -s -o /dev/null -w '%{time_total}' "http://$reg/v2/")")
    tiny_reuse+=("$(curl -s -o /dev/null -o /dev/null -w '%{time_total}\n' "http://$reg/v2/" "http://$reg/v2/" | tail -1)")
done
big_layer=$(jq -r '.manifests[0].digest' "$STORE/big/index.json")
big_layer=$(jq -r '.layers[0].digest' "$STORE/big/blobs/sha256/${big_layer#sha256:}")
hundred=$(curl -s -o /dev/null -r 0-99999999 -w '%{time_total} %{size_download}' \
    "http://$reg/v2/bench/big/blobs/$big_layer")
[ "${hundred#* }" = 100000000 ] || { echo "range GET returned ${hundred#* } bytes" >&2; exit 1; }
link_tiny=$(median "${tiny[@]}")
link_tiny_reuse=$(median "${tiny_reuse[@]}")
link_100=${hundred% *}
log "tiny GET: ${link_tiny}s on a new connection, ${link_tiny_reuse}s on a kept one; 100 MB GET: ${link_100}s"

# --- A, B, C in alternation ---------------------------------------------------

mkdir -p "$work/mnt"
# The daemons' logs of the last run (RUST_LOG=lazypull=debug for more).
rm -rf "$STORE/last-logs"
mkdir -p "$STORE/last-logs"
pyprog='import json; print(1)'
sum_fetched() { "$lazypull" status --json "$1" | jq '[.layers[].bytes_fetched] | add'; }
daemon_hwm_kib() {
    local pid
    pid=$("$lazypull" status --json "$1" | jq .pid)
    awk '/^VmHWM/ {print $2}' "/proc/$pid/status"
}

A=() Acopy=() Aunpack=() T=() Tunpack=() B=() Bmount=() C=() Cmount=() Cbytes=() Cproxy=() Cranged=()
Brss=() Crss=() C0=() C0ranged=() C1=() C1ranged=()
log "an index with 4 MiB seek spans for C1"
"$lazypull" index --span 4194304 --cache-dir "$work/cache-span4m" "$debian" >/dev/null
for i in $(seq "$RUNS"); do
    log "round $i/$RUNS"
    # Nothing big is deleted before the end: ext4 here skips inodes freed in
    # the last seconds when it allocates, and creating files right after
    # deleting thousands gets several times slower (see BENCHMARKS.md, Mount).
    # A: pull (fresh layout, no skopeo blob cache), unpack, run.
    rm -rf /var/lib/containers/cache
    a=$work/a$i
    mkdir "$a"
    sync
    t0=$(now_us)
    skopeo copy --quiet --src-tls-verify=false "docker://$debian" "oci:$a/layout:py"
    Acopy+=("$(ms_since "$t0")")
    t1=$(now_us)
    umoci unpack --image "$a/layout:py" "$a/bundle" >/dev/null 2>>"$work/umoci.log"
    Aunpack+=("$(ms_since "$t1")")
    out=$(chroot "$a/bundle/rootfs" python3 -c "$pyprog")
    A+=("$(ms_since "$t0")")
    [ "$out" = 1 ]

    # A2: the same pull, then the layers extracted with tar in order, as docker
    # does (umoci also writes an mtree manifest with a hash of every file).
    # Right for this image only: it has no whiteouts.
    rm -rf /var/lib/containers/cache
    t=$work/t$i
    mkdir -p "$t/root"
    sync
    t0=$(now_us)
    skopeo copy --quiet --src-tls-verify=false "docker://$debian" "oci:$t/layout:py"
    t1=$(now_us)
    manifest=$(jq -r '.manifests[0].digest' "$t/layout/index.json")
    for layer in $(jq -r '.layers[].digest' "$t/layout/blobs/sha256/${manifest#sha256:}"); do
        tar -xzf "$t/layout/blobs/sha256/${layer#sha256:}" -C "$t/root" --numeric-owner
    done
    Tunpack+=("$(ms_since "$t1")")
    out=$(chroot "$t/root" python3 -c "$pyprog")
    T+=("$(ms_since "$t0")")
    [ "$out" = 1 ]

    # B: first mount, empty cache.
    cache=$work/cache-b$i
    sync
    t0=$(now_us)
    "$lazypull" mount --cache-dir "$cache" "$debian" "$work/mnt" >/dev/null
    Bmount+=("$(ms_since "$t0")")
    out=$(chroot "$work/mnt" python3 -c "$pyprog")
    B+=("$(ms_since "$t0")")
    [ "$out" = 1 ]
    Brss+=("$(daemon_hwm_kib "$work/mnt")")
    "$lazypull" umount "$work/mnt"

    # C: index cached, no blobs: what `cache prune --blobs` leaves of B's
    # cache (its indexes and the prefetch list B's mount recorded), made by
    # copying them rather than deleting B's files.
    cache=$work/cache-c$i
    mkdir "$cache"
    cp -a "$work/cache-b$i/index" "$work/cache-b$i/traces" "$cache/"
    sync
    read -r down0 ranged0 < <(proxy_stats)
    t0=$(now_us)
    "$lazypull" mount --cache-dir "$cache" "$debian" "$work/mnt" >/dev/null
    Cmount+=("$(ms_since "$t0")")
    out=$(chroot "$work/mnt" python3 -c "$pyprog")
    C+=("$(ms_since "$t0")")
    Cbytes+=("$(sum_fetched "$work/mnt")")
    read -r down1 ranged1 < <(proxy_stats)
    Cproxy+=("$((down1 - down0))")
    Cranged+=("$((ranged1 - ranged0))")
    [ "$out" = 1 ]
    Crss+=("$(daemon_hwm_kib "$work/mnt")")
    "$lazypull" umount "$work/mnt"
    cp "$work/cache-b$i"/logs/* "$cache"/logs/* "$STORE/last-logs/"
    # C0: as C, without the prefetch list.
    cache=$work/cache-n$i
    mkdir "$cache"
    cp -a "$work/cache-b$i/index" "$cache/"
    sync
    read -r down0 ranged0 < <(proxy_stats)
    t0=$(now_us)
    "$lazypull" mount --no-prefetch --cache-dir "$cache" "$debian" "$work/mnt" >/dev/null
    out=$(chroot "$work/mnt" python3 -c "$pyprog")
    C0+=("$(ms_since "$t0")")
    read -r down1 ranged1 < <(proxy_stats)
    C0ranged+=("$((ranged1 - ranged0))")
    [ "$out" = 1 ]
    "$lazypull" umount "$work/mnt"
    # C1: as C0, with an index built with seek points every 4 MiB instead of 1.
    cache=$work/cache-s$i
    mkdir "$cache"
    cp -a "$work/cache-span4m/index" "$cache/"
    sync
    read -r down0 ranged0 < <(proxy_stats)
    t0=$(now_us)
    "$lazypull" mount --no-prefetch --cache-dir "$cache" "$debian" "$work/mnt" >/dev/null
    out=$(chroot "$work/mnt" python3 -c "$pyprog")
    C1+=("$(ms_since "$t0")")
    read -r down1 ranged1 < <(proxy_stats)
    C1ranged+=("$((ranged1 - ranged0))")
    [ "$out" = 1 ]
    "$lazypull" umount "$work/mnt"

    log "A ${A[-1]} ms (copy ${Acopy[-1]}, unpack ${Aunpack[-1]}), A2 ${T[-1]} ms (tar ${Tunpack[-1]}), B ${B[-1]} ms (mount ${Bmount[-1]}), C ${C[-1]} ms (mount ${Cmount[-1]}; proxy sent ${Cproxy[-1]} B, ${Cranged[-1]} B of them to Range requests; status ${Cbytes[-1]} B), C0 ${C0[-1]} ms, C1 ${C1[-1]} ms"
done

# --- D: reads on a ready mount against local disk -------------------------------

# Waits until every layer is ready and its files are extracted.
wait_ready() {
    local mnt=$1 cache=$2 digest
    for _ in $(seq 1200); do
        if "$lazypull" status --json "$mnt" | jq -e 'all(.layers[]; .state == "ready")' >/dev/null; then
            local done=1
            for digest in $("$lazypull" status --json "$mnt" | jq -r '.layers[].digest'); do
                [ -d "$cache/files/sha256/${digest#sha256:}" ] || done=0
            done
            [ "$done" = 1 ] && { sleep 2; return; }
        fi
        sleep 0.5
    done
    echo "layers of $mnt not ready after 10 minutes" >&2
    exit 1
}

log "D: find -ls, Debian tree on a ready mount vs the unpacked bundle"
rootfs=$work/a$RUNS/bundle/rootfs
mkdir -p "$work/mnt-find"
"$lazypull" mount --cache-dir "$work/cache-find" "$debian" "$work/mnt-find" >/dev/null
wait_ready "$work/mnt-find" "$work/cache-find"
n_fuse=$(find "$work/mnt-find" | wc -l)
n_local=$(find "$rootfs" | wc -l)
[ "$n_fuse" = "$n_local" ] || { echo "find: $n_fuse entries on the mount, $n_local on disk" >&2; exit 1; }
Ffuse=() Flocal=() Wfuse=() Wlocal=()
for _ in $(seq "$D_RUNS"); do
    drop_caches
    t0=$(now_us); find "$work/mnt-find" -ls >/dev/null; Ffuse+=("$(ms_since "$t0")")
    t0=$(now_us); find "$work/mnt-find" -ls >/dev/null; Wfuse+=("$(ms_since "$t0")")
    drop_caches
    t0=$(now_us); find "$rootfs" -ls >/dev/null; Flocal+=("$(ms_since "$t0")")
    t0=$(now_us); find "$rootfs" -ls >/dev/null; Wlocal+=("$(ms_since "$t0")")
done
find_rss=$(daemon_hwm_kib "$work/mnt-find")
"$lazypull" umount "$work/mnt-find"

log "D: dd of a 1 GiB file on a ready mount vs local disk (first mount downloads the layer)"
mkdir -p "$work/mnt-big"
t0=$(now_us)
"$lazypull" mount --cache-dir "$work/cache-big" "$big" "$work/mnt-big" >/dev/null
big_mount=$(ms_since "$t0")
wait_ready "$work/mnt-big" "$work/cache-big"
big_ready=$(ms_since "$t0")
cmp "$work/mnt-big/big" "$STORE/big.bin"
# dd's last line ends in "<rate> <unit>/s"; keep MB/s.
dd_mbps() {
    dd if="$1" of=/dev/null bs=1M 2>&1 | tail -1 |
        awk '{r=$(NF-1); u=$NF; if (u=="GB/s") r*=1000; else if (u=="kB/s") r/=1000; print r}'
}
# The extracted file the kernel reads for the mount (FUSE passthrough), read
# directly: tells the passthrough's cost from the file's placement on disk.
backing=$(find "$work/cache-big/files" -type f -size +1000M | head -1)
big_pid=$("$lazypull" status --json "$work/mnt-big" | jq .pid)
# Daemon CPU time in clock ticks (utime + stime): passthrough reads cost it none.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
ticks0=$(cpu_ticks "$big_pid")
Dfuse=() Dlocal=() Dback=()
for _ in $(seq "$D_RUNS"); do
    drop_caches
    Dfuse+=("$(dd_mbps "$work/mnt-big/big")")
    drop_caches
    Dlocal+=("$(dd_mbps "$STORE/big.bin")")
    drop_caches
    Dback+=("$(dd_mbps "$backing")")
done
# Warm: both files in the page cache; what is left is the cost of the path.
Wdfuse=() Wdlocal=()
dd_mbps "$work/mnt-big/big" >/dev/null
dd_mbps "$STORE/big.bin" >/dev/null
for _ in $(seq "$D_RUNS"); do
    Wdfuse+=("$(dd_mbps "$work/mnt-big/big")")
    Wdlocal+=("$(dd_mbps "$STORE/big.bin")")
done
big_cpu_ms=$((($(cpu_ticks "$big_pid") - ticks0) * 1000 / $(getconf CLK_TCK)))
big_rss=$(daemon_hwm_kib "$work/mnt-big")
big_blob=$(jq '.layers[0].size' <("$lazypull" status --json "$work/mnt-big"))
"$lazypull" umount "$work/mnt-big"

# --- E: CPU of completing layers in the background ---------------------------

log "E: CPU of completing the Debian image's layers (index cached, nothing read)"
E=() Ebase=()
complete_cpu_ms() {
    local bin=$1 cache=$2 pid t0
    rm -rf "$cache"
    mkdir "$cache"
    cp -a "$work/cache-b1/index" "$cache/"
    "$bin" mount --no-prefetch --cache-dir "$cache" "$debian" "$work/mnt" >/dev/null
    pid=$("$bin" status --json "$work/mnt" | jq .pid)
    t0=$(cpu_ticks "$pid")
    wait_ready "$work/mnt" "$cache"
    echo $((($(cpu_ticks "$pid") - t0) * 1000 / $(getconf CLK_TCK)))
    "$bin" umount "$work/mnt"
}
for i in $(seq "$RUNS"); do
    E+=("$(complete_cpu_ms "$lazypull" "$work/cache-e")")
    [ -n "${BASELINE:-}" ] && Ebase+=("$(complete_cpu_ms "$BASELINE" "$work/cache-e")")
done

# --- report -----------------------------------------------------------------------

mA=$(median "${A[@]}") mT=$(median "${T[@]}") mB=$(median "${B[@]}") mC=$(median "${C[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
kib_mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }
debian_size=$(jq '[.layers[].size] | add' <(skopeo inspect --raw --tls-verify=false "docker://$debian"))
report=$STORE/results-$(date -u +%Y%m%dT%H%M%SZ).md
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, kernel $(uname -r); load average before the run: $load_before"
    echo "Link: tbf $RATE each way on a veth pair + ${DELAY_MS} ms each way in the proxy. Tiny GET ${link_tiny}s (new connection), ${link_tiny_reuse}s (kept connection); 100 MB GET ${link_100}s"
    echo "Debian image: $(mib "$debian_size") MiB compressed in 2 layers; $n_local paths. 1 GiB image: one layer of $(mib "$big_blob") MiB."
    echo
    echo "| Start python3 (median of $RUNS) | Time to output | A / this | Goal |"
    echo "|---|---|---|---|"
    echo "| A. skopeo copy + umoci unpack + chroot | $mA ms (copy $(median "${Acopy[@]}"), unpack $(median "${Aunpack[@]}")) | 1.00 | |"
    echo "| A2. skopeo copy + tar -xzf each layer + chroot | $mT ms (tar $(median "${Tunpack[@]}")) | $(ratio "$mA" "$mT") | |"
    echo "| B. lazypull mount, empty cache + chroot | $mB ms (mount $(median "${Bmount[@]}")) | $(ratio "$mA" "$mB") (A2: $(ratio "$mT" "$mB")) | >= 2 |"
    echo "| C. lazypull mount, index cached, no blobs + chroot | $mC ms (mount $(median "${Cmount[@]}")) | $(ratio "$mA" "$mC") (A2: $(ratio "$mT" "$mC")) | >= 8 |"
    echo "| C0. as C, \`--no-prefetch\` | $(median "${C0[@]}") ms | $(ratio "$mA" "$(median "${C0[@]}")") (A2: $(ratio "$mT" "$(median "${C0[@]}")")) | |"
    echo "| C1. as C0, index with 4 MiB seek spans (\`lazypull index --span 4194304\`) | $(median "${C1[@]}") ms | $(ratio "$mA" "$(median "${C1[@]}")") (A2: $(ratio "$mT" "$(median "${C1[@]}")")) | |"
    echo
    echo "C, bytes sent by the registry until the output: $(mib "$(median "${Cproxy[@]}")") MiB, of which $(mib "$(median "${Cranged[@]}")") MiB answered Range requests (lazy reads; the rest is the background download); lazypull status bytes_fetched $(mib "$(median "${Cbytes[@]}")") MiB"
    echo
    echo "| Read on a ready mount (median of $D_RUNS) | lazypull | local disk | lazypull / local (speed) | Goal |"
    echo "|---|---|---|---|---|"
    echo "| dd 1 GiB, cold page cache | $(median "${Dfuse[@]}") MB/s | $(median "${Dlocal[@]}") MB/s | $(ratio "$(median "${Dfuse[@]}")" "$(median "${Dlocal[@]}")") | >= 0.9 |"
    echo "| dd of the extracted file behind the mount, read directly | $(median "${Dback[@]}") MB/s | | $(ratio "$(median "${Dback[@]}")" "$(median "${Dlocal[@]}")") | |"
    echo "| dd 1 GiB, file in the page cache | $(median "${Wdfuse[@]}") MB/s | $(median "${Wdlocal[@]}") MB/s | $(ratio "$(median "${Wdfuse[@]}")" "$(median "${Wdlocal[@]}")") | |"
    echo "| find -ls Debian tree, caches dropped | $(median "${Ffuse[@]}") ms | $(median "${Flocal[@]}") ms | $(ratio "$(median "${Flocal[@]}")" "$(median "${Ffuse[@]}")") | >= 0.7 |"
    echo "| find -ls Debian tree, again (warm) | $(median "${Wfuse[@]}") ms | $(median "${Wlocal[@]}") ms | $(ratio "$(median "${Wlocal[@]}")" "$(median "${Wfuse[@]}")") | |"
    echo
    echo "1 GiB image, empty cache: mount returned after $big_mount ms; layer ready and its file extracted after $big_ready ms. Daemon CPU time during the $((2 * D_RUNS + 1)) dd runs of the mount: $big_cpu_ms ms."
    echo "E. Daemon CPU to complete the Debian image's layers in the background (index cached, nothing read; median of $RUNS): $(median "${E[@]}") ms${BASELINE:+; baseline $BASELINE: $(median "${Ebase[@]}") ms}"
    echo "Daemon peak RSS (VmHWM): B $(kib_mib "$(median "${Brss[@]}")") MiB, C $(kib_mib "$(median "${Crss[@]}")") MiB, find mount $(kib_mib "$find_rss") MiB, 1 GiB mount after the reads $(kib_mib "$big_rss") MiB"
    echo
    echo "Raw (ms): A ${A[*]} | A copy ${Acopy[*]} | A unpack ${Aunpack[*]} | A2 ${T[*]} | A2 tar ${Tunpack[*]} | B ${B[*]} | B mount ${Bmount[*]} | C ${C[*]} | C mount ${Cmount[*]}"
    echo "Raw (ms): C0 ${C0[*]} | C1 ${C1[*]}"
    echo "Raw (bytes): C proxy ${Cproxy[*]} | C Range ${Cranged[*]} | C status ${Cbytes[*]} | C0 Range ${C0ranged[*]} | C1 Range ${C1ranged[*]}"
    echo "Raw: dd MB/s lazypull ${Dfuse[*]} | local ${Dlocal[*]} | backing file ${Dback[*]}; warm lazypull ${Wdfuse[*]} | local ${Wdlocal[*]}; find ms cold lazypull ${Ffuse[*]} | local ${Flocal[*]}; warm lazypull ${Wfuse[*]} | local ${Wlocal[*]}"
    echo "Raw: RSS KiB B ${Brss[*]} | C ${Crss[*]}"
    echo "Raw (ms): E ${E[*]}${BASELINE:+ | E baseline ${Ebase[*]}}"
} | tee "$report"
log "results in $report"
