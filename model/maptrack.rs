//! Xen's per-vCPU maptrack free lists (spec 5, XSA-228), through the public API.
//!
//! The mapper's table is tiny (4 handles per frame) and capped, so maps run out of their own
//! list and steal from other vCPUs, and unmaps on one vCPU free handles to another vCPU's
//! list. Each list has its own lock; an initialised list always keeps its tail as a sentinel.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;
use gnttab::Xen;

const RO_HOST: GntMap = GntMap::HOST_MAP.union(GntMap::READONLY);

/// vCPU 0 pops from its own list (two maps) while vCPU 1 frees one of vCPU 0's handles to
/// vCPU 0's tail.
///
/// State: one maptrack frame (handles 0..3, the maximum), handles 0, 1, 2 live, vCPU 0's
/// list holds only its sentinel 3. The free of 0 makes 0 the new sentinel and 3 usable, so at
/// most one of the two maps can succeed, and only with handle 3; a pop that follows the new
/// sentinel's link must find the end of the list, not the link it had while live.
#[test]
fn pop_vs_put() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Xen>();
        let (front, back) = pair(&hv, 2, 1);
        grant(&hv, front, 0, back, GFN, true);
        let live: Vec<MapGrantRef> = (0..3)
            .map(|i| map_ok(&hv, back, 0, front, 0, RO_HOST, ADDR[i]))
            .collect();
        assert_eq!(
            live.iter().map(|m| m.handle.0).collect::<Vec<_>>(),
            [0, 1, 2],
            "set-up handles"
        );

        let popper = {
            let hv = hv.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 0).unwrap();
                [
                    map(&mut cx, front, 0, RO_HOST, ADDR[3]),
                    map(&mut cx, front, 0, RO_HOST, ADDR[4]),
                ]
            })
        };
        let putter = {
            let hv = hv.clone();
            let h = live[0].handle;
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 1).unwrap();
                unmap(&mut cx, h, ADDR[0], 0)
            })
        };
        let maps = popper.join().unwrap();
        let st = putter.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap of a live handle failed");
        let ok: Vec<_> = maps.iter().filter(|m| m.status == GntSt::Okay).collect();
        for m in &maps {
            assert!(
                matches!(m.status, GntSt::Okay | GntSt::NoSpace),
                "map returned {m:?}"
            );
        }
        assert!(
            ok.len() <= 1,
            "one handle was freed, two maps got one: {maps:?}"
        );
        if let Some(m) = ok.first() {
            assert_eq!(
                m.handle.0, 3,
                "the only usable handle after the free is 3: {m:?}"
            );
        }
        seen.record(match (maps[0].status, maps[1].status) {
            (GntSt::Okay, _) => "first map got 3",
            (_, GntSt::Okay) => "second map got 3",
            _ => "both maps before the free",
        });
        hv.check().assert_ok();

        unmap_ok(&hv, back, 0, live[1].handle, ADDR[1], 0);
        unmap_ok(&hv, back, 0, live[2].handle, ADDR[2], 0);
        for (m, addr) in maps.iter().zip(&ADDR[3..5]) {
            if m.status == GntSt::Okay {
                unmap_ok(&hv, back, 0, m.handle, *addr, 0);
            }
        }
        assert_quiescent_and_end(&hv, front, 0);
    });
    outcomes.assert_seen(&[
        "first map got 3",
        "second map got 3",
        "both maps before the free",
    ]);
}

/// vCPU 0 pops its own list, vCPU 1 (own list down to its sentinel, table at its maximum)
/// steals, and vCPU 2 frees one of vCPU 0's handles to vCPU 0's tail (XSA-228: pops, steals
/// and puts on one list must be serialised by that list's lock).
///
/// State: two maptrack frames (the maximum). vCPU 1 owns frame 0 (handles 0, 1, 2 live, 3 its
/// sentinel); vCPU 0 owns frame 1 (4, 5 live; list 6, 7). Handle 6 is free, so at least one
/// map succeeds; whatever the interleaving, the maps that succeed get distinct handles and the
/// lists stay consistent.
#[test]
fn pop_vs_steal_vs_put() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let hv = hypervisor::<Xen>();
        let (front, back) = pair(&hv, 3, 2);
        grant(&hv, front, 0, back, GFN, true);
        let mut live = Vec::new();
        for (i, v) in [1u16, 1, 1, 0, 0].into_iter().enumerate() {
            live.push(map_ok(&hv, back, v, front, 0, RO_HOST, ADDR[i]));
        }
        assert_eq!(
            live.iter().map(|m| m.handle.0).collect::<Vec<_>>(),
            [0, 1, 2, 4, 5],
            "set-up handles"
        );

        let popper = spawn_map(&hv, back, 0, front, 0, RO_HOST, ADDR[5]);
        let thief = spawn_map(&hv, back, 1, front, 0, RO_HOST, ADDR[6]);
        let putter = {
            let hv = hv.clone();
            let h = live[3].handle;
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 2).unwrap();
                unmap(&mut cx, h, ADDR[3], 0)
            })
        };
        let p = popper.join().unwrap();
        let t = thief.join().unwrap();
        let st = putter.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap of a live handle failed");
        for m in [&p, &t] {
            assert!(
                matches!(m.status, GntSt::Okay | GntSt::NoSpace),
                "map returned {m:?}"
            );
        }
        assert!(
            p.status == GntSt::Okay || t.status == GntSt::Okay,
            "handle 6 was free, yet both maps failed: {p:?} {t:?}"
        );
        if p.status == GntSt::Okay && t.status == GntSt::Okay {
            assert_ne!(p.handle, t.handle, "two live mappings share a handle");
        }
        seen.record(match (p.status, t.status) {
            (GntSt::Okay, GntSt::Okay) => "both mapped",
            (GntSt::Okay, _) => "only the popper mapped",
            _ => "only the thief mapped",
        });
        hv.check().assert_ok();

        for (m, addr) in [0, 1, 2, 4].map(|i| (&live[i], ADDR[i])) {
            unmap_ok(&hv, back, 0, m.handle, addr, 0);
        }
        for (m, addr) in [(&p, ADDR[5]), (&t, ADDR[6])] {
            if m.status == GntSt::Okay {
                unmap_ok(&hv, back, 0, m.handle, addr, 0);
            }
        }
        assert_quiescent_and_end(&hv, front, 0);
    });
    outcomes.assert_seen(&[
        "both mapped",
        "only the popper mapped",
        "only the thief mapped",
    ]);
}
