//! What one run measured: latency percentiles, counters, the servers' and the bench's
//! own figures, where each process ran. Scenarios fill it; reports and plots read it.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::common::Target;
use crate::load::Counts;
use crate::publisher;
use crate::spawn::Sample;

/// Latency percentiles, µs.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// p50.
    pub p50: f64,
    /// p90.
    pub p90: f64,
    /// p99.
    pub p99: f64,
    /// p99.9.
    pub p999: f64,
    /// p99.99.
    pub p9999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Of a histogram in ns.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            p999: us(0.999),
            p9999: us(0.9999),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
        }
    }

    /// The values in table order.
    pub fn values(&self) -> [f64; 7] {
        [
            self.p50, self.p90, self.p99, self.p999, self.p9999, self.max, self.mean,
        ]
    }
}

/// Column names of [`Percentiles::values`].
pub const COLUMNS: [&str; 7] = ["p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"];

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct RunResult {
    /// Target label.
    pub target: String,
    /// Which server, source, nodes, encoding.
    pub setup: Target,
    /// Run number of this target (1-based).
    pub run: usize,
    /// The shape and rate.
    pub shape: String,
    /// Ticks per second offered.
    pub rate: f64,
    /// Whether the run counts.
    pub valid: bool,
    /// Why not.
    pub invalid: Vec<String>,
    /// Latency of healthy connections, µs.
    pub latency: Percentiles,
    /// Latency of the other connections (stalled, slow), µs.
    pub latency_other: Option<Percentiles>,
    /// Counters of healthy connections.
    pub counts: Counts,
    /// Counters of the others.
    pub counts_other: Counts,
    /// Ticks the publisher sent whose time lies in the window.
    pub published_in_window: Option<u64>,
    /// What healthy connections should have received (published × their fan-out).
    pub expected: Option<u64>,
    /// received == expected with nothing lost.
    pub complete: Option<bool>,
    /// Delivered messages per second (ticks in the window / window).
    pub msgs_per_s: f64,
    /// Frames per second.
    pub frames_per_s: f64,
    /// Payload bytes per second.
    pub bytes_per_s: f64,
    /// Messages per frame.
    pub msgs_per_frame: f64,
    /// Payload bytes per message.
    pub bytes_per_msg: f64,
    /// The servers measured.
    pub server: ServerStats,
    /// redis-server, when one ran.
    pub redis: Option<ServerStats>,
    /// The bench's own receiving processes.
    pub clients: ClientStats,
    /// The publisher.
    pub publisher: Option<publisher::Report>,
    /// Where each process ran.
    pub placement: Vec<Placement>,
    /// Connections opened per second during setup.
    pub setup_conns_per_s: f64,
    /// Kernel TCP memory before the connections and while they were held, kB.
    pub tcp_mem_kb: (Option<u64>, Option<u64>),
    /// Per-second latency of healthy connections during the window.
    pub seconds: Vec<Percentiles>,
    /// The same latency over only the seconds in which the load side kept its bounds.
    pub steady: Steady,
    /// Each node sampled on its own, with its tasks (the soak).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSeries>,
    /// Processes restarted during the run (the soak).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<Restarted>,
    /// Histogram of healthy connections (not in the JSON).
    #[serde(skip)]
    pub hist: Histogram<u64>,
}

/// A run's healthy latency over the seconds of its window in which the load side kept
/// its bounds: the publisher's worst lateness within `--max-behind` and each receiving
/// process's worst timer lag within `--max-client-lag`. A run is valid only when its
/// p99 keeps them; this keeps the seconds that kept them at their worst, so that a
/// stall of the bench's own CPUs is left out of a tail measured over many seconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Steady {
    /// Seconds kept.
    pub seconds: usize,
    /// Seconds in the window.
    pub of: usize,
    /// Latency over the kept seconds.
    pub latency: Percentiles,
}

/// Server CPU and memory over a run.
#[derive(Debug, Default, Serialize)]
pub struct ServerStats {
    /// Pids.
    pub pids: Vec<u32>,
    /// CPU seconds in the window.
    pub cpu_s: f64,
    /// … as a share of one core.
    pub cpu_util: f64,
    /// CPU µs per delivered message.
    pub cpu_us_per_msg: f64,
    /// Resident memory before any connection, kB.
    pub rss_idle_kb: u64,
    /// Highest resident memory sampled, kB.
    pub rss_max_kb: u64,
    /// Mean over the window, kB.
    pub rss_mean_kb: u64,
    /// Resident memory per connection over idle, bytes (held connections).
    pub rss_per_conn_bytes: f64,
    /// Samples every 250 ms (summed over the pids).
    pub samples: Vec<Sample>,
}

/// The bench's receiving side.
#[derive(Debug, Default, Serialize)]
pub struct ClientStats {
    /// Per worker: share of one core used in the window.
    pub cpu_util: Vec<f64>,
    /// Per worker: p99 of its own scheduling lag, µs.
    pub lag_p99_us: Vec<f64>,
    /// Per worker: largest lag, µs.
    pub lag_max_us: Vec<f64>,
    /// Descriptor limit of the workers.
    pub nofile: u64,
    /// Whether the clients, not the server, were the limit.
    pub limited: bool,
}

/// Where one process ran.
#[derive(Debug, Serialize)]
pub struct Placement {
    /// Role.
    pub process: String,
    /// Pid.
    pub pid: u32,
    /// `Cpus_allowed_list`.
    pub cpus: String,
}

impl Placement {
    /// The process `pid` in the role `process`, with the CPUs it may run on now.
    pub fn of(process: impl Into<String>, pid: u32) -> Placement {
        Placement {
            process: process.into(),
            pid,
            cpus: crate::spawn::cpus_allowed(pid),
        }
    }
}

/// What a run restarts in its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restartable {
    /// The redis-server the nodes read: stopped and started again on its port.
    Redis,
    /// Node `n` (`tickstream-<n>`): SIGTERM, so that it drains and tells its clients
    /// to reconnect, then started again on its port.
    Node(usize),
}

impl Restartable {
    /// The name its process was started under.
    pub fn process(self) -> String {
        match self {
            Restartable::Redis => "redis-server".into(),
            Restartable::Node(n) => format!("tickstream-{n}"),
        }
    }
}

/// A restart asked for: what, and when (from the start of the recorded window).
#[derive(Clone, Copy, Debug)]
pub struct Restart {
    /// What.
    pub what: Restartable,
    /// When.
    pub at: std::time::Duration,
}

/// A restart done; times in s from the start of the recorded window.
#[derive(Clone, Debug, Serialize)]
pub struct Restarted {
    /// The process (`redis-server`, `tickstream-1`).
    pub process: String,
    /// SIGTERM sent.
    pub asked_s: f64,
    /// It exited.
    pub exited_s: f64,
    /// It answered again (`/healthz` 200, or PONG).
    pub serving_s: f64,
    /// It had to be SIGKILLed (it did not exit within its drain and then some).
    pub killed: bool,
    /// Its pid before and after.
    pub pids: (u32, u32),
}

/// One node's samples (memory, descriptors, threads, and tasks where read).
#[derive(Clone, Debug, Serialize)]
pub struct NodeSeries {
    /// The process (`tickstream-0`).
    pub process: String,
    /// Its samples, through restarts (none while it was down).
    pub samples: Vec<Sample>,
}
