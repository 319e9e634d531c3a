#!/usr/bin/env bash
# Adversarial suite: optin-relay's release binary attacked over loopback (issue 12, item
# 20). Every check asserts what can be seen from outside -- a reply, what the sink got or
# did not get, the admin API, a metric, the relay's RSS in /proc/PID/status -- and prints
# its figures.
#
# Installs (Debian packages, only when missing): python3-aiosmtpd (the sink, sink.py),
# swaks, libnet-ssleay-perl, nmap (its smtp-open-relay script), hydra, testssl.sh,
# openssl. Builds the relay with `cargo build --release` (OPTIN_RELAY_BIN=PATH uses that
# binary instead) and runs one relay on free ports of 127.0.0.1 with short limits (idle
# 3s, session 30s, TLS handshake 2s, 10 connections per stranger, 20 per client; HTTP: 8
# per client, 40 in all, header and body 2s, idle 4s; 5 reports per client and hour; AUTH
# delays 100-400ms, lockout after 10 failures per client and 50 per username, for 15
# min, one password check at a time, so that a burst finds it busy on any machine;
# retries every 10s), delivering to an aiosmtpd sink as its smart host. Its policy:
# "app" (transactional, network 127.0.0.6/32), "shop" (AUTH users shop and target),
# "news" (marketing, lists weekly and daily, network 127.0.0.5/32) and "promo"
# (marketing, network 127.0.0.7/32), [health] min_volume = 1 (one counted complaint
# freezes). Every other 127.x.y.z address is a stranger. The checks (helpers
# attack_*.py; attack_common.py has the raw SMTP client):
#   1. smuggling matrix (attack_smuggle.py): every combination of CR, LF, CRLF, NUL around
#      the dot, in DATA, one BDAT chunk and two BDAT chunks, each followed by a complete
#      second transaction: one 5xx for the whole, the session goes on (NOOP, a third
#      message), and no smuggled message reaches the sink; controls show the sink would
#      see one (two real messages after a true end; a stuffed or BDAT-embedded CRLF.CRLF
#      relayed as one message)
#   2. SMTP slowloris (attack_slowloris.py smtp): 300 connections from 10 addresses that
#      drip an octet every 2s or stop mid-line: the per-client cap answers 421 4.7.0,
#      stallers are closed at the idle timeout and drippers at the session timeout (421
#      4.4.2), a trusted client and a new stranger get their greeting at once (latency
#      printed); a command line without CRLF past max_command_line: 500 5.5.2 and a close
#   3. AUTH flood (attack_auth.py): 200 sessions from 200 addresses, STARTTLS and four
#      wrong AUTHs each; the relay's peak (VmHWM) and current RSS printed, under 300 MB;
#      optin_auth_attempts_total shows failed, locked and busy. Then hydra (smtps, one
#      task, from 127.0.0.1) with a list holding the right password after the lockout
#      point: 10 failures, then 454 4.7.0 for the rest (counted), the password not found;
#      swaks then logs in with it from another address
#   4. hostile mail from strangers (attack_reports.py): to the feedback address 2 MiB (552
#      at SIZE= and after DATA, nothing kept), 24 MiB of empty MIME parts (552, peak RSS
#      printed), over the MIME budget within the size (550 5.6.0), the budget's nesting
#      limit with folded Content-Type fields (550 5.6.0), over the per-client hourly cap
#      (450 4.7.1); 100 connections (20 addresses) each in the middle of a 1 MiB report
#      (the RSS they cost, printed, and returned when they leave); to an unsubscribe+TOKEN@
#      address over 64 KiB (552, nothing recorded); the same size and MIME attacks to a
#      return path bounces+TOKEN@ with a made-up token (552, 550 5.6.0, nothing kept)
#   5. forged complaints: tokenless unsigned ARF reports (and one with a forged token)
#      about a really delivered marketing message change nothing (admin API: not frozen,
#      no complaint counted, no suppression, verdict allowed); the same report with the
#      genuine token suppresses, counts and freezes (the control)
#   6. DSN consent bypass (attack_dsn.py): marketing with RET=FULL to a consented and a
#      non-consented reader from a complaint-suppressed sender: no DSN; from a good
#      sender: one DSN with the header section only
#   7. open relay: nmap's smtp-open-relay on both SMTP listeners says it is not one; the
#      usual tricks by hand from strangers (attack_relay.py) are refused on every
#      listener, except the feedback address and the postmaster
#   8. TLS: testssl.sh (protocols, cipher categories, vulnerabilities; no DNS) on the
#      implicit-TLS listener and with STARTTLS, judged by attack_tls.py: no SSLv2/3, TLS
#      1.0/1.1 off, no NULL, EXPORT, LOW or RC4 ciphers, no vulnerability; clients that
#      never send a ClientHello (implicit TLS, after STARTTLS) closed at the handshake
#      timeout
#   9. the public HTTP listener (attack_slowloris.py http): no /metrics or /admin, the
#      security headers; half-sent and dripping heads and bodies cut off at their
#      timeouts, the per-client and total caps answer 503, served again afterwards; the
#      click redirect and open pixel with made-up tokens: 404, never a redirect; the
#      subscription form (attack_forms.py): a flood from one address (429 past
#      max_per_ip), a mail bomb from 12 addresses (the same answer each time, at most
#      max_per_address confirmations at the sink), made-up confirmation links (never 200)
#      and 60 made-up account keys (401); the victim has no consent afterwards
#  10. the CLI: `suppress add` against the running relay, and the very next RCPT to that
#      address is refused
#  11. a backlog (attack_backlog.py): with the sink down, ATTACKS_BACKLOG (30000) messages
#      queued (RSS per message printed), SIGTERM, a restart over them (time and RSS), the
#      sink up again: drained, each exactly once (time, peak RSS under 300 MB)
# and finally SIGTERM makes the relay exit 0. Prints one PASS:/FAIL: line per check with the
# helpers' figures under it (INTEROP_VERBOSE= turns them off) and exits 1 if any check failed.
# Touches nothing beyond 127.0.0.0/8; every process it starts is stopped on exit.
#
# Usage: tests/interop/attacks.sh   (as root, or with sudo available for apt-get).
#        INTEROP_KEEP=1 keeps the work directory (it is kept anyway when a check failed);
#        ATTACKS_LOG_LEVEL=info makes the relay log every message (default warn);
#        ATTACKS_BACKLOG=N queues N messages in check 11 (default 30000).

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3            # Debian's interpreter: python3-aiosmtpd lives there
PACKAGES=(python3-aiosmtpd swaks libnet-ssleay-perl nmap hydra testssl.sh openssl)
TESTSSL=/usr/bin/testssl       # Debian's testssl.sh package
DELIVERY_TIMEOUT=60            # seconds for queued mail to reach the sink
PASSWORD="attacks-$RANDOM-$RANDOM-secret"
ADMIN_TOKEN="attacks-admin-token-$RANDOM$RANDOM"
MAIL_DOMAIN=relay.test         # the relay's own domain: fbl@, unsubscribe+TOKEN@
FEEDBACK=fbl@$MAIL_DOMAIN
APP_SOURCE=127.0.0.6           # the account "app"'s network
NEWS_SOURCE=127.0.0.5          # the account "news"'s network
PROMO_SOURCE=127.0.0.7         # the account "promo"'s network
RSS_LIMIT_KIB=$((300 * 1000))  # 300 MB
BACKLOG=${ATTACKS_BACKLOG:-30000}  # messages queued while the next hop is down (check 11)
RELAY_PID="" RELAY_LOG=""      # the running relay
# The relay's log level: "warn" keeps the work directory (kept when a check failed) small
# after the backlog; ATTACKS_LOG_LEVEL=info logs every message and delivery.
LOG_LEVEL=${ATTACKS_LOG_LEVEL:-warn}

source "$HERE/lib.sh"
# Every check prints its figures (RSS, counters, replies), passed or not.
INTEROP_VERBOSE=${INTEROP_VERBOSE-1}

# ---------------------------------------------------------------- setup

tools_present() {
    local t absent=0
    for t in "$PY" /usr/bin/swaks /usr/bin/nmap /usr/bin/hydra "$TESTSSL" /usr/bin/openssl \
        /usr/share/nmap/scripts/smtp-open-relay.nse; do
        [[ -e $t ]] || { echo "missing: $t"; absent=1; }
    done
    "$PY" -c 'import aiosmtpd' || absent=1
    return $absent
}

pick_ports() {
    local ports
    mapfile -t ports < <("$PY" "$HERE/util.py" ports 5) || return 1
    [[ ${#ports[@]} -eq 5 ]] || return 1
    SINK_PORT=${ports[0]} SMTP=${ports[1]} TLS=${ports[2]} HTTP=${ports[3]} OPS=${ports[4]}
    OPS_URL="http://127.0.0.1:$OPS"
    HTTP_URL="http://127.0.0.1:$HTTP"
    echo "sink=$SINK_PORT smtp=$SMTP tls=$TLS http=$HTTP ops=$OPS"
}

write_config() {
    local dir="$WORK/edge" hash target_hash
    mkdir -p "$dir" || return 1
    hash=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password) &&
        target_hash=$(printf '%s\n' "target-$PASSWORD" | "$BIN" hash-password) || return 1
    cat >"$dir/policy.toml" <<EOF
[health]
min_volume = 1

[accounts.app]
networks = ["$APP_SOURCE/32"]

[accounts.shop]
[[accounts.shop.users]]
username = "shop"
password_hash = "$hash"
[[accounts.shop.users]]
username = "target"
password_hash = "$target_hash"

[accounts.news]
networks = ["$NEWS_SOURCE/32"]
streams = ["marketing"]
from_domains = ["news.example"]
contact_address = "hello@news.example"
postal_address = "1 Main St, Springfield"
default_list = "weekly"
[accounts.news.lists.weekly]
name = "The Weekly"
consent_statement = "You receive {list} because you subscribed. Unsubscribe: {unsubscribe}"
subscribe = "double"
[accounts.news.lists.daily]
name = "The Daily"
consent_statement = "You receive {list} because you subscribed. Unsubscribe: {unsubscribe}"

[accounts.promo]
networks = ["$PROMO_SOURCE/32"]
streams = ["marketing"]
from_domains = ["promo.example"]
contact_address = "hello@promo.example"
postal_address = "1 Main St, Springfield"
[accounts.promo.lists.weekly]
name = "Promo Weekly"
consent_statement = "You receive {list} because you subscribed. Unsubscribe: {unsubscribe}"
EOF
    cat >"$dir/relay.toml" <<EOF
[smtp]
listen = ["127.0.0.1:$SMTP"]
listen_tls = ["127.0.0.1:$TLS"]
hostname = "$MAIL_DOMAIN"
max_connections = 1000
max_connections_per_ip = 20
max_untrusted_connections_per_ip = 10
idle_timeout = "3s"
session_timeout = "30s"
tls_handshake_timeout = "2s"
auth_failure_delay = "100ms"
auth_failure_delay_max = "400ms"
auth_max_failures = 10
auth_max_failures_per_user = 50
auth_lockout = "15m"
auth_concurrency = 1
[spool]
path = "$dir/spool"
[delivery]
smarthost = "127.0.0.1:$SINK_PORT"
connection_idle_timeout = "2s"
retry_initial = "10s"
retry_max = "10s"
log = ""
[http]
listen = "127.0.0.1:$HTTP"
max_connections = 40
max_connections_per_ip = 8
header_timeout = "2s"
body_timeout = "2s"
idle_timeout = "4s"
[admin]
listen = "127.0.0.1:$OPS"
token = "$ADMIN_TOKEN"
[policy]
path = "$dir/policy.toml"
[unsubscribe]
public_url = "$HTTP_URL"
mail_domain = "$MAIL_DOMAIN"
[complaints]
max_reports_per_ip = 5
[lists]
refresh_interval = "100ms"
[log]
level = "$LOG_LEVEL"
EOF
    CONFIG="$dir/relay.toml"
    "$BIN" --config "$CONFIG" config check
}

start_sink() {
    SINK="$WORK/sink"
    mkdir -p "$SINK" || return 1
    start sink "$PY" "$HERE/sink.py" "$SINK_PORT" "$SINK"
    wait_ports sink "$SINK_PORT"
}

# start_relay [NAME]: starts the relay (its output in $WORK/NAME.log, default relay.log;
# NAME is a shell identifier).
start_relay() {
    local name=${1:-relay} pid_var="PID_${1:-relay}"
    start "$name" "$BIN" --config "$CONFIG" serve
    wait_ports "$name" "$SMTP" "$TLS" "$HTTP" "$OPS" || return 1
    RELAY_PID=${!pid_var} RELAY_LOG="$WORK/$name.log"
    echo "relay pid $RELAY_PID, RSS $(rss_line)"
}

# ---------------------------------------------------------------- helpers

# rss_line: the relay's current and peak resident set.
rss_line() {
    awk '/^VmRSS|^VmHWM/ { printf "%s %.1f MiB ", $1, $2 / 1024 }' "/proc/$RELAY_PID/status"
}

# metric NAME [LABEL=VALUE...]: the summed samples of NAME on the operator listener.
metric() {
    "$PY" "$HERE/attack_common.py" metric "$OPS_URL/metrics" "$@"
}

# admin METHOD PATH [JSON]: the admin API's answer (JSON); fails unless its status is 2xx.
admin() {
    "$PY" "$HERE/attack_common.py" admin "$OPS_URL" "$ADMIN_TOKEN" "$@"
}

# ---------------------------------------------------------------- check 1: smuggling

smuggling_matrix() {
    "$PY" "$HERE/attack_smuggle.py" "$SMTP" "$APP_SOURCE" "$SINK" "$DELIVERY_TIMEOUT"
}

# ---------------------------------------------------------------- check 2: SMTP slowloris

smtp_slowloris() {
    local before after
    before=$(metric optin_smtp_connections_refused_total reason=untrusted_per_ip) || return 1
    "$PY" "$HERE/attack_slowloris.py" smtp "$SMTP" 127.0.2 10 30 3 30 "$APP_SOURCE" \
        127.0.2.250 || return 1
    after=$(metric optin_smtp_connections_refused_total reason=untrusted_per_ip) || return 1
    echo "optin_smtp_connections_refused_total{reason=untrusted_per_ip}: $before -> $after"
    echo "relay: $(rss_line)"
    [[ $((after - before)) -eq 200 ]]
}

long_command_line() {
    "$PY" "$HERE/attack_slowloris.py" longline "$SMTP" 127.0.2.251 2048
}

# ---------------------------------------------------------------- check 3: AUTH

auth_flood() {
    local -A before
    local r d ok=0
    for r in ok failed locked busy; do
        before[$r]=$(metric optin_auth_attempts_total result=$r) || return 1
    done
    "$PY" "$HERE/attack_auth.py" "$SMTP" 127.1 200 4 target "$RELAY_PID" "$RSS_LIMIT_KIB" ||
        return 1
    for r in ok failed locked busy; do
        d=$(($(metric optin_auth_attempts_total result=$r) - ${before[$r]}))
        echo "optin_auth_attempts_total{result=\"$r\"}: +$d"
        if [[ $r == ok ]]; then
            [[ $d -eq 0 ]] || { echo "an AUTH succeeded"; ok=1; }
        else
            [[ $d -gt 0 ]] || ok=1
        fi
    done
    return $ok
}

# The list hydra tries: 12 wrong passwords, the right one (past the lockout after 10
# failures), three more.
HYDRA_BEFORE_RIGHT=12

hydra_locked_out() {
    local list="$WORK/hydra-passwords.txt" out="$WORK/hydra.out" locked0 failed0 rc
    { for i in $(seq "$HYDRA_BEFORE_RIGHT"); do echo "guess-$i"; done
      echo "$PASSWORD"
      for i in 13 14 15; do echo "guess-$i"; done; } >"$list"
    locked0=$(metric optin_auth_attempts_total result=locked) &&
        failed0=$(metric optin_auth_attempts_total result=failed) || return 1
    # One task (in order), implicit TLS (-S), AUTH PLAIN, from 127.0.0.1; -I: no restore file.
    (cd "$WORK" && timeout 180 hydra -l shop -P "$list" -t 1 -S -s "$TLS" -V -I \
        127.0.0.1 smtp PLAIN) >"$out" 2>&1
    rc=$?
    grep -E '^\[ATTEMPT\]|valid password|^\[[0-9]+\]\[smtp\]|completed|ERROR' "$out"
    echo "(hydra exit status $rc)"
    local attempts locked failed
    attempts=$(grep -c '^\[ATTEMPT\]' "$out")
    locked=$(($(metric optin_auth_attempts_total result=locked) - locked0))
    failed=$(($(metric optin_auth_attempts_total result=failed) - failed0))
    echo "hydra: $attempts attempts; the relay counted $failed failed (535) and $locked" \
        "locked out (454 4.7.0, no password check); the right password was number" \
        "$((HYDRA_BEFORE_RIGHT + 1))"
    [[ $rc -le 1 && $attempts -eq 16 ]] || { echo "hydra did not try every password"; return 1; }
    grep -q '0 valid password found' "$out" || { echo "hydra found the password"; return 1; }
    ! grep -q '^\[[0-9]*\]\[smtp\].*password:' "$out" || return 1
    [[ $failed -eq 10 && $locked -eq 6 ]]
}

# The password hydra could not use works from another address (it was in its list).
right_password_elsewhere() {
    swaks --server 127.0.0.1 --port "$TLS" --tlsc --local-interface 127.0.0.9 \
        --auth PLAIN --auth-user shop --auth-password "$PASSWORD" --quit-after AUTH \
        --helo client.test --timeout 20 2>&1 | tee "$WORK/swaks-right.out" |
        grep -E '^(<-|<~)  ?[0-9]{3} '
    grep -q '235 2\.7\.0' "$WORK/swaks-right.out"
}

# ---------------------------------------------------------------- checks 4, 5: reports

report_limits() {
    local before after r line=""
    for r in too_big mime_budget report_rate; do
        line+="$r=$(metric optin_untrusted_refusals_total reason=$r) "
    done
    "$PY" "$HERE/attack_reports.py" limits "$SMTP" 127.0.4.1 "$FEEDBACK" 1048576 \
        "$WORK/edge/spool" "$RELAY_PID" || return 1
    echo "optin_untrusted_refusals_total before: $line"
    line=""
    for r in too_big mime_budget report_rate; do
        line+="$r=$(metric optin_untrusted_refusals_total reason=$r) "
    done
    echo "optin_untrusted_refusals_total after:  $line"
}

report_folded() {
    "$PY" "$HERE/attack_reports.py" folded "$SMTP" 127.0.4.2 "$FEEDBACK" "$WORK/edge/spool"
}

# The same hostile mail to a return path (a made-up token: it would be kept aside if it
# were taken at all), whose limits ([bounces] max_size, 1 MiB) are the feedback address's.
RETURN_PATH="bounces+$(head -c 40 /dev/urandom | base32 | tr -d '=' | tr 'A-Z' 'a-z')@$MAIL_DOMAIN"
bounce_limits() {
    "$PY" "$HERE/attack_reports.py" limits "$SMTP" 127.0.4.6 "$RETURN_PATH" 1048576 \
        "$WORK/edge/spool" "$RELAY_PID" &&
        "$PY" "$HERE/attack_reports.py" folded "$SMTP" 127.0.4.7 "$RETURN_PATH" \
            "$WORK/edge/spool"
}

# The subscription form, confirmation links and account keys as a stranger tries them
# (attack_forms.py): a flood from one address, a mail bomb from twelve, made-up links and
# keys; then the victim has no consent.
FORM_VICTIM=victim@example.org
forms() {
    "$PY" "$HERE/attack_forms.py" "$HTTP" 127.0.9 "$SINK" news weekly "$FORM_VICTIM" || return 1
    local out
    out=$("$BIN" --config "$CONFIG" suppress check "$FORM_VICTIM" --account news --list weekly --stream marketing)
    echo "$out"
    grep -q "^consent: *no " <<<"$out" || { echo "the victim was subscribed"; return 1; }
}

# The click redirect and the open pixel with made-up tokens: 404, no Location.
tracking_tokens() {
    "$PY" "$HERE/attack_reports.py" tracking "$HTTP"
}

unsubscribe_size() {
    local reader=reader4@example.net
    "$BIN" --config "$CONFIG" lists grant "$reader" --account promo &&
        "$PY" "$HERE/attack_reports.py" unsubscribe "$SMTP" "$PROMO_SOURCE" 127.0.4.5 \
            "$SINK" "$OPS_URL" "$ADMIN_TOKEN" "$reader" 65536
}

# 20 addresses x 5 connections (the hourly report cap of each) in the middle of a 1 MiB
# report: 100 MiB sent, over the strangers' eighth of max_data_memory (512 MiB).
report_inflight() {
    "$PY" "$HERE/attack_reports.py" inflight "$SMTP" 127.0.6 20 5 "$FEEDBACK" 1048576 \
        "$RELAY_PID" $((512 * 1024 * 1024 / 8))
}

report_rate() {
    "$PY" "$HERE/attack_reports.py" rate "$SMTP" 127.0.4.3 "$FEEDBACK" 5 &&
        echo "optin_untrusted_refusals_total{reason=report_rate}:" \
            "$(metric optin_untrusted_refusals_total reason=report_rate)"
}

forged_complaints() {
    local reader=reader5@example.net arf0
    "$BIN" --config "$CONFIG" lists grant "$reader" --account promo || return 1
    arf0=$(metric optin_complaints_received_total via=arf) || return 1
    "$PY" "$HERE/attack_reports.py" forged "$SMTP" "$PROMO_SOURCE" 127.0.4.4 "$FEEDBACK" \
        "$SINK" "$OPS_URL" "$ADMIN_TOKEN" "$reader" || return 1
    local arf1
    arf1=$(metric optin_complaints_received_total via=arf)
    echo "optin_complaints_received_total{via=arf}: $arf0 -> $arf1 (the genuine report only)"
    [[ $((arf1 - arf0)) -eq 1 ]]
}

# ---------------------------------------------------------------- check 6: DSN

dsn_bypass() {
    "$PY" "$HERE/attack_dsn.py" "$SMTP" "$NEWS_SOURCE" "$SINK" "$OPS_URL" "$ADMIN_TOKEN"
}

# ---------------------------------------------------------------- check 7: open relay

# nmap picks the script by the port's service name; ours are on random ports, so a data
# directory of its own names them (the rest of nmap's data comes from its usual place).
nmap_open_relay() {
    local dir="$WORK/nmap" out="$WORK/nmap.out"
    mkdir -p "$dir" &&
        printf 'smtp\t%s/tcp\t0.5\nsmtps\t%s/tcp\t0.5\n' "$SMTP" "$TLS" >"$dir/nmap-services" ||
        return 1
    timeout 120 nmap -Pn -n -sT -p "$SMTP,$TLS" --datadir "$dir" --script smtp-open-relay \
        --script-args smtp-open-relay.domain=attacker.example,smtp-open-relay.ip=127.0.0.1 \
        127.0.0.1 >"$out" 2>&1
    local rc=$?
    grep -E '^[0-9]+/tcp|smtp-open-relay' "$out"
    echo "(nmap exit status $rc)"
    [[ $rc -eq 0 ]] || { cat "$out"; return 1; }
    [[ $(grep -cE "smtp-open-relay: Server (isn't|doesn't seem to be) an open relay" \
        "$out") -eq 2 ]] && ! grep -q 'Server is an open relay' "$out"
}

relay_tricks() {
    "$PY" "$HERE/attack_relay.py" "$SMTP" "$TLS" 127.0.3 "$MAIL_DOMAIN" "$FEEDBACK" "$SINK"
}

# ---------------------------------------------------------------- check 8: TLS

# testssl_scan NAME ARGS...: protocols, cipher categories and vulnerabilities, judged by
# attack_tls.py from the JSON findings.
testssl_scan() {
    local name=$1 json="$WORK/testssl-$1.json"
    shift
    local started=$SECONDS
    (cd "$WORK" && timeout 300 "$TESTSSL" --quiet --color 0 --warnings off \
        --nodns none --jsonfile "$json" -p -s -U "$@") >"$WORK/testssl-$name.out" 2>&1
    local rc=$?
    echo "testssl $* : exit status $rc after $((SECONDS - started))s"
    [[ -s $json ]] || { tail -n 30 "$WORK/testssl-$name.out"; return 1; }
    "$PY" "$HERE/attack_tls.py" "$json"
}

silent_tls() {
    "$PY" "$HERE/attack_slowloris.py" tls "$TLS" "$SMTP" 127.0.2.252 2
}

# ---------------------------------------------------------------- check 9: HTTP slowloris

# What the public listener counted: metric:label=value:least rise the attack must cause.
HTTP_SERIES=(
    optin_http_timeouts_total:stage=header:42
    optin_http_timeouts_total:stage=body:2
    optin_http_timeouts_total:stage=idle:0
    optin_http_connections_refused_total:reason=per_ip:1
    optin_http_connections_refused_total:reason=total:1
)

http_slowloris() {
    local -A before
    local series name label least d ok=0
    for series in "${HTTP_SERIES[@]}"; do
        IFS=: read -r name label _ <<<"$series"
        before[$series]=$(metric "$name" listener=public "$label") || return 1
    done
    "$PY" "$HERE/attack_slowloris.py" http "$HTTP" 127.0.5 8 40 2 2 || return 1
    for series in "${HTTP_SERIES[@]}"; do
        IFS=: read -r name label least <<<"$series"
        d=$(($(metric "$name" listener=public "$label") - ${before[$series]}))
        echo "$name{listener=\"public\",${label/=/=\"}\"}: +$d (at least $least)"
        [[ $d -ge $least ]] || ok=1
    done
    return $ok
}

# ---------------------------------------------------------------- check 10: the CLI

# rcpt_reply ADDRESS: the relay's answer to RCPT TO:<ADDRESS> from the account "app".
rcpt_reply() {
    swaks --server 127.0.0.1 --port "$SMTP" --local-interface "$APP_SOURCE" \
        --from app@app.example --to "$1" --quit-after RCPT --helo app.test --timeout 20 2>&1 |
        grep -A1 -F -- "-> RCPT TO:<$1>" | tail -n 1
}

cli_suppress() {
    local address=cli10@example.net reply out
    reply=$(rcpt_reply "$address")
    echo "before: $reply"
    [[ $reply == *"250 2.1.5"* ]] || return 1
    out=$("$BIN" --config "$CONFIG" suppress add "$address") || { echo "$out"; return 1; }
    echo "$out"
    grep -qF "through the running relay; in force now" <<<"$out" || return 1
    reply=$(rcpt_reply "$address")
    echo "right after: $reply"
    [[ $reply == *"550 5.7.1 <$address> may not receive mail through this relay"* ]]
}

# ---------------------------------------------------------------- check 11: a backlog

stop_sink() {
    # shellcheck disable=SC2154 # set by start (lib.sh)
    local pid=$PID_sink
    kill -TERM "$pid" && poll 10 eval "! kill -0 $pid 2>/dev/null" || return 1
    wait "$pid"
    forget "$pid"
}

# rss_kib FIELD: VmRSS or VmHWM of the relay, in KiB.
rss_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$RELAY_PID/status"; }

backlog() {
    local tag="backlog-$RANDOM" before after started
    stop_sink || { echo "could not stop the sink"; return 1; }
    echo "sink stopped: the smart host refuses connections"
    before=$(rss_kib VmRSS)
    "$PY" "$HERE/attack_backlog.py" submit "$SMTP" "$APP_SOURCE" "$BACKLOG" 20 "$tag" &&
        "$PY" "$HERE/attack_backlog.py" queued "$OPS_URL" "$ADMIN_TOKEN" "$BACKLOG" 60 ||
        return 1
    sleep 3 # every message tried once and deferred
    after=$(rss_kib VmRSS)
    echo "relay RSS with $BACKLOG messages queued: $((after / 1024)) MiB" \
        "($(((after - before) * 1024 / BACKLOG)) bytes per message over the" \
        "$((before / 1024)) MiB before);" \
        "VmHWM $(($(rss_kib VmHWM) / 1024)) MiB;" \
        "deferred so far: $(metric optin_delivery_recipients_total result=deferred)"
    sigterm_exits_zero || return 1
    started=${EPOCHREALTIME/[.,]/}
    start_relay relay2 >/dev/null || return 1
    "$PY" "$HERE/attack_backlog.py" queued "$OPS_URL" "$ADMIN_TOKEN" "$BACKLOG" 60 || return 1
    echo "restart over the backlog: listening and all $BACKLOG queued after" \
        "$(((${EPOCHREALTIME/[.,]/} - started) / 1000)) ms; RSS $(rss_line)"
    start_sink || return 1
    "$PY" "$HERE/attack_backlog.py" drain "$OPS_URL" "$ADMIN_TOKEN" "$RELAY_PID" "$SINK" \
        "$BACKLOG" "$tag" 300 || return 1
    [[ $(rss_kib VmHWM) -lt $RSS_LIMIT_KIB ]]
}

# ---------------------------------------------------------------- the end

relay_rss() {
    echo "relay after every attack: $(rss_line)"
    local hwm
    hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$RELAY_PID/status")
    [[ $hwm -lt $RSS_LIMIT_KIB ]]
}

sigterm_exits_zero() {
    local pid=$RELAY_PID started=$SECONDS
    kill -TERM "$pid" || return 1
    if ! poll 30 eval "! kill -0 $pid 2>/dev/null"; then
        echo "the relay is still running 30s after SIGTERM"
        return 1
    fi
    wait "$pid"
    local rc=$?
    forget "$pid"
    echo "the relay exited with status $rc after $((SECONDS - started))s"
    tail -n 3 "$RELAY_LOG"
    [[ $rc -eq 0 ]]
}

# ---------------------------------------------------------------- main

finish() {
    if [[ ${#FAILED[@]} -gt 0 && -s "$RELAY_LOG" ]]; then
        note "relay log (last warnings and errors):"
        grep -E ' (WARN|ERROR) ' "$RELAY_LOG" | tail -n 15 | sed 's/^/    /'
    fi
    summarise_and_exit
}


main() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/optin-attacks.XXXXXX") || exit 1
    chmod 755 "$WORK"
    setup "install packages (${PACKAGES[*]})" install_packages
    setup "tools present" tools_present
    setup "relay binary" relay_binary
    setup "pick free ports on 127.0.0.1" pick_ports
    setup "hash-password, write the config, config check" write_config
    setup "start the sink (aiosmtpd)" start_sink
    setup "start the relay" start_relay

    check "1. smuggling matrix (DATA, BDAT, BDAT split; CR/LF/CRLF/NUL around the dot): one 5xx each, session goes on, nothing smuggled reaches the sink" \
        smuggling_matrix
    check "2. SMTP slowloris: 300 connections from 10 addresses, caps (421 4.7.0), idle and session timeouts (421 4.4.2), greeting latency" \
        smtp_slowloris
    check "2. a command line past max_command_line without CRLF: 500 5.5.2 and close" \
        long_command_line
    check "3. AUTH flood: 200 sessions from 200 addresses, STARTTLS + 4 wrong AUTHs each; VmHWM under 300 MB; failed, locked and busy counted" \
        auth_flood
    check "3. hydra (smtps, AUTH PLAIN, one address): locked out after 10 failures, the right password (number $((HYDRA_BEFORE_RIGHT + 1))) not found" \
        hydra_locked_out
    check "3. the password hydra had works from another address (swaks, 235)" \
        right_password_elsewhere
    check "4. reports from a stranger: 2 MiB (552, at SIZE= and after DATA), 24 MiB of empty parts (552, RSS flat), over the MIME budget (550 5.6.0), nothing kept" \
        report_limits
    check "4. a report nested over the MIME budget with folded Content-Type fields: 550 5.6.0" \
        report_folded
    check "4. reports over the per-client hourly cap: 450 4.7.1" report_rate
    check "4. the same hostile mail to a return path (forged token): 552 at SIZE= and after DATA, RSS flat, 550 5.6.0 over the MIME budget (also folded), nothing kept" \
        bounce_limits
    check "4. 100 strangers' connections in the middle of a 1 MiB report: RSS bounded by the strangers' share of max_data_memory, those past it 452 4.3.1, returned after" \
        report_inflight
    check "4. a stranger's mail to an unsubscribe+TOKEN@ address over 64 KiB: 552 (SIZE= and after DATA), nothing recorded" \
        unsubscribe_size
    check "5. forged complaints (tokenless unsigned, forged token) change nothing; the genuine token does (control)" \
        forged_complaints
    check "6. DSN consent bypass: RET=FULL marketing, complaint-suppressed sender gets no DSN; a good sender one DSN, headers only" \
        dsn_bypass
    check "7. nmap smtp-open-relay on the plain and the implicit-TLS listener: not an open relay" \
        nmap_open_relay
    check "7. open-relay tricks by hand from a stranger (%-hack, source routes, quoted, bang paths, IP literals, others' postmaster): all refused but fbl@ and postmaster" \
        relay_tricks
    check "8. testssl.sh on the implicit-TLS listener: no SSLv2/3, no TLS 1.0/1.1, no NULL/EXPORT/RC4, no vulnerability" \
        testssl_scan implicit "127.0.0.1:$TLS"
    check "8. testssl.sh with STARTTLS (-t smtp): the same" \
        testssl_scan starttls -t smtp "127.0.0.1:$SMTP"
    check "8. silent TLS clients (implicit TLS, STARTTLS) closed at the handshake timeout" silent_tls
    check "9. HTTP public listener: no /metrics or /admin, security headers; slowloris heads and bodies cut off, per-client and total caps (503), served again" \
        http_slowloris
    check "9. the click redirect and open pixel with made-up tokens (random, a URL in their place, 5000 characters): 404, never a Location" \
        tracking_tokens
    check "9. the subscription form: a flood from one address (429 past max_per_ip), a mail bomb from 12 addresses (at most 3 confirmations), made-up confirmation links and account keys refused; the victim not subscribed" \
        forms
    check "10. suppress add (CLI) against the running relay: the very next RCPT is refused" \
        cli_suppress
    check "the relay's peak RSS after every attack is under 300 MB" relay_rss
    check "11. backlog: $BACKLOG messages queued while the next hop is down (RSS), SIGTERM, restart over them, drained exactly once (peak RSS)" \
        backlog
    check "SIGTERM: the relay exits 0" sigterm_exits_zero
    finish
}

main "$@"
