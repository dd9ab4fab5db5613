#!/usr/bin/env bash
# A/B of two wscast binaries in one run, alternated, 3 rounds: idle RSS per connection (ws and
# wss), fan-out (64 B and 16 KiB, window counted on the sender and on all receivers), the
# trickle, and latency at a fixed rate. Server pinned to core 0, generator to core 1; loopback only.
#   bench/ab.sh OLD_BINARY NEW_BINARY      (ROUNDS=3, LOG_LEVEL=info by default)
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2
gen=target/release/wscast-bench
[ -x "$gen" ] || { echo "build the generator first: cargo build --release -p wscast-bench" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A CA and a certificate for 127.0.0.1, for the wss figures.
o() { openssl "$@" >/dev/null 2>&1; }
o req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=ab-ca -keyout "$tmp/ca.key" -out "$tmp/ca.pem"
o req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout "$tmp/key.pem" -out "$tmp/req.csr"
echo "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$tmp/ext"
o x509 -req -in "$tmp/req.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial -days 2 -extfile "$tmp/ext" -out "$tmp/cert.pem"
# The shipped log level by default: what a default install pays (LOG_LEVEL=warn to compare with
# older figures).
base='[server]\nlisten = ["127.0.0.1:8888"]\nmax_connections = 10000\n[log]\nlevel = "%s"\n'
printf "$base" "${LOG_LEVEL:-info}" >"$tmp/ws.toml"
{ printf "$base" "${LOG_LEVEL:-info}"; printf '[tls]\nenabled = true\ncert = "%s/cert.pem"\nkey = "%s/key.pem"\n' "$tmp" "$tmp"; } >"$tmp/wss.toml"
start() { taskset -c 0 "$1" --config "$tmp/$2.toml" >/dev/null 2>&1 & pid=$!; sleep 0.5; }
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
run() { taskset -c 1 "$gen" "$@" --server-pid "$pid" | tr '\n' ' '; echo; }
ws() { run "$@" --url ws://127.0.0.1:8888; }
wss() { run "$@" --url wss://127.0.0.1:8888 --ca "$tmp/ca.pem"; }
for round in $(seq "${ROUNDS:-3}"); do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        echo "$which round $round"
        start "$bin" ws
        echo "  idle:          $(ws idle --clients 8000 --duration 2)"
        echo "  fanout 64 B:   $(ws fanout --clients 1000 --gzip 0.5 --senders 1 --size 64 --duration 5)"
        echo "  all-receivers: $(ws fanout --clients 1000 --gzip 0.5 --senders 1 --size 64 --all-receivers --window 32 --duration 5)"
        echo "  trickle:       $(ws fanout --clients 1000 --gzip 0.5 --senders 100 --rate 2000 --size 64 --duration 5)"
        echo "  latency:       $(ws fanout --clients 100 --senders 1 --rate 1000 --duration 5)"
        echo "  fanout 16 KiB: $(ws fanout --clients 200 --gzip 0.5 --senders 1 --size 16384 --duration 5)"
        stop
        start "$bin" wss
        echo "  wss idle:      $(wss idle --clients 8000 --duration 2)"
        echo "  wss all-recv:  $(wss fanout --clients 1000 --gzip 0.5 --senders 1 --size 64 --all-receivers --window 32 --duration 5)"
        stop
    done
done
