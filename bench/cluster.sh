#!/usr/bin/env bash
# The cluster figures of BENCHMARKS.md: one node against two nodes of one cluster with the same
# 1,000 clients (half gzip) split across them, 1 and 10 senders and a 1,000 msg/s latency run;
# Redis's CPU share during each; then what one Redis takes in PUBLISHes to the bus with the two
# nodes subscribed. Servers and Redis on core 0, wscast-bench on core 1; 3 rounds. Loopback only.
#
#   cargo build --release -p wscast -p wscast-bench && bench/cluster.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v redis-server >/dev/null || { echo "bench/cluster.sh needs redis-server: apt-get install redis-server" >&2; exit 1; }
T=$(mktemp -d); cd "$T"; trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$T"' EXIT
P=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 redis-server --bind 127.0.0.1 --port $P --save '' --appendonly no --daemonize no >/dev/null & R=$!
sleep 0.5
for n in 1 2; do printf '[server]\nlisten = ["127.0.0.1:1888%s"]\nmax_connections = 5000\n[log]\nlevel = "warn"\n[cluster]\nredis = "redis://127.0.0.1:%s/"\nname = "bench"\n' $n $P > n$n.toml; done
printf '[server]\nlisten = ["127.0.0.1:18880"]\nmax_connections = 5000\n[log]\nlevel = "warn"\n' > single.toml
B=$ROOT/target/release
rcpu() { awk '{print $14+$15}' /proc/$1/stat; }
run() { # label, bench args...
  local label=$1; shift
  local c0=$(rcpu $R); local t0=$(date +%s.%N)
  out=$(taskset -c 1 $B/wscast-bench fanout "$@")
  local c1=$(rcpu $R); local t1=$(date +%s.%N)
  echo "$label: $(echo "$out" | grep -oE 'frames/s=[0-9]+|lost=[0-9]+|p99=[0-9]+|invalid=[0-9]+' | tr '\n' ' ') redis_cpu=$(python3 -c "print(round(($c1-$c0)/100/($t1-$t0)*100))")%"
}
for round in 1 2 3; do
  taskset -c 0 $B/wscast --config single.toml & S=$!; sleep 0.4
  run "one node, 1 sender" --url ws://127.0.0.1:18880 --clients 1000 --senders 1 --duration 5
  run "one node, 10 senders" --url ws://127.0.0.1:18880 --clients 1000 --senders 10 --duration 5
  run "one node, latency 1000 msg/s" --url ws://127.0.0.1:18880 --clients 1000 --senders 1 --rate 1000 --duration 5
  kill $S; wait $S 2>/dev/null || true
  taskset -c 0 $B/wscast --config n1.toml & A=$!; taskset -c 0 $B/wscast --config n2.toml & C=$!; sleep 1.5
  run "two nodes, 1 sender" --url ws://127.0.0.1:18881 --url2 ws://127.0.0.1:18882 --clients 1000 --senders 1 --duration 5
  run "two nodes, 10 senders" --url ws://127.0.0.1:18881 --url2 ws://127.0.0.1:18882 --clients 1000 --senders 10 --duration 5
  run "two nodes, latency 1000 msg/s" --url ws://127.0.0.1:18881 --url2 ws://127.0.0.1:18882 --clients 1000 --senders 1 --rate 1000 --duration 5
  if [ $round = 3 ]; then
    echo "redis-benchmark PUBLISH to the bus with the two nodes subscribed (64 B):"
    taskset -c 1 redis-benchmark -p $P -n 200000 -d 64 -q PUBLISH 'wscast:{bench}:bus' "$(head -c 64 /dev/zero | tr '\0' x)" | tr '\r' '\n' | tail -1
    taskset -c 1 redis-benchmark -p $P -n 200000 -P 16 -q PUBLISH 'wscast:{bench}:bus' "$(head -c 64 /dev/zero | tr '\0' x)" | tr '\r' '\n' | tail -1
  fi
  kill $A $C; wait $A $C 2>/dev/null || true
done
kill $R; wait $R 2>/dev/null || true
