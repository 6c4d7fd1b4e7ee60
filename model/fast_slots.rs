//! Fast design: claiming and releasing the two inline maptrack slots of an active entry.
//!
//! A map reserves a free slot under the entry lock (spec-independent, `src/maptrack/fast.rs`)
//! and publishes it after taking its page references; unmap phase 1 frees a live slot under
//! the entry lock. With both slots taken a map falls back to the mapper's maptrack table
//! (a slow handle).

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

const RO_HOST: GntMap = GntMap::HOST_MAP.union(GntMap::READONLY);

/// Two vCPUs of one mapper race to map the same gref while only one fast slot is left:
/// exactly one gets the fast handle, the other a slow handle; both mappings are real and
/// unmap cleanly.
#[test]
fn map_vs_map() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, back) = pair(&hv, 2, 1);
        grant(&hv, front, 0, back, GFN, true);
        let mfn = granted_mfn(&hv, front);
        // Slot 0 is taken by an earlier mapping: one fast slot is left.
        let first = map_ok(&hv, back, 0, front, 0, RO_HOST, ADDR[0]);
        assert!(
            is_fast(first.handle),
            "first map of a gref must be fast: {first:?}"
        );

        let racers: Vec<_> = [(0u16, ADDR[1]), (1, ADDR[2])]
            .into_iter()
            .map(|(v, addr)| {
                let hv = hv.clone();
                thread::spawn(move || {
                    let mut cx = hv.vcpu(back, v).unwrap();
                    map(&mut cx, front, 0, RO_HOST, addr)
                })
            })
            .collect();
        let r: Vec<MapGrantRef> = racers.into_iter().map(|t| t.join().unwrap()).collect();

        for m in &r {
            assert_eq!(m.status, GntSt::Okay, "racing map failed: {m:?}");
        }
        let fast: Vec<_> = r.iter().filter(|m| is_fast(m.handle)).collect();
        assert_eq!(
            fast.len(),
            1,
            "exactly one racing map may get the last fast slot: {r:?}"
        );
        assert_eq!(
            fast[0].handle, first.handle,
            "fast handles of one gref are equal"
        );
        seen.record(if is_fast(r[0].handle) {
            "vCPU 0 got the fast slot"
        } else {
            "vCPU 1 got the fast slot"
        });
        hv.check().assert_ok();
        assert_eq!(
            pin_of(&hv, front, 0),
            3 * pin::HSTR_INC,
            "three read-only host pins"
        );
        for addr in &ADDR[..3] {
            assert_mapped(&hv, back, *addr, mfn);
        }

        // Unmap all three (fast slots are told apart by address).
        unmap_ok(&hv, back, 0, first.handle, ADDR[0], 0);
        for (m, addr) in r.iter().zip(&ADDR[1..3]) {
            unmap_ok(&hv, back, 1, m.handle, *addr, 0);
        }
        assert_quiescent_and_end(&hv, front, 0);
    });
    outcomes.assert_seen(&["vCPU 0 got the fast slot", "vCPU 1 got the fast slot"]);
}

/// A map claiming a slot races with the unmap that releases one: both slots are live (two
/// mappings at A and B); vCPU 0 unmaps A while vCPU 1 maps C. The map gets the released slot
/// (fast handle) if the unmap's phase 1 ran first, a slow handle otherwise; never a slot that
/// is still live.
#[test]
fn map_vs_unmap() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, back) = pair(&hv, 2, 1);
        grant(&hv, front, 0, back, GFN, true);
        let mfn = granted_mfn(&hv, front);
        let a = map_ok(&hv, back, 0, front, 0, RO_HOST, ADDR[0]);
        let b = map_ok(&hv, back, 0, front, 0, RO_HOST, ADDR[1]);
        assert!(
            is_fast(a.handle) && a.handle == b.handle,
            "two fast slots: {a:?} {b:?}"
        );

        let unmapper = spawn_unmap(&hv, back, 0, a.handle, ADDR[0], 0);
        let mapper = spawn_map(&hv, back, 1, front, 0, RO_HOST, ADDR[2]);
        let st = unmapper.join().unwrap();
        let c = mapper.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap of a live fast mapping failed");
        assert_eq!(c.status, GntSt::Okay, "map failed: {c:?}");
        if is_fast(c.handle) {
            assert_eq!(c.handle, a.handle, "fast handles of one gref are equal");
            seen.record("released slot reused");
        } else {
            seen.record("slow handle");
        }
        hv.check().assert_ok();
        assert_eq!(pin_of(&hv, front, 0), 2 * pin::HSTR_INC, "B and C remain");
        assert!(
            live_pte(&hv, back, ADDR[0]).is_none(),
            "A still mapped after its unmap"
        );
        assert_mapped(&hv, back, ADDR[1], mfn);
        assert_mapped(&hv, back, ADDR[2], mfn);

        unmap_ok(&hv, back, 0, b.handle, ADDR[1], 0);
        unmap_ok(&hv, back, 0, c.handle, ADDR[2], 0);
        assert_quiescent_and_end(&hv, front, 0);
    });
    outcomes.assert_seen(&["released slot reused", "slow handle"]);
}

/// A map races with the unmap of the entry's only mapping: the unmap's phase 2 may drop the
/// pin to 0 and clear `GTF_reading` just as the map pins the entry again (and sets the bit),
/// and the map may take either slot (the released one or the free one). Always a fast
/// handle, and the status bits always match the final pin.
#[test]
fn map_vs_unmap_last() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, back) = pair(&hv, 2, 1);
        grant(&hv, front, 0, back, GFN, true);
        let mfn = granted_mfn(&hv, front);
        let a = map_ok(&hv, back, 0, front, 0, RO_HOST, ADDR[0]);
        assert!(is_fast(a.handle), "first map of a gref must be fast: {a:?}");

        let unmapper = spawn_unmap(&hv, back, 0, a.handle, ADDR[0], 0);
        let mapper = spawn_map(&hv, back, 1, front, 0, RO_HOST, ADDR[1]);
        let st = unmapper.join().unwrap();
        let c = mapper.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap of a live fast mapping failed");
        assert_eq!(c.status, GntSt::Okay, "map failed: {c:?}");
        assert_eq!(
            c.handle, a.handle,
            "a slot was always free: fast handle expected"
        );
        // check(): invariant 4, GTF_reading set iff the entry is pinned.
        hv.check().assert_ok();
        assert_eq!(pin_of(&hv, front, 0), pin::HSTR_INC, "only C remains");
        assert!(
            live_pte(&hv, back, ADDR[0]).is_none(),
            "A still mapped after its unmap"
        );
        assert_mapped(&hv, back, ADDR[1], mfn);
        let slots = hv.snapshot().domains[&front].entries[&0].slots.clone();
        seen.record(match slots[..] {
            [SlotInfo::Live { host_addr, .. }, SlotInfo::Free] if host_addr == ADDR[1] => {
                "released slot reused"
            }
            [SlotInfo::Free, SlotInfo::Live { host_addr, .. }] if host_addr == ADDR[1] => {
                "other slot taken"
            }
            _ => panic!("one live slot expected, for C: {slots:?}"),
        });

        unmap_ok(&hv, back, 0, c.handle, ADDR[1], 0);
        assert_quiescent_and_end(&hv, front, 0);
    });
    outcomes.assert_seen(&["released slot reused", "other slot taken"]);
}
