//! Strict IOMMU, Xen design (`MfnRefcount`, spec 10.1, docs/design.md section 6): the device
//! address is the machine address, and the mapper keeps per-frame `(read, write)` counts that
//! decide the frame's single IOMMU entry: read-write while a writer exists, read-only while
//! only readers exist, none without a mapping. Counts and entry change under the mapper's grant
//! table **write** lock, with an immediate IOTLB flush on removal or downgrade.
//!
//! Both models race a writer and a reader of the same frame (refs 0 and 1 grant the same gfn,
//! read-write and read-only) on two vCPUs of the mapper; `check()` invariant 9 then compares
//! the counts and the entry with the live mappings.

use crate::common::*;
use crate::harness::{model, thread, Outcomes};
use gnttab::prelude::*;

const DEV_RO: GntMap = GntMap::DEVICE_MAP.union(GntMap::READONLY);

fn setup() -> (crate::harness::Arc<Hypervisor<Xen>>, DomId, DomId, Mfn) {
    let hv = hypervisor::<Xen>();
    let (front, back) = strict_pair(&hv, 2, 1);
    grant(&hv, front, 0, back, GFN, false);
    grant(&hv, front, 1, back, GFN, true);
    let mfn = granted_mfn(&hv, front);
    (hv, front, back, mfn)
}

fn iotlb_flushes(hv: &Hypervisor<Xen>, back: DomId) -> u64 {
    hv.domain(back)
        .expect("mapper exists")
        .stats()
        .iotlb_flushes
}

/// A read-only device mapping R exists (counts `(1, 0)`, entry read-only). vCPU 0 maps the
/// frame read-write (W) while vCPU 1 unmaps R. Either order ends with counts `(0, 1)` and a
/// read-write entry: W first upgrades the entry (no flush) and R's exit changes nothing; R
/// first removes the entry (one flush) and W creates it read-write.
#[test]
fn map_rw_vs_unmap_ro() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, front, back, mfn) = setup();
        let r = map_ok(&hv, back, 1, front, 1, DEV_RO, 0);
        assert_eq!(r.dev_bus_addr, mfn.addr(), "BFN == MFN");
        let f0 = iotlb_flushes(&hv, back);

        let writer = spawn_map(&hv, back, 0, front, 0, GntMap::DEVICE_MAP, 0);
        let reader = spawn_unmap(&hv, back, 1, r.handle, 0, r.dev_bus_addr);
        let w = writer.join().unwrap();
        let st = reader.join().unwrap();

        assert_eq!(w.status, GntSt::Okay, "writable device map failed: {w:?}");
        assert_eq!(w.dev_bus_addr, mfn.addr(), "BFN == MFN");
        assert_eq!(st, GntSt::Okay, "unmap of the reader failed");
        // Invariant 9: counts (0, 1), entry present and writable.
        hv.check().assert_ok();
        assert_eq!(
            hv.dma_write(back, w.dev_bus_addr, &[]),
            Ok(()),
            "the writer's device cannot write"
        );
        seen.record(match iotlb_flushes(&hv, back) - f0 {
            0 => "writer first: upgrade, no flush",
            1 => "reader first: entry removed and flushed",
            n => panic!("{n} IOTLB flushes for one unmap"),
        });

        unmap_ok(&hv, back, 0, w.handle, 0, w.dev_bus_addr);
        assert_eq!(
            hv.dma_write(back, w.dev_bus_addr, &[]),
            Err(DmaFault::NotMapped),
            "IOMMU entry survives the last unmap"
        );
        assert_quiescent_and_end(&hv, front, 0);
        assert_quiescent_and_end(&hv, front, 1);
    });
    outcomes.assert_seen(&[
        "writer first: upgrade, no flush",
        "reader first: entry removed and flushed",
    ]);
}

/// A read-write device mapping W exists (counts `(0, 1)`, entry read-write). vCPU 0 unmaps W
/// while vCPU 1 maps the frame read-only (R) and then lets its device try a write. Either
/// order ends with counts `(1, 0)` and a read-only entry (W last: downgrade and flush; W first:
/// removal and flush, then R creates it read-only); R's device may write only while W lives.
#[test]
fn unmap_rw_vs_map_ro() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, front, back, mfn) = setup();
        let w = map_ok(&hv, back, 0, front, 0, GntMap::DEVICE_MAP, 0);
        let f0 = iotlb_flushes(&hv, back);

        let writer = spawn_unmap(&hv, back, 0, w.handle, 0, w.dev_bus_addr);
        let reader = {
            let hv = hv.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 1).unwrap();
                let r = map(&mut cx, front, 1, DEV_RO, 0);
                drop(cx);
                (r, hv.dma_write(back, mfn.addr(), &[]))
            })
        };
        let st = writer.join().unwrap();
        let (r, dma) = reader.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap of the writer failed");
        assert_eq!(r.status, GntSt::Okay, "read-only device map failed: {r:?}");
        assert_eq!(r.dev_bus_addr, mfn.addr(), "BFN == MFN");
        // Invariant 9: counts (1, 0), entry present and read-only.
        hv.check().assert_ok();
        assert_eq!(
            hv.dma_write(back, mfn.addr(), &[]),
            Err(DmaFault::ReadOnly),
            "entry still writable after the last writer left"
        );
        assert_eq!(
            iotlb_flushes(&hv, back) - f0,
            1,
            "one downgrade or removal, one flush"
        );
        seen.record(match dma {
            Ok(()) => "reader's device saw the writer's entry",
            Err(DmaFault::ReadOnly) => "reader's device saw a read-only entry",
            Err(e) => panic!("reader's device: {e:?} although the reader is mapped"),
        });

        unmap_ok(&hv, back, 1, r.handle, 0, r.dev_bus_addr);
        assert_quiescent_and_end(&hv, front, 0);
        assert_quiescent_and_end(&hv, front, 1);
    });
    outcomes.assert_seen(&[
        "reader's device saw the writer's entry",
        "reader's device saw a read-only entry",
    ]);
}
