//! Sampling probabilities in the W3C `tracestate`: the `th` (rejection threshold) and `rv`
//! (randomness) fields of OpenTelemetry's `ot` entry, read from a span's tracestate and
//! written into it.
//!
//! A threshold T is a 56-bit number: a span whose randomness R (56 bits: `rv`, else the
//! trace id's low 56 bits) is at least T is kept, so the sampling probability is
//! (2^56 − T) / 2^56 and each kept span stands for 2^56 / (2^56 − T) spans (its adjusted
//! count). `th` is T as 14 lowercase hex digits with trailing zeros dropped (`th:0` keeps
//! everything); `rv` is exactly 14 hex digits.

use std::fmt::Write as _;

/// 2^56: thresholds and randomness are 56-bit.
pub const SPACE: u64 = 1 << 56;

/// A rejection threshold, below [`SPACE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold(u64);

impl Threshold {
    /// Probability 1: every span kept.
    pub const ALWAYS: Threshold = Threshold(0);

    pub fn new(t: u64) -> Option<Threshold> {
        (t < SPACE).then_some(Threshold(t))
    }

    pub fn value(self) -> u64 {
        self.0
    }

    /// The threshold of probability `p` (0 < p ≤ 1), rounded to the nearest threshold; `None`
    /// for a probability too small to write (below 2^-56) or not in (0, 1].
    pub fn of_probability(p: f64) -> Option<Threshold> {
        if !(p > 0.0 && p <= 1.0) {
            return None;
        }
        let kept = (p * SPACE as f64).round() as u64;
        (kept > 0).then(|| Threshold(SPACE - kept.min(SPACE)))
    }

    pub fn probability(self) -> f64 {
        (SPACE - self.0) as f64 / SPACE as f64
    }

    /// How many spans a span kept at this threshold stands for.
    pub fn adjusted_count(self) -> f64 {
        SPACE as f64 / (SPACE - self.0) as f64
    }

    /// Parses `th`'s value: 1 to 14 hex digits, the missing ones trailing zeros.
    pub fn parse(hex: &str) -> Option<Threshold> {
        if hex.is_empty() || hex.len() > 14 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let t = u64::from_str_radix(hex, 16).ok()? << (4 * (14 - hex.len()));
        Threshold::new(t)
    }

    /// Writes `th`'s value: 14 lowercase hex digits without trailing zeros (`0` for 0).
    pub fn write(self, out: &mut String) {
        if self.0 == 0 {
            out.push('0');
            return;
        }
        let digits = format!("{:014x}", self.0);
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// What a tracestate says about sampling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sampling {
    pub threshold: Option<Threshold>,
    pub randomness: Option<u64>,
    /// A `th` or `rv` was present but not valid (ignored).
    pub malformed: bool,
}

/// Reads the `ot` entry's `th` and `rv` from a tracestate; anything malformed is ignored and
/// flagged, never an error.
pub fn read(tracestate: &str) -> Sampling {
    let mut out = Sampling::default();
    let Some(ot) = ot_value(tracestate) else {
        return out;
    };
    for field in ot.split(';') {
        match field.split_once(':') {
            Some(("th", v)) => match Threshold::parse(v) {
                Some(t) => out.threshold = Some(t),
                None => out.malformed = true,
            },
            Some(("rv", v)) if v.len() == 14 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                out.randomness = u64::from_str_radix(v, 16).ok();
            }
            Some(("rv", _)) => out.malformed = true,
            _ => {}
        }
    }
    out
}

/// The value of the `ot` list member, if any.
fn ot_value(tracestate: &str) -> Option<&str> {
    members(tracestate).find_map(|m| m.strip_prefix("ot="))
}

/// The list members, trimmed, empty ones skipped.
fn members(tracestate: &str) -> impl Iterator<Item = &str> {
    tracestate
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
}

/// `tracestate` with the `ot` entry's `th` set to `threshold`, or removed when `None` (the
/// probability is unknown); the `ot` entry moves to the front as W3C asks of an updated
/// entry, its other fields and the other members stay in order. Returns `None` when
/// nothing changes.
pub fn with_threshold(tracestate: &str, threshold: Option<Threshold>) -> Option<String> {
    let old = ot_value(tracestate);
    let mut ot = String::new();
    if let Some(t) = threshold {
        ot.push_str("th:");
        t.write(&mut ot);
    }
    for field in old.into_iter().flat_map(|v| v.split(';')) {
        if field.is_empty() || field.starts_with("th:") {
            continue;
        }
        if !ot.is_empty() {
            ot.push(';');
        }
        ot.push_str(field);
    }
    if old == Some(ot.as_str()) || (old.is_none() && ot.is_empty()) {
        return None;
    }
    let mut out = String::with_capacity(tracestate.len() + 12);
    if !ot.is_empty() {
        let _ = write!(out, "ot={ot}");
    }
    for member in members(tracestate).filter(|m| !m.starts_with("ot=")) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_encode_as_the_specification_shows() {
        // 50 % is th:8, 25 % th:c, 100 % th:0; others are rounded in double precision, as
        // the reference implementation does.
        let hex = |p| {
            let mut s = String::new();
            Threshold::of_probability(p).unwrap().write(&mut s);
            s
        };
        assert_eq!(hex(0.5), "8");
        assert_eq!(hex(0.25), "c");
        assert_eq!(hex(1.0), "0");
        assert_eq!(hex(0.1), "e6666666666666");
        assert_eq!(hex(1.0 / 3.0), "aaaaaaaaaaaaac");
        assert_eq!(Threshold::parse("8").unwrap().value(), 0x80_0000_0000_0000);
        assert_eq!(Threshold::parse("c").unwrap().adjusted_count(), 4.0);
        assert_eq!(Threshold::parse("0").unwrap(), Threshold::ALWAYS);
        for bad in ["", "g", "123456789abcdef", "-1", "8 "] {
            assert_eq!(Threshold::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Threshold::of_probability(0.0), None);
        assert_eq!(Threshold::of_probability(1.5), None);
    }

    #[test]
    fn th_and_rv_are_read_and_malformed_values_flagged() {
        let s = read("vendor=x,ot=th:c;rv:0123456789abcd;foo:bar");
        assert_eq!(s.threshold, Threshold::parse("c"));
        assert_eq!(s.randomness, Some(0x0123456789abcd));
        assert!(!s.malformed);
        let s = read(" ot=th:xyz;rv:12 , other=1");
        assert_eq!((s.threshold, s.randomness, s.malformed), (None, None, true));
        assert_eq!(read("other=th:8"), Sampling::default());
        assert_eq!(read(""), Sampling::default());
    }

    #[test]
    fn writing_a_threshold_keeps_everything_else_in_order() {
        let t = Threshold::parse("8");
        assert_eq!(with_threshold("", t).as_deref(), Some("ot=th:8"));
        assert_eq!(
            with_threshold("a=1,ot=rv:0123456789abcd;th:c,b=2", t).as_deref(),
            Some("ot=th:8;rv:0123456789abcd,a=1,b=2")
        );
        assert_eq!(with_threshold("ot=th:8", t), None);
        // An unknown probability erases th, and an emptied ot entry goes.
        assert_eq!(with_threshold("a=1,ot=th:8", None).as_deref(), Some("a=1"));
        assert_eq!(
            with_threshold("ot=th:8;rv:0123456789abcd", None).as_deref(),
            Some("ot=rv:0123456789abcd")
        );
        assert_eq!(with_threshold("a=1", None), None);
    }
}
