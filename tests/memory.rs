//! Live heap of the daemon after one large broadcast, measured by a counting allocator: every
//! connection must return to its idle footprint once the message is written. The clients are
//! raw sockets read into one shared buffer, so their own memory does not change between the
//! two measurements; what changes is the daemon's.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes allocated and not yet freed, process-wide.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Connections in the test; `WSCAST_MEMORY_CONNECTIONS` raises it for the figure in
/// BENCHMARKS.md.
fn connections() -> usize {
    std::env::var("WSCAST_MEMORY_CONNECTIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(400)
}

/// A raw client past its 101.
async fn raw_client(addr: std::net::SocketAddr, key: &str, gzip: bool) -> TcpStream {
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let gz = if gzip { "&support_gzip=1" } else { "" };
    tcp.write_all(upgrade_request(&format!("/?specialKey={key}{gz}"), "").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("101", tcp.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp
}

/// Reads one data frame into `buf` (reused across clients) and returns its opcode.
async fn read_frame(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> u8 {
    let mut head = [0u8; 2];
    within("frame header", tcp.read_exact(&mut head)).await.unwrap();
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            tcp.read_exact(&mut ext).await.unwrap();
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            tcp.read_exact(&mut ext).await.unwrap();
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    buf.resize(len, 0);
    within("frame payload", tcp.read_exact(&mut buf[..len])).await.unwrap();
    head[0] & 0x0f
}

/// A masked (zero key) client text frame.
fn text_frame(text: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | 127];
    out.extend_from_slice(&(text.len() as u64).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(text);
    out
}

/// Sends `text` from the first client and reads it on every client.
async fn broadcast(clients: &mut [TcpStream], text: &[u8], buf: &mut Vec<u8>) {
    clients[0].write_all(&text_frame(text)).await.unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let opcode = read_frame(c, buf).await;
        assert_eq!(opcode, if i % 2 == 1 { 2 } else { 1 }, "client {i}");
        if opcode == 1 {
            assert_eq!(buf.len(), text.len());
        }
    }
}

/// Live heap once the daemon's writers have settled.
async fn settled() -> isize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    LIVE.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_broadcast_leaves_every_connection_at_its_idle_footprint() {
    let n = connections();
    let d = start(config()).await;
    let before = settled().await;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(raw_client(d.addr, &format!("m{i}"), i % 2 == 1).await);
    }
    d.wait_for_clients(n).await;
    let mut buf = Vec::with_capacity(1 << 17);
    // 64 KiB of letters that gzip cannot shrink much, so both variants are large.
    let mut seed = 0x2545_f491_u32;
    let large: Vec<u8> = (0..65_536)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            b'a' + (seed % 26) as u8
        })
        .collect();
    // Every connection has written one small message: its outbox and queue are in use.
    broadcast(&mut clients, b"warm up", &mut buf).await;
    let idle = settled().await;
    broadcast(&mut clients, &large, &mut buf).await;
    let after = settled().await;
    let per_connection = |bytes: isize| bytes / n as isize;
    println!(
        "connections: {n}; live heap per connection: idle {} B, growth after one 65,536-byte broadcast {} B",
        per_connection(idle - before),
        per_connection(after - idle),
    );
    // Constant, not per connection: the sender's read buffer may keep one message's capacity,
    // and the worker thread that compresses may be one that had no deflater yet (~300 KiB per
    // thread, kept for reuse).
    let allowed = 512 * n as isize + 2 * large.len() as isize + 2 * 400 * 1024;
    assert!(after - idle < allowed, "live heap grew by {} B for {n} connections", after - idle);
    drop(clients);
    d.stop().await;
}
