//! Prometheus metrics, kept by hand: a handful of counters and one latency histogram
//! need no registry crate, and the hot path is a few relaxed atomic adds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The routes we count separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    CacheInfo,
    Narinfo,
    Nar,
    Listing,
    Log,
    Landing,
    Health,
    Version,
    Metrics,
    Api,
    Other,
}

const ROUTES: [Route; 11] = [
    Route::CacheInfo,
    Route::Narinfo,
    Route::Nar,
    Route::Listing,
    Route::Log,
    Route::Landing,
    Route::Health,
    Route::Version,
    Route::Metrics,
    Route::Api,
    Route::Other,
];

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::CacheInfo => "nix-cache-info",
            Route::Narinfo => "narinfo",
            Route::Nar => "nar",
            Route::Listing => "ls",
            Route::Log => "log",
            Route::Landing => "landing",
            Route::Health => "health",
            Route::Version => "version",
            Route::Metrics => "metrics",
            Route::Api => "api",
            Route::Other => "other",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Status codes we count by exact value; anything else lands in "other".
const STATUSES: [u16; 10] = [200, 206, 304, 400, 401, 403, 404, 416, 500, 503];
/// Histogram bucket upper bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0,
];

/// Wire encodings we count bytes for.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    Identity,
    Zstd,
    Xz,
}

pub struct Metrics {
    requests: Vec<AtomicU64>,
    latency: Vec<AtomicU64>,
    latency_sum_us: Vec<AtomicU64>,
    bytes: [AtomicU64; 3],
    pub variant_cache_hits: AtomicU64,
    pub variant_cache_misses: AtomicU64,
    pub nar_aborts: AtomicU64,
    /// Blob copies sent to peers that verified and kept them.
    pub blob_copies: AtomicU64,
    /// Blobs this node should fetch to reach the replica target (last repair pass).
    pub repair_backlog: AtomicU64,
    /// Leader changes this node has seen.
    pub leader_changes: AtomicU64,
    /// Stored blobs that failed a check (scrub or serve) and were set aside.
    pub scrub_failures: AtomicU64,
    /// Paths GC passes run on this node deleted.
    pub gc_paths_deleted: AtomicU64,
    /// Node-to-node requests this node refused, by [`Refusal`].
    refused: [AtomicU64; Refusal::ALL.len()],
    commit_count: AtomicU64,
    commit_sum_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let n = |k: usize| (0..k).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            requests: n(ROUTES.len() * (STATUSES.len() + 1)),
            latency: n(ROUTES.len() * (BUCKETS.len() + 1)),
            latency_sum_us: n(ROUTES.len()),
            bytes: Default::default(),
            variant_cache_hits: AtomicU64::new(0),
            variant_cache_misses: AtomicU64::new(0),
            nar_aborts: AtomicU64::new(0),
            blob_copies: AtomicU64::new(0),
            repair_backlog: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            scrub_failures: AtomicU64::new(0),
            gc_paths_deleted: AtomicU64::new(0),
            refused: Default::default(),
            commit_count: AtomicU64::new(0),
            commit_sum_us: AtomicU64::new(0),
        }
    }
}

/// Why the cluster listener refused a request.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// Wrong or missing cluster secret.
    Secret,
    /// Addressed to another node id.
    Target,
    /// From another cluster, or naming none.
    Cluster,
    /// This node holds no cluster identity (never joined, or wiped).
    NoIdentity,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::Secret,
        Refusal::Target,
        Refusal::Cluster,
        Refusal::NoIdentity,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Secret => "secret",
            Refusal::Target => "target",
            Refusal::Cluster => "cluster",
            Refusal::NoIdentity => "no_identity",
        }
    }
}

impl Metrics {
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    pub fn observe(&self, route: Route, status: u16, elapsed: Duration) {
        let s = STATUSES
            .iter()
            .position(|&c| c == status)
            .unwrap_or(STATUSES.len());
        self.requests[route.index() * (STATUSES.len() + 1) + s].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&ub| secs <= ub)
            .unwrap_or(BUCKETS.len());
        self.latency[route.index() * (BUCKETS.len() + 1) + b].fetch_add(1, Relaxed);
        self.latency_sum_us[route.index()].fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// One path committed through Raft, taking `elapsed` from proposal to answer.
    pub fn observe_commit(&self, elapsed: Duration) {
        self.commit_count.fetch_add(1, Relaxed);
        self.commit_sum_us
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// The cluster's figures (appended to [`Metrics::render`] on a cluster node).
    pub fn render_cluster(&self, node: &cluster::Node) -> String {
        let m = node.metrics();
        let mut out = String::with_capacity(2048);
        let last_log = m.last_log_index.unwrap_or(0);
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("cairn_raft_term", "Current Raft term.", m.current_term);
        gauge(
            "cairn_raft_is_leader",
            "1 on the leader.",
            u64::from(m.current_leader == Some(node.id())),
        );
        gauge(
            "cairn_raft_last_log_index",
            "Last Raft log index on this node.",
            last_log,
        );
        gauge(
            "cairn_raft_applied_index",
            "Last Raft log index applied to this node's state.",
            m.last_applied.map(|l| l.index).unwrap_or(0),
        );
        gauge(
            "cairn_raft_snapshot_index",
            "Last Raft log index in this node's snapshot.",
            m.snapshot.map(|l| l.index).unwrap_or(0),
        );
        gauge(
            "cairn_raft_purged_index",
            "Last Raft log index purged from this node's log (a peer behind it needs the snapshot).",
            m.purged.map(|l| l.index).unwrap_or(0),
        );
        gauge(
            "cairn_repair_backlog_blobs",
            "Blobs this node should fetch to reach the replica target.",
            self.repair_backlog.load(Relaxed),
        );
        if let Some(rep) = &m.replication {
            out.push_str("# HELP cairn_raft_replication_lag_entries Entries a follower is behind the leader's log.\n# TYPE cairn_raft_replication_lag_entries gauge\n");
            for (id, matched) in rep {
                let lag = last_log.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                let _ = writeln!(
                    out,
                    "cairn_raft_replication_lag_entries{{node=\"{id}\"}} {lag}"
                );
            }
        }
        let counters = [
            (
                "cairn_raft_leader_changes_total",
                "Leader changes seen by this node.",
                self.leader_changes.load(Relaxed),
            ),
            (
                "cairn_raft_read_barrier_rounds_total",
                "Rounds with the leader to confirm narinfo misses, failed ones too (concurrent misses share one).",
                node.barrier_rounds(),
            ),
            (
                "cairn_blob_copies_total",
                "Blob copies sent to peers and verified there.",
                self.blob_copies.load(Relaxed),
            ),
            (
                "cairn_blob_check_failures_total",
                "Stored blobs that failed a hash check and were set aside.",
                self.scrub_failures.load(Relaxed),
            ),
            (
                "cairn_gc_paths_deleted_total",
                "Paths deleted by GC passes run on this node.",
                self.gc_paths_deleted.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        out.push_str("# HELP cairn_cluster_requests_refused_total Node-to-node requests refused, by reason.\n# TYPE cairn_cluster_requests_refused_total counter\n");
        for why in Refusal::ALL {
            let _ = writeln!(
                out,
                "cairn_cluster_requests_refused_total{{reason=\"{}\"}} {}",
                why.label(),
                self.refused[why as usize].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cairn_raft_commit_seconds Time from proposing a path to its commit.\n# TYPE cairn_raft_commit_seconds summary\ncairn_raft_commit_seconds_sum {}\ncairn_raft_commit_seconds_count {}",
            self.commit_sum_us.load(Relaxed) as f64 / 1e6,
            self.commit_count.load(Relaxed)
        );
        out
    }

    pub fn add_bytes(&self, enc: Encoding, n: u64) {
        self.bytes[enc as usize].fetch_add(n, Relaxed);
    }

    /// Renders the text exposition format. `signatures` is (made, cached).
    pub fn render(&self, signatures: (u64, u64)) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP cairn_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE cairn_http_requests_total counter\n");
        for r in ROUTES {
            for (i, label) in STATUSES
                .iter()
                .map(|s| s.to_string())
                .chain(std::iter::once("other".to_string()))
                .enumerate()
            {
                let v = self.requests[r.index() * (STATUSES.len() + 1) + i].load(Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "cairn_http_requests_total{{route=\"{}\",status=\"{label}\"}} {v}",
                        r.name()
                    );
                }
            }
        }
        out.push_str("# HELP cairn_http_request_duration_seconds Time to the response headers.\n");
        out.push_str("# TYPE cairn_http_request_duration_seconds histogram\n");
        for r in ROUTES {
            let base = r.index() * (BUCKETS.len() + 1);
            let mut cum = 0;
            for (i, ub) in BUCKETS.iter().enumerate() {
                cum += self.latency[base + i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "cairn_http_request_duration_seconds_bucket{{route=\"{}\",le=\"{ub}\"}} {cum}",
                    r.name()
                );
            }
            cum += self.latency[base + BUCKETS.len()].load(Relaxed);
            let _ = writeln!(
                out,
                "cairn_http_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {cum}",
                r.name()
            );
            let sum = self.latency_sum_us[r.index()].load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "cairn_http_request_duration_seconds_sum{{route=\"{}\"}} {sum}\n\
                 cairn_http_request_duration_seconds_count{{route=\"{}\"}} {cum}",
                r.name(),
                r.name()
            );
        }
        out.push_str("# HELP cairn_nar_bytes_total NAR body bytes sent, by wire encoding.\n");
        out.push_str("# TYPE cairn_nar_bytes_total counter\n");
        for (i, enc) in ["identity", "zstd", "xz"].iter().enumerate() {
            let _ = writeln!(
                out,
                "cairn_nar_bytes_total{{encoding=\"{enc}\"}} {}",
                self.bytes[i].load(Relaxed)
            );
        }
        let counters = [
            (
                "cairn_signatures_made_total",
                "Signatures computed.",
                signatures.0,
            ),
            (
                "cairn_signatures_cached_total",
                "Signatures served from the signature cache.",
                signatures.1,
            ),
            (
                "cairn_variant_cache_hits_total",
                "Compressed NAR variants served from disk.",
                self.variant_cache_hits.load(Relaxed),
            ),
            (
                "cairn_variant_cache_misses_total",
                "Compressed NAR variants produced on the fly.",
                self.variant_cache_misses.load(Relaxed),
            ),
            (
                "cairn_nar_stream_aborts_total",
                "NAR streams aborted mid-way (read error or client gone).",
                self.nar_aborts.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        out
    }
}
