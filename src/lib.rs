//! wscast: a WebSocket broadcast daemon. Clients connect with a key; every text message any
//! client sends reaches every connected client, as text or as gzip.
//!
//! # Layout
//! The data path, top to bottom:
//! - [`listener`]: accept loop; every accepted socket waits for a place in the connection limit.
//! - [`tls`]: PEM -> rustls config.
//! - [`tls_socket`]: the TLS session of a connection (rustls' unbuffered API), shared with its
//!   mailbox so broadcasts are sealed and written corked, with no TLS buffer kept while idle.
//! - [`upgrade`]: request head -> validated [`upgrade::ClientParams`] or an HTTP error; runs
//!   [`admission`] (per-address and handshake-rate limits, 503) and [`token`] (the connection
//!   token's check, 401) just before the 101.
//! - [`connection`]: one task per connection: handshake, join, then one hand-written poll that
//!   reads and writes until the connection ends, then the close; its
//!   [`reader`] parses the client's frames from one read buffer per worker thread; [`duplex`]
//!   lends it and the writer the socket's two halves.
//! - [`hub`]: the only door to delivery: join (a [`hub::Member`] that leaves on drop), publish,
//!   send to one key, kick, close all; over [`registry`] (one connection per key) and
//!   [`fanout`] (one message -> every queue, plain ones marked dirty for the [`flusher`], which
//!   writes each its whole queue in one corked write), and, with a cluster, [`cluster`] (the other nodes
//!   through Redis: outbox, claims, heartbeats).
//! - [`writer`]: a connection's [`mailbox`] (its queue of broadcasts and the control frames its
//!   reader owes) and close sequence, onto the socket through [`frame`] (frames encoded once per
//!   message, written from the shared buffer).
//!
//! Leaves: [`ending`] (how a connection ends, every close code), [`wakeup`] (a connection
//! task's wakeup, polled by hand), [`rate`] (the token bucket), [`gzip`]. Around it: [`config`], [`settings`] (the live settings a reload replaces),
//! [`state`] (what every connection shares), [`logging`], [`signals`], [`notify`] (sd_notify),
//! [`shutdown`] (phased drain), [`admin`] (health, readiness, [`metrics`] and the [`api`] over
//! HTTP) and [`daemon`] (bind, run, reload).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod api;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod duplex;
pub mod ending;
pub mod fanout;
pub mod flusher;
pub mod frame;
pub mod gzip;
pub mod hub;
pub mod listener;
pub mod logging;
pub mod mailbox;
pub mod metrics;
pub mod notify;
pub mod rate;
pub mod reader;
pub mod registry;
pub mod settings;
pub mod shutdown;
pub mod signals;
pub mod state;
pub mod tls;
pub mod tls_socket;
pub mod token;
pub mod upgrade;
pub mod wakeup;
pub mod writer;
