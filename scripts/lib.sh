# Helpers shared by the scripts in this directory: sourced, never run.

# as_root CMD...: runs CMD as root (directly when we are root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_packages PKG...: installs with apt-get whichever of the Debian packages is missing
# (as root, no standard input needed).
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    echo "installing: ${missing[*]}" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
}

# start_registry DIR: starts docker-registry (Distribution 2.8) on an ephemeral loopback port
# with its storage in DIR/registry; sets registry_pid and registry_addr (host:port).
start_registry() {
    local dir=$1
    cat >"$dir/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/registry
http:
  addr: 127.0.0.1:0
log:
  level: info
YML
    docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
    registry_pid=$!
    local _
    for _ in $(seq 100); do
        grep -q 'listening on' "$dir/registry.log" && break
        sleep 0.1
    done
    registry_addr=$(grep -o 'listening on [0-9.]*:[0-9]*' "$dir/registry.log" | head -1 | awk '{print $3}')
    [ -n "$registry_addr" ] || { cat "$dir/registry.log" >&2; echo "registry did not start" >&2; return 1; }
}
