#!/usr/bin/env bash
# Storage faults against the real binary on a real, small filesystem (issue 12, items 10
# and 11): the relay's spool lives on a 32 MiB tmpfs mounted under the work directory, and
# it delivers to an aiosmtpd sink (sink.py) that is started and stopped by the script.
#   1. disk full: with the sink down (mail stays queued), a file fills the filesystem;
#      submissions are then answered 451 4.3.0, and none of them is lost
#   2. space freed: the very next submission is answered 250, without a restart (before,
#      a segment whose creation failed left its file behind and every later attempt
#      failed with "File exists": 451 forever)
#   3. sink up: every message answered 250 reaches it
#   4. restart on a nearly full disk (64 KiB free) over a damaged segment (a flipped bit in
#      its header, another in a record header, a torn tail): the relay starts (before,
#      recovery copied the segment's messages into a new one, which needs as much free
#      space as they take: `serve` exited 1 and the failed start filled the disk again)
#   5. sink up again: every message acknowledged before the restart reaches it
#   6. SIGTERM: the relay exits 0
# Prints one PASS:/FAIL: line per check like run.sh (whose helpers it shares, lib.sh) and
# exits 1 if any check failed. Everything it mounts and starts is undone on exit.
#
# Usage: tests/interop/faults.sh   (as root: it mounts a tmpfs; installs python3-aiosmtpd
#        with apt-get when missing). OPTIN_RELAY_BIN=PATH uses that binary instead of
#        `cargo build --release`. INTEROP_KEEP=1 keeps the work directory.

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3            # Debian's interpreter: python3-aiosmtpd lives there
PACKAGES=(python3-aiosmtpd)
FS_SIZE=32m                    # the spool's filesystem
MESSAGE_SIZE=40000             # octets of body per test message
NEARLY_FULL=65536              # octets left free for the restart of check 4
DELIVERY_TIMEOUT=60            # seconds for queued mail to reach the sink

source "$HERE/lib.sh"

FS=""                          # the mount point
ACKED=()                       # tokens of every message answered 250

unmount_fs() {
    [[ -n "$FS" ]] && mountpoint -q "$FS" || return 0
    umount "$FS" 2>/dev/null || umount -l "$FS" ||
        echo "# could not unmount $FS"
}
CLEANUP_HOOKS+=(unmount_fs)

# ---------------------------------------------------------------- setup

need_root() {
    [[ $(id -u) -eq 0 ]] || { echo "faults.sh mounts a tmpfs: run it as root"; return 1; }
}

mount_fs() {
    FS="$WORK/spoolfs"
    mkdir -p "$FS" && mount -t tmpfs -o "size=$FS_SIZE,mode=0700" optin-faults "$FS" &&
        df -h "$FS"
}

configure() {
    local ports
    mapfile -t ports < <("$PY" "$HERE/util.py" ports 3) || return 1
    [[ ${#ports[@]} -eq 3 ]] || return 1
    SINK_PORT=${ports[0]} SMTP=${ports[1]} HTTP=${ports[2]}
    printf '[accounts.local]\nnetworks = ["127.0.0.0/8"]\n' >"$WORK/policy.toml"
    cat >"$WORK/relay.toml" <<EOF
[smtp]
listen = "127.0.0.1:$SMTP"
hostname = "relay-faults.test"
max_message_size = "1MiB"
[spool]
path = "$FS/spool"
segment_size = "1MiB"
[delivery]
smarthost = "127.0.0.1:$SINK_PORT"
retry_initial = "1s"
retry_max = "2s"
connection_idle_timeout = "1s"
[http]
listen = "127.0.0.1:$HTTP"
[admin]
listen = ""
[policy]
path = "$WORK/policy.toml"
watch_interval = "0s"
[log]
level = "info"
EOF
    "$BIN" --config "$WORK/relay.toml" config check
}

start_relay() {
    start relay "$BIN" --config "$WORK/relay.toml" serve
    wait_ports relay "$SMTP" "$HTTP"
}

stop_relay() {
    kill -TERM "$PID_relay" || return 1
    if ! poll 20 eval "! kill -0 $PID_relay 2>/dev/null"; then
        echo "relay still running 20s after SIGTERM"
        return 1
    fi
    wait "$PID_relay"
    local rc=$?
    forget "$PID_relay"
    echo "relay exited with status $rc"
    [[ $rc -eq 0 ]]
}

SINK_RUNS=0
start_sink() {
    # A directory per run: sink.py numbers its files from 1 again.
    SINK_RUNS=$((SINK_RUNS + 1))
    mkdir -p "$WORK/sink-$SINK_RUNS"
    start sink "$PY" "$HERE/sink.py" "$SINK_PORT" "$WORK/sink-$SINK_RUNS"
    wait_ports sink "$SINK_PORT"
}

stop_sink() {
    kill -TERM "$PID_sink" 2>/dev/null
    wait "$PID_sink" 2>/dev/null
    forget "$PID_sink"
    ! port_open "$SINK_PORT"
}

# ---------------------------------------------------------------- helpers

# submit PREFIX FIRST COUNT [STOP-CODE]: sends messages, records the ones answered 250 in
# ACKED; the replies are in $WORK/replies.
submit() {
    "$PY" "$HERE/faults_send.py" "$SMTP" "$@" | tee -a "$WORK/replies" >"$WORK/submit.out"
    local token code rest
    while read -r token code rest; do
        [[ $code == 250 ]] && ACKED+=("$token")
    done <"$WORK/submit.out"
    cat "$WORK/submit.out"
}

# fill_fs LEAVE: fills the spool's filesystem until LEAVE octets are free.
fill_fs() {
    local leave=$1
    rm -f "$FS/filler" "$FS/room"
    dd if=/dev/zero of="$FS/filler" bs=1M status=none 2>/dev/null
    dd if=/dev/zero of="$FS/filler" bs=4k oflag=append conv=notrunc status=none 2>/dev/null
    if ((leave > 0)); then
        # The room is taken first and given back, so exactly that much is free.
        rm -f "$FS/filler"
        head -c "$leave" /dev/zero >"$FS/room"
        dd if=/dev/zero of="$FS/filler" bs=4k status=none 2>/dev/null
        rm -f "$FS/room"
    fi
    df -B1 "$FS" | tail -n 1
}

delivered() {
    local token
    for token in "${ACKED[@]}"; do
        grep -qsxF "X-Token: $token"$'\r' "$WORK"/sink-*/*.eml || return 1
    done
}

wait_all_delivered() {
    if poll "$DELIVERY_TIMEOUT" delivered; then
        echo "all ${#ACKED[@]} acknowledged messages reached the sink"
        return 0
    fi
    local token missing=()
    for token in "${ACKED[@]}"; do
        grep -qsxF "X-Token: $token"$'\r' "$WORK"/sink-*/*.eml || missing+=("$token")
    done
    echo "${#missing[@]} of ${#ACKED[@]} acknowledged messages never arrived: ${missing[*]:0:20}"
    tail -n 30 "$WORK/relay.log"
    return 1
}

# ---------------------------------------------------------------- checks

disk_full_451() {
    stop_sink || return 1
    submit before 1 10 "$MESSAGE_SIZE" || return 1
    fill_fs 0 || return 1
    submit full 1 200 "$MESSAGE_SIZE" 451 || return 1
    local last
    last=$(tail -n 1 "$WORK/submit.out")
    [[ $last == *" 451 4.3.0"* ]] || { echo "no 451 4.3.0 while the disk is full: $last"; return 1; }
    # Still full: still refused, and the relay is still there.
    submit stillfull 1 3 "$MESSAGE_SIZE" || return 1
    ! grep -q " 250 " "$WORK/submit.out" || { echo "250 with the disk full"; return 1; }
    kill -0 "$PID_relay"
}

freed_250() {
    rm -f "$FS/filler"
    df -B1 "$FS" | tail -n 1
    submit freed 1 1 "$MESSAGE_SIZE" || return 1
    grep -q "^freed-1 250 " "$WORK/submit.out" ||
        { echo "the first submission after space returned was refused"; tail -n 20 "$WORK/relay.log"; return 1; }
    submit after 1 5 "$MESSAGE_SIZE" || return 1
    [[ $(grep -c " 250 " "$WORK/submit.out") -eq 5 ]]
}

sink_gets_everything() {
    start_sink && wait_all_delivered
}

restart_nearly_full() {
    stop_sink || return 1
    submit queued 1 20 "$MESSAGE_SIZE" || return 1
    sleep 2 # the first attempts fail and are journaled
    stop_relay || return 1
    local segment
    segment=$(ls -S "$FS/spool/queue/"*.msg | head -n 1)
    [[ -f $segment ]] || { echo "no segment in $FS/spool/queue"; return 1; }
    echo "damaging $segment ($(stat -c %s "$segment") octets)"
    "$PY" - "$segment" <<'EOF' || return 1
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
data[3] ^= 0x01                      # the segment header's magic
first = data.find(b"ORM1", 16)
second = data.find(b"ORM1", first + 1)
data[second + 29] ^= 0x40            # a record header's checksum
data += b"ORM1" + bytes(20)          # a torn tail
open(path, "wb").write(bytes(data))
EOF
    fill_fs "$NEARLY_FULL" || return 1
    start_relay || return 1
    grep -E "spool recovered|quarantined" "$WORK/relay.log" | tail -n 5
    rm -f "$FS/filler"
}

sink_gets_everything_again() {
    start_sink && wait_all_delivered
}

# ---------------------------------------------------------------- main


finish() {
    summarise_and_exit relay
}

main() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/optin-faults.XXXXXX") || exit 1
    setup "running as root (the spool gets its own tmpfs)" need_root
    setup "install packages (${PACKAGES[*]})" install_packages
    setup "the relay binary" relay_binary
    setup "mount a $FS_SIZE tmpfs for the spool" mount_fs
    setup "pick free ports, write the config, config check" configure
    setup "start the sink and the relay" eval "start_sink && start_relay"

    check "disk full: submissions get 451 4.3.0 (the sink is down, mail stays queued)" \
        disk_full_451
    check "space freed: the next submission gets 250 without a restart" freed_250
    check "sink up: every message answered 250 is delivered" sink_gets_everything
    check "restart with $NEARLY_FULL octets free over a damaged segment: the relay starts" \
        restart_nearly_full
    check "sink up: every message acknowledged before the restart is delivered" \
        sink_gets_everything_again
    check "SIGTERM: the relay exits 0" stop_relay
    finish
}

main "$@"
