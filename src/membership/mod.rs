//! Who is in the fleet: resolvers that find the workers (`resolver`; a Service's
//! EndpointSlices in `k8s`), the consistent-hash
//! rings that map a key to one of them (`ring`), and a worker's own view of the fleet with
//! the handover protocol that keeps each trace on one worker while members come and go
//! (`fleet`, configured by the worker's `membership` section, `config`). Routers route on
//! the same resolvers and rings.

pub mod config;
pub mod fleet;
pub mod k8s;
pub mod resolver;
pub mod ring;
