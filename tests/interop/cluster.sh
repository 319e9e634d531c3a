#!/usr/bin/env bash
# Cluster mode against a real Redis, on 127.0.0.1 only: a private redis-server (Debian's
# package, installed when missing; a redis-server still missing is a FAIL, never a skip),
# the cluster's Rust tests that need it, then three relays (three configs, one Redis, one
# measuring smart-host sink) sending together:
#   1. the Rust tests marked #[ignore] — they need a Redis: the Lua scripts, leases, the
#      node table, the bus, the consent feed — pass against the server
#      (cargo test -p optin-relay --lib -- --ignored)
#   2. `config check` of each node reaches Redis and names its version
#   3. `cluster status` on one node lists the three nodes live, without policy drift;
#      the operator listener's /healthz says Redis is reachable (node a starts first; b
#      and c get its lists secret and unsubscribe keys, as an operator would copy them)
#   4. one feed: consent granted through node a (`lists grant`) lets node b and c take
#      marketing mail to the address; the unsubscribe link of a message sent through a,
#      POSTed (one-click) to a's public listener, makes b and c refuse the next message to
#      the address within 1 s
#   5. one health, one freeze: with [health] min_volume = 30 and max_complaint_rate = 5 %,
#      each node takes 10 messages of the account and one spam complaint (the report form
#      on its own public listener) — no node alone has the volume to judge, the sum
#      freezes the account, and all three refuse its mail at MAIL within 5 s; an unfreeze
#      on node b lifts it on all three within 5 s; `account show` on node c gives the
#      window summed across the cluster
#   6. one canary, one verdict: a campaign declared on node a with 60 recipients (a
#      canary of 6) and submitted through all three nodes (5 messages each, consented
#      recipients) sends exactly 6 in total and holds the other 9; `campaign release` on
#      node b moves the held mail on all three (all 15 arrive) and every node records the
#      same verdict ("admin on b")
#   7. snapshots once ([lists] compact_after = 5, [cluster] snapshot_dir shared): one node
#      compacts the lists and publishes the snapshot, the other two take it (every node's
#      feed.snapshot names the hash recorded in Redis; its stamps file went with it), no
#      node compacts alone, and the unsubscribe and the grants are still in force on every
#      node
#   8. one erasure: a message to an address the sink defers waits in node b's spool; an
#      erasure through node a's admin API (`optin-relay erase`) leaves nothing of the
#      address in b's spool (the queued mail dropped, the files scrubbed), and b and c
#      refuse mail to it
#   9. a connection cap of 4 (`[throttles."*"] connections = 4`) holds across the nodes:
#      the sink (which answers each message after 0.2 s) never sees more than 4
#      connections at once while all three send 40 messages each, and does see 4
#  10. a shared rate of 120/min holds within ±5% over a minute with all three sending
#      (the policy reloaded on each node to `message_rate = "120/min"`)
#  11. with one node killed (kill -9) and Redis stopped for 10 s, the other two neither
#      stall nor send unlimited: they deliver on their share of the rate (at most the
#      rate plus 10 %, at least one message) — then Redis restarts empty and both rejoin
#      within 10 s (cluster status: reachable) and keep delivering
#  12. the killed node restarts, rejoins, and in the end every message submitted to any
#      node reached the sink; the unsubscribe is still in force on every node
# Prints one PASS:/FAIL: line per check like run.sh (whose helpers it shares, lib.sh) and
# exits 1 if any check failed. Everything it starts is stopped on exit.
#
# Usage: tests/interop/cluster.sh   (as root, or with sudo available for apt-get)
#        OPTIN_RELAY_BIN=PATH tests an existing build; INTEROP_KEEP=1 keeps the work
#        directory; INTEROP_VERBOSE=1 shows each check's output on PASS too.

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3
PACKAGES=(redis-server redis-tools)
NODES=(a b c)

source "$HERE/lib.sh"

need_tools() {
    install_packages || return 1
    command -v redis-server >/dev/null ||
        { echo "redis-server is still missing after installing Debian's redis-server"; return 1; }
    command -v redis-cli >/dev/null || { echo "redis-cli is missing"; return 1; }
    redis-server --version
}

start_redis() {
    mkdir -p "$WORK/redis"
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$WORK/redis"
    wait_ports redis "$REDIS_PORT" && redis-cli -p "$REDIS_PORT" ping
}

stop_redis() {
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1
    wait "$PID_redis" 2>/dev/null
    forget "$PID_redis"
    ! port_open "$REDIS_PORT"
}

pick_ports() {
    local ports
    mapfile -t ports < <("$PY" "$HERE/util.py" ports 11) || return 1
    [[ ${#ports[@]} -eq 11 ]] || return 1
    REDIS_PORT=${ports[0]} SINK_PORT=${ports[1]}
    SMTP_a=${ports[2]} OPS_a=${ports[3]} SMTP_b=${ports[4]} OPS_b=${ports[5]}
    SMTP_c=${ports[6]} OPS_c=${ports[7]}
    HTTP_a=${ports[8]} HTTP_b=${ports[9]} HTTP_c=${ports[10]}
}

rust_tests() {
    (cd "$ROOT" && OPTIN_TEST_REDIS="redis://127.0.0.1:$REDIS_PORT/0" \
        cargo test --locked -p optin-relay --lib -- --ignored 2>&1) |
        tee "$WORK/rust-tests.log" | grep -E '^test |test result' || return 1
    grep -q 'test result: ok' "$WORK/rust-tests.log" &&
        ! grep -q ' 0 passed' "$WORK/rust-tests.log"
}

# write_policy RATE-LINE: the policy every node runs (an account for 127.0.0.0/8 that
# sends transactional mail, and marketing with X-Optin-Stream to its list "weekly"; the
# throttles under test).
write_policy() {
    local node
    for node in "${NODES[@]}"; do
        cat >"$WORK/$node/policy.toml" <<EOF
[accounts.app]
networks = ["127.0.0.0/8"]
streams = ["transactional", "marketing"]
default_stream = "transactional"
from_domains = ["app.test"]
contact_address = "hello@app.test"
postal_address = "1 Main St, Springfield"
[accounts.app.lists.weekly]
consent_statement = "You receive {list} because you subscribed at {source}. Unsubscribe: {unsubscribe}"
consent_source = "app.test/subscribe"

[health]
window = "1h"
min_volume = 30
max_complaint_rate = 0.05

[campaigns]
evaluation_window = "1h"
canary_share = 0.10

[throttles."*"]
connections = 4
messages_per_connection = 5
$1
EOF
    done
}

write_configs() {
    local node smtp ops http
    for node in "${NODES[@]}"; do
        smtp="SMTP_$node" ops="OPS_$node" http="HTTP_$node"
        mkdir -p "$WORK/$node"
        cat >"$WORK/$node/relay.toml" <<EOF
[smtp]
listen = ["127.0.0.1:${!smtp}"]
hostname = "relay-$node.test"
[spool]
path = "$WORK/$node/spool"
[delivery]
smarthost = "127.0.0.1:$SINK_PORT"
connection_idle_timeout = "1s"
retry_initial = "2s"
[http]
listen = "127.0.0.1:${!http}"
[unsubscribe]
public_url = "http://127.0.0.1:$HTTP_a"
mail_domain = "app.test"
[lists]
refresh_interval = "100ms"
compact_after = 5
[admin]
listen = "127.0.0.1:${!ops}"
[policy]
path = "$WORK/$node/policy.toml"
watch_interval = "0s"
[cluster]
redis = ["redis://127.0.0.1:$REDIS_PORT/0"]
node_id = "$node"
key_prefix = "interop:"
heartbeat = "500ms"
lease_ttl = "3s"
snapshot_dir = "$WORK/shared-snapshots"
EOF
    done
    write_policy ""
}

configs_reach_redis() {
    local node out
    for node in "${NODES[@]}"; do
        out=$("$BIN" --config "$WORK/$node/relay.toml" config check) || { echo "$out"; return 1; }
        echo "$out"
        grep -q "answers: Redis [0-9]" <<<"$out" || return 1
    done
}

start_node() {
    local node=$1 smtp="SMTP_$1" ops="OPS_$1"
    start "relay_$node" "$BIN" --config "$WORK/$node/relay.toml" serve
    wait_ports "relay_$node" "${!smtp}" "${!ops}"
}

# Node a first; b and c get its lists secret (the feed's fingerprints) and unsubscribe
# keys (a link made by one node works on all), as an operator copies them.
start_nodes() {
    local node
    start_node a || return 1
    for node in b c; do
        install -d -m 700 "$WORK/$node/spool" "$WORK/$node/spool/lists" &&
            install -m 600 "$WORK/a/spool/lists/secret" "$WORK/$node/spool/lists/secret" &&
            install -m 600 "$WORK/a/spool/unsubscribe.keys" "$WORK/$node/spool/unsubscribe.keys" ||
            return 1
        start_node "$node" || return 1
    done
}

start_sink() {
    start sink "$PY" "$HERE/cluster_sink.py" "$SINK_PORT" "$WORK/sink.log" 0.2
    wait_ports sink "$SINK_PORT"
}

# status NODE: `cluster status` through NODE's operator listener.
status() {
    "$BIN" --config "$WORK/$1/relay.toml" cluster status
}

three_live() {
    local out
    out=$(status a) || { echo "$out"; return 1; }
    echo "$out"
    [[ $(grep -cE '^[abc] +live ' <<<"$out") -eq 3 ]] &&
        ! grep -q 'policy differs' <<<"$out" &&
        grep -q '(reachable)' <<<"$out"
}

nodes_listed() {
    poll 10 three_live || { status a; return 1; }
    local health
    health=$("$PY" "$HERE/util.py" http "http://127.0.0.1:$OPS_b/healthz") || return 1
    echo "$health"
    grep -q 'Redis reachable' <<<"$health"
}

# arrived FROM TO: how many distinct messages numbered FROM..TO (of any node) the sink has.
arrived() {
    awk -v a="$1" -v b="$2" '$4 >= a && $4 <= b { print $3, $4 }' "$WORK/sink.log" | sort -u | grep -c .
}

# wait_arrived FROM TO WANT SECONDS
wait_arrived() {
    poll "$4" bash -c "[[ \$(awk -v a=$1 -v b=$2 '\$4 >= a && \$4 <= b { print \$3, \$4 }' '$WORK/sink.log' | sort -u | grep -c .) -ge $3 ]]" ||
        { echo "the sink has $(arrived "$1" "$2") of the $3 messages $1..$2"; return 1; }
}

# submit_all FIRST COUNT: COUNT messages to each node at once.
submit_all() {
    local first=$1 count=$2 node smtp pids=() rc=0
    for node in "${NODES[@]}"; do
        smtp="SMTP_$node"
        "$PY" "$HERE/cluster_submit.py" "${!smtp}" "$node" "$first" "$count" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do
        wait "$p" || rc=1
    done
    return $rc
}

# submit NODE N [marketing]: one message through NODE (see cluster_submit.py's codes).
submit() {
    local smtp="SMTP_$1"
    "$PY" "$HERE/cluster_submit.py" "${!smtp}" "$1" "$2" 1 ${3:+"$3"}
}

one_feed() {
    "$BIN" --config "$WORK/a/relay.toml" lists grant rcpt@example.net --account app \
        --list weekly || return 1
    # Granted on a: in force on b and c through the feed.
    poll 5 submit b 1 marketing >/dev/null || { echo "b refuses marketing after the grant"; submit b 1 marketing; return 1; }
    poll 5 submit c 1 marketing >/dev/null || { echo "c refuses marketing after the grant"; submit c 1 marketing; return 1; }
    echo "consent granted on a: b and c take marketing mail"
    : >"$WORK/sink.log"
    submit a 2 marketing || return 1
    local eml="$WORK/sink.log.a-2.eml"
    poll 10 test -s "$eml" || { echo "no marketing message at the sink"; return 1; }
    local url
    url=$(sed -n 's/^List-Unsubscribe: <\(http[^>]*\)>.*/\1/p' "$eml" | tr -d '\r')
    [[ $url == "http://127.0.0.1:$HTTP_a/u/"* ]] || { echo "List-Unsubscribe: $url"; return 1; }
    "$PY" - "$url" <<'PYEOF' || return 1
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=b"List-Unsubscribe=One-Click", method="POST",
    headers={"Content-Type": "application/x-www-form-urlencoded"})
with urllib.request.urlopen(req, timeout=10) as r:
    print("one-click unsubscribe on a:", r.status)
    sys.exit(0 if r.status == 200 else 1)
PYEOF
    local t0 b_at="" c_at="" now rc
    t0=$(date +%s.%N)
    while [[ -z $b_at || -z $c_at ]]; do
        now=$(date +%s.%N)
        if awk -v a="$t0" -v b="$now" 'BEGIN { exit !(b - a > 3) }'; then
            echo "after 3 s: b refused at ${b_at:-never}, c at ${c_at:-never}"
            return 1
        fi
        if [[ -z $b_at ]]; then
            submit b 3 marketing >/dev/null; rc=$?
            [[ $rc -eq 2 ]] && b_at=$(date +%s.%N)
        fi
        if [[ -z $c_at ]]; then
            submit c 3 marketing >/dev/null; rc=$?
            [[ $rc -eq 2 ]] && c_at=$(date +%s.%N)
        fi
    done
    submit b 3 marketing
    awk -v t="$t0" -v b="$b_at" -v c="$c_at" 'BEGIN {
        printf "refused after the unsubscribe on a: b in %.0f ms, c in %.0f ms\n", (b - t) * 1000, (c - t) * 1000
        exit !(b - t <= 1 && c - t <= 1) }'
}

# refuses_mail NODE: the account's mail is refused at MAIL (frozen) by NODE.
refuses_mail() { submit "$1" 99 transactional >/dev/null; [[ $? -eq 3 ]]; }
takes_mail() { submit "$1" 98 transactional >/dev/null; }

one_freeze() {
    local node i http url
    "$BIN" --config "$WORK/a/relay.toml" lists grant r1@example.net r2@example.net \
        r3@example.net --account app --list weekly || return 1
    submit_all 2001 10 || return 1
    i=0
    for node in a b c; do
        i=$((i + 1))
        "$PY" "$HERE/cluster_submit.py" "$SMTP_a" a $((20 + i)) 1 marketing "r$i@example.net" ||
            return 1
    done
    for i in 1 2 3; do
        poll 10 test -s "$WORK/sink.log.a-2$i.eml" || { echo "no marketing message to r$i"; return 1; }
    done
    i=0
    for node in a b c; do
        i=$((i + 1)) http="HTTP_$node"
        url=$(sed -n 's/^List-Unsubscribe: <http[^>]*\/u\/\([^>]*\)>.*/\1/p' "$WORK/sink.log.a-2$i.eml" | tr -d '\r')
        [[ -n $url ]] || { echo "no token for r$i"; return 1; }
        "$PY" - "http://127.0.0.1:${!http}/complaint/$url" "$node" <<'PYEOF' || return 1
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=b"report=unwanted", method="POST",
    headers={"Content-Type": "application/x-www-form-urlencoded"})
with urllib.request.urlopen(req, timeout=10) as r:
    print(f"complaint through {sys.argv[2]}: {r.status}")
    sys.exit(0 if r.status == 200 else 1)
PYEOF
    done
    local t0=$SECONDS
    for node in a b c; do
        poll 5 refuses_mail "$node" || { echo "$node still takes the account's mail"; submit "$node" 99; return 1; }
    done
    echo "frozen on a, b and c within $((SECONDS - t0)) s:"
    local shown
    shown=$("$BIN" --config "$WORK/c/relay.toml" account show app) || return 1
    grep -iE 'frozen|^health' <<<"$shown"
    grep -q '^health: .* across the cluster' <<<"$shown" ||
        { echo "account show on c does not give the cluster's window"; return 1; }
    submit a 99 transactional
    "$BIN" --config "$WORK/b/relay.toml" account unfreeze app || return 1
    t0=$SECONDS
    for node in a b c; do
        poll 5 takes_mail "$node" || { echo "$node still refuses after the unfreeze on b"; return 1; }
    done
    echo "unfrozen on a, b and c within $((SECONDS - t0)) s of the unfreeze on b"
}

# campaign_shown NODE FIELD-PATTERN: `campaign show app autumn` on NODE matches.
campaign_shown() {
    "$BIN" --config "$WORK/$1/relay.toml" campaign show app autumn | grep -q "$2"
}

one_canary() {
    local node i pids=() rc=0
    "$BIN" --config "$WORK/a/relay.toml" lists grant d1@example.net d2@example.net \
        d3@example.net --account app --list weekly || return 1
    "$BIN" --config "$WORK/a/relay.toml" campaign declare app autumn --size 60 || return 1
    # The grant reaches b and c through the feed (a message outside the campaign).
    for node in b c; do
        local port="SMTP_$node"
        poll 5 "$PY" "$HERE/cluster_submit.py" "${!port}" "$node" 2999 1 marketing \
            d1@example.net >/dev/null || { echo "$node refuses d1 after the grant"; return 1; }
    done
    : >"$WORK/sink.log"
    for node in a b c; do
        local smtp="SMTP_$node"
        for i in 1 2 3 4 5; do
            CAMPAIGN=autumn "$PY" "$HERE/cluster_submit.py" "${!smtp}" "$node" $((3000 + i)) 1 \
                marketing "d$(( (i % 3) + 1 ))@example.net" >/dev/null || exit 1
        done &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [[ $rc -eq 0 ]] || { echo "a campaign message was refused"; return 1; }
    wait_arrived 3001 3005 6 20 || return 1
    sleep 3
    local n
    n=$(arrived 3001 3005)
    echo "the canary across three nodes: $n of 15 messages delivered (canary 6 of 60)"
    "$BIN" --config "$WORK/c/relay.toml" campaign show app autumn
    [[ $n -eq 6 ]] || return 1
    "$BIN" --config "$WORK/b/relay.toml" campaign release app autumn || return 1
    wait_arrived 3001 3005 15 20 || return 1
    echo "released on b: all 15 arrived"
    for node in a b c; do
        poll 5 campaign_shown "$node" 'released by admin on b' ||
            { "$BIN" --config "$WORK/$node/relay.toml" campaign show app autumn; return 1; }
    done
    echo "the same verdict on a, b and c: released by admin on b"
}

# marker NODE: the hash of the shared snapshot NODE published or took last.
marker() { cat "$WORK/$1/spool/lists/feed.snapshot" 2>/dev/null; }

all_took_it() {
    local published node
    published=$(redis-cli -p "$REDIS_PORT" GET interop:snapshot | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["hash"])') || return 1
    for node in "${NODES[@]}"; do
        [[ $(marker "$node") == "$published" ]] || return 1
    done
}

snapshots_once() {
    poll 20 all_took_it || {
        redis-cli -p "$REDIS_PORT" GET interop:snapshot
        for node in "${NODES[@]}"; do echo "$node: $(marker "$node")"; done
        return 1
    }
    local record publishers takers local_compactions
    record=$(redis-cli -p "$REDIS_PORT" GET interop:snapshot)
    echo "the cluster's snapshot: $record"
    publishers=$(grep -l 'snapshot published' "$WORK"/relay_?.log | wc -l)
    takers=$(grep -l "the cluster's lists snapshot is in service" "$WORK"/relay_?.log | wc -l)
    local_compactions=$(grep -c 'lists journal compacted' "$WORK"/relay_?.log | awk -F: '{ n += $2 } END { print n + 0 }')
    echo "nodes that published: $publishers; nodes that took one made elsewhere: $takers; compactions alone: $local_compactions"
    ls -l "$WORK/shared-snapshots"
    [[ $publishers -ge 1 && $takers -ge 2 && $local_compactions -eq 0 ]] || return 1
    # Its stamps went with it (what orders the changes it missed), and every node has them.
    [[ $record == *'"stamps":"'* ]] || { echo "the record names no stamps file"; return 1; }
    ls "$WORK"/shared-snapshots/*.stamps >/dev/null || return 1
    for node in "${NODES[@]}"; do
        [[ -s $WORK/$node/spool/lists/snapshot.stamps ]] || { echo "$node has no snapshot.stamps"; return 1; }
    done
    # Every node still has every change: the unsubscribe, the grants.
    still_unsubscribed || return 1
    local node port
    for node in "${NODES[@]}"; do
        port="SMTP_$node"
        "$PY" "$HERE/cluster_submit.py" "${!port}" "$node" 2998 1 marketing d2@example.net \
            >/dev/null || { echo "$node lost the grant to d2"; return 1; }
    done
    echo "after the snapshot: the unsubscribe refused and the grant honoured on a, b and c"
}

# One erasure for the cluster: a message to defer-jane@example.net queued on node b (the
# sink defers it), the erasure made through node a's admin API.
erasure_everywhere() {
    local victim=defer-jane@example.net out
    "$PY" "$HERE/cluster_submit.py" "$SMTP_b" b 4001 1 transactional "$victim" || return 1
    poll 10 grep -rqa "$victim" "$WORK/b/spool" ||
        { echo "the message to $victim is not in b's spool"; return 1; }
    echo "queued on b: $(grep -rla "$victim" "$WORK/b/spool" | wc -l) file(s) of b's spool hold the address"
    out=$("$BIN" --config "$WORK/a/relay.toml" erase "$victim") || { echo "$out"; return 1; }
    echo "$out"
    poll 10 bash -c "! grep -rqa '$victim' '$WORK/b/spool'" ||
        { echo "still in b's spool:"; grep -rla "$victim" "$WORK/b/spool"; return 1; }
    echo "erased on a: nothing of $victim left in b's spool or logs"
    grep -h "erasure made on another node carried out here" "$WORK/relay_b.log" | tail -1
    local node rc
    for node in b c; do
        local port="SMTP_$node"
        "$PY" "$HERE/cluster_submit.py" "${!port}" "$node" 4002 1 transactional "$victim" >/dev/null
        rc=$?
        [[ $rc -eq 2 ]] || { echo "$node did not refuse the erased address (exit $rc)"; return 1; }
    done
    echo "b and c refuse mail to the erased address"
}

still_unsubscribed() {
    local node rc
    for node in "${NODES[@]}"; do
        submit "$node" 9 marketing; rc=$?
        [[ $rc -eq 2 ]] || { echo "$node did not refuse (exit $rc)"; return 1; }
    done
}

connection_cap() {
    : >"$WORK/sink.log"
    submit_all 1 40 || return 1
    wait_arrived 1 40 120 90 || return 1
    # The sink's second column: connections open when each message ended.
    local most
    most=$(awk '$2 > m { m = $2 } END { print m + 0 }' "$WORK/sink.log")
    echo "most connections open at once: $most (cap 4; each node alone may open 4)"
    [[ $most -le 4 && $most -ge 4 ]]
}

reload_all() {
    local node
    for node in "${NODES[@]}"; do
        "$BIN" --config "$WORK/$node/relay.toml" policy reload || return 1
    done
}

# count_between FROM TO: messages the sink took in [FROM, TO) (unix seconds).
count_between() {
    awk -v a="$1" -v b="$2" '$1 >= a && $1 < b' "$WORK/sink.log" | grep -c .
}

shared_rate() {
    write_policy 'message_rate = "120/min"'
    reload_all || return 1
    : >"$WORK/sink.log"
    submit_all 1001 100 || return 1
    wait_arrived 1001 1100 1 30 || return 1
    local start end n per_node
    start=$(awk 'NR == 1 { print $1 }' "$WORK/sink.log")
    end=$(awk -v s="$start" 'BEGIN { printf "%.3f", s + 60 }')
    sleep 62
    n=$(count_between "$start" "$end")
    per_node=$(awk -v a="$start" -v b="$end" '$1 >= a && $1 < b { c[$3]++ }
        END { for (k in c) printf "%s=%d ", k, c[k] }' "$WORK/sink.log")
    echo "delivered in the first minute: $n (120/min shared; by node: $per_node)"
    [[ $n -ge 114 && $n -le 126 ]]
}

kill_c_and_lose_redis() {
    kill -KILL "$PID_relay_c" && wait "$PID_relay_c" 2>/dev/null
    forget "$PID_relay_c"
    local t0 t1 n
    stop_redis || { echo "Redis did not stop"; return 1; }
    t0=$(date +%s.%N)
    sleep 10
    t1=$(date +%s.%N)
    n=$(count_between "$t0" "$t1")
    echo "delivered in 10 s without Redis, by two nodes: $n (the shared rate allows 20)"
    start_redis >/dev/null || return 1
    [[ $n -ge 1 && $n -le 22 ]]
}

rejoined() {
    local node t
    for node in a b; do
        poll 10 bash -c "'$BIN' --config '$WORK/$node/relay.toml' cluster status | grep -q '(reachable)'" ||
            { status "$node"; return 1; }
    done
    t=$(date +%s.%N)
    sleep 5
    echo "delivered in the 5 s after both rejoined: $(count_between "$t" 9999999999)"
    [[ $(count_between "$t" 9999999999) -ge 1 ]]
}

everything_arrived() {
    start_node c || return 1
    write_policy 'message_rate = "6000/min"'
    reload_all || return 1
    local node n missing=0
    wait_arrived 1001 1100 300 120
    for node in "${NODES[@]}"; do
        for n in $(seq 1001 1100); do
            grep -q " $node $n\$" "$WORK/sink.log" || missing=$((missing + 1))
        done
    done
    echo "messages of the rate phase missing at the sink: $missing of 300"
    echo "duplicates (a kill -9 mid-transaction): $(awk '$4 >= 1001 && $4 <= 1100 { print $3, $4 }' "$WORK/sink.log" | sort | uniq -d | grep -c .)"
    [[ $missing -eq 0 ]]
}

finish() {
    summarise_and_exit relay_a relay_b relay_c redis sink
}

main() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/optin-cluster.XXXXXX") || exit 1
    setup "redis-server and redis-cli (installs Debian's redis-server, redis-tools)" need_tools
    setup "free ports on 127.0.0.1" pick_ports
    setup "a private redis-server on 127.0.0.1 (no persistence)" start_redis
    check "cargo test: crate::cluster's tests against the real Redis" rust_tests
    setup "the relay binary" relay_binary
    setup "three node configs and one policy" write_configs
    check "config check: each node reaches Redis and names its version" configs_reach_redis
    setup "the measuring sink (0.2 s per message)" start_sink
    setup "three relays started" start_nodes
    check "cluster status: three nodes live, no policy drift; /healthz: Redis reachable" \
        nodes_listed
    check "one feed: a grant on a lets b and c send; a one-click unsubscribe on a stops b and c within 1 s" \
        one_feed
    check "one health, one freeze: complaints through three nodes freeze the account on all; an unfreeze on b lifts it on all" \
        one_freeze
    check "one canary: a campaign through three nodes sends its canary share in total; one release on b moves the held mail on all" \
        one_canary
    check "snapshots once: one node compacts and publishes, the others take it; nothing lost" \
        snapshots_once
    check "one erasure: made on a, the mail queued to the address on b is dropped and b's spool scrubbed" \
        erasure_everywhere
    check "a connection cap of 4 holds across three nodes (120 messages)" connection_cap
    check "a shared rate of 120/min holds within 5% over a minute (three nodes)" shared_rate
    check "kill -9 one node, stop Redis 10 s: the others go on at their share" \
        kill_c_and_lose_redis
    check "Redis back (empty): both nodes rejoin within 10 s and keep delivering" rejoined
    check "the killed node restarts; every message of the rate phase arrives" \
        everything_arrived
    check "the unsubscribe is in force on every node after all that" still_unsubscribed
    finish
}

main "$@"
