#!/usr/bin/env bash
# Documentation check: the book in docs/ (mdBook) and the README.
#
# Needs the Rust toolchain (for `cargo install`) and python3; no root, no network beyond
# crates.io when mdbook has to be installed. Checks:
#   1. mdbook $MDBOOK_VERSION: the one on PATH when `mdbook --version` names that version,
#      else installed from crates.io with
#        cargo install mdbook --locked --version $MDBOOK_VERSION --no-default-features --features search
#      (into $CARGO_HOME/bin; built in $CARGO_TARGET_DIR-mdbook when CARGO_TARGET_DIR is
#      set). When it cannot be had, the check fails: it is never skipped
#   2. docs/src/reference/http-api.md is exactly what docs/gen-http-api.py makes from
#      src/http/openapi.json (a diff otherwise: run python3 docs/gen-http-api.py)
#   3. `mdbook build docs` into the work directory (outside the clone), without a warning
#   4. tests/interop/linkcheck.py: in the built HTML every relative link resolves to a file
#      and every #fragment to an id; in README.md and docs/src every link and every
#      repository path names something in the repository; nothing mentions ../shared
#   5. README.md and docs/src/quickstart.md hold the same quickstart between the lines
#      <!-- quickstart:begin --> and <!-- quickstart:end --> (links aside: the README's
#      docs/src/X is the book's X); package.sh runs its commands (tests/interop/quickstart.sh)
# Prints one PASS:/FAIL: line per check, exits 1 if any check failed. Set INTEROP_KEEP=1
# to keep the work directory (it is kept anyway when a check failed), INTEROP_VERBOSE=1 to
# see each check's output on PASS too.
#
# Usage: tests/interop/docs.sh

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MDBOOK_VERSION=0.5.4
PACKAGES=()                    # no Debian packages: lib.sh's install_packages is not used
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# Reporting, the work directory and its cleanup: shared with run.sh and faults.sh.
source "$HERE/lib.sh"

mdbook_current() {
    command -v mdbook >/dev/null 2>&1 &&
        [[ $(mdbook --version 2>/dev/null) == "mdbook v$MDBOOK_VERSION" ]]
}

need_mdbook() {
    if mdbook_current; then
        echo "$(command -v mdbook): $(mdbook --version)"
        return 0
    fi
    echo "mdbook $MDBOOK_VERSION is not on PATH ($(mdbook --version 2>/dev/null || echo none)):" \
        "installing it from crates.io"
    command -v cargo >/dev/null || { echo "cargo is missing"; return 1; }
    local target=()
    [[ -z "${CARGO_TARGET_DIR:-}" ]] || target=(--target-dir "$CARGO_TARGET_DIR-mdbook")
    cargo install mdbook --locked --version "$MDBOOK_VERSION" \
        --no-default-features --features search --force "${target[@]}" ||
        { echo "cargo install mdbook $MDBOOK_VERSION failed"; return 1; }
    hash -r
    mdbook_current || { echo "still no mdbook $MDBOOK_VERSION on PATH after installing it"; return 1; }
    mdbook --version
}

http_api_current() {
    python3 "$ROOT/docs/gen-http-api.py" --check
}

build_book() {
    BOOK="$WORK/book"
    (cd "$ROOT" && mdbook build docs -d "$BOOK") >"$WORK/mdbook.log" 2>&1
    local status=$?
    cat "$WORK/mdbook.log"
    [[ $status -eq 0 ]] || { echo "mdbook build failed (exit $status)"; return 1; }
    [[ -f "$BOOK/index.html" ]] || { echo "no index.html in $BOOK"; return 1; }
    if grep -E '\b(WARN|ERROR)\b' "$WORK/mdbook.log"; then
        echo "mdbook warned: see above"
        return 1
    fi
}

links_resolve() {
    [[ -n "${BOOK:-}" && -d "$BOOK" ]] || { echo "the book was not built"; return 1; }
    python3 "$HERE/linkcheck.py" "$BOOK"
}

# quickstart FILE: the lines between the markers (exactly one pair, in that order).
quickstart() {
    awk '
        /^<!-- quickstart:begin -->$/ { begins++; inside = 1; next }
        /^<!-- quickstart:end -->$/   { ends++; inside = 0; next }
        inside { print }
        END { if (begins != 1 || ends != 1) { print "markers: " begins + 0 " begin, " ends + 0 " end" > "/dev/stderr"; exit 1 } }
    ' "$1"
}

quickstart_same() {
    local readme book
    # The README links into the book as docs/src/X; the book links as X.
    readme=$(quickstart "$ROOT/README.md" | sed 's#](docs/src/#](#g') ||
        { echo "README.md: quickstart markers"; return 1; }
    book=$(quickstart "$ROOT/docs/src/quickstart.md") ||
        { echo "docs/src/quickstart.md: quickstart markers"; return 1; }
    [[ -n "$readme" ]] || { echo "README.md: nothing between the quickstart markers"; return 1; }
    if [[ "$readme" != "$book" ]]; then
        diff <(echo "$readme") <(echo "$book")
        echo "the quickstart differs between README.md and docs/src/quickstart.md"
        return 1
    fi
}

finish() {
    summarise_and_exit
}

main() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/optin-docs.XXXXXX") || exit 1
    BOOK=""
    check "mdbook $MDBOOK_VERSION from crates.io (installed when missing)" need_mdbook
    check "docs/src/reference/http-api.md is what docs/gen-http-api.py makes of src/http/openapi.json" \
        http_api_current
    if mdbook_current; then
        check "mdbook build docs: built outside the clone, no warning" build_book
    else
        fail "mdbook build docs: no mdbook $MDBOOK_VERSION to build with"
    fi
    check "links: the book's HTML links and fragments, README.md and docs/src paths, nothing outside the repository" \
        links_resolve
    check "the quickstart between its markers is the same in README.md and docs/src/quickstart.md" \
        quickstart_same
    finish
}

main "$@"
