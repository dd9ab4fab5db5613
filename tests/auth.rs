//! Connection tokens against the real binary: a table of tokens signed by PyJWT (not our code)
//! with keys made by openssl, rotation across a real SIGHUP, 4003 at `exp`, the documented
//! Python and Node recipes run as written, minting through the admin API, and after every test
//! a search of every log line (written at trace level) for the tokens' text.

mod common;
#[path = "common/process.rs"]
mod daemon_process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use daemon_process::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Debian's Python, where `python3-jwt` and `python3-cryptography` install PyJWT.
const PYTHON: &str = "/usr/bin/python3";
const ADMIN_TOKEN: &str = "auth-test-admin-token-0123456789";

/// Keys made by openssl in a temporary directory: the public halves (and an HMAC secret) for
/// the daemon, the private halves for PyJWT.
struct Keys {
    dir: tempfile::TempDir,
    /// The HMAC secret the daemon knows (kid "hs").
    hs: PathBuf,
    /// An HMAC secret it does not know.
    stranger: PathBuf,
    /// (private, public) pairs.
    rsa: (PathBuf, PathBuf),
    ec: (PathBuf, PathBuf),
    ed: (PathBuf, PathBuf),
    /// The identity provider's RSA key; its public half is in `idp.json` as kid "idp-1".
    idp: (PathBuf, PathBuf),
    jwks: PathBuf,
}

fn run(program: &str, args: &[&str], hint: &str) -> String {
    let out =
        std::process::Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}: {hint}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn openssl(args: &[&str]) {
    run("openssl", args, "the token tests make their keys with openssl (apt-get install openssl)");
}

fn secret_file(path: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn key_pair(dir: &Path, name: &str, genpkey: &[&str]) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pem"));
    let private_s = private.to_str().unwrap();
    openssl(&[&["genpkey"][..], genpkey, &["-out", private_s]].concat());
    openssl(&["pkey", "-in", private_s, "-pubout", "-out", public.to_str().unwrap()]);
    (private, public)
}

fn make_keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hs, stranger) = (d.join("hs.secret"), d.join("stranger.secret"));
    secret_file(&hs, "0123456789abcdef0123456789abcdef-known");
    secret_file(&stranger, "0123456789abcdef0123456789abcdef-stranger");
    let rsa = key_pair(d, "rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let ec = key_pair(d, "ec", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let ed = key_pair(d, "ed", &["-algorithm", "ED25519"]);
    let idp = key_pair(d, "idp", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let jwks = d.join("idp.json");
    let set = pyjwt(&[json!({ "jwks": [["idp-1", idp.1]] })]);
    std::fs::write(&jwks, &set[0]).unwrap();
    Keys { dir, hs, stranger, rsa, ec, ed, idp, jwks }
}

/// Runs tests/auth/sign.py (PyJWT) over `requests`, one output line each.
fn pyjwt(requests: &[Value]) -> Vec<String> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/auth/sign.py");
    let mut child = std::process::Command::new(PYTHON)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{PYTHON}: {e}: install Debian's python3 with python3-jwt and python3-cryptography")
        });
    let mut stdin = child.stdin.take().unwrap();
    for r in requests {
        writeln!(stdin, "{r}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "PyJWT failed (apt-get install python3-jwt python3-cryptography; scripts/test installs them): {stderr}"
    );
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), requests.len(), "one line per request: {stderr}");
    lines
}

fn now() -> u64 {
    wscast::token::unix_now()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The binary with tokens required, an admin listener, and logs at trace level in its own
/// directory; every token a test uses is remembered and searched for in the logs at the end.
struct AuthDaemon {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    seen: Vec<String>,
}

fn config_toml(dir: &Path, admin: SocketAddr, keys: &[&Path], extra: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{:?}", k.to_str().unwrap())).collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[shutdown]\ndrain_timeout = \"5s\"\n\
         [log]\ntarget = \"file\"\ndirectory = {logs:?}\nlevel = \"trace\"\n\
         [admin]\nlisten = [\"{admin}\"]\ntoken_file = {token:?}\n\
         [auth]\nmode = \"jwt\"\nkeys = [{keys}]\n{extra}",
        logs = dir.join("logs").to_str().unwrap(),
        token = dir.join("admin-token").to_str().unwrap(),
        keys = keys.join(", "),
    )
}

impl AuthDaemon {
    async fn start(keys: &[&Path], extra: &str) -> AuthDaemon {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // The config is rewritten once the directory exists (the log directory is inside it).
        let proc = spawn_in(|dir| {
            std::fs::create_dir_all(dir.join("logs")).unwrap();
            secret_file(&dir.join("admin-token"), ADMIN_TOKEN);
            config_toml(dir, admin, keys, extra)
        });
        let addr = proc.ready().await;
        AuthDaemon { proc, addr, admin, seen: Vec::new() }
    }

    /// Rewrites the config with other keys and sends SIGHUP; returns once the reload is done.
    async fn reload_with(&self, keys: &[&Path], extra: &str) {
        let toml = config_toml(&self.proc.dir, self.admin, keys, extra);
        std::fs::write(self.proc.dir.join("wscast.toml"), toml).unwrap();
        self.proc.signal("-HUP");
        self.proc.until("RELOADING=1").await;
        self.proc.until("READY=1").await;
    }

    /// Tries an upgrade as `key` with `token` in the query (or in a Bearer header); returns the
    /// status and, for a refusal, the body.
    async fn attempt(&mut self, key: &str, token: Option<&str>, in_header: bool) -> (u16, String) {
        if let Some(t) = token {
            self.seen.push(t.to_string());
        }
        let (target, header) = match (token, in_header) {
            (Some(t), true) => (format!("/?specialKey={key}"), format!("Authorization: Bearer {t}\r\n")),
            (Some(t), false) => (format!("/?specialKey={key}&token={t}"), String::new()),
            (None, _) => (format!("/?specialKey={key}"), String::new()),
        };
        let mut tcp = within("tcp connect", TcpStream::connect(self.addr)).await.unwrap();
        tcp.write_all(upgrade_request(&target, &header).as_bytes()).await.unwrap();
        let mut out = Vec::new();
        // A 101 keeps the connection open: read its head only; a refusal is read to its end.
        within("an answer", async {
            let mut buf = [0u8; 1024];
            loop {
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                out.extend_from_slice(&buf[..n]);
                if n == 0 || (out.starts_with(b"HTTP/1.1 101") && out.ends_with(b"\r\n\r\n")) {
                    break;
                }
            }
        })
        .await;
        let response = String::from_utf8_lossy(&out).into_owned();
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.trim_end().to_string()).unwrap_or_default();
        (status(&response), body)
    }

    /// A real WebSocket client with `token` in the URL.
    async fn client(&mut self, key: &str, token: &str) -> Ws {
        self.seen.push(token.to_string());
        let tcp = within("tcp connect", TcpStream::connect(self.addr)).await.unwrap();
        let url = format!("ws://{}/?specialKey={key}&token={token}", self.addr);
        within("upgrade", tokio_tungstenite::client_async(url, tcp)).await.expect("upgrade accepted").0
    }

    async fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = http(self.admin, &request).await;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status(&response), body)
    }

    /// A metric's value; one that is not there yet (a connection still closing) is waited for.
    async fn metric(&self, line: &str) -> u64 {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (_, metrics) = self.admin("GET", "/metrics", "").await;
            if let Some(v) = metrics.lines().find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok())) {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "no {line} in the metrics:\n{metrics}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A counter's value once it reaches `want`, or its last value after the wait: a refused
    /// handshake is counted once its refusal is written, so the client may read it first.
    async fn counter_reaching(&self, line: &str, want: u64) -> u64 {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let got = self.metric(line).await;
            if got == want || std::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Stops the daemon and searches every log line it wrote for the tokens it was shown.
    async fn finish(self) {
        self.proc.signal("-TERM");
        let (code, stderr) = self.proc_exit().await;
        assert_eq!(code, 0, "{stderr}");
    }

    async fn proc_exit(self) -> (i32, String) {
        let seen = self.seen;
        let (code, stderr, dir) = self.proc.exit_keeping_dir().await;
        let result = (code, stderr);
        let mut logs = String::new();
        for entry in std::fs::read_dir(dir.path().join("logs")).unwrap() {
            logs.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
        assert!(logs.contains("upgrade rejected") || logs.contains("connected"), "the logs were written: {logs}");
        assert!(!seen.is_empty());
        for token in &seen {
            // The whole token, and its signature (what would let someone replay it).
            let signature = token.rsplit('.').next().unwrap_or(token);
            for needle in [token.as_str(), signature].into_iter().filter(|n| n.len() >= 16) {
                assert!(!logs.contains(needle), "a token reached the log: {needle}");
                assert!(!result.1.contains(needle), "a token reached stderr: {needle}");
            }
        }
        result
    }
}

/// The claims every valid token of the table carries, for `key`.
fn claims(key: &str) -> Value {
    json!({ "sub": key, "exp": now() + 300, "aud": "chat", "iss": "backend" })
}

fn signed(alg: &str, key: &Path, claims: Value) -> Value {
    json!({ "alg": alg, "key": key, "claims": claims })
}

fn with_kid(mut request: Value, kid: &str) -> Value {
    request["kid"] = json!(kid);
    request
}

/// base64url without padding, for the hand-made hostile tokens.
fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_tokens_against_the_real_daemon() {
    let k = make_keys();
    let configured = [&k.hs, &k.rsa.1, &k.ec.1, &k.ed.1, &k.jwks];
    let configured: Vec<&Path> = configured.iter().map(|p| p.as_path()).collect();
    let mut d = AuthDaemon::start(&configured, "audience = \"chat\"\nissuer = \"backend\"\n").await;
    let c = |f: &dyn Fn(&mut Value)| {
        let mut v = claims("alice");
        f(&mut v);
        v
    };
    let requests = vec![
        signed("HS256", &k.hs, claims("alice")),
        signed("RS256", &k.rsa.0, claims("alice")),
        signed("ES256", &k.ec.0, claims("alice")),
        signed("EdDSA", &k.ed.0, claims("alice")),
        with_kid(signed("RS256", &k.idp.0, claims("alice")), "idp-1"),
        with_kid(signed("RS256", &k.rsa.0, claims("alice")), "rsa"),
        signed("HS256", &k.hs, c(&|v| v["exp"] = json!(now() - 10))),
        signed("HS256", &k.hs, c(&|v| v["exp"] = json!(now() - 120))),
        signed("ES256", &k.ec.0, c(&|v| v["nbf"] = json!(now() + 120))),
        signed("HS256", &k.hs, claims("bob")),
        signed("HS256", &k.hs, c(&|v| drop(v.as_object_mut().unwrap().remove("sub")))),
        signed("HS256", &k.hs, c(&|v| v["aud"] = json!("other-app"))),
        signed("HS256", &k.hs, c(&|v| drop(v.as_object_mut().unwrap().remove("aud")))),
        signed("HS256", &k.hs, c(&|v| v["iss"] = json!("someone-else"))),
        signed("HS256", &k.stranger, claims("alice")),
        with_kid(signed("HS256", &k.hs, claims("alice")), "no-such-key"),
        with_kid(signed("RS256", &k.rsa.0, claims("alice")), "ec"),
        signed("HS256", &k.hs, c(&|v| drop(v.as_object_mut().unwrap().remove("exp")))),
        signed("RS256", &k.idp.0, claims("alice")),
    ];
    let t = pyjwt(&requests);
    // Hand-made hostile tokens: alg none, the RSA public key as an HMAC secret (algorithm
    // confusion), a valid token's signature on another payload, broken base64 and JSON, size.
    let unsigned =
        format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(claims("alice").to_string().as_bytes()));
    let rsa_pem = std::fs::read(&k.rsa.1).unwrap();
    let confusion = |kid: Option<&str>| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &claims("alice"), &jsonwebtoken::EncodingKey::from_secret(&rsa_pem).unwrap())
            .unwrap()
    };
    let (confused, confused_kid) = (confusion(None), confusion(Some("rsa")));
    let bob_sig = t[9].rsplit('.').next().unwrap();
    let (h, p) = (t[0].split('.').next().unwrap(), t[0].split('.').nth(1).unwrap());
    let tampered = format!("{h}.{p}.{bob_sig}");
    let bad_json = format!("{}.{}.{}", b64(b"{\"alg\":"), p, bob_sig);
    let big = format!("{h}.{}.{bob_sig}", "A".repeat(5000));
    let huge = format!("{h}.{}.{bob_sig}", "A".repeat(100_000));
    let cases: Vec<(&str, &str, bool, u16, &str)> = vec![
        ("HS256", &t[0], false, 101, ""),
        ("RS256", &t[1], false, 101, ""),
        ("ES256", &t[2], false, 101, ""),
        ("EdDSA", &t[3], false, 101, ""),
        ("RS256 from the JWK Set by kid", &t[4], false, 101, ""),
        ("RS256 by the file's kid", &t[5], false, 101, ""),
        ("HS256 in an Authorization header", &t[0], true, 101, ""),
        ("expired within the leeway", &t[6], false, 101, ""),
        ("expired", &t[7], false, 401, "token expired"),
        ("not yet valid", &t[8], false, 401, "token not yet valid"),
        ("another key's token", &t[9], false, 401, "token is for another key"),
        ("no sub", &t[10], false, 401, "token has no sub"),
        ("wrong aud", &t[11], false, 401, "token is for another audience"),
        ("no aud", &t[12], false, 401, "token is for another audience"),
        ("wrong iss", &t[13], false, 401, "token is from another issuer"),
        ("signed with an unknown secret", &t[14], false, 401, "bad signature"),
        ("unknown kid", &t[15], false, 401, "unknown key id"),
        ("RS256 naming an EC key", &t[16], false, 401, "token algorithm does not fit the key"),
        ("no exp", &t[17], false, 401, "token has no exp"),
        ("RS256 by a key only the JWK Set has, without kid", &t[18], false, 101, ""),
        ("alg none", &unsigned, false, 401, "token algorithm not accepted"),
        ("RSA public key as HS256 secret", &confused, false, 401, "bad signature"),
        ("RSA public key as HS256 secret, kid rsa", &confused_kid, false, 401, "does not fit the key"),
        ("another token's signature", &tampered, false, 401, "bad signature"),
        ("malformed base64", "abc!.def.ghi", false, 401, "malformed token"),
        ("malformed JSON", &bad_json, false, 401, "malformed token"),
        ("5 KB", &big, false, 401, "token too large"),
        ("100 KB: over the head limit", &huge, false, 431, "larger than"),
        ("5 KB in a header", &big, true, 401, "token too large"),
    ];
    let mut refused = 0;
    for (name, token, in_header, want, reason) in &cases {
        let (got, body) = d.attempt("alice", Some(token), *in_header).await;
        assert_eq!(got, *want, "{name}: {body}");
        assert!(body.contains(reason), "{name}: {body:?} lacks {reason:?}");
        let signature = token.rsplit('.').next().unwrap();
        assert!(signature.is_empty() || !body.contains(signature), "{name}: the 401 echoes the token");
        refused += usize::from(got == 401);
    }
    let (got, body) = d.attempt("alice", None, false).await;
    assert_eq!((got, body.starts_with("missing token")), (401, true), "{body}");
    refused += 1;
    let rejected = d.counter_reaching("wscast_handshakes_rejected_total{reason=\"token\"}", refused as u64).await;
    assert_eq!(rejected, refused as u64, "every 401 is counted");
    assert_eq!(d.metric("wscast_tokens_rejected_total{reason=\"expired\"}").await, 1);
    assert_eq!(d.metric("wscast_tokens_rejected_total{reason=\"bad_signature\"}").await, 3);
    assert_eq!(d.metric("wscast_token_keys").await, 5);
    // A client let in is a client like any other.
    let mut alice = d.client("alice", &t[2]).await;
    send(&mut alice, "with a token").await;
    assert_eq!(recv_text(&mut alice).await, "with a token");
    drop(alice);
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_across_sighup_without_dropping_open_connections() {
    let k = make_keys();
    let mut d = AuthDaemon::start(&[&k.hs], "").await;
    let claims = json!({ "sub": "alice", "exp": now() + 300 });
    let t = pyjwt(&[signed("HS256", &k.hs, claims.clone()), signed("HS256", &k.stranger, claims.clone())]);
    let (old, new) = (&t[0], &t[1]);
    assert_eq!(d.attempt("alice", Some(new), false).await, (401, "bad signature".into()), "not yet listed");
    let mut open = d.client("alice", old).await;
    // Both listed: both work (no kid, so each key of the algorithm is tried).
    d.reload_with(&[&k.hs, &k.stranger], "").await;
    assert_eq!(d.attempt("bob", Some(new), false).await.0, 401, "sub is alice");
    assert_eq!(d.attempt("alice", Some(new), true).await.0, 101);
    // The old key removed: its tokens stop working at once; the open connection stays.
    d.reload_with(&[&k.stranger], "").await;
    assert_eq!(d.attempt("alice", Some(old), false).await, (401, "bad signature".into()));
    assert_eq!(d.attempt("carol", Some(new), false).await, (401, "token is for another key".into()));
    // A key file that cannot be used keeps the running keys.
    use std::os::unix::fs::PermissionsExt;
    let open_secret = k.dir.path().join("open.secret");
    std::fs::write(&open_secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&open_secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    d.reload_with(&[&open_secret], "").await;
    assert_eq!(d.attempt("alice", Some(new), false).await.0, 101, "the running keys were kept");
    assert_eq!(d.metric("wscast_reloads_total{result=\"failed\"}").await, 1);
    // The connection made with the removed key was never dropped... until its own key's
    // newer connection took it over (the last 101 above), with 4000.
    assert_eq!(recv_close(&mut open).await.0, 4000);
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_connections_closes_with_4003_at_exp() {
    let k = make_keys();
    let mut d = AuthDaemon::start(&[&k.ec.1], "expire_connections = true\n").await;
    let soon = now() + 2;
    let t = pyjwt(&[
        signed("ES256", &k.ec.0, json!({ "sub": "short", "exp": soon })),
        signed("ES256", &k.ec.0, json!({ "sub": "long", "exp": now() + 300 })),
    ]);
    let mut short = d.client("short", &t[0]).await;
    let mut long = d.client("long", &t[1]).await;
    let (_, info) = d.admin("GET", "/v1/clients/short", "").await;
    assert!(info.contains(&format!("\"token_expires_at\":{soon}")), "{info}");
    let closed = recv_close(&mut short).await;
    let at = now();
    assert_eq!(closed, (4003, "token expired".into()));
    assert!(at >= soon, "closed at {at}, before exp {soon}");
    assert!(at <= soon + 2, "closed at {at}, well after exp {soon}");
    send(&mut long, "still here").await;
    assert_eq!(recv_text(&mut long).await, "still here");
    assert_eq!(d.metric("wscast_disconnects_total{code=\"4003\"}").await, 1);
    d.finish().await;
}

/// The fenced code block of `lang` in docs/auth.md.
fn documented(lang: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/auth.md")).unwrap();
    let start = doc.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("a {lang} block in docs/auth.md"));
    let body = &doc[start + lang.len() + 4..];
    body[..body.find("```").unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_recipes_and_the_minting_api_make_tokens_the_daemon_accepts() {
    let k = make_keys();
    let mut d = AuthDaemon::start(&[&k.hs, &k.rsa.1], "").await;
    let secret = k.hs.to_str().unwrap();
    let python = documented("python").replace("/etc/wscast/token-secret", secret);
    let node = documented("js").replace("/etc/wscast/token-secret", secret);
    let from_python = run(PYTHON, &["-c", &python], "install python3-jwt (scripts/test does)").trim().to_string();
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/auth/node_modules");
    let out = std::process::Command::new("node")
        .args(["-e", &node])
        .env("NODE_PATH", modules)
        .output()
        .expect("node: install nodejs and npm, then npm ci in tests/auth (scripts/test does)");
    assert!(out.status.success(), "node (npm ci --prefix tests/auth): {}", String::from_utf8_lossy(&out.stderr));
    let from_node = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut py_client = d.client("alice", &from_python).await;
    send(&mut py_client, "signed by PyJWT").await;
    assert_eq!(recv_text(&mut py_client).await, "signed by PyJWT");
    let mut node_client = d.client("alice", &from_node).await;
    assert_eq!(recv_close(&mut py_client).await.0, 4000, "the same key, newer connection");
    send(&mut node_client, "signed by jsonwebtoken").await;
    assert_eq!(recv_text(&mut node_client).await, "signed by jsonwebtoken");

    // The documented curl of the minting API, as written.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/auth.md")).unwrap();
    let curl = doc.lines().skip_while(|l| !l.trim_start().starts_with("curl ")).take(2).collect::<Vec<_>>();
    let curl = curl.join("\n").replace("\\\n", " ").replace("127.0.0.1:9090", &d.admin.to_string());
    let out = std::process::Command::new("sh")
        .args(["-c", &curl.replacen("curl ", "curl -fsS --max-time 10 ", 1)])
        .env("TOKEN", ADMIN_TOKEN)
        .output()
        .expect("curl (apt-get install curl)");
    assert!(out.status.success(), "{curl}: {}", String::from_utf8_lossy(&out.stderr));
    let minted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((minted["key"].as_str(), minted["kid"].as_str()), (Some("alice"), Some("hs")));
    let exp = minted["expires_at"].as_u64().unwrap();
    assert!((now() + 290..=now() + 300).contains(&exp), "5m: {exp}");
    let token = minted["token"].as_str().unwrap().to_string();
    let mut minted_client = d.client("alice", &token).await;
    send(&mut minted_client, "minted").await;
    assert_eq!(recv_text(&mut minted_client).await, "minted");
    assert_eq!(d.attempt("bob", Some(&token), false).await, (401, "token is for another key".into()));
    // The API's own refusals.
    for (body, want, why) in [
        (r#"{"key": "bob", "ttl": "2d"}"#, 400, "1s to 24h"),
        (r#"{"key": "", "ttl": "5m"}"#, 400, "must not be empty"),
        (r#"{"key": "bob", "ttl": "soon"}"#, 400, "duration"),
        (r#"{"name": "bob"}"#, 400, "key"),
    ] {
        let (got, answer) = d.admin("POST", "/v1/tokens", body).await;
        assert_eq!(got, want, "{body}: {answer}");
        assert!(answer.contains(why), "{body}: {answer}");
    }
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_without_a_secret_answers_409() {
    let k = make_keys();
    let mut d = AuthDaemon::start(&[&k.ed.1], "").await;
    let (got, answer) = d.admin("POST", "/v1/tokens", r#"{"key": "bob"}"#).await;
    assert_eq!(got, 409, "{answer}");
    assert!(answer.contains("no HMAC secret"), "{answer}");
    let t = pyjwt(&[signed("EdDSA", &k.ed.0, json!({ "sub": "bob", "exp": now() + 60 }))]);
    assert_eq!(d.attempt("bob", Some(&t[0]), false).await.0, 101);
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_key_files_exit_78_with_one_line_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let k = make_keys();
    let d = k.dir.path();
    let open = d.join("open.secret");
    std::fs::write(&open, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let short = d.join("short.secret");
    secret_file(&short, "too-short");
    let ec_p384 = key_pair(d, "p384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]).1;
    let cases: Vec<(&Path, &str)> = vec![
        (&open, "readable by everyone (mode 0644)"),
        (&short, "at least 32 bytes"),
        (&k.rsa.0, "holds a private key"),
        (&ec_p384, "curve P-256"),
        (Path::new("/nonexistent/key.pem"), "No such file"),
    ];
    for (file, problem) in cases {
        let config = d.join("wscast.toml");
        let toml = format!("[auth]\nmode = \"jwt\"\nkeys = [{:?}]\n", file.to_str().unwrap());
        std::fs::write(&config, toml).unwrap();
        let out = std::process::Command::new(BIN).arg("--check-config").arg("--config").arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{file:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(&format!("auth.keys = {file:?}")) && stderr.contains(problem), "{stderr}");
    }
}
