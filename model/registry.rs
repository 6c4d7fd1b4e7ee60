//! Domain lookups against the domain's final destruction (docs/design.md section 9,
//! `src/registry.rs`). A lookup by id is one Acquire load of the domain's slot; a lookup by
//! name one Acquire load of the immutable name index. Destruction (`Hypervisor::finalize`)
//! empties the slot first (compare-exchange, AcqRel), then publishes a name index without the
//! name (swap, AcqRel), and retires both through the epoch.
//!
//! What this model shows: a racing lookup returns the domain, fully built (its id and name
//! read back correctly, its state readable), or nothing; and the two removals are ordered, so
//! a lookup that no longer finds the name finds no domain under the id either.
//!
//! What it cannot show: that the memory of a removed domain outlives every lookup that may
//! still hold it. Under loom `src/reclaim.rs` swaps crossbeam-epoch for a backend that never
//! frees during an execution (crossbeam-epoch's own synchronisation is invisible to loom), so a
//! use-after-free cannot happen here by construction. That property rests on the epoch
//! backend, which the real-thread tests and stress runs exercise (and miri/TSan could check);
//! the model checks only the publication and removal orderings around it.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

/// A domain with no mappings is killed and destroyed (its teardown finalises it) while another
/// thread looks it up by name and then by id.
#[test]
fn lookup_vs_destroy() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, _back) = pair(&hv, 1, 1);

        let looker = {
            let hv = hv.clone();
            thread::spawn(move || {
                let by_name = hv.domain_by_name("front");
                let by_id = hv.domain(front).map(|d| {
                    // A found domain is the fully built one (these reads would trip over a
                    // half-published or mismatched domain).
                    assert_eq!(d.id(), front, "lookup by id returned another domain");
                    assert_eq!(d.name(), "front", "lookup by id returned another domain");
                    assert!(
                        d.nr_grant_frames() >= 1,
                        "half-built domain: no grant frame"
                    );
                    d.state()
                });
                (by_name, by_id)
            })
        };
        let killer = {
            let hv = hv.clone();
            thread::spawn(move || {
                hv.kill_domain(front)
                    .expect("domain alive until this thread kills it")
                    .run()
            })
        };
        let (by_name, by_id) = looker.join().unwrap();
        let st = killer.join().unwrap();

        assert!(
            st.destroyed,
            "a domain without mappings is destroyed by its teardown"
        );
        assert!(
            hv.domain(front).is_none(),
            "destroyed domain still registered"
        );
        assert_eq!(
            hv.domain_by_name("front"),
            None,
            "destroyed domain's name still indexed"
        );
        if let Some(id) = by_name {
            assert_eq!(id, front, "lookup by name returned another id");
        }
        seen.record(match (by_name, by_id) {
            (Some(_), Some(_)) => "found by name and by id",
            (Some(_), None) => "found by name, gone by id",
            (None, None) => "gone by name and by id",
            (None, Some(s)) => panic!(
                "name removed but the domain still found by id afterwards (state {s:?}): \
                 the removals are not ordered"
            ),
        });
        hv.check().assert_ok();
    });
    outcomes.assert_seen(&[
        "found by name and by id",
        "found by name, gone by id",
        "gone by name and by id",
    ]);
}
