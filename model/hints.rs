//! Fast design: the per-vCPU hint logs that make the mapper's teardown proportional to its own
//! mappings (docs/design.md section 7, step 1; `HintLog` in `src/domain.rs`). A map that claims
//! an inline slot appends `(granter, gref)` to its own vCPU's log; every append also examines
//! two older hints of that log and drops those whose entry no longer seems to hold a slot of
//! the domain (`teardown::looks_held`, read without the entry lock). After the pause, teardown
//! pops every hint and releases the domain's live slots in that entry.
//!
//! Hint compaction against teardown is single-threaded by construction (teardown starts after
//! the pause, `model/pause.rs` covers that edge), so the race modelled here is the one between
//! two vCPUs of the same mapper: vCPU 1's scan drops a stale hint for an entry while vCPU 0 is
//! claiming a slot in that very entry. The scan may read the slot before or after the claim
//! (both reached); dropping is safe because the claimer appends its own hint. The outcome is
//! checked end to end: the mapper is killed and torn down, and every slot must be released.
//!
//! An unmap that leaves no slot of its entry held by the domain also pops its own vCPU's newest
//! hint if it names that entry (under the entry lock, so no claim is in flight there);
//! `pop_vs_claim` races that pop against another vCPU claiming a slot in the same entry.

use crate::common::*;
use crate::harness::{model, Outcomes};
use gnttab::prelude::*;

const RO_HOST: GntMap = GntMap::HOST_MAP.union(GntMap::READONLY);

/// vCPU 1 mapped ref 0 and vCPU 0 unmapped it, leaving a stale hint `(front, 0)` in vCPU 1's
/// log (an unmap pops only its own vCPU's log). Then vCPU 0
/// maps ref 0 (claiming a slot there) while vCPU 1 maps ref 1, whose append scans, and may
/// drop, the stale hint. Teardown of the mapper afterwards must find and release both slots.
#[test]
fn claim_vs_scan() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, back) = pair(&hv, 2, 1);
        grant(&hv, front, 0, back, GFN, true);
        grant(&hv, front, 1, back, Gfn(0), true);
        let old = map_ok(&hv, back, 1, front, 0, RO_HOST, ADDR[0]);
        unmap_ok(&hv, back, 0, old.handle, ADDR[0], 0);

        let claimer = spawn_map(&hv, back, 0, front, 0, RO_HOST, ADDR[1]);
        let scanner = spawn_map(&hv, back, 1, front, 1, RO_HOST, ADDR[2]);
        let c = claimer.join().unwrap();
        let s = scanner.join().unwrap();

        for m in [&c, &s] {
            assert_eq!(m.status, GntSt::Okay, "map failed: {m:?}");
            assert!(is_fast(m.handle), "first map of a gref is fast: {m:?}");
        }
        hv.check().assert_ok();
        let maptrack = hv.snapshot().domains[&back].maptrack_limit;

        let st = hv.kill_domain(back).expect("kill the mapper").run();
        assert_eq!(
            st.mappings_released, 2,
            "teardown must release both slots (a hint was lost?): {st:?}"
        );
        // The mapper has no memory: teardown visits its hints and its maptrack entries.
        seen.record(match st.visited - u64::from(maptrack) {
            2 => "stale hint dropped",
            3 => "stale hint kept",
            n => panic!("{n} hints visited: expected 2 or 3 ({st:?})"),
        });
        assert!(
            st.destroyed && hv.domain(back).is_none(),
            "mapper not destroyed"
        );
        assert_quiescent_and_end(&hv, front, 0);
        assert_quiescent_and_end(&hv, front, 1);
    });
    outcomes.assert_seen(&["stale hint dropped", "stale hint kept"]);
}

/// vCPU 0 holds a slot of ref 0 (its hint is the newest of its log) and unmaps it while vCPU 1
/// maps ref 0. If vCPU 1's claim came first, the entry still holds a slot of the domain and
/// vCPU 0 keeps its (now stale) hint; otherwise it pops it. Either way vCPU 1's own hint covers
/// its slot: teardown releases exactly that one mapping.
#[test]
fn pop_vs_claim() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, back) = pair(&hv, 2, 1);
        grant(&hv, front, 0, back, GFN, true);
        let a = map_ok(&hv, back, 0, front, 0, RO_HOST, ADDR[0]);

        let unmapper = spawn_unmap(&hv, back, 0, a.handle, ADDR[0], 0);
        let claimer = spawn_map(&hv, back, 1, front, 0, RO_HOST, ADDR[1]);
        let u = unmapper.join().unwrap();
        let c = claimer.join().unwrap();
        assert_eq!(u, GntSt::Okay, "unmap failed");
        assert_eq!(c.status, GntSt::Okay, "map failed: {c:?}");
        assert!(is_fast(c.handle), "a free slot was left: {c:?}");
        hv.check().assert_ok();
        let maptrack = hv.snapshot().domains[&back].maptrack_limit;

        let st = hv.kill_domain(back).expect("kill the mapper").run();
        assert_eq!(
            st.mappings_released, 1,
            "teardown must release vCPU 1's slot (its hint was lost?): {st:?}"
        );
        seen.record(match st.visited - u64::from(maptrack) {
            1 => "hint popped",
            2 => "hint kept",
            n => panic!("{n} hints visited: expected 1 or 2 ({st:?})"),
        });
        assert!(
            st.destroyed && hv.domain(back).is_none(),
            "mapper not destroyed"
        );
        assert_quiescent_and_end(&hv, front, 0);
    });
    outcomes.assert_seen(&["hint popped", "hint kept"]);
}
