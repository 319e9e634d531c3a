#!/usr/bin/env bash
# Runs optin-relay's cargo-fuzz targets for a bounded time each and fails on a crash.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 60 seconds, every target
#
# Needs the nightly toolchain (rustup's `nightly`); installs cargo-fuzz into the default
# cargo bin when it is missing. The seeds in fuzz/corpus/TARGET are read, never written:
# what the fuzzer finds goes to a scratch corpus ($FUZZ_CORPUS/TARGET, default a
# temporary directory removed at the end). A crash, a panic or an input slower than
# $FUZZ_INPUT_TIMEOUT seconds (default 10) is saved under fuzz/artifacts/TARGET/ and the
# run fails; reproduce it with `cargo +nightly fuzz run -O TARGET fuzz/artifacts/TARGET/FILE`.
# (-O: the profile in fuzz/Cargo.toml keeps debug assertions and overflow checks on.)
# FUZZ_SANITIZER picks cargo-fuzz's sanitizer (default `address`; `none` runs several times
# faster, for long campaigns of this safe-Rust code); FUZZ_RUNS stops each target after that
# many executions if that comes before SECONDS.
# Builds go to $CARGO_TARGET_DIR-fuzz when CARGO_TARGET_DIR is set (sanitizer builds must
# not share the normal cache), else to fuzz/target.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

seconds=${1:-60}
shift || true
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2; exit 2; }

if ! command -v rustup >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    export CARGO_TARGET_DIR="$CARGO_TARGET_DIR-fuzz"
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
work=${FUZZ_CORPUS:-$(mktemp -d)}
[[ -n ${FUZZ_CORPUS:-} ]] || trap 'rm -rf "$work"' EXIT

echo "== building ${targets[*]}"
sanitizer=${FUZZ_SANITIZER:-address}
cargo +nightly fuzz build -O -s "$sanitizer" >/dev/null

summary=()
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    mkdir -p "$work/$target" "artifacts/$target"
    log="$work/$target.log"
    status=0
    cargo +nightly fuzz run -O -s "$sanitizer" "$target" "$work/$target" "corpus/$target" -- \
        ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -max_total_time="$seconds" -timeout="${FUZZ_INPUT_TIMEOUT:-10}" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    if [[ $status -ne 0 ]]; then
        tail -n 40 "$log"
        echo "fuzz/run.sh: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    summary+=("$target: ${runs:-?} executions in $(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' || echo "${seconds} second")s ($sanitizer), no crash")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
