//! `retry_on_failure`: exponential backoff with jitter around one sink, as the
//! collector's exporter helper does. A backend's own delay (RetryInfo, Retry-After)
//! replaces the computed one when it is longer.

use std::time::Duration;

use metrics::Counter;
use rand::Rng;
use tokio::time::Instant;

use super::config::RetryConfig;
use super::{AttemptObserver, SendError, Sent, Sink};
use crate::otlp::EncodedRequest;

/// Sends `request`, retrying as `retry` says; `observe` sees whether each attempt reached
/// the backend (a permanent refusal did; a retryable failure did not). A retry after an
/// attempt whose outcome is unknown counts the request's spans in `resent`.
pub(super) async fn send_with_retry(
    sink: &Sink,
    request: &EncodedRequest,
    retry: Option<&RetryConfig>,
    observe: Option<&AttemptObserver>,
    resent: &Counter,
) -> Result<Sent, SendError> {
    let started = Instant::now();
    let mut interval = retry.map(|r| r.initial_interval).unwrap_or_default();
    let mut maybe_delivered = false;
    loop {
        if maybe_delivered {
            resent.increment(request.spans);
        }
        let result = sink.send(request).await;
        if let Some(observe) = observe {
            observe(!matches!(result, Err(SendError::Retryable { .. })));
        }
        let err = match result {
            Ok(sent) => return Ok(sent),
            Err(e) => e,
        };
        let (
            SendError::Retryable {
                after,
                maybe_delivered: unknown,
                ..
            },
            Some(r),
        ) = (&err, retry.filter(|r| r.enabled))
        else {
            return Err(err);
        };
        maybe_delivered = *unknown;
        let mut wait = jitter(interval, r.randomization_factor);
        if let Some(after) = after {
            wait = wait.max(*after);
        }
        if !r.max_elapsed_time.is_zero() && started.elapsed() + wait > r.max_elapsed_time {
            return Err(err);
        }
        tokio::time::sleep(wait).await;
        interval = interval.mul_f64(r.multiplier).min(r.max_interval);
    }
}

fn jitter(interval: Duration, factor: f64) -> Duration {
    if factor == 0.0 {
        return interval;
    }
    let delta = interval.as_secs_f64() * factor;
    let low = interval.as_secs_f64() - delta;
    Duration::from_secs_f64(rand::rng().random_range(low..=low + 2.0 * delta))
}
