#!/bin/sh
# tests/support/run_fuzz.sh: runs every libFuzzer target of a fuzz build over its seed corpus.
#
#   tests/support/run_fuzz.sh FUZZ_BUILD_DIR [SECONDS_PER_TARGET]   (default 30 s)
#
# The build dir comes from `CC=clang cmake -DFLOWD_FUZZ=ON -DBUILD_TESTING=OFF ...`; this script
# builds nothing. Each fuzz_NAME binary gets fuzz/corpus/fuzz_NAME as read-only seeds; new inputs go
# to a scratch copy so the repository's corpus only changes on purpose. Exits non-zero as soon as a
# target crashes, leaks or times out, leaving the reproducer in FUZZ_BUILD_DIR/fuzz-artifacts/.
set -eu

build=${1:?usage: run_fuzz.sh FUZZ_BUILD_DIR [SECONDS_PER_TARGET]}
secs=${2:-30}
src=$(cd "$(dirname "$0")/../.." && pwd)
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"

found=0
for bin in "$build"/fuzz_*; do
    [ -f "$bin" ] && [ -x "$bin" ] || continue
    name=$(basename "$bin")
    found=$((found + 1))
    seeds="$src/fuzz/corpus/$name"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "== $name: ${secs}s over $seeds"
    set +e
    if [ -d "$seeds" ]; then
        "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
            -artifact_prefix="$artifacts/$name-" -print_final_stats=1 "$work" "$seeds" \
            >"$artifacts/$name.log" 2>&1
    else
        "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
            -artifact_prefix="$artifacts/$name-" -print_final_stats=1 "$work" \
            >"$artifacts/$name.log" 2>&1
    fi
    rc=$?
    set -e
    rm -rf "$work"
    grep -E "^stat::number_of_executed_units|^Done [0-9]+ runs" "$artifacts/$name.log" || true
    if [ $rc -ne 0 ]; then
        echo "FAIL: $name exited $rc; log: $artifacts/$name.log" >&2
        tail -n 40 "$artifacts/$name.log" >&2
        exit 1
    fi
done
if [ $found -eq 0 ]; then
    echo "no fuzz_* targets in $build (configure with -DFLOWD_FUZZ=ON and build first)" >&2
    exit 1
fi
echo "all $found fuzz targets ran clean"
