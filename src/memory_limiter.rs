//! The memory limiter, as the collector's `memory_limiter` processor: a task samples the
//! process's resident memory every `check_interval`; above the soft limit (`limit` minus
//! `spike_limit`) it first gives the allocator's free pages back to the system (what the
//! collector's forced GC does), and new data is refused with a retryable status until
//! usage falls below it again, so the process is not killed for memory while senders back
//! off and retry. Above the hard limit it also evicts the oldest pending traces (counted),
//! so the limit holds under a sustained flood. Request bytes still on the wire between
//! two checks are bounded by the receivers' request budget, which defaults to the spike
//! limit; what is accepted between two checks is bounded too: each request adds twice its
//! wire size to the last measurement (a buffered byte costs up to about that), and a
//! request that would take the estimate past the soft limit is refused at once, so how
//! far memory goes does not depend on when the check task gets a core.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use procfs::Current as _;
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::Errors;
use crate::process::{allocator, resident_bytes};
use crate::receiver::{Ingest, IngestError, Ingested, Payload, Relay};
use crate::telemetry::{self, Registry};

const MIB: u64 = 1024 * 1024;
/// What a request accepted between two checks is assumed to add to resident memory, per
/// wire byte: a buffered span takes 1.25 to 1.6 times its wire bytes, and the request's
/// own copies are alive meanwhile.
const ADMITTED_COST: u64 = 2;

/// `memory_limiter`, the collector's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimiterConfig {
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    #[serde(default)]
    pub limit_mib: u64,
    /// Default: 20 % of the limit.
    #[serde(default)]
    pub spike_limit_mib: Option<u64>,
    /// Of the container's memory limit (cgroups), else of the machine's memory.
    #[serde(default)]
    pub limit_percentage: u64,
    #[serde(default)]
    pub spike_limit_percentage: Option<u64>,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}

impl MemoryLimiterConfig {
    pub fn validate(&self, errors: &mut Errors) {
        let p = "memory_limiter";
        match (self.limit_mib, self.limit_percentage) {
            (0, 0) => errors.push(p, "set limit_mib or limit_percentage"),
            (a, b) if a > 0 && b > 0 => {
                errors.push(p, "set only one of limit_mib and limit_percentage")
            }
            _ => {}
        }
        if self.limit_percentage > 100 {
            errors.push(format!("{p}.limit_percentage"), "must be at most 100");
        }
        if self
            .spike_limit_mib
            .is_some_and(|s| self.limit_mib > 0 && s >= self.limit_mib)
        {
            errors.push(
                format!("{p}.spike_limit_mib"),
                "must be less than limit_mib",
            );
        }
        if self
            .spike_limit_percentage
            .is_some_and(|s| self.limit_percentage > 0 && s >= self.limit_percentage)
        {
            errors.push(
                format!("{p}.spike_limit_percentage"),
                "must be less than limit_percentage",
            );
        }
        errors.within_duration(
            format!("{p}.check_interval"),
            self.check_interval,
            Duration::from_millis(10),
            crate::config::HOUR,
        );
        errors.within(
            format!("{p}.limit_mib"),
            self.limit_mib,
            0,
            crate::config::MAX_MIB,
        );
    }

    /// (hard limit, soft limit) in bytes.
    fn limits(&self) -> (u64, u64) {
        let (limit, spike) = if self.limit_mib > 0 {
            let limit = self.limit_mib * MIB;
            (limit, self.spike_limit_mib.map_or(limit / 5, |s| s * MIB))
        } else {
            let total = memory_available();
            let limit = total / 100 * self.limit_percentage;
            (
                limit,
                self.spike_limit_percentage
                    .map_or(limit / 5, |s| total / 100 * s),
            )
        };
        (limit, limit.saturating_sub(spike))
    }
}

/// The optional `memory_limiter` section, parsed and checked.
pub fn parse_memory_limiter(
    value: Option<serde_yaml::Value>,
    errors: &mut Errors,
) -> Option<MemoryLimiterConfig> {
    let config: MemoryLimiterConfig =
        errors.parse("memory_limiter", value.filter(|v| !v.is_null())?)?;
    config.validate(errors);
    Some(config)
}

/// The container's memory limit (cgroup v2, then v1), else the machine's memory.
fn memory_available() -> u64 {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let machine = procfs::Meminfo::current().map_or(u64::MAX, |m| m.mem_total);
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .filter(|l| *l < machine)
        .unwrap_or(machine)
}

/// Frees memory by evicting pending traces, oldest first: the worker's buffer.
pub trait Shed: Send + Sync {
    /// Evicts the oldest pending traces until about `bytes` of memory is freed (or none is
    /// left); returns how many traces went. Each is counted as evicted by the caller.
    fn shed_oldest(&self, bytes: u64) -> u64;
}

/// Whether the limiter refuses data now, kept current by [`MemoryLimiter::run`].
pub struct MemoryLimiter {
    hard: u64,
    soft: u64,
    refusing: AtomicBool,
    resident: AtomicU64,
    /// What requests accepted since the last check may take: twice their wire bytes.
    admitted: AtomicU64,
    refused: Counter,
    resident_gauge: Gauge,
    heap_active: Gauge,
    purges: Counter,
    shed_traces: Counter,
    interval: Duration,
    shed: std::sync::OnceLock<Arc<dyn Shed>>,
}

impl MemoryLimiter {
    pub fn new(config: &MemoryLimiterConfig, registry: &Registry) -> Arc<Self> {
        let (hard, soft) = config.limits();
        tracing::info!(
            hard_mib = hard / MIB,
            soft_mib = soft / MIB,
            "memory limiter on"
        );
        Arc::new(Self {
            hard,
            soft,
            refusing: AtomicBool::new(false),
            resident: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            refused: registry.counter(
                telemetry::PROCESSOR_REFUSED_SPANS,
                &[("processor", "memory_limiter")],
            ),
            resident_gauge: registry.gauge(telemetry::PROCESS_RESIDENT_MEMORY, &[]),
            heap_active: registry.gauge(telemetry::PROCESS_HEAP_ACTIVE, &[]),
            purges: registry.counter(telemetry::MEMORY_LIMITER_PURGES, &[]),
            shed_traces: registry.counter(telemetry::MEMORY_LIMITER_SHED_TRACES, &[]),
            interval: config.check_interval,
            shed: std::sync::OnceLock::new(),
        })
    }

    /// Whether the last check found memory above the soft limit.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Whether a request of `wire_bytes` is taken: not while the last check was above the
    /// soft limit, nor when it would take the estimate since then past it.
    fn admit(&self, wire_bytes: u64) -> bool {
        if self.refusing() {
            return false;
        }
        let cost = wire_bytes.saturating_mul(ADMITTED_COST);
        let admitted = self.admitted.fetch_add(cost, Ordering::Relaxed) + cost;
        if self.resident.load(Ordering::Relaxed) + admitted > self.soft {
            self.admitted.fetch_sub(cost, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The headroom between the soft and the hard limit, in bytes: the default budget for
    /// request bytes in flight, which arrive between two checks.
    pub fn spike_bytes(&self) -> u64 {
        self.hard - self.soft
    }

    /// What to evict pending traces from above the hard limit (the worker's buffer).
    pub fn shed_with(&self, shed: Arc<dyn Shed>) {
        let _ = self.shed.set(shed);
    }

    /// One check, as the collector's limiter with its forced GC: above the soft limit the
    /// allocator's free pages are purged first; above the hard limit the oldest pending
    /// traces are shed and purged too; new data is refused while usage stays above the
    /// soft limit.
    pub fn check(&self) {
        // What was admitted before this reading is in it.
        self.admitted.store(0, Ordering::Relaxed);
        let Some(mut used) = resident_bytes() else {
            return;
        };
        if used > self.soft && self.purge() {
            used = resident_bytes().unwrap_or(used);
        }
        if used > self.hard {
            if let Some(shed) = self.shed.get() {
                let traces = shed.shed_oldest(used - self.soft);
                if traces > 0 {
                    self.shed_traces.increment(traces);
                    tracing::warn!(
                        resident_mib = used / MIB,
                        hard_mib = self.hard / MIB,
                        traces,
                        "over the hard memory limit: evicted the oldest pending traces"
                    );
                    self.purge();
                    used = resident_bytes().unwrap_or(used);
                }
            }
        }
        if let Some(active) = allocator::active_bytes() {
            self.heap_active.set(active as f64);
        }
        self.resident.store(used, Ordering::Relaxed);
        self.resident_gauge.set(used as f64);
        let over = used > self.soft;
        if over != self.refusing.swap(over, Ordering::Relaxed) {
            if over {
                tracing::warn!(
                    resident_mib = used / MIB,
                    soft_mib = self.soft / MIB,
                    "over the memory limit: refusing data"
                );
            } else {
                tracing::info!(
                    resident_mib = used / MIB,
                    "back under the memory limit: accepting data"
                );
            }
        }
    }

    fn purge(&self) -> bool {
        let purged = allocator::purge();
        if purged {
            self.purges.increment(1);
        }
        purged
    }

    /// Checks every `check_interval` until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<(), Infallible> {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => self.check(),
            }
        }
    }

    /// Puts the limiter in front of `inner`.
    pub fn guard(self: &Arc<Self>, inner: Arc<dyn Ingest>) -> Arc<dyn Ingest> {
        Arc::new(Guarded {
            limiter: self.clone(),
            inner,
        })
    }
}

struct Guarded {
    limiter: Arc<MemoryLimiter>,
    inner: Arc<dyn Ingest>,
}

impl Ingest for Guarded {
    fn ingest(
        &self,
        request: Payload,
        relay: Option<&Relay>,
        now: Instant,
    ) -> Result<Ingested, IngestError> {
        if !self.limiter.admit(request.wire_bytes()) {
            let spans = request.span_count();
            self.limiter.refused.increment(spans);
            return Err(IngestError::Overloaded("memory limit reached"));
        }
        self.inner.ingest(request, relay, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it was asked to free.
    #[derive(Default)]
    struct Recorder(AtomicU64);

    impl Shed for Recorder {
        fn shed_oldest(&self, bytes: u64) -> u64 {
            self.0.store(bytes, Ordering::Relaxed);
            3
        }
    }

    fn limiter(limit_mib: u64, registry: &Registry) -> (Arc<MemoryLimiter>, Arc<Recorder>) {
        let config = MemoryLimiterConfig {
            check_interval: Duration::from_secs(1),
            limit_mib,
            spike_limit_mib: None,
            limit_percentage: 0,
            spike_limit_percentage: None,
        };
        let limiter = MemoryLimiter::new(&config, registry);
        let shed = Arc::new(Recorder::default());
        limiter.shed_with(shed.clone());
        (limiter, shed)
    }

    #[test]
    fn above_the_hard_limit_it_purges_sheds_and_refuses() {
        let registry = Registry::new();
        // Any process is over 1 MiB.
        let (limiter, shed) = limiter(1, &registry);
        limiter.check();
        assert!(limiter.refusing.load(Ordering::Relaxed));
        let resident = limiter.resident.load(Ordering::Relaxed);
        // Asked to free what is above the soft limit (80 % of 1 MiB).
        let asked = shed.0.load(Ordering::Relaxed);
        assert!(asked > 0 && asked <= resident, "{asked} of {resident}");
        let text = registry.render();
        assert_eq!(
            tailgate_testkit::metric(&text, "tailgate_memory_limiter_shed_traces_total", &[]),
            3.0
        );
        assert!(
            tailgate_testkit::metric(&text, "tailgate_memory_limiter_purges_total", &[]) >= 1.0
        );
        assert!(tailgate_testkit::metric(&text, "tailgate_process_heap_active_bytes", &[]) > 0.0);
    }

    #[test]
    fn under_the_soft_limit_nothing_is_purged_shed_or_refused() {
        let registry = Registry::new();
        let (limiter, shed) = limiter(MAX_TEST_MIB, &registry);
        limiter.check();
        assert!(!limiter.refusing.load(Ordering::Relaxed));
        assert_eq!(shed.0.load(Ordering::Relaxed), 0);
        let text = registry.render();
        assert_eq!(
            tailgate_testkit::metric(&text, "tailgate_memory_limiter_purges_total", &[]),
            0.0
        );
    }

    /// Between two checks, requests are taken until twice their bytes would pass the soft
    /// limit, however long the next check takes; a check starts the count again.
    #[test]
    fn between_checks_requests_are_taken_up_to_the_soft_limit() {
        let registry = Registry::new();
        let resident = resident_bytes().unwrap();
        let (limiter, _) = limiter(resident * 2 / MIB + 100, &registry);
        limiter.check();
        let headroom = limiter.soft - limiter.resident.load(Ordering::Relaxed);
        assert!(limiter.admit(headroom / 4 - MIB));
        assert!(limiter.admit(headroom / 4 - MIB));
        assert!(
            !limiter.admit(3 * MIB),
            "twice the bytes taken would pass the soft limit"
        );
        assert!(limiter.admit(MIB / 2), "a smaller request still fits");
        limiter.check();
        assert!(limiter.admit(2 * MIB));
    }

    /// 1 TiB: no test process comes near it.
    const MAX_TEST_MIB: u64 = 1024 * 1024;
}
