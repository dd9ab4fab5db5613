#!/usr/bin/env bash
# Autobahn|Testsuite's fuzzing client against the daemon: prints one summary line and fails on
# any FAILED case (or any case not OK, NON-STRICT or INFORMATIONAL).
#
# The suite is Python 2 only: it runs from a Python 2.7 virtualenv (pyenv's 2.7.18, virtualenv
# < 20.22, which still makes 2.7 environments) with the versions its own metadata pins, cached
# under /var/cache/wscast-ci.
#
# Excluded, because they do not apply to this daemon:
# - 12.* and 13.*: permessage-deflate, which wscast does not offer (gzip is per client, opt-in).
# - 1.2.*, 9.2.*, 9.4.*, 9.6.*, 9.8.*: binary messages echoed back. Our contract reads a client's
#   Binary frame as gzip(text), which the suite's payloads are not; they get 1007 by design.
#   The gzip inbound path is covered by the project's own tests.
# Expected non-OK results, both allowed by the suite:
# - 6.4.3, 6.4.4 NON-STRICT: invalid UTF-8 inside one text frame that arrives in pieces is
#   detected when the frame is complete (src/reader.rs checks each whole frame, and a fragmented
#   message at every fragment), not at the first bad piece; the connection is still failed with 1007.
# - 7.1.6, 7.13.1, 7.13.2 INFORMATIONAL: the suite only records what happens (a large message
#   right before a close; close codes the RFC leaves open).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/wscast
[ -x "$BIN" ] || cargo build --release --locked -p wscast
VENV=${AUTOBAHN_VENV:-/var/cache/wscast-ci/autobahn-venv}
PY2=${PY2:-$(ls -d "${HOME:-/root}"/.pyenv/versions/2.7*/bin/python 2>/dev/null | tail -1)}
if [ ! -x "$VENV/bin/wstest" ]; then
    [ -x "$PY2" ] || { echo "autobahn: Python 2.7 not found at $PY2 (set PY2)"; exit 1; }
    "$PY2" -m pip install -q "virtualenv<20.22"
    "$PY2" -m virtualenv -q "$VENV"
    "$VENV/bin/pip" install -q autobahntestsuite
fi

WORK=$(mktemp -d)
PID=
cleanup() { [ -z "$PID" ] || kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Large messages (case 9.* sends up to 16 MiB); the lone client is its own broadcast audience.
printf '[server]\nlisten = ["127.0.0.1:%s"]\n[websocket]\nmax_message_size = "32MiB"\n[log]\nlevel = "warn"\n' \
    "$PORT" >"$WORK/autobahn.toml"
"$BIN" --config "$WORK/autobahn.toml" 2>"$WORK/daemon.log" &
PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
cat >"$WORK/spec.json" <<EOT
{
  "outdir": "$WORK/reports",
  "servers": [{"agent": "wscast", "url": "ws://127.0.0.1:$PORT/?specialKey=autobahn"}],
  "cases": ["*"],
  "exclude-cases": ["12.*", "13.*", "1.2.*", "9.2.*", "9.4.*", "9.6.*", "9.8.*"],
  "exclude-agent-cases": {}
}
EOT
(cd "$WORK" && timeout 900 "$VENV/bin/wstest" -m fuzzingclient -s spec.json >wstest.log 2>&1) ||
    { tail -20 "$WORK/wstest.log"; echo "autobahn: wstest failed"; exit 1; }
python3 - "$WORK/reports/index.json" <<'PY'
import collections, json, sys
cases = json.load(open(sys.argv[1]))["wscast"]
count = collections.Counter(c["behavior"] for c in cases.values())
allowed = {"6.4.3": "NON-STRICT", "6.4.4": "NON-STRICT", "7.1.6": "INFORMATIONAL", "7.13.1": "INFORMATIONAL", "7.13.2": "INFORMATIONAL"}
unexpected = {k: c["behavior"] for k, c in cases.items() if c["behavior"] != "OK" and allowed.get(k) != c["behavior"]}
print("autobahn: %d cases: %s; unexpected: %s" % (len(cases), ", ".join("%s %d" % kv for kv in sorted(count.items())), unexpected or "none"))
if count.get("FAILED") or unexpected or len(cases) < 250:
    sys.exit("autobahn: conformance failures")
PY
