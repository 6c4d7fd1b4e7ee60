//! Domain pause (docs/locking.md section 5): `kill_domain` marks the mapper dying and waits for
//! every vCPU to leave its hypercall; a hypercall entry stores its vCPU's `in_hypercall` flag,
//! fences, and checks the state. The two SeqCst fences form a store-buffering pair: either the
//! hypercall sees the domain dying (and returns `-ESRCH` before touching anything) or the
//! killer sees it in flight and waits, and then sees everything it did (Release exit, Acquire
//! wait), including the vCPU's hint log.
//!
//! Each model races one hypercall of the mapper's vCPU 0 against `kill_domain` + the whole
//! teardown of the mapper on another thread. Whatever the order, no mapping is leaked or
//! released twice: the granter's pin is back to 0 and it can end access, every reference is
//! accounted (`check()`), and the mapper (which owns no memory) is destroyed for good.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

const RO_HOST: GntMap = GntMap::HOST_MAP.union(GntMap::READONLY);

/// The killer's role: kill the mapper and run its teardown to completion.
fn kill_and_teardown<D: Design>(hv: &Hypervisor<D>, back: DomId) -> TeardownStats {
    hv.kill_domain(back)
        .expect("mapper is alive until this thread kills it")
        .run()
}

/// What the racing hypercall did: ran before the pause, was refused by the pause, or could not
/// even enter the vCPU (the domain was destroyed already).
fn classify<T: std::fmt::Debug>(r: &Option<Result<T, Errno>>) -> &'static str {
    match r {
        Some(Ok(_)) => "hypercall completed before the pause",
        Some(Err(Errno::Srch)) => "hypercall refused: -ESRCH",
        None => "vCPU gone: domain destroyed",
        Some(Err(e)) => panic!("hypercall failed with {e:?}"),
    }
}

/// Common end of both models: the mapper is gone, the granter's entry is free.
fn assert_released<D: Design>(hv: &Hypervisor<D>, front: DomId, back: DomId, st: TeardownStats) {
    assert!(
        st.destroyed && hv.domain(back).is_none(),
        "the mapper owns no memory: its teardown must destroy it ({st:?})"
    );
    assert_quiescent_and_end(hv, front, 0);
}

/// Xen design. A read-only host mapping exists (maptrack handle); vCPU 0 unmaps it while
/// another thread kills the mapper and tears it down. The unmap either completes before the
/// pause (the teardown then finds no live record) or fails as a hypercall (the teardown
/// releases the record); the record is released exactly once.
#[test]
fn unmap_vs_kill_xen() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Xen>();
        let (front, back) = pair(&hv, 1, 1);
        grant(&hv, front, 0, back, GFN, true);
        let a = map_ok(&hv, back, 0, front, 0, RO_HOST, ADDR[0]);

        let unmapper = {
            let hv = hv.clone();
            thread::spawn(move || try_unmap(&*hv, back, 0, a.handle, ADDR[0], 0))
        };
        let killer = {
            let hv = hv.clone();
            thread::spawn(move || kill_and_teardown(&*hv, back))
        };
        let r = unmapper.join().unwrap();
        let st = killer.join().unwrap();

        let outcome = classify(&r);
        if let Some(Ok(status)) = r {
            assert_eq!(status, GntSt::Okay, "unmap before the pause failed");
            assert_eq!(
                st.mappings_released, 0,
                "teardown released an unmapped record"
            );
        } else {
            assert_eq!(
                st.mappings_released, 1,
                "teardown must release the live record"
            );
        }
        seen.record(outcome);
        assert_released(&hv, front, back, st);
    });
    outcomes.assert_seen(&[
        "hypercall completed before the pause",
        "hypercall refused: -ESRCH",
        "vCPU gone: domain destroyed",
    ]);
}

/// Fast design. vCPU 0 maps a grant (claiming an inline slot and appending a hint to its log)
/// while another thread kills the mapper and tears it down. The map either completes before
/// the pause (the teardown finds its hint and releases the slot: the log is read only after
/// the pause, which loom checks as an `UnsafeCell` access) or fails as a hypercall.
#[test]
fn map_vs_kill_fast() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, back) = pair(&hv, 1, 1);
        grant(&hv, front, 0, back, GFN, true);

        let mapper = {
            let hv = hv.clone();
            thread::spawn(move || try_map(&*hv, back, 0, front, 0, RO_HOST, ADDR[0]))
        };
        let killer = {
            let hv = hv.clone();
            thread::spawn(move || kill_and_teardown(&*hv, back))
        };
        let r = mapper.join().unwrap();
        let st = killer.join().unwrap();

        let outcome = classify(&r);
        if let Some(Ok(m)) = r {
            assert_eq!(m.status, GntSt::Okay, "map before the pause failed: {m:?}");
            assert!(is_fast(m.handle), "first map of a gref is fast: {m:?}");
            assert_eq!(
                st.mappings_released, 1,
                "teardown must release the slot the map claimed"
            );
        } else {
            assert_eq!(st.mappings_released, 0, "nothing was mapped");
        }
        seen.record(outcome);
        assert_released(&hv, front, back, st);
    });
    outcomes.assert_seen(&[
        "hypercall completed before the pause",
        "hypercall refused: -ESRCH",
        "vCPU gone: domain destroyed",
    ]);
}
