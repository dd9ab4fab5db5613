//! Nothing accepted is lost: across a drain with senders still sending, and across a key
//! replacement.

mod common;

use std::time::Duration;

use common::*;
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wscast::signals::Event;

const SENDERS: usize = 3;

/// Reads until the Close; returns, per sender, the sequence numbers in arrival order, and the
/// close code.
async fn collect(mut rx: SplitStream<Ws<TcpStream>>) -> (Vec<Vec<u64>>, u16) {
    let mut seen = vec![Vec::new(); SENDERS];
    loop {
        let text = match within("next frame", rx.next()).await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => gunzip(&b),
            Some(Ok(Message::Close(f))) => return (seen, f.map(|f| u16::from(f.code)).unwrap_or(0)),
            Some(Ok(_)) => continue,
            other => panic!("stream ended without a close frame: {other:?}"),
        };
        let (s, i) = text.split_once(':').unwrap();
        seen[s.parse::<usize>().unwrap()].push(i.parse().unwrap());
    }
}

fn assert_contiguous_from(list: &[u64], first: u64, who: &str) {
    for (k, &i) in list.iter().enumerate() {
        assert_eq!(i, first + k as u64, "{who}: gap or reorder at position {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_accepted_before_the_drain_reaches_every_client_before_its_1001() {
    let d = start(config()).await;
    let mut readers = Vec::new();
    for (i, gzip) in [false, true].into_iter().enumerate() {
        let (_, rx) = join(&d, &format!("r{i}"), gzip).await.split();
        readers.push(tokio::spawn(collect(rx)));
    }
    // Everyone registers before anyone sends: a message sent before a client joined is not
    // owed to it.
    let mut writers = Vec::new();
    for s in 0..SENDERS {
        let (tx, rx) = join(&d, &format!("s{s}"), false).await.split();
        readers.push(tokio::spawn(collect(rx)));
        writers.push(tx);
    }
    let mut senders = Vec::new();
    for (s, mut tx) in writers.into_iter().enumerate() {
        senders.push(tokio::spawn(async move {
            for i in 0u64.. {
                if tx.send(Message::text(format!("{s}:{i}"))).await.is_err() {
                    return i;
                }
                // Paced so the sender keeps up with its own copies (else it is cut off with 4001).
                if i % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    d.events.send(Event::Terminate).await.unwrap();
    let report = within("drain", d.task).await.unwrap();
    assert_eq!(report.cut_off, 0);
    let mut results = Vec::new();
    for r in readers {
        results.push(within("reader", r).await.unwrap());
    }
    for s in senders {
        let _ = within("sender", s).await;
    }
    // Every client got Close 1001, and exactly the same messages: each sender's accepted
    // messages as one contiguous run from 0.
    let (reference, _) = &results[0];
    for (k, (seen, code)) in results.iter().enumerate() {
        assert_eq!(*code, 1001, "client {k}");
        for (s, list) in seen.iter().enumerate() {
            assert_contiguous_from(list, 0, &format!("client {k}, sender {s}"));
            assert_eq!(list.len(), reference[s].len(), "client {k} missed messages of sender {s}");
        }
    }
    assert!(
        reference.iter().all(|l| l.len() > 10),
        "the senders were sending: {:?}",
        reference.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacing_connection_receives_every_message_accepted_after_it_registered() {
    let d = start(config()).await;
    let (_, rx) = join(&d, "watcher", false).await.split();
    let watcher = tokio::spawn(collect(rx));
    let (mut tx, sender_rx) = join(&d, "s0", false).await.split();
    let sender_seen = tokio::spawn(collect(sender_rx));
    let old = join(&d, "same", true).await;
    let sending = tokio::spawn(async move {
        for i in 0u64.. {
            if tx.send(Message::text(format!("0:{i}"))).await.is_err() {
                return;
            }
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_, new_rx) = connect(d.addr, "same", true).await.split();
    let new = tokio::spawn(collect(new_rx));
    let (old_seen, old_code) = collect(old.split().1).await;
    assert_eq!(old_code, 4000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.events.send(Event::Terminate).await.unwrap();
    within("drain", d.task).await.unwrap();
    let _ = within("sender", sending).await;
    let (new_seen, new_code) = within("new", new).await.unwrap();
    let (all, _) = within("watcher", watcher).await.unwrap();
    let (sender_own, sender_code) = within("sender's own copy", sender_seen).await.unwrap();
    assert_eq!((new_code, sender_code), (1001, 1001));
    let new_list = &new_seen[0];
    assert!(!new_list.is_empty(), "the new connection received nothing");
    // From its first message on, the new connection misses nothing up to the drain.
    assert_contiguous_from(new_list, new_list[0], "new connection");
    assert_eq!(new_list.last(), all[0].last(), "new connection and watcher end at the same message");
    assert_eq!(all[0], sender_own[0], "the watcher and the sender saw the same accepted messages");
    // And between the old and the new connection nothing fell through the crack.
    let old_last = old_seen[0].last().copied().unwrap_or(0);
    assert!(new_list[0] <= old_last + 1, "gap between old (..={old_last}) and new ({}..)", new_list[0]);
}
