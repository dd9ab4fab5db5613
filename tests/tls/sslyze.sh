#!/usr/bin/env bash
# TLS quality: sslyze (from PyPI) against the daemon serving wss with a test CA. Fails unless the
# server complies with Mozilla's "intermediate" configuration, refuses SSL 2/3, TLS 1.0 and 1.1,
# and accepts only AEAD cipher suites.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/wscast
[ -x "$BIN" ] || cargo build --release --locked -p wscast
VENV=${SSLYZE_VENV:-/var/cache/wscast-ci/sslyze-venv}
if [ ! -x "$VENV/bin/sslyze" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'sslyze>=6,<7'
fi

WORK=$(mktemp -d)
PID=
cleanup() { [ -z "$PID" ] || kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# A CA and a leaf with the extensions a strict verifier expects of a real certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=wscast-sslyze-ca \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/req.csr" 2>/dev/null
printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' 'subjectKeyIdentifier=hash' \
    'authorityKeyIdentifier=keyid' >"$WORK/ext"
openssl x509 -req -in "$WORK/req.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
    -extfile "$WORK/ext" -out "$WORK/cert.pem" 2>/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[server]\nlisten = ["127.0.0.1:%s"]\n[tls]\nenabled = true\ncert = "%s"\nkey = "%s"\n' \
    "$PORT" "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/wss.toml"
"$BIN" --config "$WORK/wss.toml" 2>"$WORK/daemon.log" &
PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

status=0
"$VENV/bin/sslyze" --mozilla_config=intermediate --certinfo_ca_file "$WORK/ca.pem" \
    --json_out="$WORK/scan.json" "localhost:$PORT" >"$WORK/scan.txt" 2>&1 || status=$?
grep -E "(OK - Compliant|Not compliant)" "$WORK/scan.txt" | sed 's/^ */sslyze: Mozilla intermediate: /'
[ "$status" = 0 ] || { cat "$WORK/scan.txt"; echo "sslyze: not compliant with Mozilla intermediate"; exit 1; }
python3 - "$WORK/scan.json" <<'PY'
import json, sys
scan = json.load(open(sys.argv[1]))["server_scan_results"][0]["scan_result"]
def accepted(version):
    return [s["cipher_suite"]["name"] for s in scan[version]["result"]["accepted_cipher_suites"]]
old = {v: accepted(v) for v in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites")}
bad = {v: s for v, s in old.items() if s}
tls12 = accepted("tls_1_2_cipher_suites")
tls13 = accepted("tls_1_3_cipher_suites")
non_aead = [s for s in tls12 + tls13 if not any(a in s for a in ("GCM", "CHACHA20", "CCM"))]
print(f"sslyze: SSL 2/3, TLS 1.0, 1.1 refused: {not bad}; TLS 1.2 suites: {', '.join(tls12)}; TLS 1.3 suites: {', '.join(tls13)}")
if bad or non_aead or not tls13:
    sys.exit(f"sslyze: old protocol versions accepted {bad} or non-AEAD suites {non_aead}")
PY
