//! Guards the per-connection footprint: the futures every open connection keeps alive. Sizes are
//! deterministic for a given compiler, so this is not a timing test. The bounds leave headroom;
//! a failure means something large (a TLS stream, a buffer, a handshake state) ended up inline in
//! the long-lived part of a connection.

mod common;

use std::mem::size_of_val;

#[tokio::test]
async fn connection_futures_stay_small() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connect = || {
        let s = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        s.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(s).unwrap()
    };
    let daemon = wscast::daemon::Daemon::bind(common::config(), None, None).unwrap();
    let ctx = daemon.context_for_tests();
    let serve = wscast::connection::serve(connect(), "127.0.0.1:1".parse().unwrap(), ctx.clone());
    println!("serve future: {} bytes", size_of_val(&serve));
    // A connection, plain or TLS, runs inline in its task: this is all a connection's task
    // holds, about 1,740 bytes in a debug build today (no timer: one sweep keeps every heartbeat). The TLS session is not in it (it is
    // behind the socket's `Arc`, and rustls' handshake state is boxed and freed once done); a
    // TLS stream inline would add over a kilobyte.
    assert!(size_of_val(&serve) <= 1920, "serve future is {} bytes", size_of_val(&serve));
    let settings = wscast::settings::Settings::new(&common::config(), None, Default::default());
    let run = wscast::connection::handshake_and_run(
        connect(),
        "127.0.0.1:1".parse().unwrap(),
        tokio::time::Instant::now(),
        &settings,
        &ctx,
    );
    println!("handshake_and_run future: {} bytes", size_of_val(&run));
    // run_client's future plus what outlives the upgrade (a request's leftovers, say a token,
    // would show here).
    assert!(size_of_val(&run) <= 1792, "handshake_and_run future is {} bytes", size_of_val(&run));
    let info = wscast::hub::ClientInfo {
        peer: "127.0.0.1:1".parse().unwrap(),
        tls: false,
        gzip: false,
        connected_at: std::time::SystemTime::now(),
        expires: 0,
    };
    let client = wscast::connection::run_client(connect(), Vec::new(), "k".into(), info, &settings, &ctx);
    println!("run_client future (kept by every open connection): {} bytes", size_of_val(&client));
    // 1,384 bytes in a debug build today (the reader and writer futures side by side).
    assert!(size_of_val(&client) <= 1536, "run_client future is {} bytes", size_of_val(&client));
}
