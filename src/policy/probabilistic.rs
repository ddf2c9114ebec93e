//! The `probabilistic` policy in two modes. `hash_seed` (the default) is bit-compatible with
//! the collector: FNV-1a-64 over the salt bytes followed by the 16 raw trace-id bytes,
//! sampled iff the hash is at most a threshold computed as Go's `math/big` does, so
//! decisions are bit-identical to the collector's; it samples independently of any
//! earlier sampler. `equalizing` is OpenTelemetry's consistent probability sampling: a
//! trace is kept when its randomness (`rv`, else the trace id's low 56 bits) is at least
//! the 56-bit threshold of the percentage, so it composes with consistent head sampling.

use crate::otlp::tracestate::Threshold;
use crate::otlp::TraceId;

use super::{Chance, Decision};

/// How the `probabilistic` policy draws.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    HashSeed,
    Equalizing,
}

const DEFAULT_SALT: &str = "default-hash-seed";
const FNV_OFFSET: u64 = 14_695_981_039_346_656_037;
const FNV_PRIME: u64 = 1_099_511_628_211;

#[derive(Debug, Clone)]
pub struct Probabilistic {
    /// FNV-1a state after the salt, so a decision hashes only the 16 id bytes.
    salted: u64,
    threshold: u64,
    mode: Mode,
    /// The 56-bit rejection threshold of the percentage; `None` at 0 %.
    rejection: Option<Threshold>,
}

impl Probabilistic {
    pub fn new(percentage: f64, salt: Option<&str>) -> Self {
        Self::with_mode(percentage, salt, Mode::HashSeed)
    }

    pub fn with_mode(percentage: f64, salt: Option<&str>, mode: Mode) -> Self {
        let salt = salt.filter(|s| !s.is_empty()).unwrap_or(DEFAULT_SALT);
        Self {
            salted: fnv1a(FNV_OFFSET, salt.as_bytes()),
            threshold: threshold(percentage / 100.0),
            mode,
            rejection: Threshold::of_probability(percentage / 100.0),
        }
    }

    /// The draw this policy makes for every trace.
    pub fn chance(&self) -> Chance {
        match self.mode {
            Mode::Equalizing => Chance::consistent(self.rejection),
            Mode::HashSeed => Chance::independent(self.rejection.map_or(0.0, |t| t.probability())),
        }
    }

    pub fn hash(&self, trace_id: &TraceId) -> u64 {
        fnv1a(self.salted, trace_id)
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// The vote on a trace with 56-bit `randomness`.
    pub fn decide(&self, trace_id: &TraceId, randomness: u64) -> Decision {
        let keep = match self.mode {
            Mode::HashSeed => self.hash(trace_id) <= self.threshold,
            Mode::Equalizing => self.rejection.is_some_and(|t| randomness >= t.value()),
        };
        if keep {
            Decision::Sampled
        } else {
            Decision::NotSampled
        }
    }
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// `uint64(big.Float(MaxUint64) * big.Float(ratio))`: the exact product rounded to a
/// 64-bit mantissa (ties to even), then truncated toward zero and saturated.
pub(crate) fn threshold(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    if ratio >= 1.0 {
        return u64::MAX;
    }
    // ratio = mantissa * 2^exp, mantissa a 53-bit integer.
    let bits = ratio.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mantissa, mut exp) = if raw_exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), raw_exp - 1075)
    };
    let mut product = u128::from(u64::MAX) * u128::from(mantissa);
    let width = 128 - product.leading_zeros() as i32;
    if width > 64 {
        let shift = width - 64;
        let rest = product & ((1u128 << shift) - 1);
        let half = 1u128 << (shift - 1);
        product >>= shift;
        exp += shift;
        if rest > half || (rest == half && product & 1 == 1) {
            product += 1;
            if product == 1u128 << 64 {
                product >>= 1;
                exp += 1;
            }
        }
    }
    let value = if exp >= 0 {
        product.checked_shl(exp as u32).unwrap_or(u128::MAX)
    } else if exp <= -128 {
        0
    } else {
        product >> (-exp) as u32
    };
    u64::try_from(value).unwrap_or(u64::MAX)
}
