# Shared helpers of the interop scripts (run.sh, faults.sh), sourced after the script
# sets HERE, ROOT and PACKAGES: PASS:/FAIL: reporting (note, pass, fail, check), the
# processes a script starts and their cleanup on exit (start, forget, port_open,
# wait_ports, poll; CLEANUP_HOOKS for script-specific steps), the closing summary
# (setup, summarise_and_exit), installing the Debian
# packages in PACKAGES (install_packages) and building the relay (build_relay, or
# relay_binary for $OPTIN_RELAY_BIN: sets BIN).
# Not a script of its own.

WORK=""
PIDS=()                        # every background process we started
PGROUPS=()                     # process groups we started (setsid): killed whole on exit
FAILED=()
PASSED=0
STARTED_AT=$SECONDS
CLEANUP_HOOKS=()               # functions cleanup runs once our processes are gone

# ---------------------------------------------------------------- reporting

note() { echo "# $*"; }
pass() { echo "PASS: $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $1"; FAILED+=("$1"); }

# check DESCRIPTION FUNCTION [ARGS...]: runs FUNCTION with its output captured; prints
# PASS or FAIL, and on FAIL (or with INTEROP_VERBOSE) the captured output, indented.
check() {
    local description=$1
    shift
    local out="$WORK/check.out"
    if "$@" >"$out" 2>&1; then
        pass "$description"
        [[ -z "${INTEROP_VERBOSE:-}" ]] || sed 's/^/    | /' "$out" | tail -n 40
    else
        fail "$description"
        sed 's/^/    | /' "$out" | tail -n 40
    fi
}

# setup DESCRIPTION FUNCTION [ARGS...]: a check whose failure ends the run (through the
# script's own finish).
setup() {
    local description=$1 before=${#FAILED[@]}
    shift
    check "$description" "$@"
    [[ ${#FAILED[@]} -eq $before ]] || finish
}

# summarise_and_exit [LOG...]: on failures, the last lines of each named log in $WORK
# (LOG.log); then the counts and every failed check; exits 0 when none failed, else 1.
summarise_and_exit() {
    local failed=${#FAILED[@]} name f
    if [[ $failed -gt 0 ]]; then
        for name in "$@"; do
            [[ -s "$WORK/$name.log" ]] || continue
            echo "## $name.log"
            tail -n 20 "$WORK/$name.log" | sed 's/^/    /'
        done
    fi
    note "$PASSED passed, $failed failed, $((SECONDS - STARTED_AT))s"
    for f in "${FAILED[@]}"; do
        echo "FAILED: $f"
    done
    [[ $failed -eq 0 ]] && exit 0
    exit 1
}

# ---------------------------------------------------------------- processes

cleanup() {
    local pid hook
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    # Whatever is left of a process group we started (a browser's helper processes).
    local group
    for group in "${PGROUPS[@]}"; do
        kill -KILL -- "-$group" 2>/dev/null
    done
    # Script-specific steps once every process is gone (unmounting a filesystem, say).
    for hook in "${CLEANUP_HOOKS[@]}"; do
        "$hook"
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ ${#FAILED[@]} -gt 0 || -n "${INTEROP_KEEP:-}" ]]; then
            note "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
}
trap cleanup EXIT
trap 'fail "interrupted by SIGINT"; exit 130' INT
trap 'fail "interrupted by SIGTERM"; exit 143' TERM

# start NAME COMMAND...: runs COMMAND in the background, output to $WORK/NAME.log;
# sets PID_<NAME>.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" '%s' $!
}

# forget PID: a process we reaped ourselves; cleanup must not signal its (reusable) pid.
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ports NAME PORT...: waits until every port accepts connections while NAME's
# process is alive.
wait_ports() {
    local name=$1 pid_var="PID_$1" port
    shift
    for port in "$@"; do
        for _ in $(seq 300); do
            port_open "$port" && continue 2
            if ! kill -0 "${!pid_var}" 2>/dev/null; then
                echo "$name exited before listening on $port; its log:"
                cat "$WORK/$name.log"
                return 1
            fi
            sleep 0.1
        done
        echo "$name is not listening on 127.0.0.1:$port after 30s; its log:"
        cat "$WORK/$name.log"
        return 1
    done
}

# poll SECONDS COMMAND...: retries COMMAND every 0.25s until it succeeds or time runs out.
poll() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.25
    done
}

# ---------------------------------------------------------------- setup

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        note "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    note "installing: ${missing[*]}"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "postfix postfix/main_mailer_type select No configuration" |
        "${sudo[@]}" debconf-set-selections &&
        "${sudo[@]}" apt-get update -q &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { echo "could not install the Debian packages: ${missing[*]}"; return 1; }
}

build_relay() {
    local target=${CARGO_TARGET_DIR:-target}
    [[ $target = /* ]] || target="$ROOT/$target"
    BIN="$target/release/optin-relay"
    note "building: cargo build --release (log: $WORK/build.log)"
    if ! (cd "$ROOT" && cargo build --release) >"$WORK/build.log" 2>&1; then
        tail -n 60 "$WORK/build.log"
        return 1
    fi
    [[ -x "$BIN" ]] || { echo "no binary at $BIN"; return 1; }
}

# relay_binary: BIN is $OPTIN_RELAY_BIN when set (a build to test as it is), else a fresh
# build_relay.
relay_binary() {
    if [[ -n "${OPTIN_RELAY_BIN:-}" ]]; then
        BIN=$OPTIN_RELAY_BIN
        [[ -x "$BIN" ]] || { echo "OPTIN_RELAY_BIN=$BIN is not an executable"; return 1; }
        note "using $BIN"
    else
        build_relay
    fi
}

