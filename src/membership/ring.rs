//! Consistent-hash rings that map a routing key to one endpoint.
//!
//! - [`RingKind::Collector`] is the OpenTelemetry Collector load-balancing exporter's ring,
//!   byte for byte, in its v1 and v2 forms: CRC-32
//!   (IEEE) of the key modulo 36 000, 100 virtual points per endpoint hashed from the
//!   endpoint string as the resolver returns it, lower-bound lookup with wrap-around. A
//!   tailgate router and a collector with the same endpoint list send every trace id to
//!   the same worker. v3 is not offered: its exact point ordering could not be verified.
//! - [`RingKind::Balanced`] is Maglev hashing (Eisenbud et al., NSDI 2016) over a lookup
//!   table of 1 000 003 slots: near-even load (every endpoint owns the same number of slots,
//!   within one) and minimal disruption when membership changes.

const MAX_POSITIONS: u32 = 36_000;
const WEIGHT: u32 = 100;
const V2_PROBE_LIMIT: u32 = 10;
/// Maglev table size: a prime, so every skip value generates a full permutation.
const MAGLEV_SLOTS: u64 = 1_000_003;

/// The `ring` key as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RingChoice {
    #[default]
    Collector,
    Balanced,
}

/// The collector's default `ring_version`.
pub(crate) fn default_ring_version() -> u8 {
    2
}

/// The ring of `ring` and `ring_version` in the section at `path`.
pub(crate) fn ring_kind(
    choice: RingChoice,
    version: u8,
    path: &str,
    errors: &mut crate::config::Errors,
) -> Option<RingKind> {
    match (choice, version) {
        (RingChoice::Balanced, _) => Some(RingKind::Balanced),
        (RingChoice::Collector, v @ (1 | 2)) => Some(RingKind::Collector(v)),
        (RingChoice::Collector, v) => {
            errors.push(
                format!("{path}.ring_version"),
                format!("{v} is not a verified ring version; use 1 or 2"),
            );
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// The collector's ring, version 1 or 2.
    Collector(u8),
    Balanced,
}

/// An immutable ring over `endpoints`; routing returns an index into them.
#[derive(Debug, Clone)]
pub struct Ring {
    endpoints: Vec<String>,
    lookup: Lookup,
}

#[derive(Debug, Clone)]
enum Lookup {
    /// (position, endpoint index), sorted by position.
    Points(Vec<(u32, usize)>),
    /// Endpoint index per Maglev slot.
    Table(Vec<u32>),
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// The collector's virtual points of one endpoint, given the positions already taken.
fn place(
    version: u8,
    endpoint: &str,
    index: usize,
    weight: u32,
    used: &mut std::collections::HashSet<u32>,
    out: &mut Vec<(u32, usize)>,
) {
    for i in 0..weight {
        match version {
            1 => {
                // v1 hashes the index as one byte; a taken position is lost.
                let p = crc32(&[endpoint.as_bytes(), &[i as u8]]) % MAX_POSITIONS;
                if used.insert(p) {
                    out.push((p, index));
                }
            }
            _ => {
                // v2: a 4-byte little-endian index and up to 10 linear probes; like upstream,
                // a point that needed the 10th probe is dropped even when that slot was free.
                let mut p = crc32(&[endpoint.as_bytes(), &i.to_le_bytes()]) % MAX_POSITIONS;
                let mut probed = 0;
                while used.contains(&p) && probed < V2_PROBE_LIMIT {
                    p = (p + 1) % MAX_POSITIONS;
                    probed += 1;
                }
                if probed < V2_PROBE_LIMIT {
                    used.insert(p);
                    out.push((p, index));
                }
            }
        }
    }
}

/// FNV-1a 64, for Maglev's per-endpoint offset and skip (stable across builds and hosts).
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Ring {
    /// Builds a ring over `endpoints` in the order given (the resolver's sorted order).
    pub fn new(kind: RingKind, endpoints: Vec<String>) -> Ring {
        let lookup = match kind {
            RingKind::Collector(version) => {
                let mut used = std::collections::HashSet::new();
                let mut points = Vec::with_capacity(endpoints.len() * WEIGHT as usize);
                for (i, e) in endpoints.iter().enumerate() {
                    place(version, e, i, WEIGHT, &mut used, &mut points);
                }
                points.sort_unstable();
                Lookup::Points(points)
            }
            RingKind::Balanced => Lookup::Table(maglev(&endpoints)),
        };
        Ring { endpoints, lookup }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint index that owns `key`, or when `usable` rejects it, the next usable
    /// one along the ring (the next point, or the next Maglev slot); `None` when no
    /// endpoint is usable.
    pub fn route_usable(&self, key: &[u8], usable: impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.route(key)?;
        if usable(first) {
            return Some(first);
        }
        if !(0..self.endpoints.len()).any(&usable) {
            return None;
        }
        let h = crc32(&[key]);
        match &self.lookup {
            Lookup::Points(points) => {
                let start = points.partition_point(|(p, _)| *p < h % MAX_POSITIONS);
                (1..=points.len())
                    .map(|k| points[(start + k) % points.len()].1)
                    .find(|i| usable(*i))
            }
            Lookup::Table(table) => {
                let start = (u64::from(h) % MAGLEV_SLOTS) as usize;
                (1..table.len())
                    .map(|k| table[(start + k) % table.len()] as usize)
                    .find(|i| usable(*i))
            }
        }
    }

    /// The endpoint index that owns `key`; `None` for an empty ring.
    pub fn route(&self, key: &[u8]) -> Option<usize> {
        let h = crc32(&[key]);
        match &self.lookup {
            Lookup::Points(points) => {
                if points.is_empty() {
                    return None;
                }
                let pos = h % MAX_POSITIONS;
                let i = points.partition_point(|(p, _)| *p < pos);
                Some(points.get(i).unwrap_or(&points[0]).1)
            }
            Lookup::Table(table) => {
                if table.is_empty() {
                    None
                } else {
                    Some(table[(u64::from(h) % MAGLEV_SLOTS) as usize] as usize)
                }
            }
        }
    }
}

/// The Maglev lookup table: each endpoint walks its own permutation of the slots and
/// claims the next free one in turn, so all endpoints end within one slot of each other.
fn maglev(endpoints: &[String]) -> Vec<u32> {
    let n = endpoints.len();
    if n == 0 {
        return Vec::new();
    }
    let m = MAGLEV_SLOTS;
    let perms: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|e| {
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, e.as_bytes()) % m;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, e.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % m;
            while table[slot as usize] != u32::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            table[slot as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// The collector's virtual positions of one endpoint alone on a ring, with `weight`
/// points, sorted: what its upstream unit tests check.
#[cfg(test)]
pub(super) fn positions(version: u8, endpoint: &str, weight: u32) -> Vec<u32> {
    let mut out = Vec::new();
    place(
        version,
        endpoint,
        0,
        weight,
        &mut std::collections::HashSet::new(),
        &mut out,
    );
    let mut p: Vec<u32> = out.into_iter().map(|(p, _)| p).collect();
    p.sort_unstable();
    p
}

/// Slots owned by each endpoint of a balanced ring.
#[cfg(test)]
pub(super) fn slot_counts(ring: &Ring) -> Vec<usize> {
    let Lookup::Table(t) = &ring.lookup else {
        return Vec::new();
    };
    let mut counts = vec![0; ring.endpoints.len()];
    for i in t {
        counts[*i as usize] += 1;
    }
    counts
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
