#!/usr/bin/env bash
# Interop test: optin-relay against real outside SMTP software, on 127.0.0.1 only.
#
# Installs (Debian packages, only when missing): postfix (for smtp-source/smtp-sink),
# swaks, libnet-ssleay-perl (swaks' TLS support), python3-aiosmtpd, openssl (also makes the
# DKIM keys), chromium (headless browser), python3-websocket (drives it over the DevTools
# protocol), python3-dkim (verifies DKIM), python3-nacl (its Ed25519 support) and
# prometheus (the Prometheus server and promtool).
# Builds the relay with `cargo build --release`, then runs three relays on free ports:
#   auth  - policy with one AUTH user only (no trusted network); delivers to an aiosmtpd
#           sink (sink.py, SMTPUTF8 on)
#   local - policy trusting 127.0.0.0/8; delivers to Postfix's smtp-sink
#   news  - one marketing-only account "news" trusting 127.0.0.0/8 (from_domains
#           news.example, one list "weekly" named "The Weekly"), unsubscribe links on its
#           own HTTP port, and two DKIM keys for news.example made with openssl at run
#           time (RSA-2048, selector rsa2026; Ed25519, selector ed2026); delivers to a
#           second aiosmtpd sink
# and checks:
#   1. swaks STARTTLS + AUTH PLAIN / AUTH LOGIN are accepted and delivered; AUTH is not
#      offered without TLS (and answered 538 if sent anyway); MAIL without AUTH gets 530;
#      a wrong password gets 535
#   2. swaks on the implicit-TLS listeners (--tlsc), with AUTH and on the trusted relay
#   3. Python smtplib: SMTPUTF8 + 8BITMIME (non-ASCII addresses, names, 8-bit body) and a
#      plain 8BITMIME message arrive byte-intact at the aiosmtpd sink
#   4. smtp-source load (1000 messages, 10 sessions) -> relay -> smtp-sink: all arrive
#   5. GET /healthz (public listener) and /metrics (operator listener, [admin] listen, its
#      own port); accepted/delivered counters match what was sent
#   6. `optin-relay queue list` shows an empty queue once everything is delivered
#   7. SIGTERM makes each relay exit 0 within a few seconds
#   8. news: `lists grant` (CLI) through the running relay's admin API, in force at once;
#      marketing to the granted reader is delivered with List-Unsubscribe (http + mailto,
#      one token), List-Unsubscribe-Post (one-click) and List-Id; to a stranger it is
#      refused at RCPT (550 5.7.1 no consent recorded)
#   9. news: the delivered marketing message has one DKIM-Signature per key (d=news.example,
#      rsa-sha256 and ed25519-sha256); python3-dkim (dkim_verify.py) verifies each, asking
#      a fake DNS function for the TXT records made from the keys with openssl (k=rsa with
#      the SubjectPublicKeyInfo, k=ed25519 with the raw key, RFC 8463); each h= lists From,
#      Subject, List-Unsubscribe and List-Unsubscribe-Post; the same message with the
#      Subject changed, or with a second List-Unsubscribe on top, fails each signature
#  10. news: headless Chromium opens the http unsubscribe link of the delivered message,
#      the page names "The Weekly", a real click on "Unsubscribe from The Weekly" POSTs the
#      form and shows "You are unsubscribed"; the same message is then refused at RCPT
#      (550 5.7.1 has unsubscribed from this list); events/unsubscribes.jsonl in the spool
#      has exactly that one unsubscribe (via http); metrics count it
#  11. each relay's /metrics passes `promtool check metrics`; a real Prometheus (on a free
#      port, its TSDB in the work directory) scrapes the loopback relay every second until
#      up{job="optin-relay"} is 1 and optin_messages_accepted_total is positive, then stops
#  12. news: a second list "The Daily" by policy reload and `lists grant --list daily`; headless
#      Chromium with JavaScript disabled (browser_preferences.py) opens the same link's
#      preference page: lang, one h1, a fieldset with a legend, a label per checkbox, The
#      Weekly unchecked (left), The Daily checked; clicking The Daily's label and "Save my
#      choices" POSTs /preferences ("You left The Daily"), the page then shows it unchecked;
#      "I unsubscribed from The Weekly by mistake" POSTs /resubscribe ("Please check your
#      inbox"), and the confirmation message reaches the sink
#  13. the account API with 1 000 000 addresses: `account key create`, a CSV upload streamed
#      with curl, the job polled to done, the relay's resident memory before and after
# Prints one PASS:/FAIL: line per check, exits 1 if any check failed. Every process it
# starts is stopped on exit. Set INTEROP_KEEP=1 to keep the work directory (it is kept
# anyway when a check failed), INTEROP_VERBOSE=1 to see each check's output on PASS too.
#
# Usage: tests/interop/run.sh   (as root, or with sudo available for apt-get)

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3            # Debian's interpreter: python3-aiosmtpd lives there
SMTP_SOURCE=/usr/sbin/smtp-source
SMTP_SINK=/usr/sbin/smtp-sink
CHROMIUM=/usr/bin/chromium     # Debian's launcher (it execs /usr/lib/chromium/chromium)
PACKAGES=(postfix swaks libnet-ssleay-perl python3-aiosmtpd openssl chromium python3-websocket
    python3-dkim python3-nacl prometheus)
PROMETHEUS=/usr/bin/prometheus # Debian's prometheus package: the server and promtool
PROMTOOL=/usr/bin/promtool
PROMETHEUS_TIMEOUT=30          # seconds for Prometheus to start and to see the relay
LOAD_MESSAGES=1000
LOAD_SESSIONS=10
DELIVERY_TIMEOUT=60            # seconds to wait for mail to reach a sink / queue to drain
PASSWORD="interop-$RANDOM-secret"
NEWS_MAIL_DOMAIN=relay.test    # the news relay's [unsubscribe] mail_domain
NEWS_LIST_NAME="The Weekly"    # the name of the news account's only list, "weekly"
NEWS_READER=reader@example.net # granted consent, then unsubscribes in the browser
NEWS_STRANGER=stranger@example.net   # never granted
NEWS_DKIM_DOMAIN=news.example  # d= of the news account's two DKIM keys
NEWS_DKIM_RSA_SELECTOR=rsa2026
NEWS_DKIM_ED_SELECTOR=ed2026
NEWS_DKIM_KEYS=()              # SELECTOR:ALGORITHM:TXT-RECORD, for dkim_verify.py

# Reporting, processes and cleanup, packages, the build: shared with faults.sh.
source "$HERE/lib.sh"

pick_ports() {
    local ports
    mapfile -t ports < <("$PY" "$HERE/util.py" ports 17) || return 1
    [[ ${#ports[@]} -eq 17 ]] || return 1
    AIO_PORT=${ports[0]} SINK_PORT=${ports[1]}
    AUTH_SMTP=${ports[2]} AUTH_TLS=${ports[3]} AUTH_HTTP=${ports[4]}
    LOCAL_SMTP=${ports[5]} LOCAL_TLS=${ports[6]} LOCAL_HTTP=${ports[7]}
    NEWS_SINK_PORT=${ports[8]} NEWS_SMTP=${ports[9]} NEWS_TLS=${ports[10]}
    NEWS_HTTP=${ports[11]} CDP_PORT=${ports[12]} PROM_PORT=${ports[13]}
    AUTH_OPS=${ports[14]} LOCAL_OPS=${ports[15]} NEWS_OPS=${ports[16]}
    NEWS_URL="http://127.0.0.1:$NEWS_HTTP"
    NEWS_OPS_URL="http://127.0.0.1:$NEWS_OPS"   # the operator listener: /metrics, admin API
}

# write_relay_config NAME SMTP TLS HTTP OPS SMARTHOST POLICY-TEXT
write_relay_config() {
    local name=$1 smtp=$2 tls=$3 http=$4 ops=$5 smarthost=$6 policy=$7
    local dir="$WORK/$name"
    mkdir -p "$dir"
    printf '%s\n' "$policy" >"$dir/policy.toml"
    cat >"$dir/relay.toml" <<EOF
[smtp]
listen = ["127.0.0.1:$smtp"]
listen_tls = ["127.0.0.1:$tls"]
hostname = "relay-$name.test"
[spool]
path = "$dir/spool"
[delivery]
smarthost = "127.0.0.1:$smarthost"
starttls = "opportunistic"
connection_idle_timeout = "2s"
[http]
listen = "127.0.0.1:$http"
[admin]
listen = "127.0.0.1:$ops"
[policy]
path = "$dir/policy.toml"
[log]
level = "info"
EOF
}

# dkim_record KEYFILE TYPE: the TXT record for KEYFILE's public key (RFC 6376 §3.6.1):
# k=rsa with the base64 DER SubjectPublicKeyInfo; k=ed25519 with the raw 32-octet key
# (RFC 8463 §4.2), the last 32 octets of the 44-octet DER SubjectPublicKeyInfo.
dkim_record() {
    local key=$1 type=$2 der p
    der="$key.pub.der"
    openssl pkey -in "$key" -pubout -outform DER -out "$der" || return 1
    case $type in
        rsa) p=$(base64 -w0 <"$der") ;;
        ed25519)
            [[ $(stat -c %s "$der") -eq 44 ]] ||
                { echo "$der: $(stat -c %s "$der") octets, expected 44" >&2; return 1; }
            p=$(tail -c 32 "$der" | base64 -w0)
            ;;
    esac
    [[ -n $p ]] || return 1
    echo "v=DKIM1; k=$type; p=$p"
}

# make_dkim_keys: an RSA-2048 and an Ed25519 key for the news account, made with openssl
# in $WORK/dkim; sets NEWS_DKIM_KEYS and prints the policy sections that use them.
make_dkim_keys() {
    local dir="$WORK/dkim" rsa ed
    mkdir -p "$dir" && chmod 700 "$dir" || return 1
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/rsa.pem" \
        2>"$dir/genpkey.log" &&
        openssl genpkey -algorithm ed25519 -out "$dir/ed25519.pem" 2>>"$dir/genpkey.log" ||
        { cat "$dir/genpkey.log" >&2; return 1; }
    rsa=$(dkim_record "$dir/rsa.pem" rsa) && ed=$(dkim_record "$dir/ed25519.pem" ed25519) ||
        return 1
    NEWS_DKIM_KEYS=("$NEWS_DKIM_RSA_SELECTOR:rsa-sha256:$rsa"
        "$NEWS_DKIM_ED_SELECTOR:ed25519-sha256:$ed")
    cat <<EOF
[[accounts.news.dkim]]
domain = "$NEWS_DKIM_DOMAIN"
selector = "$NEWS_DKIM_RSA_SELECTOR"
private_key = "$dir/rsa.pem"
[[accounts.news.dkim]]
domain = "$NEWS_DKIM_DOMAIN"
selector = "$NEWS_DKIM_ED_SELECTOR"
private_key = "$dir/ed25519.pem"
EOF
}

write_configs() {
    local hash dkim_policy
    hash=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password) || return 1
    [[ $hash == '$argon2'* ]] || { echo "hash-password printed: $hash"; return 1; }
    write_relay_config auth "$AUTH_SMTP" "$AUTH_TLS" "$AUTH_HTTP" "$AUTH_OPS" "$AIO_PORT" \
        "[accounts.shop]
[[accounts.shop.users]]
username = \"shop\"
password_hash = \"$hash\""
    write_relay_config local "$LOCAL_SMTP" "$LOCAL_TLS" "$LOCAL_HTTP" "$LOCAL_OPS" "$SINK_PORT" \
        '[accounts.local]
networks = ["127.0.0.0/8"]'
    # Not in a $(...) subshell: make_dkim_keys sets NEWS_DKIM_KEYS.
    make_dkim_keys >"$WORK/dkim-policy.toml" || return 1
    dkim_policy=$(<"$WORK/dkim-policy.toml")
    printf 'DKIM record: %.100s...\n' "${NEWS_DKIM_KEYS[@]}"
    write_relay_config news "$NEWS_SMTP" "$NEWS_TLS" "$NEWS_HTTP" "$NEWS_OPS" "$NEWS_SINK_PORT" \
        '[accounts.news]
networks = ["127.0.0.0/8"]
streams = ["marketing"]
from_domains = ["news.example"]
contact_address = "hello@news.example"
postal_address = "1 Main St, Springfield"
[accounts.news.lists.weekly]
name = "The Weekly"
consent_statement = "You receive {list} because you subscribed at {source}. Unsubscribe: {unsubscribe}"
consent_source = "news.example/subscribe"
'"$dkim_policy"
    cat >>"$WORK/news/relay.toml" <<EOF
[unsubscribe]
public_url = "$NEWS_URL"
mail_domain = "$NEWS_MAIL_DOMAIN"
[lists]
refresh_interval = "100ms"
EOF
    "$BIN" --config "$WORK/auth/relay.toml" config check &&
        "$BIN" --config "$WORK/local/relay.toml" config check &&
        "$BIN" --config "$WORK/news/relay.toml" config check
}

start_sinks() {
    mkdir -p "$WORK/aio-sink" "$WORK/news-sink"
    start aiosink "$PY" "$HERE/sink.py" "$AIO_PORT" "$WORK/aio-sink"
    start newssink "$PY" "$HERE/sink.py" "$NEWS_SINK_PORT" "$WORK/news-sink"
    # smtp-sink drops to "nobody" when run as root; its dump directory must be writable.
    # Otherwise it exits at the first message ("open ...: Permission denied").
    chmod 755 "$WORK" &&
        SINK_DIR=$(mktemp -d "$WORK/smtp-sink.XXXXXX") && chmod 777 "$SINK_DIR" || return 1
    local user=()
    if [[ $(id -u) -eq 0 ]]; then
        user=(-u nobody)
        runuser -u nobody -- test -w "$SINK_DIR" ||
            { echo "$SINK_DIR is not writable by nobody"; return 1; }
    fi
    start smtpsink "$SMTP_SINK" "${user[@]}" -d "$SINK_DIR/msg." \
        "127.0.0.1:$SINK_PORT" 256
    wait_ports aiosink "$AIO_PORT" && wait_ports newssink "$NEWS_SINK_PORT" &&
        wait_ports smtpsink "$SINK_PORT"
}

start_relays() {
    start relay_auth "$BIN" --config "$WORK/auth/relay.toml" serve
    start relay_local "$BIN" --config "$WORK/local/relay.toml" serve
    start relay_news "$BIN" --config "$WORK/news/relay.toml" serve
    wait_ports relay_auth "$AUTH_SMTP" "$AUTH_TLS" "$AUTH_HTTP" "$AUTH_OPS" &&
        wait_ports relay_local "$LOCAL_SMTP" "$LOCAL_TLS" "$LOCAL_HTTP" "$LOCAL_OPS" &&
        wait_ports relay_news "$NEWS_SMTP" "$NEWS_TLS" "$NEWS_HTTP" "$NEWS_OPS"
}

# ---------------------------------------------------------------- client helpers

ACCEPTED_auth=0                # messages each relay acknowledged with "queued as"
ACCEPTED_local=0
ACCEPTED_news=0
QUEUED_RE='250 2\.0\.0 OK queued as [0-9A-Fa-f]{16}'

# swaks_run LOGNAME SWAKS-ARGS...: runs swaks with common arguments; output in
# $WORK/LOGNAME.swaks and on stdout; returns swaks' exit status.
swaks_run() {
    local log="$WORK/$1.swaks"
    shift
    swaks --server 127.0.0.1 --helo client.test --timeout 30 \
        --from sender@example.com --to rcpt@example.net "$@" >"$log" 2>&1
    local rc=$?
    cat "$log"
    echo "(swaks exit status $rc)"
    return $rc
}

# in_aio_sink TEXT / in_news_sink TEXT / in_smtp_sink TEXT: a delivered message contains TEXT.
in_aio_sink() { grep -qsF -- "$1" "$WORK"/aio-sink/*.eml; }
in_smtp_sink() { grep -rqsF -- "$1" "$SINK_DIR"; }
in_news_sink() { grep -qsF -- "$1" "$WORK"/news-sink/*.eml; }

# expect_delivered SINK-FUNCTION TEXT
expect_delivered() {
    if poll "$DELIVERY_TIMEOUT" "$1" "$2"; then
        echo "delivered: found \"$2\" at the sink"
    else
        echo "not delivered: \"$2\" not at the sink after ${DELIVERY_TIMEOUT}s"
        return 1
    fi
}

# swaks_accepted RELAY TAG SWAKS-ARGS...: the message is queued and reaches RELAY's sink.
swaks_accepted() {
    local relay=$1 tag=$2
    shift 2
    local out
    out=$(swaks_run "$tag" --header "Subject: $tag" "$@")
    local rc=$?
    echo "$out"
    grep -qE "$QUEUED_RE" <<<"$out" || { echo "no '250 … queued as' reply"; return 1; }
    local var="ACCEPTED_$relay"
    printf -v "$var" '%s' $((${!var} + 1))
    [[ $rc -eq 0 ]] || { echo "swaks failed"; return 1; }
    case $relay in
        auth) expect_delivered in_aio_sink "Subject: $tag" ;;
        news) expect_delivered in_news_sink "Subject: $tag" ;;
        *) expect_delivered in_smtp_sink "Subject: $tag" ;;
    esac
}

AUTH_ARGS=(--auth-user shop --auth-password "$PASSWORD")

# ---------------------------------------------------------------- checks 1-2: swaks

# swaks_auth MECHANISM: STARTTLS, AUTH MECHANISM (235 2.7.0), queued, delivered.
swaks_auth() {
    local tag="interop-auth-${1,,}-$$"
    swaks_accepted auth "$tag" --port "$AUTH_SMTP" --tls --auth "$1" "${AUTH_ARGS[@]}" &&
        grep -q "235 2\.7\.0" "$WORK/$tag.swaks"
}

swaks_no_tls_no_auth() {
    local out
    out=$(swaks_run no-tls-auth --port "$AUTH_SMTP" --auth PLAIN "${AUTH_ARGS[@]}")
    local rc=$?
    echo "$out"
    [[ $rc -ne 0 ]] || { echo "swaks succeeded without TLS"; return 1; }
    ! grep -qE '^<- +250[- ]AUTH' <<<"$out" || { echo "AUTH offered before STARTTLS"; return 1; }
    ! grep -q '235 ' <<<"$out" || { echo "AUTH succeeded without TLS"; return 1; }
    grep -q 'did not advertise authentication' <<<"$out"
}

auth_before_tls_538() {
    local out
    # AUTH PLAIN with "\0shop\0wrong" base64-encoded: refused before the password matters.
    out=$("$PY" "$HERE/smtp_say.py" 127.0.0.1 "$AUTH_SMTP" "EHLO client.test" \
        "AUTH PLAIN AHNob3AAd3Jvbmc=")
    echo "$out"
    grep -qE '^538 5\.7\.11' <<<"$out"
}

swaks_mail_without_auth() {
    local out
    out=$(swaks_run no-auth --port "$AUTH_SMTP" --tls)
    local rc=$?
    echo "$out"
    [[ $rc -ne 0 ]] || { echo "swaks succeeded without AUTH"; return 1; }
    grep -qE '530 5\.7\.0 Authentication required' <<<"$out"
}

swaks_mail_without_tls_or_auth() {
    local out
    out=$(swaks_run no-tls-no-auth --port "$AUTH_SMTP")
    local rc=$?
    echo "$out"
    [[ $rc -ne 0 ]] || { echo "swaks succeeded without TLS or AUTH"; return 1; }
    grep -qE '(530 5\.7\.0|554 5\.7\.1) ' <<<"$out"
}

swaks_wrong_password() {
    local out
    out=$(swaks_run wrong-password --port "$AUTH_SMTP" --tls --auth PLAIN \
        --auth-user shop --auth-password "not-$PASSWORD")
    local rc=$?
    echo "$out"
    [[ $rc -ne 0 ]] || { echo "swaks succeeded with a wrong password"; return 1; }
    grep -qE '535 5\.7\.8' <<<"$out"
}

swaks_tlsc_auth() {
    swaks_accepted auth "interop-tlsc-auth-$$" --port "$AUTH_TLS" --tlsc \
        --auth PLAIN "${AUTH_ARGS[@]}"
}

swaks_tlsc_local() {
    swaks_accepted local "interop-tlsc-local-$$" --port "$LOCAL_TLS" --tlsc
}

# ---------------------------------------------------------------- check 3: smtplib

smtplib_utf8() {
    local tag="interop-smtplib-$$" out
    out=$("$PY" "$HERE/smtplib_utf8.py" send 127.0.0.1 "$AUTH_SMTP" shop "$PASSWORD" "$tag")
    local rc=$?
    echo "$out"
    ACCEPTED_auth=$((ACCEPTED_auth + $(grep -cE "^SENT .* $QUEUED_RE" <<<"$out")))
    [[ $rc -eq 0 ]] || return 1
    "$PY" "$HERE/smtplib_utf8.py" verify "$WORK/aio-sink" "$tag" "$DELIVERY_TIMEOUT"
}

# ---------------------------------------------------------------- check 4: load

load_sender=load-sender@example.com

# The load's messages, by their From field: the envelope sender smtp-sink records is the
# relay's own return path (bounces+TOKEN@...), one per message.
smtp_sink_count() { grep -rlF "From: <$load_sender>" "$SINK_DIR" 2>/dev/null | wc -l; }
load_all_arrived() { [[ $(smtp_sink_count) -ge $LOAD_MESSAGES ]]; }

smtp_source_load() {
    local started=$SECONDS
    "$SMTP_SOURCE" -s "$LOAD_SESSIONS" -m "$LOAD_MESSAGES" -l 2048 -M client.test \
        -f "$load_sender" -t load-rcpt@example.net "127.0.0.1:$LOCAL_SMTP"
    local rc=$?
    echo "smtp-source exit status $rc after $((SECONDS - started))s"
    [[ $rc -eq 0 ]] || return 1
    ACCEPTED_local=$((ACCEPTED_local + LOAD_MESSAGES))
    poll "$DELIVERY_TIMEOUT" load_all_arrived
    echo "smtp-sink has $(smtp_sink_count) of $LOAD_MESSAGES load messages" \
        "after $((SECONDS - started))s"
    # Nothing may arrive twice: wait a moment for stragglers, then demand the exact count.
    sleep 1
    [[ $(smtp_sink_count) -eq $LOAD_MESSAGES ]]
}

# ---------------------------------------------------------------- check 8: consent, headers

# A marketing message of the account "news" (its only stream and list: no X-Optin-* needed).
NEWS_SWAKS=(--from bounce@news.example --header "From: hello@news.example")
NEWS_TAG="interop-news-weekly-$$"
NEWS_UNSUBSCRIBE_URL=""        # the http link of the delivered message, for the browser

news_relay_follows_grant() {
    local n
    n=$("$PY" "$HERE/util.py" metric "$NEWS_OPS_URL/metrics" optin_lists_delta_entries)
    echo "news relay: optin_lists_delta_entries=$n"
    [[ $n =~ ^[0-9]+$ && $n -ge 1 ]]
}

# lists grant from the CLI beside the running relay: made through its admin API.
news_grant() {
    local config="$WORK/news/relay.toml"
    "$BIN" --config "$config" lists grant "$NEWS_READER" --account news |
        tee /dev/stderr | grep -qF "through the running relay; in force now" || return 1
    "$BIN" --config "$config" lists check "$NEWS_READER" --account news || return 1
    poll 10 news_relay_follows_grant
}

news_marketing_delivered() {
    local out
    swaks_accepted news "$NEWS_TAG" --port "$NEWS_SMTP" "${NEWS_SWAKS[@]}" \
        --to "$NEWS_READER" || return 1
    # The envelope sender is the relay's own return path (VERP), not bounce@news.example.
    out=$("$PY" "$HERE/list_headers.py" "$WORK/news-sink" "$NEWS_TAG" "$NEWS_READER" \
        "bounces+*@$NEWS_MAIL_DOMAIN" "$NEWS_URL" "$NEWS_MAIL_DOMAIN" \
        "\"$NEWS_LIST_NAME\" <weekly.news.$NEWS_MAIL_DOMAIN>")
    local rc=$?
    echo "$out"
    NEWS_UNSUBSCRIBE_URL=$(sed -n 's/^URL //p' <<<"$out")
    [[ $rc -eq 0 && -n $NEWS_UNSUBSCRIBE_URL ]]
}

# ---------------------------------------------------------------- check 9: DKIM

# The delivered marketing message carries one DKIM-Signature per key (RSA and Ed25519);
# python3-dkim verifies each against the records made from the keys (a fake DNS function).
news_dkim_verified() {
    [[ ${#NEWS_DKIM_KEYS[@]} -eq 2 ]] || { echo "no DKIM keys: setup did not make them"; return 1; }
    "$PY" "$HERE/dkim_verify.py" "$WORK/news-sink" "$NEWS_TAG" "$NEWS_DKIM_DOMAIN" \
        "${NEWS_DKIM_KEYS[@]}"
}

# news_refused_at_rcpt RCPT REASON: swaks' RCPT TO:<RCPT> is answered 550 5.7.1 <RCPT> REASON.
news_refused_at_rcpt() {
    local rcpt=$1 reason=$2 out
    out=$(swaks_run "news-refused-${rcpt%@*}" --port "$NEWS_SMTP" "${NEWS_SWAKS[@]}" \
        --to "$rcpt" --header "Subject: $NEWS_TAG refused")
    local rc=$?
    echo "$out"
    [[ $rc -ne 0 ]] || { echo "swaks succeeded"; return 1; }
    ! grep -qE "$QUEUED_RE" <<<"$out" || { echo "the message was queued"; return 1; }
    grep -A1 -F -- "-> RCPT TO:<$rcpt>" <<<"$out" | tail -n 1 |
        grep -qF -- "<** 550 5.7.1 <$rcpt> $reason" ||
        { echo "RCPT TO:<$rcpt> not answered \"550 5.7.1 <$rcpt> $reason\""; return 1; }
}

# ---------------------------------------------------------------- check 10: browser

# group_members PGID: pids of the processes in process group PGID (from /proc).
group_members() {
    local f stat pgrp
    for f in /proc/[0-9]*/stat; do
        { stat=$(<"$f"); } 2>/dev/null || continue   # the process may just have gone
        # After "pid (comm) " come state, ppid, pgrp, ...
        read -r _ _ pgrp _ <<<"${stat##*) }"
        [[ $pgrp == "$1" ]] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
    return 0
}

start_chromium() {
    mkdir -p "$WORK/chromium/home" || return 1
    # setsid: its own process group, so cleanup can also reach the helper processes.
    # HOME in the work directory: nothing written to the real home. Chromium refuses some
    # ports (6000, 10080, ...: ERR_UNSAFE_PORT); the relay's HTTP port is allowed explicitly.
    start chromium setsid env HOME="$WORK/chromium/home" "$CHROMIUM" --headless --no-sandbox \
        --remote-debugging-port="$CDP_PORT" --user-data-dir="$WORK/chromium/profile" \
        --explicitly-allowed-ports="$NEWS_HTTP" \
        --no-first-run --no-default-browser-check --no-proxy-server \
        --disable-background-networking --disable-component-update --disable-sync \
        about:blank
    PGROUPS+=("$PID_chromium")
    wait_ports chromium "$CDP_PORT"
}

# stop_chromium: SIGTERM; the browser and every helper process must be gone within 10s.
stop_chromium() {
    local pid=$PID_chromium rc
    kill -TERM "$pid" 2>/dev/null
    poll 10 eval "! kill -0 $pid 2>/dev/null" || { echo "chromium still running"; return 1; }
    wait "$pid"
    rc=$?
    forget "$pid"
    if ! poll 10 eval "[[ -z \$(group_members $pid) ]]"; then
        echo "chromium helper processes left after the browser exited:" $(group_members "$pid")
        return 1
    fi
    local keep=() g
    for g in "${PGROUPS[@]}"; do
        [[ $g == "$pid" ]] || keep+=("$g")
    done
    PGROUPS=("${keep[@]}")
    echo "chromium stopped (exit status $rc), no helper process left"
}

browser_unsubscribe() {
    [[ -n $NEWS_UNSUBSCRIBE_URL ]] ||
        { echo "no unsubscribe link: the delivery check did not pass"; return 1; }
    start_chromium || return 1
    "$PY" "$HERE/browser_unsubscribe.py" "$CDP_PORT" "$NEWS_UNSUBSCRIBE_URL" "$NEWS_LIST_NAME"
    local rc=$?
    stop_chromium || rc=1
    return $rc
}

news_event_logged() {
    local log="$WORK/news/spool/events/unsubscribes.jsonl"
    [[ -f $log ]] || { echo "no $log"; return 1; }
    echo "$log (mode $(stat -c %a "$log")):"
    cat "$log"
    [[ $(wc -l <"$log") -eq 1 ]] || { echo "expected exactly one line"; return 1; }
    grep -F "\"address\":\"$NEWS_READER\"" "$log" | grep -qF '"via":"http"' ||
        { echo "no line with \"address\":\"$NEWS_READER\" and \"via\":\"http\""; return 1; }
    [[ $(stat -c %a "$log") == 600 ]] || { echo "mode is not 0600"; return 1; }
}

# news_metric EXPECTED NAME [LABEL=VALUE]
news_metric() {
    local value
    value=$("$PY" "$HERE/util.py" metric "$NEWS_OPS_URL/metrics" "$2" ${3:+"$3"})
    echo "news relay: $2${3:+{$3\}}=$value (expected $1)"
    [[ $value == "$1" ]]
}

# The recipient's preference page in Chromium with JavaScript off. The news account gets a
# second list by a policy reload (with two lists, consent is no longer decided at RCPT, so
# this comes after the checks that rely on that), the reader is granted it, and the page of
# the message's link (the reader left "The Weekly" in browser_unsubscribe) is clicked
# through: uncheck "The Daily" and save, then "I unsubscribed by mistake", whose
# confirmation message must reach the sink.
browser_preferences() {
    [[ -n $NEWS_UNSUBSCRIBE_URL ]] ||
        { echo "no unsubscribe link: the delivery check did not pass"; return 1; }
    local config="$WORK/news/relay.toml" rc
    printf '\n[accounts.news.lists.daily]\nname = "The Daily"\nconsent_statement = "%s"\n' \
        'You receive {list} because you subscribed. Unsubscribe: {unsubscribe}' \
        >>"$WORK/news/policy.toml"
    "$BIN" --config "$config" policy reload || return 1
    "$BIN" --config "$config" lists grant "$NEWS_READER" --account news --list daily |
        grep -qF "in force now" || return 1
    start_chromium || return 1
    "$PY" "$HERE/browser_preferences.py" "$CDP_PORT" "$NEWS_UNSUBSCRIBE_URL" \
        "$NEWS_LIST_NAME" "The Daily"
    rc=$?
    stop_chromium || rc=1
    ((rc == 0)) || return 1
    poll 10 grep -rqF "Please confirm your subscription to $NEWS_LIST_NAME" "$WORK/news-sink" ||
        { echo "no confirmation message for $NEWS_LIST_NAME reached the sink"; return 1; }
    echo "the confirmation message for $NEWS_LIST_NAME reached the sink"
}

# The account API at scale: a key made with the CLI, a CSV of 1 000 000 addresses uploaded
# (streamed from disk), the job polled to done, every address counted on its list, and the
# relay's resident memory (VmRSS, VmHWM from /proc) before and after, printed for the note.
BULK_ADDRESSES=1000000
account_bulk_upload() {
    local config="$WORK/news/relay.toml" key out job started rss0 hwm0 rss1 hwm1 state
    local pid=$PID_relay_news
    key=$("$BIN" --config "$config" account key create news --label interop |
        sed -n 's/^ *\(ork_[0-9a-f]*_[A-Za-z0-9_-]*\) *$/\1/p')
    [[ -n $key ]] || { echo "account key create printed no key"; return 1; }
    "$PY" -c '
import sys
out = sys.stdout
out.write("name,email\n")
for i in range(int(sys.argv[1])):
    out.write(f"Reader {i},bulk{i}@example.org\n")
' "$BULK_ADDRESSES" >"$WORK/bulk.csv"
    rss0=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
    hwm0=$(awk '/^VmHWM/{print $2}' "/proc/$pid/status")
    echo "file: $(stat -c %s "$WORK/bulk.csv") octets, $BULK_ADDRESSES addresses"
    echo "relay before: VmRSS ${rss0} kB, VmHWM ${hwm0} kB"
    started=$SECONDS
    out=$("$PY" "$HERE/util.py" upload "$NEWS_URL/account/consent/upload?list=weekly&name=bulk.csv" \
        "$key" "$WORK/bulk.csv") || { echo "upload refused: $out"; return 1; }
    job=$(sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p' <<<"$out")
    [[ -n $job ]] || { echo "no job id in $out"; return 1; }
    echo "uploaded in $((SECONDS - started)) s; job $job"
    job_done() {
        out=$("$PY" "$HERE/util.py" get-auth "$NEWS_URL/account/jobs/$job" "$key") || return 1
        state=$(sed -n 's/.*"state":"\([a-z]*\)".*/\1/p' <<<"$out")
        [[ $state == done || $state == failed ]]
    }
    poll 900 job_done || { echo "the job did not finish: $out"; return 1; }
    echo "job $state after $((SECONDS - started)) s: $out"
    [[ $state == done && $out == *"\"changed\":$BULK_ADDRESSES,"* ]] || return 1
    rss1=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
    hwm1=$(awk '/^VmHWM/{print $2}' "/proc/$pid/status")
    echo "relay after: VmRSS ${rss1} kB, VmHWM ${hwm1} kB (peak grew by $((hwm1 - hwm0)) kB)"
    out=$("$PY" "$HERE/util.py" get-auth "$NEWS_URL/account/lists" "$key") || return 1
    echo "lists: $out"
    [[ $out == *"\"consents\":$BULK_ADDRESSES"* || $out == *"\"consents\":$((BULK_ADDRESSES + 1))"* ]] ||
        { echo "the list does not count $BULK_ADDRESSES consents"; return 1; }
    rm -f "$WORK/bulk.csv"
}

news_unsubscribe_metrics() {
    local ok=0
    news_metric 1 optin_unsubscribes_total scope=list || ok=1
    news_metric 1 optin_recipients_withheld_total reason=consent_missing || ok=1
    news_metric 1 optin_recipients_withheld_total reason=unsubscribed_list || ok=1
    return $ok
}

# ---------------------------------------------------------------- check 11: Prometheus

# promtool_check NAME OPS-PORT: the relay's exposition passes `promtool check metrics`
# (format, a HELP line per metric, naming conventions).
promtool_check() {
    local name=$1 out="$WORK/metrics-$1.txt" rc
    "$PY" "$HERE/util.py" http "http://127.0.0.1:$2/metrics" >"$out" ||
        { echo "GET /metrics of relay $name failed"; return 1; }
    echo "relay $name: $(grep -c '^# HELP ' "$out") metrics, $(grep -vc '^#' "$out") samples"
    timeout 30 "$PROMTOOL" check metrics <"$out"
    rc=$?
    echo "promtool check metrics exit status $rc"
    return $rc
}

# prom_value QUERY TEST: Prometheus answers QUERY with one series whose value passes the
# awk condition TEST on $1 (e.g. '$1 == 1').
prom_value() {
    local values
    values=$("$PY" "$HERE/util.py" prom-query "http://127.0.0.1:$PROM_PORT" "$1") || return 1
    echo "$1 = $values"
    [[ $(wc -l <<<"$values") -eq 1 ]] && awk "{ exit !($2) }" <<<"$values"
}

# prometheus_scrapes: a real Prometheus scrapes the loopback relay every second; up is 1
# and the accepted-messages counter it stored is positive. Stopped (SIGTERM) at the end.
prometheus_scrapes() {
    local dir="$WORK/prometheus" rc=0 pid
    mkdir -p "$dir/data" || return 1
    cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: optin-relay
    static_configs:
      - targets: ["127.0.0.1:$LOCAL_OPS"]
EOF
    "$PROMTOOL" check config "$dir/prometheus.yml" || return 1
    start prometheus "$PROMETHEUS" --config.file="$dir/prometheus.yml" \
        --storage.tsdb.path="$dir/data" --web.listen-address="127.0.0.1:$PROM_PORT" \
        --log.level=warn
    wait_ports prometheus "$PROM_PORT" || return 1
    poll "$PROMETHEUS_TIMEOUT" prom_value 'up{job="optin-relay"}' '$1 == 1' >"$dir/up.out" ||
        rc=1
    tail -n 1 "$dir/up.out"
    if [[ $rc -eq 0 ]]; then
        poll "$PROMETHEUS_TIMEOUT" prom_value \
            'optin_messages_accepted_total{job="optin-relay"}' '$1 > 0' >"$dir/accepted.out" ||
            rc=1
        tail -n 1 "$dir/accepted.out"
    fi
    [[ $rc -eq 0 ]] || "$PY" "$HERE/util.py" http "http://127.0.0.1:$PROM_PORT/api/v1/targets"
    pid=$PID_prometheus
    kill -TERM "$pid" 2>/dev/null
    if ! poll 10 eval "! kill -0 $pid 2>/dev/null"; then
        echo "prometheus still running 10s after SIGTERM"
        return 1
    fi
    wait "$pid"
    echo "prometheus stopped (exit status $?)"
    forget "$pid"
    [[ $rc -eq 0 ]] || { echo "## prometheus.log"; tail -n 20 "$WORK/prometheus.log"; }
    return $rc
}

# ---------------------------------------------------------------- checks 5-7

queue_empty() {
    local config=$1 out
    out=$("$BIN" --config "$config" queue list) || return 1
    [[ $(tail -n 1 <<<"$out") == "0 message(s) queued" ]] &&
        [[ -z $("$BIN" --config "$config" queue list --json) ]]
}

queue_drains() {
    local name=$1 config="$WORK/$1/relay.toml"
    if poll "$DELIVERY_TIMEOUT" queue_empty "$config"; then
        "$BIN" --config "$config" queue list
        return 0
    fi
    echo "queue of relay $name not empty after ${DELIVERY_TIMEOUT}s:"
    "$BIN" --config "$config" queue list
    local id
    for id in $("$BIN" --config "$config" queue list --json | head -n 5 |
        "$PY" -c 'import json,sys; [print(json.loads(l)["id"]) for l in sys.stdin]'); do
        "$BIN" --config "$config" queue show "$id"
    done
    return 1
}

# metrics_consistent NAME HTTP-PORT OPS-PORT: /healthz on the public listener; the
# counters on the operator listener, and /metrics is not on the public one.
metrics_consistent() {
    local name=$1 http=$2 accepted_var="ACCEPTED_$1" url
    local expected=${!accepted_var}
    "$PY" "$HERE/util.py" http "http://127.0.0.1:$http/healthz" >/dev/null ||
        { echo "GET /healthz failed"; return 1; }
    if "$PY" "$HERE/util.py" http "http://127.0.0.1:$http/metrics" >/dev/null 2>&1; then
        echo "the public listener serves /metrics"
        return 1
    fi
    url="http://127.0.0.1:$3"
    local accepted delivered
    accepted=$("$PY" "$HERE/util.py" metric "$url/metrics" optin_messages_accepted_total)
    delivered=$("$PY" "$HERE/util.py" metric "$url/metrics" \
        optin_delivery_recipients_total result=delivered)
    echo "relay $name: clients saw $expected accepted; metrics say" \
        "accepted=$accepted delivered_recipients=$delivered"
    [[ $accepted == "$expected" && $delivered == "$expected" ]]
}

sigterm_exits_zero() {
    local name=$1 pid_var="PID_relay_$1"
    local pid=${!pid_var} started=${EPOCHREALTIME/[.,]/}
    kill -TERM "$pid" || return 1
    if ! poll 10 eval "! kill -0 $pid 2>/dev/null"; then
        echo "relay $name still running 10s after SIGTERM"
        return 1
    fi
    wait "$pid"
    local rc=$?
    forget "$pid"
    echo "relay $name exited with status $rc after" \
        "$(((${EPOCHREALTIME/[.,]/} - started) / 1000))ms"
    tail -n 5 "$WORK/relay_$name.log"
    [[ $rc -eq 0 ]]
}

# ---------------------------------------------------------------- main

# setup STEP FUNCTION: a failed setup step is a FAIL and ends the run.

finish() {
    summarise_and_exit relay_auth relay_local relay_news aiosink newssink smtpsink chromium \
        prometheus
}

main() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/optin-interop.XXXXXX") || exit 1
    setup "install packages (${PACKAGES[*]})" install_packages
    setup "cargo build --release" build_relay
    setup "pick free ports on 127.0.0.1" pick_ports
    note "ports: aiosmtpd=$AIO_PORT smtp-sink=$SINK_PORT" \
        "auth relay smtp=$AUTH_SMTP tls=$AUTH_TLS http=$AUTH_HTTP ops=$AUTH_OPS" \
        "local relay smtp=$LOCAL_SMTP tls=$LOCAL_TLS http=$LOCAL_HTTP ops=$LOCAL_OPS" \
        "news sink=$NEWS_SINK_PORT news relay smtp=$NEWS_SMTP tls=$NEWS_TLS" \
        "http=$NEWS_HTTP ops=$NEWS_OPS chromium devtools=$CDP_PORT prometheus=$PROM_PORT"
    setup "hash-password, write configs, config check" write_configs
    setup "start aiosmtpd sinks and smtp-sink" start_sinks
    setup "start relays (auth-only, loopback-trusting, news with unsubscribe links)" start_relays

    check "swaks STARTTLS + AUTH PLAIN: accepted and delivered" swaks_auth PLAIN
    check "swaks STARTTLS + AUTH LOGIN: accepted and delivered" swaks_auth LOGIN
    check "swaks AUTH without TLS: AUTH not offered, swaks cannot authenticate" \
        swaks_no_tls_no_auth
    check "AUTH before STARTTLS is answered 538 5.7.11" auth_before_tls_538
    check "swaks STARTTLS without AUTH: MAIL refused with 530 5.7.0" swaks_mail_without_auth
    check "swaks without TLS or AUTH: MAIL refused" swaks_mail_without_tls_or_auth
    check "swaks STARTTLS + wrong password: 535 5.7.8" swaks_wrong_password
    check "swaks implicit TLS (--tlsc) + AUTH PLAIN: accepted and delivered" swaks_tlsc_auth
    check "swaks implicit TLS (--tlsc) on the loopback relay: accepted and delivered" \
        swaks_tlsc_local
    check "smtplib SMTPUTF8 + 8BITMIME and plain 8BITMIME: delivered intact to aiosmtpd" \
        smtplib_utf8
    check "smtp-source $LOAD_MESSAGES messages x $LOAD_SESSIONS sessions -> smtp-sink: all arrive exactly once" \
        smtp_source_load
    check "news: lists grant (CLI) for $NEWS_READER, through the running relay" news_grant
    check "news: marketing to $NEWS_READER delivered with List-Unsubscribe (http + mailto), List-Unsubscribe-Post, List-Id" \
        news_marketing_delivered
    check "news: DKIM signatures ($NEWS_DKIM_RSA_SELECTOR rsa-sha256, $NEWS_DKIM_ED_SELECTOR ed25519-sha256) verify with python3-dkim; h= has List-Unsubscribe(-Post); a changed Subject fails" \
        news_dkim_verified
    check "news: marketing to $NEWS_STRANGER refused at RCPT: 550 5.7.1 no consent recorded" \
        news_refused_at_rcpt "$NEWS_STRANGER" "has no consent recorded for this list"
    check "news: headless Chromium opens the unsubscribe link, clicks \"Unsubscribe from $NEWS_LIST_NAME\": \"You are unsubscribed\"" \
        browser_unsubscribe
    check "news: marketing to $NEWS_READER again refused at RCPT: 550 5.7.1 has unsubscribed from this list" \
        news_refused_at_rcpt "$NEWS_READER" "has unsubscribed from this list"
    check "news: events/unsubscribes.jsonl has one line, $NEWS_READER via http" news_event_logged
    check "queue list: auth relay queue empty after delivery" queue_drains auth
    check "queue list: loopback relay queue empty after delivery" queue_drains local
    check "queue list: news relay queue empty after delivery" queue_drains news
    check "metrics: auth relay /healthz, accepted and delivered counters" \
        metrics_consistent auth "$AUTH_HTTP" "$AUTH_OPS"
    check "metrics: loopback relay /healthz, accepted and delivered counters" \
        metrics_consistent local "$LOCAL_HTTP" "$LOCAL_OPS"
    check "metrics: news relay /healthz, accepted and delivered counters" \
        metrics_consistent news "$NEWS_HTTP" "$NEWS_OPS"
    check "metrics: news relay unsubscribe and withheld-recipient counters" \
        news_unsubscribe_metrics
    check "promtool check metrics: auth relay /metrics" promtool_check auth "$AUTH_OPS"
    check "promtool check metrics: loopback relay /metrics" promtool_check local "$LOCAL_OPS"
    check "promtool check metrics: news relay /metrics" promtool_check news "$NEWS_OPS"
    check "prometheus scrapes the loopback relay every 1s: up == 1, optin_messages_accepted_total > 0" \
        prometheus_scrapes
    check "news: headless Chromium, JavaScript off, on the preference page: lists as labelled checkboxes, \"Save my choices\" leaves The Daily, \"I unsubscribed by mistake\" sends a confirmation message" \
        browser_preferences
    check "news: account API: $BULK_ADDRESSES addresses in one CSV upload, applied by a job; memory before and after" \
        account_bulk_upload
    check "SIGTERM: auth relay exits 0 within 10s" sigterm_exits_zero auth
    check "SIGTERM: loopback relay exits 0 within 10s" sigterm_exits_zero local
    check "SIGTERM: news relay exits 0 within 10s" sigterm_exits_zero news
    finish
}

main "$@"
