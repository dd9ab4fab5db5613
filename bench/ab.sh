#!/usr/bin/env bash
# A/B of two wscast binaries in one run, alternated, 3 rounds: idle RSS per connection, fan-out
# (64 B and 16 KiB) and latency at a fixed rate. Server pinned to core 0, generator to core 1; loopback only.
#   bench/ab.sh OLD_BINARY NEW_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2
gen=target/release/wscast-bench
[ -x "$gen" ] || { echo "build the generator first: cargo build --release -p wscast-bench" >&2; exit 1; }
cfg=$(mktemp)
# The shipped log level by default: what a default install pays (LOG_LEVEL=warn to compare with
# older figures).
printf '[server]\nlisten = ["127.0.0.1:8888"]\nmax_connections = 10000\n[log]\nlevel = "%s"\n' "${LOG_LEVEL:-info}" >"$cfg"
for round in 1 2 3; do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        taskset -c 0 "$bin" --config "$cfg" & pid=$!
        sleep 0.5
        run() { taskset -c 1 "$gen" "$@" --url ws://127.0.0.1:8888 --server-pid "$pid" | tr '\n' ' '; echo; }
        echo "$which round $round"
        echo "  idle:          $(run idle --clients 8000 --duration 2)"
        echo "  fanout 64 B:   $(run fanout --clients 1000 --gzip 0.5 --senders 1 --size 64 --duration 5)"
        echo "  latency:       $(run fanout --clients 100 --senders 1 --rate 1000 --duration 5)"
        echo "  fanout 16 KiB: $(run fanout --clients 200 --gzip 0.5 --senders 1 --size 16384 --duration 5)"
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
done
rm -f "$cfg"
