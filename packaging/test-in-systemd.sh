#!/usr/bin/env bash
# Proves the package under a real systemd: boots a minimal Debian 12 with systemd as PID 1 in a
# container (debootstrap + systemd-nspawn), installs the .deb and checks install, traffic (ws,
# wss, gzip), reload with a renewed certificate and with a broken config, log rotation and the
# read-only sandbox, stop with 1001, upgrade keeping an edited conffile, remove and purge, and
# refused connections during restarts with and without wscast.socket.
#
#   packaging/test-in-systemd.sh target/debian/wscast_A.deb target/debian/wscast_B.deb
#
# B must be a newer version of A. A's debug symbols must lie beside it as A-dbgsym.ddeb (for
# A = wscast_X_amd64.deb, cargo-deb's wscast-dbgsym_X_amd64.ddeb is found too): the CPU profile
# check installs them. Prints one line per check and fails loudly on the first miss.
# The rootfs is cached as a tarball under /var/cache/wscast-ci, keyed on the suite and packages.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB=$(realpath "${1:?usage: $0 OLD.deb NEWER.deb}")
NEWER=$(realpath "${2:?usage: $0 OLD.deb NEWER.deb}")
DBGSYM=${DEB%.deb}-dbgsym.ddeb
[ -f "$DBGSYM" ] || DBGSYM=$(dirname "$DEB")/$(basename "$DEB" | sed 's/^wscast_/wscast-dbgsym_/; s/\.deb$/.ddeb/')
[ -f "$DBGSYM" ] || { echo "missing the debug symbols of $DEB ($DBGSYM): packaging/build-deb.sh makes them" >&2; exit 1; }
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,procps,iproute2,ca-certificates,python3-websockets,redis-server
CACHE=/var/cache/wscast-ci
KEY=$(printf '%s|%s|1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
TARBALL=$CACHE/rootfs-$SUITE-$KEY.tar.zst
STARTED=$SECONDS

say() { printf '[%4ds] %s\n' $((SECONDS - STARTED)) "$*"; }
ok() { say "ok: $*"; }
die() { say "FAILED: $*"; exit 1; }

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need systemd-nspawn systemd-container
need debootstrap debootstrap
need zstd zstd
need openssl openssl

if [ ! -f "$TARBALL" ]; then
    say "building the $SUITE rootfs (cached afterwards as $TARBALL)"
    # The mirror apt already uses (debootstrap takes only http(s) URIs, not mirror+file: ones).
    mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        grep -oE 'https?://[^ ]*debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    build=$(mktemp -d /var/tmp/wscast-rootfs.XXXXXX)
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$build/root" "$mirror" >"$build/log" 2>&1 ||
        { tail -20 "$build/log"; die "debootstrap"; }
    rm -rf "$build"/root/var/cache/apt/archives/*.deb "$build"/root/var/lib/apt/lists/*
    mkdir -p "$CACHE"
    tar -C "$build/root" -cf - . | zstd -q -T0 -10 -o "$TARBALL.tmp"
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$build"
fi

WORK=$(mktemp -d /var/tmp/wscast-ci.XXXXXX)
ROOT=$WORK/root
IN=$WORK/in
mkdir -p "$ROOT" "$IN"
zstd -q -d -c "$TARBALL" | tar -C "$ROOT" -xf -
cp "$DEB" "$IN/old.deb"
cp "$NEWER" "$IN/new.deb"
cp "$DBGSYM" "$IN/old-dbgsym.ddeb"
cp packaging/ci/probe.py "$IN/"

# A test CA and two server certificates it signed (the second plays the renewed one).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=wscast-test-ca \
    -keyout "$IN/ca.key" -out "$IN/ca.pem" 2>/dev/null
for n in 1 2; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
        -keyout "$IN/key$n.pem" -out "$IN/req$n.csr" 2>/dev/null
    openssl x509 -req -in "$IN/req$n.csr" -CA "$IN/ca.pem" -CAkey "$IN/ca.key" -CAcreateserial -days 2 \
        -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n') -out "$IN/cert$n.pem" 2>/dev/null
    openssl x509 -in "$IN/cert$n.pem" -outform der | sha256sum | cut -d' ' -f1 >"$IN/fp$n"
done

timeout 900 systemd-nspawn --boot --register=no --keep-unit --private-network --console=pipe \
    -D "$ROOT" --machine="wscast-ci-$$" --bind-ro="$IN:/mnt/in" >"$WORK/console.log" 2>&1 </dev/null &
NSPAWN=$!
LEADER=

# The container's systemd: the nspawn child whose innermost pid is 1 and that is no longer nspawn
# ($NSPAWN is the `timeout` around nspawn, so look two levels down).
find_leader() {
    local n p ns exe
    for p in $(for n in $(pgrep -P "$NSPAWN" 2>/dev/null); do pgrep -P "$n"; done); do
        ns=$(awk '/^NSpid:/ {print $NF}' "/proc/$p/status" 2>/dev/null || true)
        exe=$(readlink "/proc/$p/exe" 2>/dev/null || true)
        if [ "$ns" = 1 ] && [[ "$exe" != *nspawn* ]]; then echo "$p"; return 0; fi
    done
    return 1
}

inside() { nsenter -t "$LEADER" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

cleanup() {
    local rc=$?
    if [ $rc -ne 0 ] && [ -n "$LEADER" ]; then
        say "diagnostics:"
        inside systemctl --no-pager status wscast wscast.socket 2>&1 | tail -30 || true
        inside journalctl --no-pager -u wscast -n 40 2>&1 || true
    fi
    if [ -n "$LEADER" ]; then kill -s SIGRTMIN+4 "$LEADER" 2>/dev/null || true; fi
    for _ in $(seq 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$NSPAWN" 2>/dev/null || true
    wait "$NSPAWN" 2>/dev/null || true
    rm -rf "$WORK"
    say "stage finished in $((SECONDS - STARTED))s (exit $rc)"
}
trap cleanup EXIT

for _ in $(seq 100); do LEADER=$(find_leader) && break; sleep 0.1; done
[ -n "$LEADER" ] || { cat "$WORK/console.log"; die "the container did not boot"; }
# The leader can be found before systemd has opened its control socket ("Failed to connect to
# bus"): ask again until it answers.
state=""
for _ in $(seq 100); do
    state=$(inside timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
    [ -n "$state" ] && break
    sleep 0.2
done
case "$state" in running | degraded) ok "container booted ($state), systemd is PID 1" ;; *) die "boot state $state" ;; esac

probe() { inside timeout 60 python3 /mnt/in/probe.py "$@"; }
mainpid() { inside systemctl show -p MainPID --value wscast; }
prop() { inside systemctl show -p "$1" --value wscast; }

# 1. Install: enabled, active (readiness reached), status, user, capabilities.
inside dpkg -i /mnt/in/old.deb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log"; die "dpkg -i"; }
[ "$(inside systemctl is-enabled wscast)" = enabled ] || die "wscast.service is not enabled"
inside systemctl is-active --quiet wscast || die "wscast is not active after install"
[ "$(inside systemctl is-enabled wscast.socket)" = disabled ] || die "the optional socket should not be enabled"
status=$(prop StatusText)
[[ "$status" == *"listening on ws://127.0.0.1:8888"* ]] || die "status text: $status"
pid=$(mainpid)
[ "$(inside ps -o user= -p "$pid" | tr -d ' ')" = wscast ] || die "not running as wscast"
caps=$(inside grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' "/proc/$pid/status" | awk '{print $2}' | sort -u)
[ "$caps" = 0000000000000000 ] || die "capabilities: $(inside grep ^Cap "/proc/$pid/status")"
[ -z "$(inside systemd-analyze verify --man=no /usr/lib/systemd/system/wscast.service /lib/systemd/system/wscast.socket 2>&1)" ] ||
    die "systemd-analyze verify: $(inside systemd-analyze verify --man=no /usr/lib/systemd/system/wscast.service 2>&1)"
[ "$(inside stat -c '%U:%G %a' /etc/wscast/tls)" = "root:wscast 750" ] || die "/etc/wscast/tls ownership"
ok "installed: enabled, active, '$status', user wscast, no capabilities, units verify clean"
readyz=$(inside python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9090/readyz", timeout=5).read().decode().strip())' 2>&1 || true)
[ "$readyz" = ready ] || die "admin /readyz under systemd: $readyz"
ok "admin listener: /readyz on 127.0.0.1:9090 answers 'ready' under the hardened unit"
[ "$(inside stat -c '%U:%G %a' /etc/wscast/admin-token)" = "root:wscast 640" ] || die "/etc/wscast/admin-token ownership"
stats=$(inside python3 -c '
import json, urllib.request as u
token = open("/etc/wscast/admin-token").read().strip()
req = u.Request("http://127.0.0.1:9090/v1/stats", headers={"Authorization": "Bearer " + token})
print(json.load(u.urlopen(req, timeout=5))["nodes"][0]["clients"])' 2>&1 || true)
[ "$stats" = 0 ] || die "admin API with the installed token: $stats"
ok "admin API: the token made at install (root:wscast 0640) opens /v1/stats"
# The packaged binary is stripped: with its debug symbols installed, the profile names functions.
inside dpkg -i /mnt/in/old-dbgsym.ddeb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log"; die "dpkg -i dbgsym"; }
prof=$(probe profile ws://127.0.0.1:8888 127.0.0.1:9090 2 2>&1) || die "CPU profile under load under the hardened unit: $prof"
inside systemctl is-active --quiet wscast || die "the daemon did not survive profiling"
# Its exact-version dependency would stand in the way of the upgrade checked below.
inside dpkg -r wscast-dbgsym >/dev/null 2>&1 || die "dpkg -r wscast-dbgsym"
ok "profiling under the hardened unit, during a fan-out: $prof"

# 2. Traffic over ws, then over wss with the test CA.
probe exchange ws://127.0.0.1:8888 >/dev/null || die "ws exchange"
for f in cert key; do inside install -m 0640 -o root -g wscast "/mnt/in/${f}1.pem" "/etc/wscast/tls/$f.pem"; done
inside sed -i -e 's/^enabled = false/enabled = true/' -e 's/^rotation = "daily"/rotation = "minutely"/' \
    -e 's|^cert = .*|cert = "/etc/wscast/tls/cert.pem"|' -e 's|^key = .*|key = "/etc/wscast/tls/key.pem"|' \
    /etc/wscast/wscast.toml
inside systemctl restart wscast || die "restart with tls"
LOG_START_MINUTE=$(date +%M)
probe exchange wss://127.0.0.1:8888 --ca /mnt/in/ca.pem >/dev/null || die "wss exchange"
ok "two clients (one gzip) exchanged a broadcast over ws and over wss"

# 2b. The hardened unit reaches Redis (Debian's redis-server, running in the container) over TCP
# and over its unix socket: /readyz says "cluster: connected" only when the link works both ways.
readyz() { inside python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9090/readyz", timeout=5).read().decode())' 2>&1 || true; }
use_redis() {
    inside sed -i -e "s|^redis = .*|redis = \"$1\"|" /etc/wscast/wscast.toml
    inside systemctl restart wscast || die "restart with cluster.redis = $1"
}
connected() {
    local r=""
    for _ in $(seq 100); do
        r=$(readyz)
        [[ "$r" == *"cluster: connected"* ]] && return 0
        sleep 0.1
    done
    die "cluster through $1 under the hardened unit: /readyz says: $r"
}
inside systemctl is-active --quiet redis-server || die "redis-server is not running in the container"
use_redis "redis://127.0.0.1:6379/"
connected "redis://127.0.0.1:6379/"
# The socket's mode decides who may connect; under PrivateUsers= only the mode for others counts.
inside sh -c 'printf "unixsocket /run/redis/redis-server.sock\nunixsocketperm 777\n" >> /etc/redis/redis.conf'
inside systemctl restart redis-server || die "redis-server with a unix socket"
use_redis "redis+unix:///run/redis/redis-server.sock"
connected "redis+unix:///run/redis/redis-server.sock"
probe exchange wss://127.0.0.1:8888 --ca /mnt/in/ca.pem >/dev/null || die "wss exchange as a cluster node"
use_redis ""
ok "cluster: the hardened unit reached Redis over TCP and over /run/redis/redis-server.sock"

# 2c. Connection tokens under the hardened unit: the secret made at install, read by the daemon
# (PrivateUsers=yes) once a reload turns tokens on; then off again. Reloads, not restarts: the
# sections above restarted often enough to meet systemd's start limit (5 in 10 s).
[ "$(inside stat -c '%U:%G %a' /etc/wscast/token-secret)" = "root:wscast 640" ] || die "/etc/wscast/token-secret ownership"
inside sed -i -e 's/^mode = "none"/mode = "jwt"/' -e 's|^keys = \[\]|keys = ["/etc/wscast/token-secret"]|' /etc/wscast/wscast.toml
inside systemctl reload wscast || die "reload with auth.mode = jwt"
# systemd 252 has no notify-reload: `reload` returns once SIGHUP is sent, so try until it applies.
for _ in $(seq 30); do
    tokens=$(probe token wss://127.0.0.1:8888 127.0.0.1:9090 --ca /mnt/in/ca.pem 2>&1) && break
    sleep 0.2
done
[[ "$tokens" == "OK token"* ]] || die "connection tokens under the hardened unit: $tokens"
inside sed -i -e 's/^mode = "jwt"/mode = "none"/' /etc/wscast/wscast.toml
inside systemctl reload wscast || die "reload with auth.mode = none"
for _ in $(seq 30); do probe exchange wss://127.0.0.1:8888 --ca /mnt/in/ca.pem >/dev/null 2>&1 && break; sleep 0.2; done
probe exchange wss://127.0.0.1:8888 --ca /mnt/in/ca.pem >/dev/null || die "no token needed after a reload with mode = none"
ok "connection tokens: the secret made at install (root:wscast 0640) read under the hardened unit after a reload; $tokens"

# 3. Reload with a renewed certificate keeps an open connection; a broken config fails the reload.
inside sh -c 'python3 /mnt/in/probe.py hold wss://127.0.0.1:8888 --ca /mnt/in/ca.pem --out /run/hold.log >/dev/null 2>&1 &'
for _ in $(seq 50); do inside grep -q OPEN /run/hold.log 2>/dev/null && break; sleep 0.1; done
inside grep -q OPEN /run/hold.log || die "holding connection did not open"
[ "$(probe cert 127.0.0.1 8888 --ca /mnt/in/ca.pem)" = "$(cat "$IN/fp1")" ] || die "first certificate not served"
for f in cert key; do inside install -m 0640 -o root -g wscast "/mnt/in/${f}2.pem" "/etc/wscast/tls/$f.pem"; done
inside systemctl reload wscast || die "reload after renewing the certificate"
# systemd 252 has no notify-reload: `reload` returns once SIGHUP is sent, so poll for the swap.
for _ in $(seq 50); do
    [ "$(probe cert 127.0.0.1 8888 --ca /mnt/in/ca.pem)" = "$(cat "$IN/fp2")" ] && break
    sleep 0.1
done
[ "$(probe cert 127.0.0.1 8888 --ca /mnt/in/ca.pem)" = "$(cat "$IN/fp2")" ] || die "renewed certificate not served"
probe send wss://127.0.0.1:8888 after-reload --ca /mnt/in/ca.pem >/dev/null || die "send after reload"
for _ in $(seq 50); do inside grep -q "MSG after-reload" /run/hold.log && break; sleep 0.1; done
inside grep -q "MSG after-reload" /run/hold.log || die "the connection opened before the reload did not stay open"
inside sh -c 'echo "bogus_key = 1" >> /etc/wscast/wscast.toml'
if inside systemctl reload wscast 2>/dev/null; then die "a reload with a broken config succeeded"; fi
inside systemctl is-active --quiet wscast || die "the daemon died on a broken reload"
probe exchange wss://127.0.0.1:8888 --ca /mnt/in/ca.pem >/dev/null || die "not serving after a broken reload"
inside sed -i '$d' /etc/wscast/wscast.toml
ok "reload: new certificate for new handshakes, open connection kept; broken config: reload fails, daemon serves"

# 4. Logs rotate by the minute in /var/log/wscast; everything else is read-only to the daemon.
while [ "$(date +%M)" = "$LOG_START_MINUTE" ]; do sleep 1; done
sleep 1
inside systemctl reload wscast || die "reload for a log line"
for _ in $(seq 50); do
    inside sh -c 'grep -q "configuration reloaded" $(ls /var/log/wscast/wscast.log.* | sort | tail -1)' && break
    sleep 0.1
done
files=$(inside sh -c 'ls /var/log/wscast/ | grep -c "^wscast.log.20"')
[ "$files" -ge 2 ] || die "expected two minutely log files, found: $(inside ls /var/log/wscast)"
inside sh -c 'grep -q "configuration reloaded" $(ls /var/log/wscast/wscast.log.* | sort | tail -1)' ||
    die "the reload line is not in the newest log file"
pid=$(mainpid)
for path in /etc/wscast/x /usr/x /var/lib/x /root/x; do
    if inside nsenter -t "$pid" -m touch "$path" 2>/dev/null; then die "$path is writable inside the daemon's sandbox"; fi
done
inside nsenter -t "$pid" -m sh -c 'touch /var/log/wscast/.w && rm /var/log/wscast/.w' || die "log directory not writable"
ok "logs: $files minutely files in /var/log/wscast; /etc, /usr, /var/lib, /root read-only to the daemon"

# 5. Stop: clients get 1001, the unit ends cleanly, the journal has the drain summary.
inside systemctl stop wscast
for _ in $(seq 50); do inside grep -q "^CLOSE" /run/hold.log && break; sleep 0.1; done
inside grep -q "^CLOSE 1001 server shutting down" /run/hold.log || die "close frame: $(inside tail -1 /run/hold.log)"
[ "$(prop Result)" = success ] || die "Result=$(prop Result)"
[ "$(prop ExecMainStatus)" = 0 ] || die "ExecMainStatus=$(prop ExecMainStatus)"
journal=$(inside journalctl --no-pager -u wscast)
grep -q "drained 1, cut off 0" <<<"$journal" || die "no drain summary in the journal"
ok "stop: client got 1001, Result=success, status 0, journal: 'drained 1, cut off 0'"

# 6. Upgrade: the daemon restarts on the new version; the edited conffile is kept.
# The stages above started the unit several times within seconds: on a fast run that is
# systemd's start limit (5 in 10 s), which is not what this test is about.
inside systemctl reset-failed wscast 2>/dev/null || true
inside systemctl start wscast
before=$(mainpid)
token_before=$(inside cat /etc/wscast/admin-token)
inside dpkg -i /mnt/in/new.deb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log"; die "upgrade"; }
after=$(mainpid)
inside systemctl is-active --quiet wscast || die "not active after upgrade"
[ "$before" != "$after" ] || die "the daemon was not restarted by the upgrade"
inside grep -q '^rotation = "minutely"' /etc/wscast/wscast.toml || die "the edited conffile was replaced"
[ "$(inside cat /etc/wscast/admin-token)" = "$token_before" ] || die "the upgrade replaced the admin token"
version=$(inside dpkg-query -W -f '${Version}' wscast)
ok "upgrade to $version: restarted (pid $before -> $after), edited conffile and admin token kept"

# 7. Remove stops it; purge leaves nothing behind.
inside dpkg -r wscast >/dev/null
if inside systemctl is-active --quiet wscast; then die "still active after dpkg -r"; fi
inside dpkg -P wscast >/dev/null
inside test ! -e /etc/wscast || die "/etc/wscast left after purge"
inside test ! -e /var/log/wscast || die "/var/log/wscast left after purge"
ok "dpkg -r stops the daemon; dpkg -P removes /etc/wscast and /var/log/wscast"

# 8. Restarts while a client connects in a loop: without, then with wscast.socket.
inside dpkg -i /mnt/in/new.deb >/dev/null 2>&1
restart_loop() {
    inside sh -c 'python3 /mnt/in/probe.py loop ws://127.0.0.1:8888 14 > /run/loop.log 2>&1 &'
    sleep 2
    for _ in $(seq 6); do
        inside systemctl restart wscast || true
        inside systemctl reset-failed wscast 2>/dev/null || true
        sleep 1.5
    done
    for _ in $(seq 100); do inside grep -q attempts /run/loop.log 2>/dev/null && break; sleep 0.2; done
    inside cat /run/loop.log
}
without=$(restart_loop)
inside systemctl stop wscast
inside systemctl enable --now wscast.socket >/dev/null 2>&1
inside systemctl start wscast
for _ in $(seq 50); do
    journal=$(inside journalctl --no-pager -u wscast -n 20)
    grep -q "socket(s) passed by systemd" <<<"$journal" && break
    sleep 0.1
done
grep -q "socket(s) passed by systemd" <<<"$journal" || die "daemon did not take the socket"
with=$(restart_loop)
refused_with=$(awk '{print $4}' <<<"$with")
say "restart loop without wscast.socket: $without"
say "restart loop with wscast.socket:    $with"
[ "$refused_with" = 0 ] || die "connections refused with socket activation: $with"
ok "socket activation: 0 refused connections across 6 restarts"
