//! What every connection shares: the hub, admission, the shutdown switches, and the live
//! settings a reload replaces.

use std::sync::Arc;

use tokio::sync::watch;

use crate::admission::Admission;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::shutdown::Shutdown;

/// The daemon-wide state, one per daemon.
#[derive(Debug)]
pub struct Context {
    /// Per-address and handshake-rate admission.
    pub admission: Arc<Admission>,
    /// Connections by key and delivery to them.
    pub hub: Arc<Hub>,
    /// The settings new connections use; replaced on reload.
    pub live: watch::Receiver<Arc<Settings>>,
    /// Shutdown phases and task tracking.
    pub shutdown: Shutdown,
    /// Counters and gauges for `/metrics`.
    pub metrics: Metrics,
}
