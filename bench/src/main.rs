//! wscast-bench: a load generator for the wscast wire contract, and the baseline server.
//!
//! Single-threaded on purpose: pin it to one core (`taskset -c 1`) and the server to the other.
//! It reports its own CPU share and says when it, not the server, was the limit.

mod baseline;
mod client;
mod completion;
mod publish;
mod sys;
mod tokens;

use std::io::Read;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use client::{Stream, Target};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone)]
struct Server {
    /// ws://ADDR or wss://ADDR (loopback only for load).
    #[arg(long, default_value = "ws://127.0.0.1:8888")]
    url: String,
    /// CA certificate (PEM) for wss.
    #[arg(long)]
    ca: Option<String>,
    /// The server's PID, to report its CPU and memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Subcommand)]
enum Mode {
    /// Broadcast from S senders to N clients; frames/s, latency, loss, validation.
    Fanout {
        #[command(flatten)]
        server: Server,
        /// Clients, senders included.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Fraction of clients that ask for gzip (senders are plain).
        #[arg(long, default_value_t = 0.5)]
        gzip: f64,
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Messages per second over all senders; 0 = closed loop as fast as the window allows.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Messages a sender may have in flight (sent, own copy not yet back) in closed loop.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Text message size in bytes (at least 28: timestamp, sender and sequence).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Extra clients that never read: reports whether the server cut them off (4001) and
        /// the server's peak RSS.
        #[arg(long, default_value_t = 0)]
        stuck: usize,
        /// A second node of the same cluster: clients (senders too) alternate between the two.
        #[arg(long)]
        url2: Option<String>,
        /// Closed loop with one sender whose window counts a message as done only once every
        /// client has received it (instead of the sender's own copy).
        #[arg(long)]
        all_receivers: bool,
    },
    /// Hold N idle connections; with --server-pid, report the server's RSS per connection.
    Idle {
        #[command(flatten)]
        server: Server,
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Seconds to hold them after all are connected.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Connect, upgrade and close as fast as possible; connections per second.
    Connect {
        #[command(flatten)]
        server: Server,
        /// Connections in progress at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Connect with connection tokens signed with this key file (an HMAC secret for HS256,
        /// a PEM private key for ES256), made before the clock starts.
        #[arg(long, value_name = "FILE")]
        sign_with: Option<std::path::PathBuf>,
        /// The tokens' algorithm: HS256 or ES256.
        #[arg(long, default_value = "HS256")]
        alg: String,
    },
    /// POST /v1/publish over keep-alive connections of the admin API into N reading clients.
    Publish {
        #[command(flatten)]
        server: Server,
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// A file holding the admin token.
        #[arg(long)]
        token_file: String,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 0.5)]
        gzip: f64,
        /// Keep-alive connections, one request in flight on each.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Text message size in bytes (at least 28).
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Run the baseline server (naive tokio-tungstenite broadcast) until killed.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:8890")]
        listen: SocketAddr,
        /// Worker threads (1 to compare with a daemon pinned to one core).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Mode::Baseline { listen, threads } = cli.mode {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
        if let Err(e) = rt.block_on(baseline::serve(listen)) {
            eprintln!("baseline: {e}");
            std::process::exit(1);
        }
        return;
    }
    sys::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async move {
        match cli.mode {
            Mode::Fanout {
                server,
                clients,
                gzip,
                senders,
                rate,
                window,
                size,
                duration,
                stuck,
                url2,
                all_receivers,
            } => {
                let senders = if all_receivers { 1 } else { senders };
                let load =
                    Load { n: clients, gzip, senders, rate, window, size: size.max(28), stuck, url2, all_receivers };
                fanout(&server, load, secs(duration)).await
            }
            Mode::Publish { server, admin, token_file, clients, gzip, connections, size, duration } => {
                let token = std::fs::read_to_string(&token_file).map_err(|e| format!("{token_file}: {e}"))?;
                let token = token.trim_end().to_string();
                let load = publish::Publish { admin, token, clients, gzip, connections, size: size.max(28) };
                publish::run(&server, load, secs(duration)).await
            }
            Mode::Idle { server, clients, duration } => idle(&server, clients, secs(duration)).await,
            Mode::Connect { server, concurrency, duration, sign_with, alg } => {
                let tokens = match &sign_with {
                    Some(file) => Some(tokens::sign(file, &alg, TOKEN_KEYS)?),
                    None => None,
                };
                connect(&server, concurrency, secs(duration), tokens).await
            }
            Mode::Baseline { .. } => unreachable!(),
        }
    });
    if let Err(e) = result {
        eprintln!("wscast-bench: {e}");
        std::process::exit(1);
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.1, 3600.0))
}

/// Counters shared by the fan-out tasks (one thread: Relaxed atomics cost next to nothing).
struct Fan {
    start: Instant,
    size: usize,
    sent: AtomicU64,
    delivered: AtomicU64,
    validated: AtomicU64,
    invalid: AtomicU64,
    /// Receivers the server closed while the run went on, by whether the code was 4001 (too
    /// slow): what they missed is a loss the contract allows, and the report says so.
    closed_4001: AtomicU64,
    closed_other: AtomicU64,
    stop: AtomicBool,
    latency: Mutex<Histogram<u64>>,
}

impl Fan {
    /// Fresh counters for payloads of `size` bytes; the clock starts now.
    fn new(size: usize) -> Self {
        Fan {
            start: Instant::now(),
            size,
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            validated: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            closed_4001: AtomicU64::new(0),
            closed_other: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
        }
    }
}

/// Payload: 16 hex digits of send time (ns since start), 4 of sender, 8 of sequence, padding.
fn payload(fan: &Fan, sender: usize, seq: u64) -> Vec<u8> {
    let ts = fan.start.elapsed().as_nanos() as u64;
    let mut p = format!("{ts:016x}{:04x}{seq:08x}", sender as u16).into_bytes();
    p.resize(fan.size, b'x');
    p
}

fn hex(b: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// Checks a received text against what its sender must have sent; returns (ts, sender).
fn check(fan: &Fan, text: &[u8]) -> Option<(u64, usize)> {
    if text.len() != fan.size || text[28..].iter().any(|&b| b != b'x') {
        return None;
    }
    Some((hex(&text[..16])?, hex(&text[16..20])? as usize))
}

/// The shape of a fan-out run.
struct Load {
    n: usize,
    gzip: f64,
    senders: usize,
    rate: u64,
    window: usize,
    size: usize,
    stuck: usize,
    url2: Option<String>,
    all_receivers: bool,
}

async fn fanout(server: &Server, load: Load, duration: Duration) -> Result<(), String> {
    let Load { n, gzip: gzip_share, senders, rate, window, size, stuck, url2, all_receivers } = load;
    let target = Target::new(&server.url, server.ca.as_deref())?;
    let second = url2.as_deref().map(|u| Target::new(u, server.ca.as_deref())).transpose()?;
    let targets: Vec<&Target> = std::iter::once(&target).chain(second.as_ref()).collect();
    let senders = senders.clamp(1, n);
    let fan = Rc::new(Fan::new(size));
    let windows: Vec<Rc<Semaphore>> = (0..senders).map(|_| Rc::new(Semaphore::new(window))).collect();
    let all = all_receivers.then(|| Rc::new(completion::AllReceivers::new(n, windows[0].clone(), window)));
    let gzip_every = if gzip_share > 0.0 { (1.0 / gzip_share).round().max(1.0) as usize } else { usize::MAX };
    let mut gzip_count = 0;
    let mut writers = Vec::new();
    for i in 0..n {
        let gzip = i >= senders && i % gzip_every == 0;
        gzip_count += gzip as usize;
        // Pairs alternate, so each node gets plain and gzip clients alike.
        let node = targets[(i / 2) % targets.len()];
        let (stream, early) =
            client::connect(node, i, &format!("b{i}"), gzip).await.map_err(|e| format!("client {i}: {e}"))?;
        let (reader, writer) = tokio::io::split(stream);
        // With the all-receivers window, no client's own copy releases a permit: completion does.
        let own = if all.is_some() { None } else { windows.get(i).cloned() };
        tokio::task::spawn_local(receive(fan.clone(), reader, early, gzip, i, own, all.clone()));
        if i < senders {
            writers.push(writer);
        }
    }
    let mut stuck_clients = Vec::new();
    for j in 0..stuck {
        let i = n + j;
        let c =
            client::connect(&target, i, &format!("stuck{j}"), false).await.map_err(|e| format!("stuck {j}: {e}"))?;
        stuck_clients.push(c);
    }
    let peak_rss = Rc::new(AtomicU64::new(0));
    if let Some(pid) = server.server_pid {
        let (peak, fan) = (peak_rss.clone(), fan.clone());
        tokio::task::spawn_local(async move {
            while !fan.stop.load(Relaxed) {
                peak.fetch_max(sys::rss(&pid.to_string()).unwrap_or(0), Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
    // Let the last registrations land before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let meter = sys::CpuMeter::start();
    let server_cpu = server.server_pid.and_then(|p| sys::cpu_time(&p.to_string()));
    let t0 = Instant::now();
    let delivered0 = fan.delivered.load(Relaxed);
    let per_sender_rate = (rate > 0).then(|| rate as f64 / senders as f64);
    let mut tasks = Vec::new();
    for (s, writer) in writers.into_iter().enumerate() {
        tasks.push(tokio::task::spawn_local(send(fan.clone(), writer, s, windows[s].clone(), per_sender_rate)));
    }
    tokio::time::sleep(duration).await;
    fan.stop.store(true, Relaxed);
    let elapsed = t0.elapsed();
    let bench_cpu = meter.share();
    let server_share = server.server_pid.and_then(|p| {
        let now = sys::cpu_time(&p.to_string())?;
        Some(now.saturating_sub(server_cpu?).as_secs_f64() / elapsed.as_secs_f64())
    });
    let delivered_in_time = fan.delivered.load(Relaxed) - delivered0;
    let completed = all.as_ref().map(|a| a.done());
    for t in tasks {
        let _ = t.await;
    }
    // Wait for stragglers, then count what never came.
    let expected = fan.sent.load(Relaxed) * n as u64;
    let stuck_report = stuck_outcome(stuck_clients).await;
    let settle = Instant::now();
    while fan.delivered.load(Relaxed) - delivered0 < expected && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = fan.delivered.load(Relaxed) - delivered0;
    let sent = fan.sent.load(Relaxed);
    let h = fan.latency.lock().unwrap();
    let secs = elapsed.as_secs_f64();
    let mode = match (rate, all_receivers) {
        (0, true) => format!("max(all-receivers window {window})"),
        (0, false) => format!("max(window {window})"),
        (r, _) => r.to_string(),
    };
    println!(
        "fanout {}{}: clients={n} gzip={gzip_count} senders={senders} size={size} rate={mode} duration={secs:.1}s",
        server.url,
        url2.map(|u| format!(" + {u}")).unwrap_or_default(),
    );
    println!(
        "  frames/s={:.0} msgs/s={:.0} sent={sent} delivered={delivered} lost={} validated={} invalid={} \
         receivers_closed_4001={} receivers_closed_other={}",
        delivered_in_time as f64 / secs,
        sent as f64 / secs,
        expected.saturating_sub(delivered),
        fan.validated.load(Relaxed),
        fan.invalid.load(Relaxed),
        fan.closed_4001.load(Relaxed),
        fan.closed_other.load(Relaxed),
    );
    println!(
        "  latency_us p50={} p99={} p999={} max={} (samples {})",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len()
    );
    if stuck > 0 {
        println!("  stuck_clients={stuck} {stuck_report} server_peak_rss={}KiB", peak_rss.load(Relaxed) / 1024);
    }
    if let Some(done) = completed {
        println!("  completed_msgs/s={:.0} (received by every client)", done as f64 / secs);
    }
    // Server CPU time per delivered frame: far steadier than frames/s on a shared machine, and
    // still meaningful when the generator is the limit.
    if let Some(share) = server_share.filter(|_| delivered_in_time > 0) {
        println!("  server_us_per_frame={:.3}", share * secs * 1e6 / delivered_in_time as f64);
    }
    report_cpu(bench_cpu, server_share);
    if fan.invalid.load(Relaxed) > 0 {
        return Err("some payloads did not match what was sent".into());
    }
    Ok(())
}

/// Reads what each never-reading client was sent, up to the end: a Close code, a bare close, or
/// still open.
async fn stuck_outcome(clients: Vec<(Stream, Vec<u8>)>) -> String {
    let (mut cut_4001, mut other_close, mut closed, mut open) = (0, 0, 0, 0);
    for (mut stream, mut buf) in clients {
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut pos = 0;
                while let Some((frame, len)) = client::parse(&buf[pos..]) {
                    if frame.opcode == 8 {
                        return Some(frame.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])).unwrap_or(0));
                    }
                    pos += len;
                }
                buf.drain(..pos);
                buf.reserve(64 * 1024);
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await;
        match outcome {
            Ok(Some(4001)) => cut_4001 += 1,
            Ok(Some(_)) => other_close += 1,
            Ok(None) => closed += 1,
            Err(_) => open += 1,
        }
    }
    format!("cut_off_4001={cut_4001} other_close={other_close} closed_without_frame={closed} still_open={open}")
}

fn report_cpu(bench: f64, server: Option<f64>) {
    let server = server.map(|s| format!(" server_cpu={:.0}%", s * 100.0)).unwrap_or_default();
    println!("  bench_cpu={:.0}%{server}", bench * 100.0);
    if bench > 0.9 {
        println!("  NOTE: the generator used {:.0}% of its core: it may be the limit, not the server", bench * 100.0);
    }
}

async fn send(
    fan: Rc<Fan>,
    mut writer: tokio::io::WriteHalf<Stream>,
    sender: usize,
    window: Rc<Semaphore>,
    rate: Option<f64>,
) {
    let mut ticker = rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.001)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut frame = Vec::with_capacity(fan.size + 14);
    let mut seq = 0u64;
    while !fan.stop.load(Relaxed) {
        match &mut ticker {
            Some(t) => {
                t.tick().await;
            }
            None => match window.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return,
            },
        }
        frame.clear();
        client::encode(1, &payload(&fan, sender, seq), &mut frame);
        if writer.write_all(&frame).await.is_err() {
            return;
        }
        seq += 1;
        fan.sent.fetch_add(1, Relaxed);
    }
}

/// Reads frames, counting, timing plain ones and validating a sample of each kind.
async fn receive(
    fan: Rc<Fan>,
    mut reader: tokio::io::ReadHalf<Stream>,
    early: Vec<u8>,
    gzip: bool,
    me: usize,
    own_window: Option<Rc<Semaphore>>,
    all: Option<Rc<completion::AllReceivers>>,
) {
    const SAMPLE: u64 = 64;
    // Data frames received: with one sender, the index of each message.
    let mut index = 0u64;
    let mut buf = early;
    buf.reserve(64 * 1024);
    let mut count = 0u64;
    let mut inflated = Vec::new();
    loop {
        let mut pos = 0;
        while let Some((frame, len)) = client::parse(&buf[pos..]) {
            pos += len;
            if let (Some(all), 1 | 2) = (&all, frame.opcode) {
                all.arrived(index);
                index += 1;
            }
            let text: &[u8] = match frame.opcode {
                1 if !gzip => frame.payload,
                2 if gzip => {
                    count += 1;
                    if !count.is_multiple_of(SAMPLE) {
                        fan.delivered.fetch_add(1, Relaxed);
                        continue;
                    }
                    inflated.clear();
                    if flate2::read::GzDecoder::new(frame.payload).read_to_end(&mut inflated).is_err() {
                        fan.invalid.fetch_add(1, Relaxed);
                        continue;
                    }
                    &inflated
                }
                8 => {
                    let code = frame.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let counter = if code == Some(4001) { &fan.closed_4001 } else { &fan.closed_other };
                    counter.fetch_add(1, Relaxed);
                    return;
                }
                9 | 10 => continue,
                _ => {
                    fan.invalid.fetch_add(1, Relaxed);
                    continue;
                }
            };
            fan.delivered.fetch_add(1, Relaxed);
            match check(&fan, text) {
                Some((ts, sender)) => {
                    let now = fan.start.elapsed().as_nanos() as u64;
                    let _ = fan.latency.lock().unwrap().record((now.saturating_sub(ts) / 1000).max(1));
                    if sender == me {
                        if let Some(w) = &own_window {
                            w.add_permits(1);
                        }
                    }
                    if gzip || count.is_multiple_of(SAMPLE) {
                        fan.validated.fetch_add(1, Relaxed);
                    }
                }
                None => {
                    fan.invalid.fetch_add(1, Relaxed);
                }
            }
            count += !gzip as u64;
        }
        buf.drain(..pos);
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn idle(server: &Server, n: usize, duration: Duration) -> Result<(), String> {
    let target = Target::new(&server.url, server.ca.as_deref())?;
    let pid = server.server_pid.map(|p| p.to_string());
    let before = pid.as_deref().and_then(sys::rss);
    let t0 = Instant::now();
    for i in 0..n {
        let (stream, _) = client::connect(&target, i, &format!("idle{i}"), i % 2 == 1)
            .await
            .map_err(|e| format!("connection {i} of {n}: {e}"))?;
        tokio::task::spawn_local(hold(stream));
    }
    let connect_time = t0.elapsed();
    tokio::time::sleep(duration).await;
    let after = pid.as_deref().and_then(sys::rss);
    println!(
        "idle {}: {n} connections open (connected in {:.1}s), held {:.1}s",
        server.url,
        connect_time.as_secs_f64(),
        duration.as_secs_f64()
    );
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "  server_rss_before={}KiB server_rss_after={}KiB rss_per_connection={:.0}B (user memory; kernel socket buffers not counted)",
            b / 1024,
            a / 1024,
            a.saturating_sub(b) as f64 / n as f64
        );
    }
    Ok(())
}

/// Keeps a connection open, answering pings, until the server closes it.
async fn hold(mut stream: Stream) {
    let mut buf = Vec::with_capacity(256);
    let mut out = Vec::new();
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut pos = 0;
        while let Some((frame, len)) = client::parse(&buf[pos..]) {
            if frame.opcode == 9 {
                out.clear();
                client::encode(10, frame.payload, &mut out);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
            pos += len;
        }
        buf.drain(..pos);
    }
}

/// Keys the connect benchmark cycles through when it uses tokens (one token signed for each).
const TOKEN_KEYS: usize = 20_000;

async fn connect(
    server: &Server,
    concurrency: usize,
    duration: Duration,
    tokens: Option<Vec<String>>,
) -> Result<(), String> {
    let tokens = Rc::new(tokens);
    let target = Rc::new(Target::new(&server.url, server.ca.as_deref())?);
    let done = Rc::new(AtomicU64::new(0));
    let failed = Rc::new(AtomicU64::new(0));
    let next = Rc::new(AtomicU64::new(0));
    let meter = sys::CpuMeter::start();
    let server_cpu = server.server_pid.and_then(|p| sys::cpu_time(&p.to_string()));
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (target, done, failed, next) = (target.clone(), done.clone(), failed.clone(), next.clone());
        let tokens = tokens.clone();
        workers.push(tokio::task::spawn_local(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Relaxed) as usize;
                // The token rides in the query after the key, as a browser would send it.
                let key = match tokens.as_ref() {
                    Some(t) => format!("t{}&token={}", i % t.len(), t[i % t.len()]),
                    None => format!("k{i}"),
                };
                match client::connect(&target, i, &key, false).await {
                    Ok((stream, _)) => {
                        done.fetch_add(1, Relaxed);
                        drop(stream);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let secs = duration.as_secs_f64();
    let with = tokens.as_ref().as_ref().map_or(String::new(), |t| format!(" tokens={}", t.len()));
    println!(
        "connect {}{with}: concurrency={concurrency} duration={secs:.1}s connections/s={:.0} ok={} failed={}",
        server.url,
        done.load(Relaxed) as f64 / secs,
        done.load(Relaxed),
        failed.load(Relaxed)
    );
    let server_share = server.server_pid.and_then(|p| {
        let now = sys::cpu_time(&p.to_string())?;
        Some(now.saturating_sub(server_cpu?).as_secs_f64() / secs)
    });
    if let Some(share) = server_share.filter(|s| *s > 0.0) {
        println!(
            "  server_capacity_estimate={:.0} connections/s per core (rate / server CPU share)",
            done.load(Relaxed) as f64 / secs / share
        );
    }
    report_cpu(meter.share(), server_share);
    Ok(())
}
