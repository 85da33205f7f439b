#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60): libFuzzer through cargo-fuzz,
# starting from the committed seeds in fuzz/corpus/<target>/. Errors are fine, panics are bugs:
# exits non-zero if any target crashes (or hangs), with the input under fuzz/artifacts/<target>/.
# Reproduce one with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>`
# (plus the FUZZ_BUILD flags below). Installs what it needs on a fresh Debian 12 (as root).
#
# Stable toolchain: cargo-fuzz passes nightly-only rustc flags (-Zsanitizer=..., sancov), and
# no nightly toolchain can be fetched here. RUSTC_BOOTSTRAP=1 makes the stable rustc accept
# them; the stable rust-std ships the sanitizer runtimes, so AddressSanitizer works too.
#
# FUZZ_BUILD holds the build flags. The default trades some depth for build time (the fuzz
# build recompiles every dependency with coverage instrumentation): no sanitizer (lazypull and
# its decoders are safe Rust but for the zlib wrapper) and parallel codegen units. For long
# hunts, `FUZZ_BUILD="--sanitizer address" scripts/fuzz.sh 600` adds ASan and cargo-fuzz's
# single codegen unit (faster execs, a much slower build).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
read -r -a build_flags <<<"${FUZZ_BUILD:---sanitizer none --codegen-units 16}"

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# libfuzzer-sys compiles libFuzzer, which is C++.
command -v c++ >/dev/null || ensure_packages g++

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

export RUSTC_BOOTSTRAP=1
# Fuzz builds stay in fuzz/target: their flags differ from every other build's anyway.
unset CARGO_TARGET_DIR

cargo fuzz build "${build_flags[@]}"

failed=()
summary=()
for target in $(cargo fuzz list); do
    # libFuzzer writes what it finds to the first directory: keep the committed seeds clean.
    work="fuzz/work/$target"
    mkdir -p "$work"
    log="fuzz/work/$target.log"
    echo "== fuzzing $target for ${seconds}s"
    # -timeout: an input that takes 30 s is a hang worth reporting.
    if cargo fuzz run "${build_flags[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
        grep -E -A20 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer' "$log" | head -40 || true
        grep -E 'Test unit written' "$log" || true
    fi
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    summary+=("$(printf '%-12s %-6s %10s execs' "$target" "$status" "$execs")")
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs under fuzz/artifacts/, logs under fuzz/work/)" >&2
    exit 1
fi
echo "fuzzing: ${#summary[@]} targets, ${seconds}s each, no crash"
