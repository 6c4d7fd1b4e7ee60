//! The granter ends access while the grantee maps (spec 2.3, 3.1).
//!
//! The guest's end-access loop fails while `GTF_reading`/`GTF_writing` is set and otherwise
//! compare-exchanges the flags to 0; the hypervisor's bounded compare-exchange in
//! `set_status` first checks that the entry is still `GTF_permit_access` for this grantee.
//! Both act on the same 32-bit word, so exactly one side wins.
//!
//! The map is read-only, so only `GTF_reading` stands between the two sides (a writable map
//! sets `GTF_writing` too, which would hide an end-access that forgot `GTF_reading`).

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

fn end_access_vs_map<D: Design>() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<D>();
        let (front, back) = pair(&hv, 1, 1);
        grant(&hv, front, 0, back, GFN, false);
        let mfn = granted_mfn(&hv, front);

        let granter = {
            let hv = hv.clone();
            thread::spawn(move || hv.guest(front).unwrap().end_access(GrantRef(0)).unwrap())
        };
        let mapper = {
            let hv = hv.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 0).unwrap();
                map(
                    &mut cx,
                    front,
                    0,
                    GntMap::HOST_MAP | GntMap::READONLY,
                    ADDR[0],
                )
            })
        };
        let ended = granter.join().unwrap();
        let m = mapper.join().unwrap();

        hv.check().assert_ok();
        seen.record(if ended { "end_access won" } else { "map won" });
        if ended {
            assert_eq!(
                m.status,
                GntSt::GeneralError,
                "end_access succeeded, so the map must fail: {m:?}"
            );
            assert_eq!(pin_of(&hv, front, 0), 0, "ended grant is pinned");
            assert!(
                live_pte(&hv, back, ADDR[0]).is_none(),
                "ended grant is mapped"
            );
            let e = hv
                .guest(front)
                .unwrap()
                .entry_snapshot(GrantRef(0))
                .unwrap();
            assert_eq!(e.flags, 0, "ended entry still has flags: {e:?}");
        } else {
            assert_eq!(
                m.status,
                GntSt::Okay,
                "end_access failed, so the map must have won: {m:?}"
            );
            assert_mapped(&hv, back, ADDR[0], mfn);
            let e = hv
                .guest(front)
                .unwrap()
                .entry_snapshot(GrantRef(0))
                .unwrap();
            assert_eq!(
                e.flags & (gtf::READING | gtf::WRITING),
                gtf::READING,
                "read-only mapped grant must show reading only: {e:?}"
            );
            unmap_ok(&hv, back, 0, m.handle, ADDR[0], 0);
            assert_quiescent_and_end(&hv, front, 0);
        }
    });
    outcomes.assert_seen(&["end_access won", "map won"]);
}

mod fast {
    #[test]
    fn end_access_vs_map() {
        super::end_access_vs_map::<gnttab::Fast>();
    }
}

mod xen {
    #[test]
    fn end_access_vs_map() {
        super::end_access_vs_map::<gnttab::Xen>();
    }
}
