//! tailgate's tools, beside the service and never inside it: the load generator
//! (`tailgate-tools loadgen`) drives a router or worker with generated traces at a target
//! rate or as fast as it takes them, with a progress bar, and with `--verify` checks that
//! every kept trace came back whole, once, from one worker; the end-to-end benchmark
//! (`tailgate-tools bench`, [`bench`]) reuses its pieces.

pub mod batch;
pub mod bench;
mod pace;
mod send;
mod verify;
mod workload;

use std::collections::VecDeque;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

pub use batch::Batcher;
pub use pace::{Pace, PaceError};
pub use send::{Protocol, SendStats, Sender};
pub use verify::{
    Expectations, PolicyInput, PolicyShare, Report, VerifySink, Window, BUSY_KEY_SPANS,
    TIMELINE_SECONDS, WORKER_HEADER,
};
pub use workload::{GeneratedSpan, GeneratedTrace, Outgoing, Workload, WorkloadConfig};

/// Generated requests, until a span count or a deadline is reached; every trace started
/// is sent whole. With expectations, records what the policies should do with each trace.
pub struct Generator {
    workload: Workload,
    batcher: Batcher,
    ready: VecDeque<Outgoing>,
    scratch: Vec<Outgoing>,
    spans_left: u64,
    deadline: Option<std::time::Instant>,
    done: bool,
    pub expectations: Option<Expectations>,
}

impl Generator {
    pub fn new(config: WorkloadConfig, spans: u64, deadline: Option<std::time::Instant>) -> Self {
        let workload = Workload::new(config);
        let batcher = Batcher::new(&workload);
        Generator {
            workload,
            batcher,
            ready: VecDeque::new(),
            scratch: Vec::new(),
            spans_left: spans,
            deadline,
            done: false,
            expectations: None,
        }
    }

    pub fn with_expectations(mut self, expectations: Expectations) -> Self {
        self.expectations = Some(expectations);
        self
    }
}

impl Iterator for Generator {
    type Item = Outgoing;

    fn next(&mut self) -> Option<Outgoing> {
        while self.ready.is_empty() && !self.done {
            let out_of_time = self
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d);
            if self.spans_left == 0 || out_of_time {
                self.batcher.finish(&mut self.scratch);
                self.done = true;
            } else {
                let trace = self.workload.next_trace();
                self.spans_left = self.spans_left.saturating_sub(trace.spans.len() as u64);
                if let Some(e) = &mut self.expectations {
                    e.record(&trace, self.workload.resources());
                }
                self.batcher.push(trace, &mut self.scratch);
            }
            self.ready.extend(self.scratch.drain(..));
        }
        self.ready.pop_front()
    }
}

/// A progress bar on stderr (drawn only on a terminal) counting spans.
pub fn progress_bar(total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} spans, {per_sec}"
    } else {
        "{elapsed_precise} {spinner} {human_pos} spans, {per_sec}"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Sends every request of `requests` at `pace`; late requests leave `late_after` after
/// their turn. Returns the spans handed to the sender.
pub async fn drive(
    requests: impl Iterator<Item = Outgoing>,
    sender: &Sender,
    pace: &Pace,
    late_after: Duration,
    progress: &ProgressBar,
) -> u64 {
    let started = Instant::now();
    let mut late: VecDeque<(Instant, Outgoing)> = VecDeque::new();
    let mut handed = 0u64;
    let hand = async |o: Outgoing, handed: &mut u64| {
        *handed += u64::from(o.spans);
        progress.inc(u64::from(o.spans));
        sender.send(o).await;
    };
    for outgoing in requests {
        while late.front().is_some_and(|(due, _)| *due <= Instant::now()) {
            let (_, o) = late.pop_front().expect("checked");
            hand(o, &mut handed).await;
        }
        if outgoing.late {
            late.push_back((Instant::now() + late_after, outgoing));
            continue;
        }
        if let Some(due) = pace.due(handed) {
            tokio::time::sleep_until(started + due).await;
        }
        hand(outgoing, &mut handed).await;
    }
    while let Some((due, o)) = late.pop_front() {
        tokio::time::sleep_until(due).await;
        hand(o, &mut handed).await;
    }
    handed
}

/// What `tailgate loadgen` runs.
pub struct LoadgenOptions {
    pub endpoint: String,
    pub protocol: Protocol,
    pub pace: Pace,
    pub spans: u64,
    pub duration: Option<Duration>,
    pub connections: usize,
    pub late_after: Duration,
    pub workload: WorkloadConfig,
    pub verify: Option<VerifyOptions>,
}

/// The `--verify` half: where the workers export to and what they decide by.
pub struct VerifyOptions {
    pub sink: String,
    pub policies: tailgate::policy::PolicySet,
    /// How long to wait after the last span for the kept traces to arrive.
    pub settle: Duration,
}

/// The outcome of a run: its summary and, with `--verify`, the completeness report.
pub struct Outcome {
    pub summary: String,
    pub report: Option<Report>,
}

/// Runs the load generator (and the verify sink) until the span count or the duration is
/// reached, then, with verification, waits for the kept traces and compares.
pub async fn run(options: LoadgenOptions) -> anyhow::Result<Outcome> {
    let sink = match &options.verify {
        Some(v) => Some(VerifySink::start(&v.sink).await?),
        None => None,
    };
    if let Some(sink) = &sink {
        eprintln!("verify sink listening on {}", sink.addr);
    }
    let settle = options.verify.as_ref().map_or(Duration::ZERO, |v| v.settle);
    let deadline = options.duration.map(|d| std::time::Instant::now() + d);
    let mut generator = Generator::new(options.workload, options.spans, deadline);
    if let Some(v) = options.verify {
        generator = generator.with_expectations(Expectations::new(v.policies));
    }
    let sender = Sender::start(&options.endpoint, options.protocol, options.connections)?;
    let bar = progress_bar(options.duration.is_none().then_some(options.spans));
    let started = Instant::now();
    let handed = drive(
        generator.by_ref(),
        &sender,
        &options.pace,
        options.late_after,
        &bar,
    )
    .await;
    let stats = sender.finish().await;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let get = SendStats::get;
    let summary = format!(
        "sent {handed} spans in {} requests over {:.1} s: {:.0} spans/s; delivered {}, \
         rejected {}, refused {}, retries {}, {:.0} wire bytes per span\n",
        get(&stats.requests),
        elapsed.as_secs_f64(),
        handed as f64 / elapsed.as_secs_f64().max(1e-9),
        get(&stats.delivered),
        get(&stats.rejected),
        get(&stats.refused),
        get(&stats.retries),
        get(&stats.wire_bytes) as f64 / handed.max(1) as f64,
    );
    let report = match (sink, generator.expectations.take()) {
        (Some(sink), Some(expected)) => {
            eprintln!("{summary}waiting for the kept traces ...");
            let settle = Instant::now() + settle;
            while !sink.settled(&expected, Duration::from_secs(2)) && Instant::now() < settle {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let report = sink.report(&expected);
            sink.stop().await;
            Some(report)
        }
        _ => None,
    };
    Ok(Outcome { summary, report })
}

#[cfg(test)]
mod tests;
