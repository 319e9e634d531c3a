#!/usr/bin/env bash
# Packaging test: the Debian package of optin-relay, built from this repository with
# cargo-deb, installed with dpkg, checked, run by hand the way its systemd unit runs it,
# and purged, so that the machine is left as it was.
#
# Installs (Debian packages, only when missing): dpkg-dev (dpkg-shlibdeps, for the
# package's Depends), binutils (objcopy: the debug info goes to a -dbgsym .ddeb), adduser,
# systemd (systemd-analyze), man-db, bash-completion, zsh, fish (to try the completions),
# iproute2 (a private network namespace's loopback), python3, curl; and cargo-deb 3.x from
# crates.io (`cargo install cargo-deb --locked`) when missing: a FAIL when it cannot be had.
# Steps (a failed one ends the run):
#   - cargo build --release; the new binary writes the man pages (`optin-relay man DIR`)
#     and the bash, zsh and fish completions (`optin-relay completions SHELL`) into
#     $CARGO_TARGET_DIR/release/package/ (man pages gzipped); `cargo deb --no-build` makes
#     the .deb (and a -dbgsym .ddeb) in $CARGO_TARGET_DIR/debian/. The .deb's path is
#     exported as OPTIN_PACKAGE_DEB and written to $CARGO_TARGET_DIR/debian/package.env
#     (OPTIN_PACKAGE_DEB=...) for a later step to source.
#   - dpkg -i (refused when optin-relay, its user or its spool is already on the machine:
#     the purge at the end would take them)
# Checks (CHECKS below, in order):
#   1. the .deb's files, Depends (adduser) and conffiles
#   2. the installed files where they belong, with their owners and modes: binary, unit,
#      /etc/optin-relay 0750 and its conffiles 0640 root:optin-relay (listed by
#      dpkg-query ${Conffiles}), examples, man pages, completions; no logrotate file
#   3. the system user and group optin-relay (home /var/lib/optin-relay, no login shell),
#      the spool directory 0700
#   4. a man page per subcommand, and `man -w` finds them
#   5. bash, zsh and fish load the completions from the installed paths and complete
#      "optin-relay qu" to "queue"
#   6. the unit's sandboxing keys (grep), and `systemd-analyze verify` when systemd-analyze
#      can verify a unit here (a known-good unit is tried first; when that fails, the
#      reason is printed and the grep stands alone)
#   7. `systemd-analyze security --offline=yes`: exposure below $SECURITY_THRESHOLD/100
#   8. `config check` of the installed files by the installed binary, as the unit's user;
#      another user cannot read the policy
#   9. the installed binary started by hand as the unit starts it: its User and Group,
#      WorkingDirectory, UMask, CapabilityBoundingSet/AmbientCapabilities, NoNewPrivileges
#      (setpriv), its ExecStart arguments, with a copy of the installed config whose
#      listeners are moved to free ports on 127.0.0.1 and whose delivery goes to a closed
#      local port (nothing leaves the machine): runs as optin-relay with CAP_NET_BIND_SERVICE
#      only; 220 banner, EHLO, a transactional message from 127.0.0.1 answered 250 (python3
#      smtplib); GET /healthz on the public and the operator listener; SIGTERM: exit 0
#  10. the same with the installed config unchanged (127.0.0.1:25, 8025, 8026) in a private
#      network namespace, so that port 25 is bound through CAP_NET_BIND_SERVICE; where no
#      network namespace can be made, the reason is printed (check 9 stands)
#  11. the spool: every file owned by optin-relay, files 0600, directories 0700; `queue
#      list` as optin-relay shows the messages accepted
#  12. dpkg -i again over it (--force-confold): an edited conffile is kept, owners and
#      modes stay, the spool is untouched
#  13. deploy/docker: the Dockerfile's user (non-root), volumes, ports, entrypoint; its
#      config passes `config check`. The image is built (docker build, then `config check`
#      in it) only with PACKAGE_DOCKER_BUILD=1; otherwise the check says it was not built
#  14. dpkg -P: the package, its files, the spool and the user and group are gone
# Prints one PASS:/FAIL: line per check like run.sh (lib.sh), exits 1 if any failed. On
# exit, every process it started is stopped and the package purged if still installed.
#
# Usage: tests/interop/package.sh   (as root: dpkg -i, setpriv). INTEROP_KEEP=1 keeps the
#        work directory, INTEROP_VERBOSE=1 shows each check's output on PASS too,
#        PACKAGE_DOCKER_BUILD=1 also builds the container image (needs a Docker daemon).

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3
PACKAGES=(dpkg-dev binutils adduser systemd man-db bash-completion zsh fish iproute2 python3
    curl)
CARGO_DEB_MAJOR=3              # [package.metadata.deb] uses cargo-deb 3's keys
PKG=optin-relay                # the Debian package, its user, group and unit
PKG_USER=optin-relay
UNIT=/usr/lib/systemd/system/optin-relay.service
CONF_DIR=/etc/optin-relay
CONF=$CONF_DIR/optin-relay.toml
POLICY=$CONF_DIR/policy.toml
STATE=/var/lib/optin-relay
INSTALLED_BIN=/usr/bin/optin-relay
SECURITY_THRESHOLD=30          # systemd-analyze security: 0 (best) .. 100; 30 is "OK"
SENDER=app@example.com
RECIPIENT=customer@example.net

source "$HERE/lib.sh"

TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET = /* ]] || TARGET="$ROOT/$TARGET"
ASSETS="$TARGET/release/package" # man/ and completions/, the .deb's assets
INSTALLED=""                   # set once our dpkg -i ran: cleanup purges
RUN_CONF_DIR=""                # the moved-ports copy of the config, readable by the user
ACCEPTED=0                     # messages the hand-started relays answered 250

purge_on_exit() {
    if [[ -n "$INSTALLED" ]] && dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null |
        grep -qv "not-installed"; then
        note "purging $PKG (left installed by a failed step)"
        dpkg -P "$PKG" >/dev/null 2>&1 || note "dpkg -P $PKG failed: purge it by hand"
    fi
    [[ -z "$RUN_CONF_DIR" ]] || rm -rf "$RUN_CONF_DIR"
}
CLEANUP_HOOKS+=(purge_on_exit)

# ---------------------------------------------------------------- setup

need_root() {
    [[ $(id -u) -eq 0 ]] || { echo "package.sh installs a package: run it as root"; return 1; }
}

# The purge at the end would remove what is there before us: refuse to start over it.
machine_clean() {
    local problems=0 path
    if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -qv "not-installed"; then
        echo "the package $PKG is already installed (dpkg -P $PKG first)"
        problems=1
    fi
    if getent passwd "$PKG_USER" >/dev/null || getent group "$PKG_USER" >/dev/null; then
        echo "a user or group $PKG_USER exists already"
        problems=1
    fi
    for path in "$STATE" "$CONF_DIR"; do
        [[ ! -e $path ]] || { echo "$path exists already"; problems=1; }
    done
    return $problems
}

cargo_deb_ok() {
    local version
    version=$(cargo deb --version 2>/dev/null) || return 1
    echo "$version"
    [[ $version =~ ([0-9]+)\.[0-9]+ ]] && ((BASH_REMATCH[1] >= CARGO_DEB_MAJOR))
}

# cargo-deb from crates.io when missing (or too old); never a skip.
install_cargo_deb() {
    cargo_deb_ok && return 0
    note "installing cargo-deb ^$CARGO_DEB_MAJOR from crates.io (log: $WORK/cargo-install.log)"
    if ! cargo install cargo-deb --locked --version "^$CARGO_DEB_MAJOR" \
        >"$WORK/cargo-install.log" 2>&1; then
        tail -n 30 "$WORK/cargo-install.log"
        echo "cargo install cargo-deb failed: cargo-deb is not available"
        return 1
    fi
    cargo_deb_ok
}

# The man pages and completions, from the binary just built, where Cargo.toml's
# [package.metadata.deb] assets name them (target/release/package/...: cargo-deb reads
# target/release/ as the real target dir). Made afresh: no stale page of a subcommand
# that is gone.
generate_assets() {
    rm -rf "$ASSETS" && mkdir -p "$ASSETS/man" "$ASSETS/completions" || return 1
    "$BIN" man "$ASSETS/man" || { echo "$BIN man failed"; return 1; }
    local pages=("$ASSETS"/man/*.1)
    [[ -e ${pages[0]} ]] || { echo "optin-relay man wrote no *.1 file"; return 1; }
    gzip -9nf "${pages[@]}" || return 1
    "$BIN" completions bash >"$ASSETS/completions/optin-relay.bash" &&
        "$BIN" completions zsh >"$ASSETS/completions/_optin-relay" &&
        "$BIN" completions fish >"$ASSETS/completions/optin-relay.fish" ||
        { echo "optin-relay completions failed"; return 1; }
    local f
    for f in "$ASSETS"/completions/*; do
        [[ -s $f ]] || { echo "$f is empty"; return 1; }
    done
    ls -l "$ASSETS"/man "$ASSETS"/completions
}

build_deb() {
    rm -f "$TARGET"/debian/"$PKG"_*.deb "$TARGET"/debian/"$PKG"-dbgsym_*.ddeb
    note "cargo deb --no-build (log: $WORK/cargo-deb.log)"
    if ! (cd "$ROOT" && cargo deb --no-build --verbose) >"$WORK/cargo-deb.log" 2>&1; then
        tail -n 40 "$WORK/cargo-deb.log"
        return 1
    fi
    local debs=("$TARGET"/debian/"$PKG"_*.deb)
    [[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || { echo "no single .deb: ${debs[*]}"; return 1; }
    export OPTIN_PACKAGE_DEB=${debs[0]}
    printf 'OPTIN_PACKAGE_DEB=%q\n' "$OPTIN_PACKAGE_DEB" >"$TARGET/debian/package.env"
    ls -l "$TARGET"/debian/
    dpkg-deb --info "$OPTIN_PACKAGE_DEB"
}

# Some images tell dpkg to leave out /usr/share/man and /usr/share/doc: ours go in anyway.
install_deb() {
    INSTALLED=1
    dpkg --path-include="/usr/share/man/man1/optin-relay*" \
        --path-include="/usr/share/doc/optin-relay/*" -i "$OPTIN_PACKAGE_DEB"
}

# ---------------------------------------------------------------- the unit, as run by hand

# unit_value KEY: the last KEY= line of the installed unit.
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }

# Reads what the unit says about how the relay runs; sets EXEC (ExecStart as words), RUN_*.
read_unit() {
    local exec
    exec=$(unit_value ExecStart)
    read -r -a EXEC <<<"$exec"
    RUN_USER=$(unit_value User) RUN_GROUP=$(unit_value Group)
    RUN_DIR=$(unit_value WorkingDirectory) RUN_UMASK=$(unit_value UMask)
    local ambient bounding
    ambient=$(unit_value AmbientCapabilities) bounding=$(unit_value CapabilityBoundingSet)
    [[ ${#EXEC[@]} -gt 0 && -n $RUN_USER && -n $RUN_GROUP && -n $RUN_DIR && -n $RUN_UMASK ]] ||
        { echo "the unit lacks ExecStart, User, Group, WorkingDirectory or UMask"; return 1; }
    [[ $ambient == CAP_NET_BIND_SERVICE && $bounding == CAP_NET_BIND_SERVICE ]] ||
        { echo "capabilities: ambient '$ambient', bounding '$bounding'"; return 1; }
    [[ $(unit_value NoNewPrivileges) == yes ]] || { echo "NoNewPrivileges is not yes"; return 1; }
    # setpriv: the unit's user, group and capabilities; no new privileges.
    AS_UNIT=(setpriv --reuid="$RUN_USER" --regid="$RUN_GROUP" --init-groups --no-new-privs
        --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service
        --bounding-set=-all,+net_bind_service)
    echo "ExecStart: ${EXEC[*]}"
    echo "as: ${AS_UNIT[*]}; umask $RUN_UMASK; in $RUN_DIR"
}

# as_user COMMAND...: COMMAND as the unit's user, with the unit's group (no capabilities).
as_user() {
    setpriv --reuid="$RUN_USER" --regid="$RUN_GROUP" --init-groups --no-new-privs \
        --inh-caps=-all --bounding-set=-all -- "$@"
}

# start_as_unit NAME [NSENTER...] -- EXEC...: starts EXEC as the unit does (umask, working
# directory, user, capabilities), behind the NSENTER words (a network namespace) if any.
start_as_unit() {
    local name=$1 prefix=()
    shift
    while [[ $1 != -- ]]; do prefix+=("$1"); shift; done
    shift
    start "$name" "${prefix[@]}" bash -c 'umask "$1" && cd "$2" && shift 2 && exec "$@"' \
        umask "$RUN_UMASK" "$RUN_DIR" "${AS_UNIT[@]}" -- "$@"
}

# ---------------------------------------------------------------- client helpers

IN_NS=()                       # nsenter words: the clients run in the relay's namespace

# smtp_send HOST PORT TAG: 220 banner, EHLO, one transactional message; every reply
# printed; status 0 when the message is answered "250 ... queued as".
smtp_send() {
    "${IN_NS[@]}" "$PY" - "$@" "$SENDER" "$RECIPIENT" <<'EOF'
import smtplib, sys
host, port, tag, sender, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = smtplib.SMTP(timeout=30)
code, banner = s.connect(host, port)
print(code, banner.decode())
if code != 220:
    sys.exit("no 220 banner")
code, ehlo = s.ehlo("client.test")
print(code, ehlo.decode())
if code != 250:
    sys.exit("EHLO not answered 250")
message = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {tag}\r\n"
           f"X-Optin-Stream: transactional\r\n\r\nYour order {tag} has shipped.\r\n")
for command, (code, text) in (
        (f"MAIL FROM:<{sender}>", s.mail(sender)),
        (f"RCPT TO:<{rcpt}>", s.rcpt(rcpt)),
        ("DATA", s.data(message))):
    print(">>>", command)
    print(code, text.decode())
    if code != 250:
        sys.exit(f"{command} answered {code}")
if b"queued as" not in text:
    sys.exit("no 'queued as' in the reply to DATA")
s.quit()
EOF
}

# healthz URL: GET URL/healthz answers 200.
healthz() {
    local code
    code=$("${IN_NS[@]}" curl -sS -o "$WORK/healthz.body" -w '%{http_code}' --max-time 10 \
        "$1/healthz") ||
        return 1
    echo "GET $1/healthz: $code $(head -c 200 "$WORK/healthz.body")"
    [[ $code == 200 ]]
}

# proc_as_unit PID: the process runs as the unit's user with CAP_NET_BIND_SERVICE only
# (bit 10) in its bounding, ambient and effective sets, and no_new_privs.
proc_as_unit() {
    local status=/proc/$1/status uid
    uid=$(id -u "$RUN_USER") || return 1
    grep -E '^(Uid|Gid|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' "$status" || return 1
    grep -qE "^Uid:\s+$uid\s+$uid\s+$uid\s+$uid$" "$status" &&
        grep -qE '^CapBnd:\s+0+400$' "$status" && grep -qE '^CapAmb:\s+0+400$' "$status" &&
        grep -qE '^CapEff:\s+0+400$' "$status" && grep -qE '^NoNewPrivs:\s+1$' "$status"
}

# stop_relay NAME: SIGTERM, exit status 0 within 15s.
stop_relay() {
    local pid_var="PID_$1" pid rc
    pid=${!pid_var}
    kill -TERM "$pid" || return 1
    poll 15 eval "! kill -0 $pid 2>/dev/null" || { echo "$1 still running 15s after SIGTERM"; return 1; }
    wait "$pid"
    rc=$?
    forget "$pid"
    echo "$1 exited with status $rc"
    tail -n 5 "$WORK/$1.log"
    [[ $rc -eq 0 ]]
}

# ---------------------------------------------------------------- checks

check_deb_contents() {
    local listing want
    listing=$(dpkg-deb --contents "$OPTIN_PACKAGE_DEB" | awk '{print $NF}') || return 1
    echo "$listing"
    for want in ./usr/bin/optin-relay ./usr/lib/systemd/system/optin-relay.service \
        ./etc/optin-relay/optin-relay.toml ./etc/optin-relay/policy.toml \
        ./usr/share/man/man1/optin-relay.1.gz \
        ./usr/share/bash-completion/completions/optin-relay \
        ./usr/share/zsh/vendor-completions/_optin-relay \
        ./usr/share/fish/vendor_completions.d/optin-relay.fish \
        ./usr/share/doc/optin-relay/copyright \
        ./usr/share/doc/optin-relay/examples/optin-relay.toml \
        ./usr/share/doc/optin-relay/examples/policy.toml; do
        grep -qxF "$want" <<<"$listing" || { echo "missing in the .deb: $want"; return 1; }
    done
    ! grep -q '^\./etc/logrotate' <<<"$listing" || { echo "a logrotate file"; return 1; }
    ! grep -q '^\./var/' <<<"$listing" || { echo "files under /var in the .deb"; return 1; }
    local depends conffiles
    depends=$(dpkg-deb --field "$OPTIN_PACKAGE_DEB" Depends)
    echo "Depends: $depends"
    grep -qw adduser <<<"$depends" || { echo "Depends lacks adduser"; return 1; }
    conffiles=$(dpkg-deb --ctrl-tarfile "$OPTIN_PACKAGE_DEB" | tar -xOf - ./conffiles)
    echo "conffiles: $conffiles"
    [[ $(sort <<<"$conffiles") == "$(printf '%s\n' "$CONF" "$POLICY" | sort)" ]]
}

# expect_stat PATH OWNER:GROUP MODE
expect_stat() {
    local got
    got=$(stat -c '%U:%G %a' "$1") || return 1
    echo "$1: $got"
    [[ $got == "$2 $3" ]] || { echo "$1: expected $2 $3"; return 1; }
}

check_installed_files() {
    expect_stat "$INSTALLED_BIN" root:root 755 &&
        expect_stat "$UNIT" root:root 644 &&
        expect_stat "$CONF_DIR" "root:$PKG_USER" 750 &&
        expect_stat "$CONF" "root:$PKG_USER" 640 &&
        expect_stat "$POLICY" "root:$PKG_USER" 640 &&
        expect_stat /usr/share/man/man1/optin-relay.1.gz root:root 644 &&
        expect_stat /usr/share/bash-completion/completions/optin-relay root:root 644 &&
        expect_stat /usr/share/zsh/vendor-completions/_optin-relay root:root 644 &&
        expect_stat /usr/share/fish/vendor_completions.d/optin-relay.fish root:root 644 &&
        expect_stat /usr/share/doc/optin-relay/examples/optin-relay.toml root:root 644 &&
        expect_stat /usr/share/doc/optin-relay/examples/policy.toml root:root 644 || return 1
    [[ ! -e /etc/logrotate.d/optin-relay ]] || { echo "/etc/logrotate.d/optin-relay"; return 1; }
    # The installed conffiles are the repository's, and dpkg knows them as conffiles.
    cmp "$ROOT/deploy/debian/optin-relay.toml" "$CONF" &&
        cmp "$ROOT/deploy/debian/policy.toml" "$POLICY" || return 1
    local conffiles
    conffiles=$(dpkg-query -W --showformat='${Conffiles}\n' "$PKG") || return 1
    echo "dpkg-query \${Conffiles}:$conffiles"
    grep -qE "^ $CONF [0-9a-f]{32}$" <<<"$conffiles" &&
        grep -qE "^ $POLICY [0-9a-f]{32}$" <<<"$conffiles" ||
        { echo "the conffiles are not both listed"; return 1; }
    "$INSTALLED_BIN" --version
}

check_system_user() {
    local entry uid
    entry=$(getent passwd "$PKG_USER") || { echo "no user $PKG_USER"; return 1; }
    echo "$entry"
    getent group "$PKG_USER" || { echo "no group $PKG_USER"; return 1; }
    IFS=: read -r _ _ uid _ _ home shell <<<"$entry"
    # A system user (Debian: below 1000), home the spool, no login.
    ((uid < 1000)) || { echo "uid $uid is not a system uid"; return 1; }
    [[ $home == "$STATE" ]] || { echo "home $home"; return 1; }
    [[ $shell == */nologin || $shell == /bin/false ]] || { echo "shell $shell"; return 1; }
    [[ $(id -gn "$PKG_USER") == "$PKG_USER" ]] || { echo "primary group not $PKG_USER"; return 1; }
    expect_stat "$STATE" "$PKG_USER:$PKG_USER" 700
}

check_man_pages() {
    # One page per subcommand of `optin-relay --help`, besides optin-relay.1 itself.
    local subcommands sub page
    subcommands=$("$INSTALLED_BIN" --help |
        awk '/^Commands:/{on=1; next} on && /^  [a-z]/{print $1} on && /^$/{exit}')
    [[ -n $subcommands ]] || { echo "no subcommands in --help"; return 1; }
    for sub in optin-relay $(sed 's/^/optin-relay-/' <<<"$subcommands"); do
        [[ $sub == optin-relay-help ]] && continue
        page=/usr/share/man/man1/$sub.1.gz
        [[ -f $page ]] || { echo "missing: $page"; return 1; }
        gzip -t "$page" || return 1
        zcat "$page" | grep -qE "^\.TH \"?$sub\"? 1" || { echo "$page: no .TH $sub 1"; return 1; }
        echo "$page: $(zcat "$page" | grep -m1 '^\.TH')"
    done
    man -w optin-relay && man -w optin-relay-serve || { echo "man -w does not find them"; return 1; }
    MANPAGER=cat MANWIDTH=80 man optin-relay 2>/dev/null | grep -q 'optin-relay' ||
        { echo "man optin-relay shows nothing"; return 1; }
}

check_completions() {
    local out
    # bash: bash-completion's loader finds the file by the command's name.
    out=$(bash -c 'source /usr/share/bash-completion/bash_completion &&
        __load_completion optin-relay && complete -p optin-relay &&
        COMP_WORDS=(optin-relay qu) COMP_CWORD=1 COMP_LINE="optin-relay qu" COMP_POINT=14 &&
        func=$(complete -p optin-relay | sed -n "s/.*-F \([^ ]*\) .*/\1/p") &&
        "$func" optin-relay qu optin-relay && printf "%s\n" "${COMPREPLY[@]}"') ||
        { echo "$out"; echo "bash: the completion does not load"; return 1; }
    echo "bash: $out"
    grep -qx queue <<<"$out" || { echo "bash: 'optin-relay qu' does not complete to queue"; return 1; }
    # zsh: valid syntax, in a directory of zsh's default fpath.
    zsh -n /usr/share/zsh/vendor-completions/_optin-relay || return 1
    zsh -fc 'print -l $fpath' | grep -qx /usr/share/zsh/vendor-completions ||
        { echo "zsh: /usr/share/zsh/vendor-completions not in fpath"; return 1; }
    out=$(zsh -fc 'autoload -Uz compinit && compinit -u -D &&
        print ${_comps[optin-relay]}') || true
    echo "zsh: _comps[optin-relay] = $out"
    [[ $out == _optin-relay ]] || { echo "zsh: compinit does not find _optin-relay"; return 1; }
    # fish: loaded from vendor_completions.d by itself (a HOME of its own: no user config;
    # not --no-config, which empties the completion path too).
    out=$(HOME=$WORK/fish-home fish -c 'complete --do-complete "optin-relay qu"') ||
        { echo "$out"; echo "fish failed"; return 1; }
    echo "fish: $out"
    grep -q '^queue' <<<"$out" || { echo "fish: 'optin-relay qu' does not complete to queue"; return 1; }
}

# The unit's sandboxing, by its keys (read_unit checked the capabilities and the user).
check_unit_keys() {
    local want
    cmp "$ROOT/deploy/debian/optin-relay.service" "$UNIT" || return 1
    for want in "User=$PKG_USER" "Group=$PKG_USER" "ProtectSystem=strict" \
        "StateDirectory=optin-relay" "ReadWritePaths=$STATE" "NoNewPrivileges=yes" \
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" "AmbientCapabilities=CAP_NET_BIND_SERVICE" \
        "WorkingDirectory=$STATE" "PrivateTmp=yes" "ProtectHome=yes" \
        "StandardError=journal" "ExecStart=$INSTALLED_BIN --config $CONF serve" \
        "WantedBy=multi-user.target"; do
        grep -qxF "$want" "$UNIT" || { echo "the unit lacks $want"; return 1; }
        echo "$want"
    done
    ! grep -qE '^(StandardOutput|StandardError)=(file|append|truncate):' "$UNIT" ||
        { echo "the unit logs to a file"; return 1; }
    read_unit
}

# Whether systemd-analyze can verify units here: a known-good unit is tried first.
SYSTEMD_ANALYZE_WORKS=""
systemd_analyze_works() {
    [[ -n $SYSTEMD_ANALYZE_WORKS ]] && { [[ $SYSTEMD_ANALYZE_WORKS == yes ]]; return; }
    SYSTEMD_ANALYZE_WORKS=no
    command -v systemd-analyze >/dev/null || { echo "no systemd-analyze"; return 1; }
    local probe="$WORK/optin-relay-probe.service"
    printf '[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n' >"$probe"
    systemd-analyze verify "$probe" >"$WORK/probe.out" 2>&1 ||
        { echo "systemd-analyze verify fails on a trivial unit here:"; cat "$WORK/probe.out"; return 1; }
    SYSTEMD_ANALYZE_WORKS=yes
}

check_unit_verify() {
    if ! systemd_analyze_works; then
        note "systemd-analyze cannot verify units here (above): the unit's keys are checked by grep only"
        check_unit_keys
        return
    fi
    systemd-analyze --version | head -n 1
    local out
    out=$(systemd-analyze verify "$UNIT" 2>&1)
    local rc=$?
    echo "systemd-analyze verify $UNIT: status $rc"
    echo "$out"
    [[ $rc -eq 0 && -z $out ]]
}

check_unit_security() {
    systemd_analyze_works || { echo "systemd-analyze cannot run here (check above)"; return 1; }
    local out rc
    out=$(systemd-analyze security --offline=yes --threshold="$SECURITY_THRESHOLD" "$UNIT" 2>&1)
    rc=$?
    grep -E '^✗|Overall exposure' <<<"$out"
    [[ $rc -eq 0 ]] || { echo "systemd-analyze security: status $rc"; return 1; }
}

check_config_as_user() {
    as_user "$INSTALLED_BIN" --config "$CONF" config check || return 1
    # Without --config the CLI finds the installed file by itself.
    local out
    out=$(cd / && as_user env -u OPTIN_RELAY_CONFIG "$INSTALLED_BIN" config check 2>&1) ||
        { echo "$out"; return 1; }
    echo "$out"
    grep -qF "$CONF" <<<"$out" || { echo "config check without --config does not name $CONF"; return 1; }
    if runuser -u nobody -- cat "$POLICY" >/dev/null 2>&1; then
        echo "nobody can read $POLICY"
        return 1
    fi
    echo "nobody cannot read $POLICY"
}

# A copy of the installed config for the hand-started relay, its listeners on free ports,
# delivery to a closed local port; readable by the unit's user. Everything else as installed.
write_moved_config() {
    local ports
    mapfile -t ports < <("$PY" "$HERE/util.py" ports 4) || return 1
    [[ ${#ports[@]} -eq 4 ]] || return 1
    SMTP_PORT=${ports[0]} HTTP_PORT=${ports[1]} ADMIN_PORT=${ports[2]} CLOSED_PORT=${ports[3]}
    RUN_CONF_DIR=$(mktemp -d /tmp/optin-package-etc.XXXXXX) || return 1
    chgrp "$RUN_GROUP" "$RUN_CONF_DIR" && chmod 0750 "$RUN_CONF_DIR" || return 1
    RUN_CONF="$RUN_CONF_DIR/optin-relay.toml"
    sed -e "s|^listen = \[\"127\.0\.0\.1:25\"\]$|listen = [\"127.0.0.1:$SMTP_PORT\"]|" \
        -e "s|^listen = \"127\.0\.0\.1:8025\"$|listen = \"127.0.0.1:$HTTP_PORT\"|" \
        -e "s|^listen = \"127\.0\.0\.1:8026\"$|listen = \"127.0.0.1:$ADMIN_PORT\"|" \
        -e "s|^\[delivery\]$|[delivery]\nsmarthost = \"127.0.0.1:$CLOSED_PORT\"|" \
        "$CONF" >"$RUN_CONF" || return 1
    chgrp "$RUN_GROUP" "$RUN_CONF" && chmod 0640 "$RUN_CONF" || return 1
    # Exactly those four lines differ.
    diff "$CONF" "$RUN_CONF"
    [[ $(diff "$CONF" "$RUN_CONF" | grep -c '^>') -eq 4 ]] ||
        { echo "the installed config's listen lines are not as expected"; return 1; }
    as_user "$INSTALLED_BIN" --config "$RUN_CONF" config check
}

# The ExecStart words with --config FILE replaced.
exec_with_config() {
    local i out=()
    for ((i = 0; i < ${#EXEC[@]}; i++)); do
        out+=("${EXEC[i]}")
        [[ ${EXEC[i]} == --config ]] && { out+=("$1"); i=$((i + 1)); }
    done
    EXEC_RUN=("${out[@]}")
}

check_serve_moved_ports() {
    read_unit >/dev/null && write_moved_config || return 1
    exec_with_config "$RUN_CONF"
    echo "starting: ${EXEC_RUN[*]}"
    start_as_unit relay -- "${EXEC_RUN[@]}"
    wait_ports relay "$SMTP_PORT" "$HTTP_PORT" "$ADMIN_PORT" || return 1
    proc_as_unit "$PID_relay" || { echo "the relay does not run as the unit says"; return 1; }
    smtp_send 127.0.0.1 "$SMTP_PORT" "package-moved-$$" || return 1
    ACCEPTED=$((ACCEPTED + 1))
    healthz "http://127.0.0.1:$HTTP_PORT" && healthz "http://127.0.0.1:$ADMIN_PORT" &&
        stop_relay relay
}

# In a network namespace of its own: the installed config as it is, port 25 included.
NETNS_REASON=""
netns_usable() {
    NETNS_REASON=$(unshare --net true 2>&1) ||
        { NETNS_REASON="unshare --net: ${NETNS_REASON:-failed}"; return 1; }
    command -v ip >/dev/null || { NETNS_REASON="no ip command"; return 1; }
}

# netns_entered PID: PID's network namespace is not ours.
netns_entered() {
    local theirs
    theirs=$(readlink "/proc/$1/ns/net") && [[ $theirs != "$(readlink /proc/self/ns/net)" ]]
}

check_serve_installed_config() {
    if ! netns_usable; then
        note "no network namespace can be made here ($NETNS_REASON): the installed config's" \
            "port 25 is not bound by hand; check 9 ran the same binary and unit settings on" \
            "moved ports"
        echo "not run: $NETNS_REASON"
        return 0
    fi
    read_unit >/dev/null || return 1
    start netns unshare --net sleep infinity
    # Not a step further until the holder is in a namespace of its own (not ours).
    poll 5 netns_entered "$PID_netns" || { echo "pid $PID_netns has no namespace of its own"; return 1; }
    local ns=(nsenter --target "$PID_netns" --net)
    "${ns[@]}" ip link set lo up || { echo "cannot bring lo up in the namespace"; return 1; }
    echo "network namespace of pid $PID_netns: $("${ns[@]}" ip -brief addr show lo)"
    echo "starting: ${EXEC[*]}"
    start_as_unit relay25 "${ns[@]}" -- "${EXEC[@]}"
    local port
    for port in 25 8025 8026; do
        poll 30 "${ns[@]}" bash -c "(exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null" ||
            { echo "not listening on 127.0.0.1:$port"; cat "$WORK/relay25.log"; return 1; }
    done
    proc_as_unit "$PID_relay25" || { echo "the relay does not run as the unit says"; return 1; }
    IN_NS=("${ns[@]}")
    smtp_send 127.0.0.1 25 "package-port25-$$" || { IN_NS=(); return 1; }
    ACCEPTED=$((ACCEPTED + 1))
    healthz http://127.0.0.1:8025 && healthz http://127.0.0.1:8026 || { IN_NS=(); return 1; }
    IN_NS=()
    stop_relay relay25
}

check_spool() {
    local bad
    find "$STATE" -printf '%M %u:%g %p\n' | head -n 60
    bad=$(find "$STATE" \( ! -user "$PKG_USER" -o ! -group "$PKG_USER" \))
    [[ -z $bad ]] || { echo "not owned by $PKG_USER:"; echo "$bad"; return 1; }
    bad=$(find "$STATE" -type f ! -perm 0600)
    [[ -z $bad ]] || { echo "files not 0600:"; echo "$bad"; return 1; }
    bad=$(find "$STATE" -type d ! -perm 0700)
    [[ -z $bad ]] || { echo "directories not 0700:"; echo "$bad"; return 1; }
    bad=$(find "$STATE" ! -type f ! -type d)
    [[ -z $bad ]] || { echo "neither file nor directory:"; echo "$bad"; return 1; }
    [[ -n $(find "$STATE" -type f -path '*queue*') ]] || { echo "no queue files"; return 1; }
    # The messages accepted are in the queue (delivery went nowhere), read by the CLI.
    local out
    out=$(cd / && as_user "$INSTALLED_BIN" --config "$CONF" queue list) || return 1
    echo "$out"
    [[ $(grep -E '^[0-9A-F]{16} ' <<<"$out" | grep -F " $SENDER " | grep -cE " ${RECIPIENT#*@}\$") \
        -eq $ACCEPTED ]] ||
        { echo "queue list does not show the $ACCEPTED messages accepted"; return 1; }
}

# dpkg -i over the installed package (an upgrade to the same version): a conffile the
# administrator edited is kept (--force-confold: what answering "keep" does), both keep
# root:optin-relay 0640, the spool is untouched.
check_reinstall() {
    local marker="# edited by package.sh $$" before after
    echo "$marker" >>"$POLICY" || return 1
    before=$(find "$STATE" -type f -printf '%P %s\n' | sort)
    dpkg --force-confold -i "$OPTIN_PACKAGE_DEB" || return 1
    tail -n 1 "$POLICY" | grep -qxF "$marker" || { echo "the edit of $POLICY is lost"; return 1; }
    cmp "$ROOT/deploy/debian/optin-relay.toml" "$CONF" || return 1
    expect_stat "$CONF_DIR" "root:$PKG_USER" 750 && expect_stat "$CONF" "root:$PKG_USER" 640 &&
        expect_stat "$POLICY" "root:$PKG_USER" 640 && expect_stat "$STATE" "$PKG_USER:$PKG_USER" 700 ||
        return 1
    after=$(find "$STATE" -type f -printf '%P %s\n' | sort)
    [[ $before == "$after" ]] || { echo "the spool changed:"; diff <(echo "$before") <(echo "$after"); return 1; }
    as_user "$INSTALLED_BIN" --config "$CONF" config check
}

# The container recipe: its keys, and its configuration passes `config check` (with the
# policy path mapped into the work directory). The image itself is built only with
# PACKAGE_DOCKER_BUILD=1 (a whole release build inside Docker).
check_docker_recipe() {
    local df="$ROOT/deploy/docker/Dockerfile" want dir="$WORK/docker-etc"
    for want in 'FROM debian:bookworm-slim' 'USER 10025:10025' \
        'VOLUME ["/var/lib/optin-relay", "/etc/optin-relay"]' 'EXPOSE 2525 8025' \
        'ENTRYPOINT ["optin-relay", "--config", "/etc/optin-relay/optin-relay.toml"]' \
        'CMD ["serve"]'; do
        grep -qxF "$want" "$df" || { echo "the Dockerfile lacks: $want"; return 1; }
        echo "$want"
    done
    grep -qxF .git "$ROOT/.dockerignore" && grep -qxF target "$ROOT/.dockerignore" ||
        { echo ".dockerignore does not leave out .git and target"; return 1; }
    mkdir -p "$dir" && cp "$ROOT/deploy/docker/policy.toml" "$dir/" &&
        sed "s|/etc/optin-relay/policy.toml|$dir/policy.toml|" \
            "$ROOT/deploy/docker/optin-relay.toml" >"$dir/optin-relay.toml" || return 1
    "$INSTALLED_BIN" --config "$dir/optin-relay.toml" config check || return 1
    if [[ -z ${PACKAGE_DOCKER_BUILD:-} ]]; then
        echo "image not built (PACKAGE_DOCKER_BUILD=1 builds it)"
        return 0
    fi
    local tag="optin-relay:package-test-$$"
    docker build -f "$df" -t "$tag" "$ROOT" &&
        docker run --rm "$tag" config check &&
        [[ $(docker image inspect -f '{{.Config.User}}' "$tag") == 10025:10025 ]]
    local rc=$?
    docker image rm "$tag" >/dev/null 2>&1
    return $rc
}

# The quickstart's commands, as the docs give them, with the installed /usr/bin/optin-relay.
check_quickstart() {
    # shellcheck source=quickstart.sh
    source "$HERE/quickstart.sh"
    run_quickstart /usr/bin "$WORK/quickstart"
}

check_purge() {
    dpkg -P "$PKG" || return 1
    INSTALLED=""
    local status path
    status=$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null)
    [[ -z $status || $status == *not-installed* ]] || { echo "dpkg status: $status"; return 1; }
    for path in "$INSTALLED_BIN" "$UNIT" "$CONF_DIR" "$STATE" /usr/share/man/man1/optin-relay.1.gz \
        /usr/share/bash-completion/completions/optin-relay /usr/share/doc/optin-relay; do
        [[ ! -e $path ]] || { echo "still there after purge: $path"; return 1; }
    done
    ! getent passwd "$PKG_USER" || { echo "user $PKG_USER still there"; return 1; }
    ! getent group "$PKG_USER" || { echo "group $PKG_USER still there"; return 1; }
    echo "purged: package, files, $STATE, user and group gone"
}

# ---------------------------------------------------------------- main

# Setup steps, in order (FUNCTION|DESCRIPTION): a failed one is a FAIL and ends the run.
SETUP=(
    "need_root|running as root"
    "install_packages|install packages (${PACKAGES[*]})"
    "machine_clean|no optin-relay package, user, /etc/optin-relay or $STATE here yet"
    "install_cargo_deb|cargo-deb $CARGO_DEB_MAJOR.x available (cargo install cargo-deb --locked)"
    "build_relay|cargo build --release"
    "generate_assets|man pages and bash/zsh/fish completions from the new binary"
    "build_deb|cargo deb --no-build: the .deb"
    "install_deb|dpkg -i the .deb"
)

# Checks, in order (FUNCTION|DESCRIPTION). A new step: its function, and a line here.
CHECKS=(
    "check_deb_contents|the .deb: binary, unit, conffiles, man pages, completions, examples; Depends adduser; no logrotate"
    "check_installed_files|installed files with their owners and modes; dpkg-query lists both conffiles"
    "check_system_user|system user and group $PKG_USER, home $STATE (0700), no login shell"
    "check_man_pages|a man page per subcommand in /usr/share/man/man1, found by man -w"
    "check_completions|bash, zsh and fish find the completions and complete 'optin-relay qu' to queue"
    "check_unit_keys|the unit: user, sandboxing keys, CAP_NET_BIND_SERVICE only, journal logging"
    "check_unit_verify|systemd-analyze verify the installed unit"
    "check_unit_security|systemd-analyze security --offline: exposure below $SECURITY_THRESHOLD/100"
    "check_config_as_user|config check of the installed files as $PKG_USER; others cannot read the policy"
    "check_serve_moved_ports|installed binary started as the unit does (moved ports): runs as $PKG_USER with CAP_NET_BIND_SERVICE only, 220, EHLO, message 250, /healthz x2, SIGTERM exit 0"
    "check_serve_installed_config|installed config unchanged in a private network namespace: port 25 through CAP_NET_BIND_SERVICE, message 250, /healthz, SIGTERM exit 0"
    "check_spool|spool files owned by $PKG_USER, 0600 files, 0700 directories; queue list shows the messages"
    "check_reinstall|dpkg -i again: an edited conffile kept, owners and modes kept, spool untouched"
    "check_docker_recipe|deploy/docker: Dockerfile non-root with volumes and entrypoint; its config passes config check${PACKAGE_DOCKER_BUILD:+; image built}"
    "check_quickstart|the quickstart (docs/src/quickstart.md) followed with the installed binary: capture mode, consent, footer, one-click unsubscribe"
    "check_purge|dpkg -P: package, files, spool, user and group gone"
)

finish() {
    summarise_and_exit relay relay25
}

main() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/optin-package.XXXXXX") || exit 1
    local entry
    for entry in "${SETUP[@]}"; do
        check "${entry#*|}" "${entry%%|*}"
        [[ ${#FAILED[@]} -eq 0 ]] || finish
    done
    note "OPTIN_PACKAGE_DEB=$OPTIN_PACKAGE_DEB (also in $TARGET/debian/package.env)"
    for entry in "${CHECKS[@]}"; do
        check "${entry#*|}" "${entry%%|*}"
    done
    finish
}

main "$@"
