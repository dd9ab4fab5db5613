//! wscast: a WebSocket broadcast daemon. Clients connect with a key; every text message any
//! client sends reaches every connected client, as text or as gzip.
//!
//! # Layout
//! The data path, top to bottom:
//! - [`listener`]: accept loop; every accepted socket waits for a place in the connection limit.
//! - [`tls`]: PEM -> rustls config, hot-swapped through a watch channel.
//! - [`admission`]: per-address and handshake-rate limits, answered with 503 before the 101
//!   ([`rate`] holds the token bucket).
//! - [`upgrade`]: request head -> validated [`upgrade::ClientParams`] or an HTTP error.
//! - [`registry`]: one connection per key; replacement closes the old one with 4000.
//! - [`connection`]: one task per connection, a reader that publishes and a writer that delivers.
//! - [`broadcast`]: one message -> shared frames in every queue; [`gzip`] compresses once.
//! - [`frame`]: frames encoded once per message, written to each client from the shared buffer.
//!
//! Around it: [`config`] (figment layering and validation), [`logging`], [`signals`],
//! [`notify`] (sd_notify), [`shutdown`] (phased drain) and [`daemon`] (bind, run, reload).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod broadcast;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod frame;
pub mod gzip;
pub mod listener;
pub mod logging;
pub mod notify;
pub mod rate;
pub mod registry;
pub mod shutdown;
pub mod signals;
pub mod tls;
pub mod upgrade;
