#!/usr/bin/env bash
# The browser test: a real wscast (release build) on ws and on wss with a test CA that Chromium
# trusts through its NSS database, and headless Chromium driven by playwright-core (run.mjs);
# then the admin listener's demo page, two pages chatting (one with gzip). Connection tokens are
# on for both daemons (auth.mode = "jwt", one HMAC secret): the pages connect with tokens minted
# by the admin API, and a page without one is refused.
# Needs: chromium, libnss3-tools (certutil), openssl, node and npm.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
BIN=$ROOT/target/release/wscast
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --locked -p wscast)
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund >/dev/null

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Test CA and a server certificate for localhost.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=wscast-browser-ca \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/req.csr" 2>/dev/null
openssl x509 -req -in "$WORK/req.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n') -out "$WORK/cert.pem" 2>/dev/null
# Chromium on Linux trusts what is in $HOME/.pki/nssdb: a fresh HOME holds only the test CA.
export HOME=$WORK/home
mkdir -p "$HOME/.pki/nssdb"
certutil -d "sql:$HOME/.pki/nssdb" -N --empty-password
certutil -d "sql:$HOME/.pki/nssdb" -A -t "C,," -n wscast-browser-ca -i "$WORK/ca.pem"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WS_PORT=$(port)
WSS_PORT=$(port)
ADMIN_PORT=$(port)
ADMIN_TOKEN=browser-test-admin-token
(umask 077 && openssl rand -hex 32 >"$WORK/token-secret" && echo "$ADMIN_TOKEN" >"$WORK/admin-token")
AUTH="[auth]
mode = \"jwt\"
keys = [\"$WORK/token-secret\"]"
cat >"$WORK/ws.toml" <<EOT
[server]
listen = ["127.0.0.1:$WS_PORT"]
[admin]
listen = ["127.0.0.1:$ADMIN_PORT"]
token_file = "$WORK/admin-token"
$AUTH
EOT
cat >"$WORK/wss.toml" <<EOT
[server]
listen = ["127.0.0.1:$WSS_PORT"]
[tls]
enabled = true
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
$AUTH
EOT
"$BIN" --config "$WORK/ws.toml" 2>"$WORK/ws.log" &
PIDS+=($!)
"$BIN" --config "$WORK/wss.toml" 2>"$WORK/wss.log" &
PIDS+=($!)
for p in $WS_PORT $WSS_PORT $ADMIN_PORT; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.05; done
done

# A token for each key the pages use, minted by the admin API (both daemons share the secret).
TOKENS={
for key in browser-plain browser-gzip demo-plain demo-gzip; do
    minted=$(curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        --data "{\"key\": \"$key\", \"ttl\": \"10m\"}" "http://127.0.0.1:$ADMIN_PORT/v1/tokens")
    TOKENS="$TOKENS\"$key\": $minted,"
done
export TOKENS="${TOKENS%,}}"

# The demo page of the admin listener, in two pages; its screenshot lands in CI's log folder.
mkdir -p "$ROOT/target/ci"
DEMO_URL="http://127.0.0.1:$ADMIN_PORT/" SCREENSHOT="$ROOT/target/ci/demo-page.png" \
    node run.mjs "ws://127.0.0.1:$WS_PORT" "wss://localhost:$WSS_PORT"
