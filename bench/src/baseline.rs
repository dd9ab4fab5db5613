//! The baseline: a broadcast server written the obvious way with tokio-tungstenite (a mutex
//! around a map of unbounded senders, one flush per message, default buffers), serving the same
//! wire contract, so BENCHMARKS.md can show ratios measured in one run.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Clients = Arc<Mutex<HashMap<String, (bool, mpsc::UnboundedSender<Message>)>>>;

/// Serves until killed.
// tungstenite's handshake callback signature fixes the large error type.
#[allow(clippy::result_large_err)]
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("baseline listening on ws://{}", listener.local_addr()?);
    let clients: Clients = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        let clients = clients.clone();
        tokio::spawn(async move {
            let mut params = (String::new(), false);
            let callback = |req: &Request, resp: Response| {
                for pair in req.uri().query().unwrap_or("").split('&') {
                    match pair.split_once('=') {
                        Some(("specialKey", v)) => params.0 = v.to_string(),
                        Some(("support_gzip", "1")) => params.1 = true,
                        _ => {}
                    }
                }
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
            let (key, gzip) = params;
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel();
            clients.lock().unwrap().insert(key.clone(), (gzip, tx));
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(text) = msg {
                    let map = clients.lock().unwrap();
                    let zipped = map.values().any(|(g, _)| *g).then(|| {
                        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                        e.write_all(text.as_bytes()).unwrap();
                        Message::binary(e.finish().unwrap())
                    });
                    for (gz, tx) in map.values() {
                        let m = if *gz { zipped.clone().unwrap() } else { Message::Text(text.clone()) };
                        let _ = tx.send(m);
                    }
                }
            }
            clients.lock().unwrap().remove(&key);
            writer.abort();
        });
    }
}
