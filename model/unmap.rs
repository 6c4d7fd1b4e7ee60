//! Two unmaps of one handle on two vCPUs of the mapper (XSA-218 part b, spec 7.2).
//!
//! The active entry's lock serialises them: the second re-reads the mapping record under the
//! lock (Xen: flags, domid and ref of the maptrack entry; Fast: the live slots) and acts only
//! on what is still there. The record is freed in phase 1, exactly once, by whichever unmap
//! removes the last part.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

/// The host part and the device part of one writable host|device mapping are removed
/// concurrently: both succeed, the pins drop to 0, the handle (or slot) is freed exactly once
/// and is invalid afterwards.
fn unmap_host_vs_unmap_device<D: Design>() {
    model(|| {
        let hv = hypervisor::<D>();
        let (front, back) = pair(&hv, 2, 1);
        grant(&hv, front, 0, back, GFN, false);
        let m = map_ok(
            &hv,
            back,
            0,
            front,
            0,
            GntMap::HOST_MAP | GntMap::DEVICE_MAP,
            ADDR[0],
        );
        assert_eq!(
            pin_of(&hv, front, 0),
            pin::HSTW_INC + pin::DEVW_INC,
            "host and device writable pins"
        );

        let host = spawn_unmap(&hv, back, 0, m.handle, ADDR[0], 0);
        let device = spawn_unmap(&hv, back, 1, m.handle, 0, m.dev_bus_addr);
        let sh = host.join().unwrap();
        let sd = device.join().unwrap();

        assert_eq!(sh, GntSt::Okay, "host-part unmap failed");
        assert_eq!(sd, GntSt::Okay, "device-part unmap failed");
        assert!(
            live_pte(&hv, back, ADDR[0]).is_none(),
            "host PTE survived its unmap"
        );
        // check(): pins match the live records (none), free lists hold every handle exactly
        // once, page and type references are back to the allocation reference.
        hv.check().assert_ok();
        assert_eq!(
            pin_of(&hv, front, 0),
            0,
            "pins left after both parts were unmapped"
        );
        // The record is gone: the handle names nothing any more.
        let mut cx = hv.vcpu(back, 0).unwrap();
        assert_eq!(
            unmap(&mut cx, m.handle, ADDR[0], m.dev_bus_addr),
            GntSt::BadHandle,
            "handle still valid after both parts were unmapped"
        );
        drop(cx);
        assert_quiescent_and_end(&hv, front, 0);
    });
}

/// Two full unmaps of one host mapping: exactly one succeeds, the other finds the record
/// gone (`GNTST_bad_handle`); the handle is freed once.
fn unmap_vs_unmap<D: Design>() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<D>();
        let (front, back) = pair(&hv, 2, 1);
        grant(&hv, front, 0, back, GFN, false);
        let m = map_ok(&hv, back, 0, front, 0, GntMap::HOST_MAP, ADDR[0]);

        let racers: Vec<_> = [0u16, 1]
            .into_iter()
            .map(|v| {
                let hv = hv.clone();
                thread::spawn(move || {
                    let mut cx = hv.vcpu(back, v).unwrap();
                    unmap(&mut cx, m.handle, ADDR[0], 0)
                })
            })
            .collect();
        let mut st: Vec<GntSt> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        seen.record(if st[0] == GntSt::Okay {
            "vCPU 0 won"
        } else {
            "vCPU 1 won"
        });
        st.sort_by_key(|s| s.code());

        assert_eq!(
            st,
            [GntSt::BadHandle, GntSt::Okay],
            "exactly one of two unmaps of one handle may succeed"
        );
        assert!(
            live_pte(&hv, back, ADDR[0]).is_none(),
            "host PTE survived the unmap"
        );
        assert_quiescent_and_end(&hv, front, 0);
    });
    outcomes.assert_seen(&["vCPU 0 won", "vCPU 1 won"]);
}

mod fast {
    use gnttab::Fast;

    #[test]
    fn unmap_host_vs_unmap_device() {
        super::unmap_host_vs_unmap_device::<Fast>();
    }

    #[test]
    fn unmap_vs_unmap() {
        super::unmap_vs_unmap::<Fast>();
    }
}

mod xen {
    use gnttab::Xen;

    #[test]
    fn unmap_host_vs_unmap_device() {
        super::unmap_host_vs_unmap_device::<Xen>();
    }

    #[test]
    fn unmap_vs_unmap() {
        super::unmap_vs_unmap::<Xen>();
    }
}
