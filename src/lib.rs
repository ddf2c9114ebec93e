//! tailgate: a two-tier tail-sampling service for OpenTelemetry traces. This crate holds
//! the worker tier: OTLP receivers, the trace buffer, decision timers, sampling policies,
//! exporters and self-telemetry. See README.md and DESIGN.md.

pub mod buffer;
pub mod config;
pub mod exporter;
pub mod lifecycle;
pub mod limiter;
pub mod loadgen;
pub mod local;
pub mod otlp;
pub mod policy;
pub mod receiver;
pub mod router;
pub mod spanmetrics;
pub mod telemetry;
pub mod testkit;
pub mod worker;
