//! Death of a granter (docs/design.md section 7, spec 11): `kill_domain` + teardown of the
//! granter while a mapper maps or unmaps one of its grants. A granter whose frames are still
//! referenced by a foreign mapping stays a zombie (`Dead`, still registered) after its
//! teardown; the unmap whose phase 2 frees its last frame destroys it for good
//! (`Hypervisor::frames_gone`). The teardown's last step stores `Dead`, fences and reads the
//! owned-frame count; `frames_gone` fences after the count reaches 0 and reads the state: one of
//! them (possibly both; finalisation is idempotent) sees the other and finalises.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

const RO_HOST: GntMap = GntMap::HOST_MAP.union(GntMap::READONLY);

fn kill_and_teardown<D: Design>(hv: &Hypervisor<D>, front: DomId) -> TeardownStats {
    hv.kill_domain(front)
        .expect("granter is alive until this thread kills it")
        .run()
}

/// Nothing of the granter survives: not registered, no RAM frame owned, every reference
/// accounted.
fn assert_granter_gone<D: Design>(hv: &Hypervisor<D>, front: DomId) {
    assert!(
        hv.domain(front).is_none(),
        "dead granter still registered: never finalised"
    );
    assert_eq!(
        hv.machine().owned_frames(front),
        0,
        "frames of the dead granter leaked"
    );
    hv.check().assert_ok();
}

/// The mapper maps a grant while the granter is killed and torn down. Either the map fails
/// (`general_error`: the granter was seen dying; `bad_page`: its memory was already released;
/// `bad_domain`: it was already destroyed) and the teardown destroys the granter, or the map
/// succeeds, the teardown leaves a zombie, and the mapper's unmap destroys it.
#[test]
fn map_vs_kill_granter() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, back) = pair(&hv, 1, 1);
        grant(&hv, front, 0, back, GFN, true);

        let mapper = spawn_map(&hv, back, 0, front, 0, RO_HOST, ADDR[0]);
        let killer = {
            let hv = hv.clone();
            thread::spawn(move || kill_and_teardown(&*hv, front))
        };
        let m = mapper.join().unwrap();
        let st = killer.join().unwrap();

        match m.status {
            GntSt::Okay => {
                assert!(
                    !st.destroyed,
                    "teardown destroyed a granter with a live mapping"
                );
                let d = hv
                    .domain(front)
                    .expect("mapped granter must survive as a zombie");
                assert_eq!(d.state(), DomainState::Dead, "zombie after its teardown");
                drop(d);
                hv.check().assert_ok();
                unmap_ok(&hv, back, 0, m.handle, ADDR[0], 0);
                seen.record("map won: zombie until the unmap");
            }
            GntSt::GeneralError | GntSt::BadPage | GntSt::BadDomain => {
                assert!(
                    st.destroyed,
                    "unmapped granter must be destroyed by its teardown"
                );
                assert!(
                    live_pte(&hv, back, ADDR[0]).is_none(),
                    "failed map left a PTE"
                );
                seen.record(match m.status {
                    GntSt::GeneralError => "map refused: granter dying",
                    GntSt::BadPage => "map refused: granter's memory gone",
                    _ => "map refused: granter gone",
                });
            }
            other => panic!("map of a dying granter's grant: {other:?}"),
        }
        assert_granter_gone(&hv, front);
    });
    outcomes.assert_seen(&[
        "map won: zombie until the unmap",
        "map refused: granter dying",
        "map refused: granter's memory gone",
        "map refused: granter gone",
    ]);
}

/// A mapping of the granter's page exists; the mapper unmaps it while the granter is killed and
/// torn down. Whichever of the unmap's last `put_page` and the teardown's final step comes
/// last, the granter is destroyed exactly once: by the teardown (it saw no owned frame left) or
/// by the unmap (it freed the zombie's last frame and saw `Dead`).
#[test]
fn unmap_vs_granter_finish() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Fast>();
        let (front, back) = pair(&hv, 1, 1);
        grant(&hv, front, 0, back, GFN, true);
        let a = map_ok(&hv, back, 0, front, 0, RO_HOST, ADDR[0]);

        let unmapper = spawn_unmap(&hv, back, 0, a.handle, ADDR[0], 0);
        let killer = {
            let hv = hv.clone();
            thread::spawn(move || kill_and_teardown(&*hv, front))
        };
        let st_unmap = unmapper.join().unwrap();
        let st = killer.join().unwrap();

        assert_eq!(
            st_unmap,
            GntSt::Okay,
            "unmap of a dying granter's grant failed"
        );
        seen.record(if st.destroyed {
            "teardown destroyed the granter"
        } else {
            "the unmap destroyed the zombie"
        });
        assert_granter_gone(&hv, front);
        assert!(
            live_pte(&hv, back, ADDR[0]).is_none(),
            "mapping survives its unmap"
        );
    });
    outcomes.assert_seen(&[
        "teardown destroyed the granter",
        "the unmap destroyed the zombie",
    ]);
}
