use super::{positions, slot_counts, Ring, RingKind};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ring(kind: RingKind, endpoints: &[&str]) -> Ring {
    Ring::new(kind, endpoints.iter().map(|e| e.to_string()).collect())
}

fn owner<'a>(r: &'a Ring, key: &[u8]) -> &'a str {
    &r.endpoints()[r.route(key).unwrap()]
}

// The collector's own test vectors for its ring (loadbalancingexporter, v1 and v2).
#[test]
fn collector_ring_v1_reproduces_the_upstream_vectors() {
    assert_eq!(
        positions(1, "endpoint-1", 5),
        vec![1401, 4175, 14133, 17836, 21667]
    );
    let r = ring(RingKind::Collector(1), &["endpoint-1", "endpoint-2"]);
    assert_eq!(owner(&r, &[1, 2, 0, 0]), "endpoint-1");
    assert_eq!(owner(&r, &[128, 128, 0, 0]), "endpoint-2");
    assert_eq!(owner(&r, b"ad-service-7"), "endpoint-1");
    assert_eq!(owner(&r, b"get-recommendations-1"), "endpoint-2");
}

#[test]
fn collector_ring_v2_reproduces_the_upstream_vectors() {
    assert_eq!(
        positions(2, "endpoint-1", 5),
        vec![0x21ca, 0x29d3, 0x3984, 0x5eaf, 0x8bc1]
    );
    let r = ring(RingKind::Collector(2), &["endpoint-1", "endpoint-2"]);
    assert_eq!(owner(&r, &[1, 2, 0, 0]), "endpoint-2");
    assert_eq!(owner(&r, &[128, 128, 0, 0]), "endpoint-1");
    assert_eq!(owner(&r, b"ad-service-7"), "endpoint-2");
    assert_eq!(owner(&r, b"get-recommendations-1"), "endpoint-1");
}

#[test]
fn trace_ids_route_as_the_collector_routes_them() {
    let eps = ["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"];
    let (v1, v2) = (
        ring(RingKind::Collector(1), &eps),
        ring(RingKind::Collector(2), &eps),
    );
    for (id, want1, want2) in [
        (
            "0102030405060708090a0b0c0d0e0f10",
            "10.0.0.3:4317",
            "10.0.0.2:4317",
        ),
        (
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "10.0.0.3:4317",
            "10.0.0.3:4317",
        ),
        (
            "00000000000000000000000000000001",
            "10.0.0.3:4317",
            "10.0.0.3:4317",
        ),
        (
            "ffffffffffffffffffffffffffffffff",
            "10.0.0.1:4317",
            "10.0.0.3:4317",
        ),
    ] {
        assert_eq!(owner(&v1, &hex(id)), want1, "v1 {id}");
        assert_eq!(owner(&v2, &hex(id)), want2, "v2 {id}");
    }
}

#[test]
fn an_empty_ring_routes_nowhere() {
    assert_eq!(ring(RingKind::Collector(2), &[]).route(b"x"), None);
    assert_eq!(ring(RingKind::Balanced, &[]).route(b"x"), None);
}

fn endpoints(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:4317", i / 250, i % 250 + 1))
        .collect()
}

#[test]
fn the_balanced_ring_is_even_at_200_endpoints() {
    let r = Ring::new(RingKind::Balanced, endpoints(200));
    let counts = slot_counts(&r);
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    let max = *counts.iter().max().unwrap() as f64;
    assert!(max / mean <= 1.05, "max/mean {}", max / mean);
    // The collector's ring at the same size, for contrast, is far less even.
    let c = Ring::new(RingKind::Collector(2), endpoints(200));
    let mut owned = vec![0usize; 200];
    for k in 0..200_000u32 {
        owned[c.route(&k.to_le_bytes()).unwrap()] += 1;
    }
    let cmax = *owned.iter().max().unwrap() as f64 / 1000.0;
    assert!(cmax > 1.2, "collector ring max/mean {cmax}");
}

#[test]
fn adding_one_endpoint_moves_about_one_in_n_plus_one_keys() {
    for n in [4usize, 10, 30, 200] {
        let before = Ring::new(RingKind::Balanced, endpoints(n));
        let after = Ring::new(RingKind::Balanced, endpoints(n + 1));
        let keys = 100_000u32;
        let moved = (0..keys)
            .filter(|k| {
                let key = k.wrapping_mul(2_654_435_761).to_le_bytes();
                before.endpoints()[before.route(&key).unwrap()]
                    != after.endpoints()[after.route(&key).unwrap()]
            })
            .count() as f64
            / f64::from(keys);
        let ideal = 1.0 / (n as f64 + 1.0);
        assert!(
            moved >= ideal * 0.8 && moved <= ideal * 1.6,
            "n={n}: moved {moved:.4}, ideal {ideal:.4}"
        );
    }
}

#[test]
fn unusable_endpoints_hand_their_keys_to_the_next_ring_member() {
    for kind in [RingKind::Collector(2), RingKind::Balanced] {
        let r = Ring::new(kind, endpoints(5));
        let down = 2;
        for k in 0..2_000u32 {
            let key = k.to_le_bytes();
            let owner = r.route(&key).unwrap();
            let routed = r.route_usable(&key, |i| i != down).unwrap();
            assert_ne!(routed, down);
            if owner != down {
                assert_eq!(routed, owner, "keys of healthy endpoints stay put");
            }
        }
        assert_eq!(r.route_usable(b"k", |_| false), None);
    }
}
