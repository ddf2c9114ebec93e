//! The memory limiter gives freed memory back: after a burst that is freed, jemalloc keeps
//! the pages for reuse and resident memory stays high (what locked out legitimate
//! clients for a minute after an attack); one check above the soft limit purges them, so
//! resident memory is back near where it was and data is accepted again at once. Its own
//! test binary: it measures the whole process.

use std::time::Duration;

use tailgate::memory_limiter::{MemoryLimiter, MemoryLimiterConfig};
use tailgate::process::resident_bytes;
use tailgate::telemetry::Registry;
use tailgate_testkit::metric;

const MIB: u64 = 1024 * 1024;

#[test]
fn one_check_gives_a_freed_burst_back() {
    let base = resident_bytes().unwrap();
    // 256 MiB in 64 KiB blocks, each written so its pages are resident.
    let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 64 * 1024]).collect();
    let peak = resident_bytes().unwrap();
    assert!(peak >= base + 200 * MIB, "the burst was not resident");
    drop(blocks);
    let freed = resident_bytes().unwrap();
    // Soft limit (80 %) under what is resident now, hard limit above it.
    let limit_mib = freed * 11 / 10 / MIB;
    let registry = Registry::new();
    let limiter = MemoryLimiter::new(
        &MemoryLimiterConfig {
            check_interval: Duration::from_secs(1),
            limit_mib,
            spike_limit_mib: None,
            limit_percentage: 0,
            spike_limit_percentage: None,
        },
        &registry,
    );
    limiter.check();
    let after = resident_bytes().unwrap();
    eprintln!(
        "resident: {} MiB at start, {} MiB at the peak, {} MiB freed, {} MiB after one check",
        base / MIB,
        peak / MIB,
        freed / MIB,
        after / MIB
    );
    assert!(
        after <= base + 64 * MIB,
        "one check left {} MiB resident (started at {} MiB)",
        after / MIB,
        base / MIB
    );
    let text = registry.render();
    assert!(metric(&text, "tailgate_memory_limiter_purges_total", &[]) >= 1.0);
    assert!(
        !limiter.refusing(),
        "still refusing after memory was given back"
    );
}
