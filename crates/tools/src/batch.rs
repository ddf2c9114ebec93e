//! Batching generated spans into OTLP requests per emitting service instance, the way
//! each instance's SDK batches its own spans.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use crate::workload::{GeneratedTrace, Outgoing, Workload};

/// Batches spans per emitting instance, as each instance's SDK would: a request leaves
/// when it holds `batch_size` spans, or when as many spans as a quarter of all instances'
/// batches have been generated since its first span (so quiet instances do not hold spans
/// for long). Late spans batch separately and leave marked `late`.
pub struct Batcher {
    batch_size: usize,
    max_age: u64,
    resources: Vec<Resource>,
    scope: InstrumentationScope,
    on_time: Vec<Pending>,
    late: Vec<Pending>,
    generated: u64,
}

#[derive(Default)]
struct Pending {
    spans: Vec<Span>,
    first: u64,
}

impl Batcher {
    pub fn new(workload: &Workload) -> Batcher {
        let instances = workload.instances();
        let batch_size = workload.config().batch_size.max(1);
        Batcher {
            batch_size,
            max_age: (batch_size * instances / 4).max(batch_size) as u64,
            resources: workload.resources().to_vec(),
            scope: InstrumentationScope {
                name: "io.opentelemetry.tailgate-loadgen".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            },
            on_time: (0..instances).map(|_| Pending::default()).collect(),
            late: (0..instances).map(|_| Pending::default()).collect(),
            generated: 0,
        }
    }

    /// Adds a trace's spans; returns the requests that are ready.
    pub fn push(&mut self, trace: GeneratedTrace, out: &mut Vec<Outgoing>) {
        for s in trace.spans {
            self.generated += 1;
            let pending = if s.late {
                &mut self.late[s.instance]
            } else {
                &mut self.on_time[s.instance]
            };
            if pending.spans.is_empty() {
                pending.first = self.generated;
            }
            pending.spans.push(s.span);
            if pending.spans.len() >= self.batch_size {
                out.push(self.flush(s.instance, s.late));
            }
        }
        let (generated, max_age) = (self.generated, self.max_age);
        self.flush_where(out, |p| generated - p.first >= max_age);
    }

    /// Every span still held.
    pub fn finish(&mut self, out: &mut Vec<Outgoing>) {
        self.flush_where(out, |_| true);
    }

    /// Flushes every non-empty batch (on-time ones first) that `due` selects.
    fn flush_where(&mut self, out: &mut Vec<Outgoing>, due: impl Fn(&Pending) -> bool) {
        for late in [false, true] {
            for instance in 0..self.resources.len() {
                let pending = if late {
                    &self.late[instance]
                } else {
                    &self.on_time[instance]
                };
                if !pending.spans.is_empty() && due(pending) {
                    out.push(self.flush(instance, late));
                }
            }
        }
    }

    fn flush(&mut self, instance: usize, late: bool) -> Outgoing {
        let pending = if late {
            &mut self.late[instance]
        } else {
            &mut self.on_time[instance]
        };
        let spans = std::mem::take(&mut pending.spans);
        let count = spans.len() as u32;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resources[instance].clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.27.0".into(),
            }],
        };
        Outgoing {
            instance,
            spans: count,
            body: Bytes::from(request.encode_to_vec()),
            late,
        }
    }
}
