#!/usr/bin/env python3
"""Runs the figures of BENCHMARKS.md: wscast and the baseline, each server pinned to core 0 and
wscast-bench to core 1, RUNS runs per figure, and prints the medians as a Markdown table.

    python3 bench/run.py            # full run (a few minutes)
    RUNS=1 QUICK=1 python3 bench/run.py   # smoke test: small numbers, seconds

It prints figures; it never fails on speed. Loopback only.
"""
import os, re, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
RUNS = int(os.environ.get("RUNS", "3"))
QUICK = os.environ.get("QUICK") == "1"
CORES = os.cpu_count() or 1
FAILED = []  # bench commands that errored (a broken tool fails the run; a slow server never does)
ADMIN_PORT = 9091
SERVER_CPU, BENCH_CPU = ("0", "1") if CORES > 1 else ("0", "0")


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on {port} did not come up")


class Server:
    def __init__(self, kind, tmp, tls=False, admin=False, auth=None):
        self.kind, self.port = kind, 8890 if kind == "baseline" else 8888
        if kind == "baseline":
            cmd = [f"{BIN}/wscast-bench", "baseline", "--listen", f"127.0.0.1:{self.port}"]
        else:
            cfg = os.path.join(tmp, "bench.toml")
            with open(cfg, "w") as f:
                # The shipped log level: a default install's footprint, not a quieter one's.
                f.write(f'[server]\nlisten = ["127.0.0.1:{self.port}"]\n[log]\nlevel = "info"\n')
                if admin:
                    token = os.path.join(tmp, "admin-token")
                    with open(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600), "w") as t:
                        t.write("bench-token\n")
                    f.write(f'[admin]\nlisten = ["127.0.0.1:{ADMIN_PORT}"]\ntoken_file = "{token}"\n')
                if tls:
                    f.write(f'[tls]\nenabled = true\ncert = "{tmp}/cert.pem"\nkey = "{tmp}/key.pem"\n')
                if auth:
                    f.write(f'[auth]\nmode = "jwt"\nkeys = ["{token_keys(tmp, auth)[1]}"]\n')
            cmd = [f"{BIN}/wscast", "--config", cfg]
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench(server, tmp, *args):
    cmd = ["taskset", "-c", BENCH_CPU, f"{BIN}/wscast-bench", *args, "--url", server.url, "--server-pid", str(server.proc.pid)]
    if server.url.startswith("wss"):
        cmd += ["--ca", f"{tmp}/ca.pem"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    sys.stderr.write(out.stdout)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        FAILED.append(" ".join(args))
        return {}
    return dict(re.findall(r"([a-z_0-9/]+)=([0-9.]+)", out.stdout))


def certs(tmp):
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=bench-ca", "-keyout", f"{tmp}/ca.key", "-out", f"{tmp}/ca.pem")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
        "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/req.csr")
    ext = f"{tmp}/ext"
    open(ext, "w").write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", f"{tmp}/req.csr", "-CA", f"{tmp}/ca.pem", "-CAkey", f"{tmp}/ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{tmp}/cert.pem")


def token_keys(tmp, alg):
    """(what the bench signs with, what the daemon verifies with) for HS256 or ES256."""
    if alg == "HS256":
        secret = f"{tmp}/token.secret"
        if not os.path.exists(secret):
            with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        return secret, secret
    private, public = f"{tmp}/token-ec.key", f"{tmp}/token-ec.pem"
    if not os.path.exists(public):
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)
        run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", private)
        run("openssl", "pkey", "-in", private, "-pubout", "-out", public)
    return private, public


US_PER_FRAME = (("server_us_per_frame", "us/frame", "server CPU per delivered frame"),)


def figure(rows, name, kind, tls, key, unit, *args, admin=False, auth=None, extra=()):
    """Runs one figure RUNS times; `extra` adds rows for more keys of the same runs."""
    keys = [(name, key, unit)] + [(f"{name}: {label}", k, u) for k, u, label in extra]
    values = {k: [] for _, k, _ in keys}
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            if tls:
                certs(tmp)
            s = Server(kind, tmp, tls, admin, auth)
            try:
                extra = ["--admin", f"127.0.0.1:{ADMIN_PORT}", "--token-file", f"{tmp}/admin-token"] if admin else []
                if auth:
                    extra += ["--sign-with", token_keys(tmp, auth)[0], "--alg", auth]
                r = bench(s, tmp, *args, *extra)
            finally:
                s.stop()
        for _, k, _ in keys:
            if k in r:
                values[k].append(float(r[k]))
    for n, k, u in keys:
        med = statistics.median(values[k]) if values[k] else None
        rows.append((n, kind + (" wss" if tls else ""), med, u, values[k]))
    return statistics.median(values[key]) if values[key] else None


def main():
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "wscast", "-p", "wscast-bench"], cwd=ROOT, check=True)
    idle_n = "500" if QUICK else "19000"
    fan_n = "100" if QUICK else "1000"
    secs = "1" if QUICK else "5"
    rows = []
    for kind in ("wscast", "baseline"):
        figure(rows, "idle ws: RSS per connection", kind, False, "rss_per_connection", "B",
               "idle", "--clients", idle_n, "--duration", "2")
    figure(rows, "idle wss: RSS per connection", "wscast", True, "rss_per_connection", "B",
           "idle", "--clients", idle_n, "--duration", "2")
    for kind in ("wscast", "baseline"):
        figure(rows, f"fan-out {fan_n} clients (half gzip), 1 sender, 64 B", kind, False, "frames/s", "frames/s",
               "fanout", "--clients", fan_n, "--senders", "1", "--duration", secs, extra=US_PER_FRAME)
    figure(rows, f"fan-out {fan_n} clients (half gzip), 1 sender, 64 B", "wscast", True, "frames/s", "frames/s",
           "fanout", "--clients", fan_n, "--senders", "1", "--duration", secs, extra=US_PER_FRAME)
    for kind in ("wscast", "baseline"):
        figure(rows, f"fan-out {fan_n} clients, 10 senders, 64 B", kind, False, "frames/s", "frames/s",
               "fanout", "--clients", fan_n, "--senders", "10", "--duration", secs, extra=US_PER_FRAME)
    # A message is done only once every client has it (window 32): no deep queues to hide the
    # per-message cost. And the trickle: many senders, an open loop, a few frames per wake-up.
    for tls in (False, True):
        figure(rows, f"all-receivers window 32: {fan_n} clients (half gzip), 1 sender, 64 B", "wscast", tls,
               "frames/s", "frames/s", "fanout", "--clients", fan_n, "--all-receivers", "--window", "32",
               "--duration", secs, extra=US_PER_FRAME)
    figure(rows, f"trickle: {fan_n} clients (half gzip), 100 senders, 2,000 msg/s in all, 64 B: server CPU", "wscast",
           False, "server_cpu", "%", "fanout", "--clients", fan_n, "--senders", "100", "--rate", "2000",
           "--duration", secs, extra=(("frames/s", "frames/s", "delivered"),) + US_PER_FRAME)
    for kind in ("wscast", "baseline"):
        figure(rows, "latency: 100 clients, 1,000 msg/s, p99", kind, False, "p99", "us",
               "fanout", "--clients", "100", "--senders", "1", "--rate", "1000", "--duration", secs,
               extra=US_PER_FRAME)
    for kind in ("wscast", "baseline"):
        figure(rows, "connects/s (plain)", kind, False, "connections/s", "conn/s",
               "connect", "--duration", secs)
    # Connection tokens against none, in the same run: the verifying is the daemon's cost.
    for alg in ("HS256", "ES256"):
        figure(rows, f"connects/s (plain, {alg} token)", "wscast", False, "connections/s", "conn/s",
               "connect", "--duration", secs, auth=alg)
    figure(rows, f"admin API: POST /v1/publish into {fan_n} clients (half gzip), 4 keep-alive connections, 64 B",
           "wscast", False, "publishes/s", "publishes/s", "publish", "--clients", fan_n, "--duration", secs, admin=True)
    figure(rows, "connects/s (TLS)", "wscast", True, "connections/s", "conn/s", "connect", "--duration", secs)

    stuck_secs = "3" if QUICK else "30"
    with tempfile.TemporaryDirectory() as tmp:
        s = Server("wscast", tmp)
        try:
            r = bench(s, tmp, "fanout", "--clients", "100", "--rate", "1000", "--size", "1024",
                      "--duration", stuck_secs, "--stuck", "1")
        finally:
            s.stop()
    rows.append(("one never-reading client, 1,000 msg/s of 1 KiB: server peak RSS", "wscast",
                 float(r.get("server_peak_rss", "nan")), "KiB", []))
    rows.append(("  ... the never-reading client closed by the server (1 = yes)", "wscast",
                 float(r.get("closed_without_frame", 0)) + float(r.get("cut_off_4001", 0)), "", []))

    print(f"\n| figure | server | median of {RUNS} | unit | runs |")
    print("|---|---|---|---|---|")
    for name, kind, med, unit, values in rows:
        fmt = lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}"
        shown = "n/a" if med is None or med != med else fmt(med)
        print(f"| {name} | {kind} | {shown} | {unit} | {', '.join(fmt(v) for v in values)} |")


if __name__ == "__main__":
    main()
    if FAILED:
        sys.exit("wscast-bench failed: " + "; ".join(FAILED))
