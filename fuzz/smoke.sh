#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS seconds each (default 60) and exits
# non-zero if any target crashes, or fails to build or start.
#
#   fuzz/smoke.sh                      # all targets, 60 s each
#   FUZZ_SECONDS=10 fuzz/smoke.sh jwt  # some targets, 10 s each
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked).
# Builds go to $CARGO_TARGET_DIR (default: target/fuzz at the repository root), so
# the nightly sanitizer artifacts never mix with the regular build cache.
# Seeds come from fuzz/seeds/<target>/ and fuzz/regressions/<target>/ (read only);
# new corpus entries go to fuzz/corpus/<target>/, crashes to fuzz/artifacts/<target>/.
# A log per target is kept in fuzz/smoke-logs/<target>.log.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

seconds="${FUZZ_SECONDS:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../target/fuzz}"

all_targets=(compile_manifests annotations path_routing session_cookie jwt)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

mkdir -p smoke-logs
# One build for every target, so the per-target runs only link and run.
if ! cargo +nightly fuzz build; then
    echo "smoke: build failed" >&2
    exit 2
fi

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    mkdir -p "$corpus"
    dirs=("$corpus")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    log="smoke-logs/$t.log"
    echo "== $t: ${seconds}s"
    cargo +nightly fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    speed="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')"
    line="$t: exit=$rc execs=${execs:-?} execs/s=${speed:-?} cov=${cov:-?}"
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        line="$line CRASH (see $log and artifacts/$t/)"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | head -8 >&2
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "== smoke summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), ${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "smoke: ok"
