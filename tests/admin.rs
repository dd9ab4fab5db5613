//! The admin listener over real HTTP: health, readiness through a drain, errors.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use wscast::signals::Event;

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
}

/// A daemon with an admin listener on a free loopback port.
async fn start_with_admin() -> (TestDaemon, SocketAddr) {
    let mut c = config();
    c.admin.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.shutdown.drain_timeout = Duration::from_secs(30);
    let daemon = wscast::daemon::Daemon::bind(c, None, None).expect("binds");
    let admin = daemon.admin_addrs()[0];
    (run_bound(daemon).await, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_errors() {
    let (d, admin) = start_with_admin().await;
    let healthz = http(admin, &get("/healthz")).await;
    assert!(healthz.starts_with("HTTP/1.1 200") && healthz.ends_with("ok\n"), "{healthz}");
    let readyz = http(admin, &get("/readyz")).await;
    assert!(readyz.starts_with("HTTP/1.1 200") && readyz.ends_with("ready\n"), "{readyz}");
    let missing = http(admin, &get("/nope")).await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(missing.contains("application/json") && missing.contains(r#"{"error":"no admin route /nope"#), "{missing}");
    let post = http(admin, "POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405") && post.to_ascii_lowercase().contains("allow: get, head"), "{post}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_the_first_1001_arrives_and_health_answers_through_the_drain() {
    let (d, admin) = start_with_admin().await;
    let mut client = join(&d, "watcher", false).await;
    // A client that never reads, with a backlog: it keeps the drain going.
    let mut stuck = join(&d, "stuck", false).await;
    let big = "x".repeat(60 * 1024);
    for _ in 0..100 {
        send(&mut stuck, &big).await;
    }
    for _ in 0..100 {
        assert_eq!(recv_text(&mut client).await.len(), big.len());
    }
    within("terminate", d.events.send(Event::Terminate)).await.unwrap();
    assert_eq!(recv_close(&mut client).await.0, 1001);
    let readyz = http(admin, &get("/readyz")).await;
    assert!(readyz.starts_with("HTTP/1.1 503") && readyz.ends_with("draining\n"), "{readyz}");
    let healthz = http(admin, &get("/healthz")).await;
    assert!(healthz.starts_with("HTTP/1.1 200"), "still answering during the drain: {healthz}");
    // The drain may be over by now; if not, a second signal ends it.
    let _ = d.events.send(Event::Terminate).await;
    within("daemon exit", d.task).await.unwrap();
}
