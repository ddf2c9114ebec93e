//! A token bucket with the semantics of Go's `golang.org/x/time/rate` as the collector's
//! `rate_limiting` and `bytes_limiting` use it: starts full, refills continuously at
//! `rate` per second up to `burst`, and `allow(n)` takes `n` tokens or none. A request
//! larger than the burst never passes.

use std::sync::Mutex;

use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub(super) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: None,
            }),
        }
    }

    pub(super) fn allow(&self, n: f64, now: Instant) -> bool {
        if n > self.burst {
            return false;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = s.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        }
        s.last = Some(now.max(s.last.unwrap_or(now)));
        if s.tokens >= n {
            s.tokens -= n;
            true
        } else {
            false
        }
    }
}
