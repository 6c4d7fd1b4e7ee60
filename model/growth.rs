//! Table growth against the validity check (spec 8.2, 8.3, 9.1).
//!
//! The granter grows its table from one to two frames with `setup_table` and then grants a
//! ref of the new frame; meanwhile the mapper maps that ref. The Fast design checks the ref
//! with one Acquire load of the published entry count (no lock), so the new frame's entries
//! must be installed and initialised before the count covers them (Release in
//! `GrantTable::grow`); the Xen design does the check under the per-CPU read lock while the
//! growth holds the write lock.
//!
//! Legal outcomes for the map:
//! * `GNTST_bad_gntref`: it saw the old size;
//! * `GNTST_general_error`: it saw the new size before the granter wrote the grant (a fresh
//!   entry is not `GTF_permit_access`; the granter cannot write an entry before the frame
//!   exists, so this window is inherent);
//! * `GNTST_okay` with a correct mapping of the granted frame.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

/// First ref of the second grant frame (4 entries per frame in the tiny configuration).
const NEW_REF: u32 = 4;

fn grow_vs_map<D: Design>() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<D>();
        let front = hv
            .create_domain(small("front", 2).max_grant_frames(2))
            .unwrap();
        let back = hv
            .create_domain(small("back", 0).max_maptrack_frames(1))
            .unwrap();
        assert_eq!(
            hv.config().entries_per_frame,
            NEW_REF,
            "the model assumes the tiny configuration"
        );
        let mfn = granted_mfn(&hv, front);

        let granter = {
            let hv = hv.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(front, 0).unwrap();
                let mut op = [SetupTable {
                    dom: DomId::SELF,
                    nr_frames: 2,
                    ..Default::default()
                }];
                cx.setup_table(&mut op).unwrap();
                assert_eq!(op[0].status, GntSt::Okay, "setup_table failed");
                assert_eq!(op[0].frame_list.len(), 2, "setup_table frame list");
                hv.guest(front)
                    .unwrap()
                    .grant_access(GrantRef(NEW_REF), back, GFN, true)
                    .expect("ref of the new frame is in the table after growth");
            })
        };
        let mapper = {
            let hv = hv.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 0).unwrap();
                map(
                    &mut cx,
                    front,
                    NEW_REF,
                    GntMap::HOST_MAP | GntMap::READONLY,
                    ADDR[0],
                )
            })
        };
        granter.join().unwrap();
        let m = mapper.join().unwrap();

        assert_eq!(hv.domain(front).unwrap().nr_grant_frames(), 2, "table grew");
        hv.check().assert_ok();
        seen.record(match m.status {
            GntSt::BadGntref => "bad_gntref",
            GntSt::GeneralError => "general_error",
            _ => "okay",
        });
        match m.status {
            GntSt::BadGntref | GntSt::GeneralError => {
                assert_eq!(pin_of(&hv, front, NEW_REF), 0, "failed map left a pin");
                assert!(
                    live_pte(&hv, back, ADDR[0]).is_none(),
                    "failed map left a PTE"
                );
            }
            GntSt::Okay => {
                assert_mapped(&hv, back, ADDR[0], mfn);
                assert_eq!(
                    pin_of(&hv, front, NEW_REF),
                    pin::HSTR_INC,
                    "one read-only pin"
                );
                unmap_ok(&hv, back, 0, m.handle, ADDR[0], 0);
            }
            other => panic!("map of a ref in a growing table returned {other:?}"),
        }
        assert_quiescent_and_end(&hv, front, NEW_REF);
    });
    outcomes.assert_seen(&["bad_gntref", "general_error", "okay"]);
}

mod fast {
    #[test]
    fn grow_vs_map() {
        super::grow_vs_map::<gnttab::Fast>();
    }
}

mod xen {
    #[test]
    fn grow_vs_map() {
        super::grow_vs_map::<gnttab::Xen>();
    }
}
