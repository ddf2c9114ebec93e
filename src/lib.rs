//! tailgate: a two-tier tail-sampling service for OpenTelemetry traces. This crate holds
//! the worker tier: OTLP receivers, the trace buffer, decision timers, sampling policies,
//! exporters and self-telemetry. See README.md and DESIGN.md.

/// jemalloc rather than the system allocator: the buffer allocates and frees many
/// small objects across threads, where glibc's malloc spent a fifth of a worker's CPU
/// (see BENCHMARKS.md), and the memory limiter reads and purges it. In the library, so
/// tests and benchmarks run on the allocator the service runs on.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod buffer;
pub mod config;
pub mod exporter;
pub mod lifecycle;
pub mod loadgen;
pub mod local;
pub mod memory_limiter;
pub mod otlp;
pub mod policy;
pub mod receiver;
pub mod router;
pub mod spanmetrics;
pub mod supervisor;
pub mod telemetry;
pub mod testkit;
pub mod worker;
