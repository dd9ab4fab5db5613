//! `publish`: the admin API's `POST /v1/publish` over keep-alive HTTP/1.1 connections, into N
//! clients that read and check every frame. Each connection has one request in flight (what a
//! backend with a connection pool does); the figure is accepted publishes per second.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{self, Target};
use crate::{payload, receive, report_cpu, sys, Fan, Server};

/// The shape of a publish run.
pub struct Publish {
    pub admin: SocketAddr,
    pub token: String,
    pub clients: usize,
    pub gzip: f64,
    pub connections: usize,
    pub size: usize,
}

/// Requests answered, by outcome, with the round-trip times of accepted ones.
#[derive(Default)]
struct Answers {
    accepted: AtomicU64,
    refused: AtomicU64,
}

pub async fn run(server: &Server, load: Publish, duration: Duration) -> Result<(), String> {
    let target = Target::new(&server.url, server.ca.as_deref())?;
    let fan = Rc::new(Fan::new(load.size));
    let gzip_every = if load.gzip > 0.0 { (1.0 / load.gzip).round().max(1.0) as usize } else { usize::MAX };
    for i in 0..load.clients {
        let gzip = i % gzip_every == 0;
        let (stream, early) =
            client::connect(&target, i, &format!("p{i}"), gzip).await.map_err(|e| format!("client {i}: {e}"))?;
        let (reader, _writer) = tokio::io::split(stream);
        tokio::task::spawn_local(receive(fan.clone(), reader, early, gzip, i, None, None));
    }
    let mut pool = Vec::new();
    for c in 0..load.connections.max(1) {
        pool.push(TcpStream::connect(load.admin).await.map_err(|e| format!("admin connection {c}: {e}"))?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answers = Rc::new(Answers::default());
    let round_trips = Rc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
    let meter = sys::CpuMeter::start();
    let server_cpu = server.server_pid.and_then(|p| sys::cpu_time(&p.to_string()));
    let t0 = Instant::now();
    let publishers: Vec<_> = pool
        .into_iter()
        .enumerate()
        .map(|(c, tcp)| {
            let (fan, answers, round_trips, token) =
                (fan.clone(), answers.clone(), round_trips.clone(), load.token.clone());
            tokio::task::spawn_local(publisher(tcp, c, token, fan, answers, round_trips))
        })
        .collect();
    tokio::time::sleep(duration).await;
    fan.stop.store(true, Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let bench_cpu = meter.share();
    let server_share = server.server_pid.and_then(|p| {
        let now = sys::cpu_time(&p.to_string())?;
        Some(now.saturating_sub(server_cpu?).as_secs_f64() / elapsed)
    });
    let mut failures = Vec::new();
    for p in publishers {
        if let Ok(Err(e)) = p.await {
            failures.push(e);
        }
    }
    let accepted = answers.accepted.load(Relaxed);
    let expected = accepted * load.clients as u64;
    let settle = Instant::now();
    while fan.delivered.load(Relaxed) < expected && settle.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = fan.delivered.load(Relaxed);
    let h = round_trips.lock().unwrap();
    println!(
        "publish http://{}/v1/publish: clients={} connections={} size={} duration={elapsed:.1}s",
        load.admin, load.clients, load.connections, load.size
    );
    println!(
        "  publishes/s={:.0} accepted={accepted} refused={} delivered={delivered} lost={} frames/s={:.0} invalid={}",
        accepted as f64 / elapsed,
        answers.refused.load(Relaxed),
        expected.saturating_sub(delivered),
        delivered as f64 / elapsed,
        fan.invalid.load(Relaxed)
    );
    println!(
        "  round_trip_us p50={} p99={} max={} (requests {})",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        h.len()
    );
    report_cpu(bench_cpu, server_share);
    if !failures.is_empty() || fan.invalid.load(Relaxed) > 0 || answers.refused.load(Relaxed) > 0 {
        return Err(format!("publish run had errors: {failures:?}"));
    }
    Ok(())
}

/// One keep-alive connection: POST, read the whole answer, repeat until told to stop.
async fn publisher(
    mut tcp: TcpStream,
    connection: usize,
    token: String,
    fan: Rc<Fan>,
    answers: Rc<Answers>,
    round_trips: Rc<Mutex<Histogram<u64>>>,
) -> Result<(), String> {
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        fan.size
    );
    let mut request = Vec::with_capacity(head.len() + fan.size);
    let mut answer = Vec::with_capacity(1024);
    let mut seq = 0u64;
    while !fan.stop.load(Relaxed) {
        request.clear();
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(&payload(&fan, 0x8000 + connection, seq));
        let sent = Instant::now();
        tcp.write_all(&request).await.map_err(|e| format!("write: {e}"))?;
        let status = read_answer(&mut tcp, &mut answer).await?;
        if status == 202 {
            // Counted before the receivers can see it complete: `sent` is what they must get.
            fan.sent.fetch_add(1, Relaxed);
            answers.accepted.fetch_add(1, Relaxed);
            let _ = round_trips.lock().unwrap().record((sent.elapsed().as_micros() as u64).max(1));
        } else {
            answers.refused.fetch_add(1, Relaxed);
            return Err(format!("status {status}: {}", String::from_utf8_lossy(&answer)));
        }
        seq += 1;
    }
    Ok(())
}

/// Reads one HTTP/1.1 answer with a Content-Length body; returns its status.
async fn read_answer(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    buf.clear();
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if tcp.read_buf(buf).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("the admin listener closed the keep-alive connection".into());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "answer head is not UTF-8")?;
    let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line: {head}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| format!("answer without Content-Length: {head}"))?;
    while buf.len() < head_end + length {
        if tcp.read_buf(buf).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("the admin listener closed mid-answer".into());
        }
    }
    Ok(status)
}
