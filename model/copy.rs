//! Grant copy (spec 8.1, `src/ops/copy.rs`) against unmap, map and the granter's end-access on
//! one entry. A copy acquires its source grant like a transient read-only host mapping: under
//! the entry lock it sets `GTF_reading` on first use and raises the pin, takes a page
//! reference, copies, and releases pin and bit under the entry lock again (XSA-236 order). Map
//! raises the pin and sets `GTF_reading` on first use under the same lock; unmap phase 2 drops
//! a mapping's pin and bit under it; the granter's end-access is a compare-exchange on the
//! shared entry that fails while `GTF_reading` is set.
//!
//! * `copy_vs_unmap_vs_end_access`: three threads. vCPU 0 of the mapper copies 8 bytes from
//!   the grant into its own page, vCPU 1 unmaps the mapper's read-only mapping of the grant,
//!   and the granter ends access. Pins and status bits end consistent (`check()`); end-access
//!   succeeds only when nothing holds the grant (checked right after it succeeds: the pin is
//!   0, and no use can start afterwards), and a copy fails only because the grant was ended.
//! * `copy_vs_map`: two threads on a grant the mapper does not otherwise hold, so the copy's
//!   pin is the only one and its release clears `GTF_reading`. vCPU 0 of the mapper copies
//!   from the grant, vCPU 1 maps it read-only. Both succeed; afterwards the map's host read
//!   pin is the only pin and `GTF_reading` is still set (`check()`): a copy release that
//!   cleared the bit after dropping the entry lock would erase the bit the map had just set.
//!   Unmapping then leaves the entry unpinned with neither `GTF_reading` nor `GTF_writing`,
//!   and the granter can end access.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

const RO_HOST: GntMap = GntMap::HOST_MAP.union(GntMap::READONLY);

fn copy_vs_unmap_vs_end_access<D: Design>() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<D>();
        let front = hv.create_domain(small("front", 2)).expect("create front");
        let back = hv
            .create_domain(small("back", 1).vcpus(2).max_maptrack_frames(1))
            .expect("create back");
        grant(&hv, front, 0, back, GFN, true);
        let a = map_ok(&hv, back, 1, front, 0, RO_HOST, ADDR[0]);

        let copier = {
            let hv = hv.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 0).unwrap();
                copy_from_grant(&mut cx, front)
            })
        };
        let unmapper = spawn_unmap(&hv, back, 1, a.handle, ADDR[0], 0);
        let ender = {
            let hv = hv.clone();
            thread::spawn(move || {
                let ended = hv.guest(front).unwrap().end_access(GrantRef(0)).unwrap();
                // Once ended, no pin may exist or appear: a pin now means the grant was
                // ended while held.
                let pin = ended.then(|| pin_of(&hv, front, 0));
                (ended, pin)
            })
        };
        let copied = copier.join().unwrap();
        let st = unmapper.join().unwrap();
        let (ended, pin_after_end) = ender.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap of a live mapping failed");
        assert!(
            pin_after_end.is_none_or(|p| p == 0),
            "end-access succeeded while the grant was pinned (pin {pin_after_end:?})"
        );
        hv.check().assert_ok();
        assert_eq!(pin_of(&hv, front, 0), 0, "entry still pinned at the end");
        let outcome = match (copied, ended) {
            (GntSt::Okay, true) => "copy done, then ended",
            (GntSt::Okay, false) => "end refused: grant in use",
            (GntSt::GeneralError, true) => "ended first, copy refused",
            (c, e) => panic!("copy {c:?} with end-access {e}: a copy may fail only once ended"),
        };
        seen.record(outcome);
        // Nothing holds the grant any more: ending it (again) succeeds.
        assert!(
            hv.guest(front).unwrap().end_access(GrantRef(0)).unwrap(),
            "granter cannot end access after every use"
        );
    });
    outcomes.assert_seen(&[
        "copy done, then ended",
        "end refused: grant in use",
        "ended first, copy refused",
    ]);
}

fn copy_vs_map<D: Design>() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<D>();
        let front = hv.create_domain(small("front", 2)).expect("create front");
        let back = hv
            .create_domain(small("back", 1).vcpus(2).max_maptrack_frames(1))
            .expect("create back");
        grant(&hv, front, 0, back, GFN, true);
        let mfn = granted_mfn(&hv, front);

        let arrival = std::sync::Arc::new(Arrival::default());
        let copier = {
            let hv = hv.clone();
            let arrival = arrival.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 0).unwrap();
                (copy_from_grant(&mut cx, front), arrival.arrive())
            })
        };
        let mapper = {
            let hv = hv.clone();
            let arrival = arrival.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 1).unwrap();
                let m = map(&mut cx, front, 0, RO_HOST, ADDR[0]);
                (m, arrival.arrive())
            })
        };
        let (copied, r_copy) = copier.join().unwrap();
        let (m, _) = mapper.join().unwrap();

        assert_eq!(copied, GntSt::Okay, "copy of a granted page failed");
        assert_eq!(
            m.status,
            GntSt::Okay,
            "read-only map of the grant failed: {m:?}"
        );
        hv.check().assert_ok();
        assert_mapped(&hv, back, ADDR[0], mfn);
        let pin = hv.active_entry(front, GrantRef(0)).unwrap().counters();
        assert_eq!(
            pin,
            [0, 1, 0, 0],
            "the map's host read pin must be the only pin"
        );
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
        seen.record(if r_copy == 0 {
            "copy finished first"
        } else {
            "map finished first"
        });

        unmap_ok(&hv, back, 1, m.handle, ADDR[0], 0);
        let e = hv
            .guest(front)
            .unwrap()
            .entry_snapshot(GrantRef(0))
            .unwrap();
        assert_eq!(
            e.flags & (gtf::READING | gtf::WRITING),
            0,
            "unmapped grant still shows a use: {e:?}"
        );
        assert_quiescent_and_end(&hv, front, 0);
    });
    outcomes.assert_seen(&["copy finished first", "map finished first"]);
}

mod fast {
    #[test]
    fn copy_vs_unmap_vs_end_access() {
        super::copy_vs_unmap_vs_end_access::<gnttab::Fast>();
    }

    #[test]
    fn copy_vs_map() {
        super::copy_vs_map::<gnttab::Fast>();
    }
}

mod xen {
    #[test]
    fn copy_vs_unmap_vs_end_access() {
        super::copy_vs_unmap_vs_end_access::<gnttab::Xen>();
    }

    #[test]
    fn copy_vs_map() {
        super::copy_vs_map::<gnttab::Xen>();
    }
}

/// One copy of 8 bytes from `front`'s grant 0 into the caller's gfn 0; the element's status.
fn copy_from_grant<D: Design>(cx: &mut VcpuCtx<'_, D>, front: DomId) -> GntSt {
    let mut op = [GnttabCopy::new(
        CopyPtr::gref(front, GrantRef(0), 0),
        true,
        CopyPtr::gmfn(Gfn(0), 0),
        false,
        8,
    )];
    cx.copy(&mut op).expect("copy hypercall");
    op[0].status
}
