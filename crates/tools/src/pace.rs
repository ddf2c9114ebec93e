//! The load generator's pace: as fast as the target takes spans, a steady rate, or steps of
//! rates (`3000:40s,9000:40s,3000`), each held for its duration, the last one until the
//! spans run out; the steps are how an input rate that changes under a policy is driven.

use std::str::FromStr;
use std::time::Duration;

/// Spans per second over time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pace {
    /// (spans per second, how long); the last step's duration is ignored: it lasts.
    steps: Vec<(f64, Duration)>,
}

impl Pace {
    /// No pacing: as fast as the target takes the spans.
    pub const UNLIMITED: Pace = Pace { steps: Vec::new() };

    pub fn steady(rate: f64) -> Pace {
        Pace {
            steps: vec![(rate, Duration::ZERO)],
        }
    }

    /// When the span after `handed` spans is due, counted from the start; `None` when
    /// unpaced.
    pub fn due(&self, handed: u64) -> Option<Duration> {
        let (last, earlier) = self.steps.split_last()?;
        let mut spans = handed as f64;
        let mut at = Duration::ZERO;
        for &(rate, length) in earlier {
            let in_step = rate * length.as_secs_f64();
            if spans < in_step {
                return Some(at + Duration::from_secs_f64(spans / rate));
            }
            spans -= in_step;
            at += length;
        }
        Some(at + Duration::from_secs_f64(spans / last.0))
    }
}

/// Why a pace does not parse.
#[derive(Debug, thiserror::Error)]
pub enum PaceError {
    #[error("step {0:?}: the rate must be a positive number of spans per second")]
    Rate(String),
    #[error("step {0:?}: {1}")]
    Duration(String, humantime::DurationError),
    #[error("step {0:?}: every step but the last needs a duration (RATE:DURATION)")]
    MissingDuration(String),
}

impl FromStr for Pace {
    type Err = PaceError;

    /// `RATE` or `RATE:DURATION,...,RATE` (the last step's duration may be left out).
    fn from_str(text: &str) -> Result<Pace, PaceError> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let mut steps = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let (rate, length) = match part.split_once(':') {
                Some((rate, length)) => (
                    rate,
                    humantime::parse_duration(length.trim())
                        .map_err(|e| PaceError::Duration((*part).to_owned(), e))?,
                ),
                None if i + 1 == parts.len() => (*part, Duration::ZERO),
                None => return Err(PaceError::MissingDuration((*part).to_owned())),
            };
            let rate: f64 = rate
                .trim()
                .parse()
                .ok()
                .filter(|r: &f64| r.is_finite() && *r > 0.0)
                .ok_or_else(|| PaceError::Rate((*part).to_owned()))?;
            steps.push((rate, length));
        }
        Ok(Pace { steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_hold_each_rate_for_its_duration_and_the_last_lasts() {
        let pace: Pace = "1000:10s, 3000:5s,500".parse().unwrap();
        assert_eq!(pace.due(0), Some(Duration::ZERO));
        assert_eq!(pace.due(5_000), Some(Duration::from_secs(5)));
        assert_eq!(pace.due(10_000), Some(Duration::from_secs(10)));
        assert_eq!(pace.due(16_000), Some(Duration::from_secs(12)));
        assert_eq!(pace.due(25_000), Some(Duration::from_secs(15)));
        assert_eq!(pace.due(26_000), Some(Duration::from_secs(17)));
        assert_eq!(
            Pace::steady(200.0).due(100),
            Some(Duration::from_millis(500))
        );
        assert_eq!(Pace::UNLIMITED.due(100), None);
    }

    #[test]
    fn bad_steps_are_refused_with_the_step() {
        for (text, message) in [
            ("0", "positive"),
            ("fast", "positive"),
            ("1000,2000", "needs a duration"),
            ("1000:soon,2000", "1000:soon"),
        ] {
            let e = text.parse::<Pace>().unwrap_err().to_string();
            assert!(e.contains(message), "{text}: {e}");
        }
    }
}
