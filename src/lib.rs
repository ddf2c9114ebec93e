//! tailgate: a two-tier tail-sampling service for OpenTelemetry traces. This crate is the
//! service: both tiers (the router and the worker: OTLP receivers, the trace buffer,
//! decision timers, sampling policies, exporters, self-telemetry) and the process around
//! them. The load generator and benchmark (`crates/tools`) and the test kit
//! (`crates/testkit`) are crates of their own that depend on this one, never the other way
//! round. See README.md and docs/ARCHITECTURE.md.

/// jemalloc rather than the system allocator: the buffer allocates and frees many
/// small objects across threads, where glibc's malloc spent a fifth of a worker's CPU
/// (see BENCHMARKS.md), and the memory limiter reads and purges it. In the library, so
/// tests and benchmarks run on the allocator the service runs on. Not in this crate's own
/// unit-test build: that links the library a second time through the test kit, whose copy
/// brings the allocator.
#[cfg(all(feature = "jemalloc", not(test)))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts:
/// - one arena instead of four per core. Buffered spans are allocated by the threads that
///   receive them and freed by the ones that decide, and every arena keeps partly used
///   slabs and freed pages of its own: with one arena a worker held 4 % less resident
///   memory per buffered span at no CPU cost in the benchmark (BENCHMARKS.md). Each
///   thread's cache still serves most allocations without the arena's lock; on many cores
///   `_RJEM_MALLOC_CONF=narenas:N` (read after this) gives more arenas;
/// - no page of padding on large allocations (`cache_oblivious:false`). jemalloc adds one
///   to every allocation of 16 KiB or more so its start can be placed at a random cache
///   line; on the 64 KiB span blocks that hold buffered spans it was a sixteenth more
///   resident memory, and no run of the benchmark showed the CPU it saves.
#[cfg(all(feature = "jemalloc", not(test)))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"narenas:1,cache_oblivious:false\0"[0];

pub mod buffer;
pub mod cache;
pub mod config;
pub mod exporter;
pub mod lifecycle;
pub mod local;
pub mod membership;
pub mod memory_limiter;
pub mod net;
pub mod otlp;
pub mod policy;
pub mod process;
pub mod receiver;
pub mod router;
pub mod spanmetrics;
pub mod storage;
pub mod supervisor;
pub mod telemetry;
pub mod worker;
