//! The process's own resources: resident memory and CPU time from `/proc`, uptime, and the
//! allocator's (jemalloc's) figures and free pages, which the memory limiter reads and
//! purges; and their exposition as the collector's `otelcol_process_*` metrics, read at
//! scrape time, so every process shows its memory and CPU whether or not it has a memory
//! limiter.

use std::fmt::Write as _;
use std::time::Instant;

use crate::telemetry::{openmetrics_families, Format, MetricsSource};

/// Resident memory of this process (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    resident_bytes_of(procfs::process::Process::myself().ok()?)
}

/// Resident memory of `process`.
pub fn resident_bytes_of(process: procfs::process::Process) -> Option<u64> {
    Some(process.status().ok()?.vmrss? * 1024)
}

/// The allocator's own figures, and giving its free pages back to the system. jemalloc
/// keeps freed pages ("dirty") for reuse; they count in resident memory until purged, so
/// after a burst resident memory stays high although nothing uses it.
#[cfg(feature = "jemalloc")]
pub mod allocator {
    use tikv_jemalloc_ctl::{epoch, stats};

    /// Bytes in the allocator's active pages (what live allocations occupy), fresh.
    pub fn active_bytes() -> Option<u64> {
        epoch::advance().ok()?;
        stats::active::read().ok().map(|b| b as u64)
    }

    /// Bytes of live allocations, and bytes the allocator has mapped from the system,
    /// fresh.
    pub fn allocated_and_mapped() -> Option<(u64, u64)> {
        epoch::advance().ok()?;
        let allocated = stats::allocated::read().ok()? as u64;
        let mapped = stats::mapped::read().ok()? as u64;
        Some((allocated, mapped))
    }

    /// Returns every arena's unused dirty pages to the system.
    pub fn purge() -> bool {
        // `arena.<MALLCTL_ARENAS_ALL>.purge` takes no value: the pointers must be null,
        // which the ctl crate's typed writers cannot express.
        const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
        // SAFETY: a NUL-terminated name and null pointers are what this void ctl expects.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        rc == 0
    }
}

/// Without jemalloc (the fuzz builds), only resident memory is known.
#[cfg(not(feature = "jemalloc"))]
pub mod allocator {
    pub fn active_bytes() -> Option<u64> {
        None
    }

    pub fn allocated_and_mapped() -> Option<(u64, u64)> {
        None
    }

    pub fn purge() -> bool {
        false
    }
}

/// CPU time (user and system) this process has used, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// `otelcol_process_*` for `/metrics`, labelled with the process's role.
pub struct ProcessMetrics {
    started: Instant,
    role: &'static str,
}

impl ProcessMetrics {
    /// Uptime counts from now: call it when the process starts its service.
    pub fn new(role: &'static str) -> ProcessMetrics {
        ProcessMetrics {
            started: Instant::now(),
            role,
        }
    }

    /// The classic text exposition, with the collector's names and units.
    fn text(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(value) = value {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                let _ = writeln!(out, "{name}{{role=\"{}\"}} {value}", self.role);
            }
        };
        family(
            "otelcol_process_uptime_seconds_total",
            "counter",
            "Uptime of the process.",
            Some(self.started.elapsed().as_secs_f64()),
        );
        family(
            "otelcol_process_cpu_seconds_total",
            "counter",
            "Total CPU user and system time in seconds.",
            cpu_seconds(),
        );
        family(
            "otelcol_process_memory_rss_bytes",
            "gauge",
            "Total physical memory (resident set size).",
            resident_bytes().map(|b| b as f64),
        );
        let heap = allocator::allocated_and_mapped();
        family(
            "otelcol_process_runtime_heap_alloc_bytes",
            "gauge",
            "Bytes of allocated heap objects (jemalloc's allocated bytes).",
            heap.map(|h| h.0 as f64),
        );
        family(
            "otelcol_process_runtime_total_sys_memory_bytes",
            "gauge",
            "Total bytes of memory obtained from the OS (jemalloc's mapped bytes).",
            heap.map(|h| h.1 as f64),
        );
        out
    }
}

impl MetricsSource for ProcessMetrics {
    fn render(&self, out: &mut String, format: Format) {
        let text = self.text();
        match format {
            Format::Text => out.push_str(&text),
            Format::OpenMetrics => out.push_str(&openmetrics_families(&text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_families_carry_the_role_and_real_figures() {
        let metrics = ProcessMetrics::new("worker");
        // Some CPU to count.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let mut text = String::new();
        metrics.render(&mut text, Format::Text);
        let value = |name: &str| tailgate_testkit::metric(&text, name, &[("role", "worker")]);
        assert!(
            value("otelcol_process_memory_rss_bytes") > 1_000_000.0,
            "{text}"
        );
        assert!(value("otelcol_process_cpu_seconds_total") > 0.0, "{text}");
        assert!(
            value("otelcol_process_uptime_seconds_total") >= 0.0,
            "{text}"
        );
        assert!(text.contains("# TYPE otelcol_process_cpu_seconds_total counter"));
        let mut open = String::new();
        metrics.render(&mut open, Format::OpenMetrics);
        assert!(
            open.contains("# TYPE otelcol_process_cpu_seconds counter"),
            "{open}"
        );
    }
}
