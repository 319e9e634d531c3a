#!/usr/bin/env bash
# Observability files against the real tools, on 127.0.0.1 only: the Prometheus rules
# (deploy/prometheus/optin-relay.rules.yml), their unit tests (optin-relay.rules.test.yml)
# and the Grafana dashboard (deploy/grafana/optin-relay.dashboard.json).
#
# Installs (Debian packages, only when missing): prometheus when promtool is not on the
# PATH (a promtool still missing afterwards is a FAIL, never a skip), python3-yaml when
# PyYAML is missing. Then checks:
#   1. promtool check rules: the rules file is valid (PromQL parses, templates compile)
#   2. promtool test rules: the unit tests pass
#   3. every alert has a unit test where it fires and one where it is quiet
#      (dashboard_exprs.py coverage)
#   4. the dashboard's shape: schemaVersion >= 38, every panel, query, annotation and query
#      variable on the ${DS_PROMETHEUS} datasource variable, the site and account
#      variables, unique panel ids (dashboard_exprs.py check)
#   5. every PromQL expression of the dashboard (panels, panels inside collapsed rows,
#      annotations, label_values()/query_result() variable queries), with the template
#      variables ($__rate_interval, $site, ...) replaced by valid stand-ins, parses: they
#      are written as recording rules to a temporary file for `promtool check rules`
#   6. every optin_* metric name the rules use is in the relay's source (grep -rq
#      '"NAME"' src/; a histogram's _bucket, _sum and _count series by the histogram's name)
#   7. the same for the dashboard
# and against the running binary (built with `cargo build --release`, or OPTIN_RELAY_BIN):
#   8. the relay starts with a minimal config (free ports on 127.0.0.1, a spool in the work
#      directory, everything else the embedded default) and its operator listener's
#      /metrics passes `promtool check metrics`
#   9. that scrape has optin_build_info{version} 1 and the spool disk gauges, free <= total
# Prints one PASS:/FAIL: line per check like run.sh (whose helpers it shares, lib.sh) and
# exits 1 if any check failed. The relay it starts is stopped on exit.
#
# Usage: tests/interop/observability.sh   (as root, or with sudo available for apt-get)
#        INTEROP_KEEP=1 keeps the work directory; INTEROP_VERBOSE=1 shows each check's
#        output on PASS too.

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3            # Debian's interpreter: python3-yaml lives there
RULES="$ROOT/deploy/prometheus/optin-relay.rules.yml"
RULE_TESTS="$ROOT/deploy/prometheus/optin-relay.rules.test.yml"
DASHBOARD="$ROOT/deploy/grafana/optin-relay.dashboard.json"
EXPRS="$HERE/dashboard_exprs.py"
PACKAGES=()                    # set by need_tools: only what is missing
PROMTOOL=""

# Reporting, processes and cleanup, packages, the build: shared with run.sh.
source "$HERE/lib.sh"

# promtool (Debian's prometheus package) and PyYAML, installed when missing.
need_tools() {
    PACKAGES=()
    command -v promtool >/dev/null 2>&1 || PACKAGES+=(prometheus)
    "$PY" -c 'import yaml' 2>/dev/null || PACKAGES+=(python3-yaml)
    if [[ ${#PACKAGES[@]} -gt 0 ]]; then
        install_packages || return 1
    fi
    PROMTOOL=$(command -v promtool) ||
        { echo "promtool is still missing after installing Debian's prometheus package"; return 1; }
    "$PY" -c 'import yaml' || { echo "PyYAML is still missing"; return 1; }
    "$PROMTOOL" --version 2>&1 | head -n 1
}

rules_valid() { "$PROMTOOL" check rules "$RULES"; }

# promtool resolves the test file's rule_files from the test file's directory.
rules_tested() { "$PROMTOOL" test rules "$RULE_TESTS"; }

alerts_covered() { "$PY" "$EXPRS" coverage "$RULES" "$RULE_TESTS"; }

dashboard_shape() { "$PY" "$EXPRS" check "$DASHBOARD"; }

dashboard_parses() {
    local out="$WORK/dashboard.rules.json"
    "$PY" "$EXPRS" rules "$DASHBOARD" "$out" || return 1
    "$PROMTOOL" check rules "$out"
}

# names_in_source FILE: every optin_* metric FILE's PromQL uses is named in src/.
names_in_source() {
    local names name base missing=()
    names=$("$PY" "$EXPRS" names "$1") || return 1
    for name in $names; do
        grep -rqF "\"$name\"" "$ROOT/src" && continue
        base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")
        [[ $base != "$name" ]] && grep -rqF "\"$base\"" "$ROOT/src" && continue
        missing+=("$name")
    done
    echo "$(wc -w <<<"$names") optin_* metric names in ${1#"$ROOT"/}"
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "not in src/: ${missing[*]}"
        return 1
    fi
}

start_relay() {
    local ports
    mapfile -t ports < <("$PY" "$HERE/util.py" ports 3) || return 1
    [[ ${#ports[@]} -eq 3 ]] || return 1
    SMTP_PORT=${ports[0]} HTTP_PORT=${ports[1]} OPS_PORT=${ports[2]}
    cat >"$WORK/relay.toml" <<EOF
[smtp]
listen = ["127.0.0.1:$SMTP_PORT"]
[spool]
path = "$WORK/spool"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[admin]
listen = "127.0.0.1:$OPS_PORT"
EOF
    "$BIN" --config "$WORK/relay.toml" config check || return 1
    start relay "$BIN" --config "$WORK/relay.toml" serve
    wait_ports relay "$SMTP_PORT" "$HTTP_PORT" "$OPS_PORT"
}

scrape_valid() {
    local out="$WORK/metrics.txt" rc
    "$PY" "$HERE/util.py" http "http://127.0.0.1:$OPS_PORT/metrics" >"$out" ||
        { echo "GET /metrics of the operator listener failed"; return 1; }
    echo "$(grep -c '^# HELP ' "$out") metrics, $(grep -vc '^#' "$out") samples"
    timeout 30 "$PROMTOOL" check metrics <"$out"
    rc=$?
    echo "promtool check metrics exit status $rc"
    return $rc
}

# The series the dashboard's build info and spool panels and the spool disk alerts need,
# present from the start.
scrape_has_build_and_disk() {
    "$PY" - "$WORK/metrics.txt" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def samples(name):
    return re.findall(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M)
problems = []
build = samples("optin_build_info")
if not build:
    problems.append("no optin_build_info")
for labels, value in build:
    print("optin_build_info%s %s" % (labels, value))
    if 'version="' not in (labels or "") or float(value) != 1:
        problems.append("optin_build_info should be 1 with a version label")
free, total = samples("optin_spool_disk_free_bytes"), samples("optin_spool_disk_total_bytes")
if not free or not total:
    problems.append("no optin_spool_disk_free_bytes or optin_spool_disk_total_bytes")
else:
    f, t = float(free[0][1]), float(total[0][1])
    print("spool disk: %d of %d bytes free" % (f, t))
    if not 0 <= f <= t or t <= 0:
        problems.append("spool disk gauges out of range")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
EOF
}

# setup DESCRIPTION FUNCTION...: a check the rest cannot do without: its FAIL ends the run.

finish() {
    summarise_and_exit relay
}

main() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/optin-observability.XXXXXX") || exit 1
    setup "promtool and PyYAML (installs Debian's prometheus, python3-yaml when missing)" \
        need_tools

    check "promtool check rules: deploy/prometheus/optin-relay.rules.yml" rules_valid
    check "promtool test rules: deploy/prometheus/optin-relay.rules.test.yml" rules_tested
    check "every alert has a unit test where it fires and one where it is quiet" alerts_covered
    check "dashboard: schemaVersion >= 38, \${DS_PROMETHEUS} everywhere, site and account variables" \
        dashboard_shape
    check "dashboard: every PromQL expression parses (promtool check rules)" dashboard_parses
    check "rules: every optin_* metric they use is named in src/" names_in_source "$RULES"
    check "dashboard: every optin_* metric it uses is named in src/" \
        names_in_source "$DASHBOARD"

    setup "the relay binary" relay_binary
    setup "start the relay on 127.0.0.1 (free ports, embedded defaults otherwise)" start_relay
    check "promtool check metrics: the operator listener's /metrics" scrape_valid
    check "/metrics: optin_build_info{version} 1, spool disk free and total gauges" \
        scrape_has_build_and_disk
    finish
}

main "$@"
