//! Map quota (docs/locking.md section 6, docs/design.md section 8, `src/quota.rs`): a mapper
//! with `MapLimit::Limit(n)` holds one unit per live map. Units sit in per-vCPU cache words
//! (owner compare-exchange) and a pool (moves between caches and the pool only under the pool
//! lock). A vCPU whose cache and the pool are empty audits: under the pool lock it freezes every
//! other vCPU's word in turn and takes what it holds, so it refuses (`GNTST_no_space`) only
//! when every unit is held by a live map.
//!
//! With two vCPUs and a limit below 16 the refill chunk is 1 unit, and a cache gives a unit
//! back to the pool when it would exceed 2. Maps are read-only device maps of distinct refs
//! (no host mapping, one fast slot each), so each map or unmap moves exactly one unit.
//! `check()` verifies that idle units plus live maps equal the limit.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

const DEV_RO: GntMap = GntMap::DEVICE_MAP.union(GntMap::READONLY);

/// A granter granting refs 0-3 (gfns 1, 0, 1, 0) and a mapper with two vCPUs and `limit`.
fn setup(limit: u32) -> (crate::harness::Arc<Hypervisor<Fast>>, DomId, DomId) {
    let hv = hypervisor::<Fast>();
    let front = hv.create_domain(small("front", 2)).expect("create front");
    let back = hv
        .create_domain(
            small("back", 0)
                .vcpus(2)
                .max_maptrack_frames(1)
                .map_limit(MapLimit::Limit(limit)),
        )
        .expect("create back");
    for gref in 0..4 {
        grant(&hv, front, gref, back, Gfn(u64::from(1 - gref % 2)), true);
    }
    (hv, front, back)
}

/// Device map of `gref` on vCPU `v` (set-up: must succeed).
fn dev_map(hv: &Hypervisor<Fast>, back: DomId, v: u16, front: DomId, gref: u32) -> MapGrantRef {
    map_ok(hv, back, v, front, gref, DEV_RO, 0)
}

fn dev_unmap(hv: &Hypervisor<Fast>, back: DomId, v: u16, m: &MapGrantRef) {
    unmap_ok(hv, back, v, m.handle, 0, m.dev_bus_addr);
}

fn idle(hv: &Hypervisor<Fast>, back: DomId) -> u32 {
    hv.domain(back)
        .expect("mapper exists")
        .quota()
        .expect("mapper has a quota")
        .idle()
}

/// Spawns vCPU `v`'s map of `gref`.
fn spawn_map(
    hv: &crate::harness::Arc<Hypervisor<Fast>>,
    back: DomId,
    v: u16,
    front: DomId,
    gref: u32,
    arrival: &std::sync::Arc<Arrival>,
) -> crate::harness::thread::JoinHandle<(MapGrantRef, usize)> {
    let hv = hv.clone();
    let arrival = arrival.clone();
    thread::spawn(move || {
        let mut cx = hv.vcpu(back, v).unwrap();
        let m = map(&mut cx, front, gref, DEV_RO, 0);
        (m, arrival.arrive())
    })
}

/// Limit 2, one map live (vCPU 0's), the last unit idle in vCPU 1's cache. vCPU 0 (empty
/// cache, empty pool: audits vCPU 1's cache) and vCPU 1 (takes from its own cache, or waits
/// while it is frozen) race for it: exactly one map succeeds; either vCPU can win.
#[test]
fn last_unit() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, front, back) = setup(2);
        let a = dev_map(&hv, back, 0, front, 0);
        let b = dev_map(&hv, back, 1, front, 1);
        dev_unmap(&hv, back, 1, &b);
        assert_eq!(idle(&hv, back), 1, "one unit left");

        let arrival = std::sync::Arc::new(Arrival::default());
        let t0 = spawn_map(&hv, back, 0, front, 2, &arrival);
        let t1 = spawn_map(&hv, back, 1, front, 3, &arrival);
        let (m0, _) = t0.join().unwrap();
        let (m1, _) = t1.join().unwrap();

        let won: Vec<_> = [&m0, &m1]
            .iter()
            .map(|m| match m.status {
                GntSt::Okay => true,
                GntSt::NoSpace => false,
                s => panic!("map: unexpected status {s:?}"),
            })
            .collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "one unit left: exactly one of two maps may succeed: {m0:?} {m1:?}"
        );
        assert_eq!(idle(&hv, back), 0, "the winner holds the last unit");
        hv.check().assert_ok();
        seen.record(if won[0] {
            "vCPU 0 won (audit)"
        } else {
            "vCPU 1 won (own cache)"
        });

        dev_unmap(&hv, back, 0, &a);
        let (v, m) = if won[0] { (0, &m0) } else { (1, &m1) };
        dev_unmap(&hv, back, v, m);
        assert_eq!(idle(&hv, back), 2, "every unit idle after every unmap");
        hv.check().assert_ok();
    });
    outcomes.assert_seen(&["vCPU 0 won (audit)", "vCPU 1 won (own cache)"]);
}

/// Limit 2, nothing live, both units idle in vCPU 1's cache. vCPU 0 (audits) and vCPU 1
/// (own cache, possibly frozen and emptied under it, then audits vCPU 0's) both map: both must
/// succeed, whichever finishes first.
#[test]
fn two_units() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, front, back) = setup(2);
        let b = dev_map(&hv, back, 1, front, 0);
        let c = dev_map(&hv, back, 1, front, 1);
        dev_unmap(&hv, back, 1, &b);
        dev_unmap(&hv, back, 1, &c);
        assert_eq!(idle(&hv, back), 2, "two units left");

        let arrival = std::sync::Arc::new(Arrival::default());
        let t0 = spawn_map(&hv, back, 0, front, 2, &arrival);
        let t1 = spawn_map(&hv, back, 1, front, 3, &arrival);
        let (m0, r0) = t0.join().unwrap();
        let (m1, _) = t1.join().unwrap();

        assert_eq!(
            (m0.status, m1.status),
            (GntSt::Okay, GntSt::Okay),
            "two units idle: both maps must succeed"
        );
        assert_eq!(idle(&hv, back), 0, "both units held");
        hv.check().assert_ok();
        seen.record(if r0 == 0 {
            "vCPU 0 finished first"
        } else {
            "vCPU 1 finished first"
        });

        dev_unmap(&hv, back, 0, &m0);
        dev_unmap(&hv, back, 1, &m1);
        assert_eq!(idle(&hv, back), 2, "every unit idle after every unmap");
        hv.check().assert_ok();
    });
    outcomes.assert_seen(&["vCPU 0 finished first", "vCPU 1 finished first"]);
}

/// Limit 1, held by vCPU 1's map A. vCPU 1 unmaps A (its unit goes to its own cache) while
/// vCPU 0 maps B (empty cache, empty pool: audits vCPU 1's cache). The map succeeds if the
/// audit finds the returned unit, and is refused only while A still holds it; either way no
/// unit is lost or duplicated.
#[test]
fn put_vs_audit() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, front, back) = setup(1);
        let a = dev_map(&hv, back, 1, front, 0);
        assert_eq!(idle(&hv, back), 0, "the only unit is held");

        let unmapper = spawn_unmap(&hv, back, 1, a.handle, 0, a.dev_bus_addr);
        let arrival = std::sync::Arc::new(Arrival::default());
        let mapper = spawn_map(&hv, back, 0, front, 1, &arrival);
        let st = unmapper.join().unwrap();
        let (m, _) = mapper.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap failed");
        let outcome = match m.status {
            GntSt::Okay => {
                assert_eq!(idle(&hv, back), 0, "the map holds the only unit");
                "map got the returned unit"
            }
            GntSt::NoSpace => {
                assert_eq!(
                    idle(&hv, back),
                    1,
                    "refused map, no live map: the unit must be idle (lost unit)"
                );
                "refused: the unit was still held"
            }
            s => panic!("map: unexpected status {s:?}"),
        };
        hv.check().assert_ok();
        seen.record(outcome);
        if m.status == GntSt::Okay {
            dev_unmap(&hv, back, 0, &m);
        }
        assert_eq!(idle(&hv, back), 1, "every unit idle after every unmap");
        hv.check().assert_ok();
    });
    outcomes.assert_seen(&[
        "map got the returned unit",
        "refused: the unit was still held",
    ]);
}

/// Limit 3. vCPU 1 holds map A and two idle units in its cache; it unmaps A, which would put a
/// third unit in its cache, so it gives one back to the pool (under the pool lock). Meanwhile
/// vCPU 0 maps B: it refills from the pool or audits vCPU 1's cache. The map always succeeds,
/// and the units add up: live maps + idle units = 3.
#[test]
fn give_back_vs_audit() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, front, back) = setup(3);
        let a = dev_map(&hv, back, 1, front, 0);
        let b = dev_map(&hv, back, 1, front, 1);
        let c = dev_map(&hv, back, 1, front, 2);
        dev_unmap(&hv, back, 1, &b);
        dev_unmap(&hv, back, 1, &c);
        assert_eq!(idle(&hv, back), 2, "two idle units in vCPU 1's cache");

        let arrival = std::sync::Arc::new(Arrival::default());
        let unmapper = {
            let hv = hv.clone();
            let arrival = arrival.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 1).unwrap();
                let st = unmap(&mut cx, a.handle, 0, a.dev_bus_addr);
                (st, arrival.arrive())
            })
        };
        let mapper = spawn_map(&hv, back, 0, front, 3, &arrival);
        let (st, r_unmap) = unmapper.join().unwrap();
        let (m, _) = mapper.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap failed");
        assert_eq!(
            m.status,
            GntSt::Okay,
            "units were idle: the map must succeed: {m:?}"
        );
        assert_eq!(idle(&hv, back), 2, "one live map, two idle units");
        hv.check().assert_ok();
        seen.record(if r_unmap == 0 {
            "unmap finished first"
        } else {
            "map finished first"
        });
        dev_unmap(&hv, back, 0, &m);
        assert_eq!(idle(&hv, back), 3, "every unit idle after every unmap");
        hv.check().assert_ok();
    });
    outcomes.assert_seen(&["unmap finished first", "map finished first"]);
}
