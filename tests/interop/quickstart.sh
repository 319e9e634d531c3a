#!/usr/bin/env bash
# Follows the quickstart as a reader would: every ```sh block between the quickstart
# markers of docs/src/quickstart.md (the same text as the README's), run in order by bash
# in an empty folder, with the optin-relay of BIN_DIR first on PATH, against curl. Then
# checks the transcript says what the text promises: the config checks, the transactional
# message captured, marketing refused without consent and taken with it (List-Unsubscribe
# and the footer), the unsubscribe page and one-click answered, the next message refused,
# and suppress check naming the unsubscribe.
#
#   tests/interop/quickstart.sh [BIN_DIR]   (default: a release build of this clone)
#
# package.sh sources this file and calls run_quickstart with /usr/bin (the installed
# package). The quickstart uses the embedded default's ports (2525, 8025, 8026): they must
# be free. Needs root only to install curl.

quickstart_blocks() {
    awk '/^<!-- quickstart:begin -->$/ { f = 1; next }
         /^<!-- quickstart:end -->$/ { f = 0 }
         f' "$1" | awk '/^```sh$/ { f = 1; next } /^```$/ { f = 0 } f'
}

# run_quickstart BIN_DIR DIR: runs the quickstart in DIR; the transcript in DIR/quickstart.out.
run_quickstart() {
    local bin_dir=$1 dir=$2 doc="$ROOT/docs/src/quickstart.md" port
    mkdir -p "$dir"
    quickstart_blocks "$doc" >"$dir/quickstart.sh"
    [[ -s "$dir/quickstart.sh" ]] || { echo "no sh blocks in $doc"; return 1; }
    for port in 2525 8025 8026; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "port $port is taken: the quickstart needs the embedded default's ports"
            return 1
        fi
    done
    # bash -e as a careful reader: the first command that fails stops it. The relay it
    # starts in the background is stopped by its last block; timeout is the safety net.
    (cd "$dir" && PATH="$bin_dir:$PATH" timeout 180 bash -e quickstart.sh) \
        >"$dir/quickstart.out" 2>&1
    local rc=$?
    pkill -f -- "--config optin-relay.toml serve" 2>/dev/null || true
    cat "$dir/quickstart.out"
    [[ $rc -eq 0 ]] || { echo "the quickstart stopped with exit $rc"; return 1; }
    local want
    for want in \
        "optin-relay.toml: ok" \
        "policy.toml: ok (1 accounts)" \
        "Subject: Your receipt" \
        "refused: ada@example.net has not subscribed to news" \
        "consent recorded for 1 address(es) on shop/news" \
        "List-Unsubscribe: <http://127.0.0.1:8025/u/" \
        "You receive Example Shop news because you subscribed" \
        "Sent by Example Shop, 1 Example Street" \
        "<title>Your subscriptions with Example Shop" \
        "one-click: HTTP 200" \
        "refused: ada@example.net unsubscribed" \
        "list shop/news: unsubscribe" \
        "verdict:     refused"; do
        grep -qF -- "$want" "$dir/quickstart.out" || { echo "missing in the transcript: $want"; return 1; }
    done
    # Nothing left running, and the relay's files are private.
    if pgrep -f -- "--config optin-relay.toml serve" >/dev/null; then
        echo "the relay still runs after the last block"
        return 1
    fi
    local loose
    loose=$(find "$dir/relay-quickstart/data/capture" -type f ! -perm 600 | head -n 3)
    [[ -z "$loose" ]] || { echo "captured files not 0600: $loose"; return 1; }
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -uo pipefail
    HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    ROOT="$(cd "$HERE/../.." && pwd)"
    PACKAGES=(curl)
    # shellcheck source=lib.sh
    source "$HERE/lib.sh"
    WORK=$(mktemp -d /tmp/optin-quickstart.XXXXXX)
    install_packages
    if [[ $# -ge 1 ]]; then
        BIN_DIR=$1
    else
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
        (cd "$ROOT" && cargo build --release --locked -q) || { echo "FAIL: build"; exit 1; }
        BIN_DIR="$CARGO_TARGET_DIR/release"
    fi
    check "the quickstart, followed to the letter with $BIN_DIR/optin-relay" \
        run_quickstart "$BIN_DIR" "$WORK/follow"
    summarise_and_exit
fi
