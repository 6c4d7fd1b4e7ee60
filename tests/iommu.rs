//! Conformance suite for strict-IOMMU mappers (spec section 10, docs/design.md section 6), run on
//! every design.
//!
//! The mapper `b` of the rig is a PV domain in `IommuMode::Strict`: every grant map it makes of
//! another domain's page adds an IOMMU translation its devices use (`hv.dma_read` /
//! `hv.dma_write` move real bytes through it), and the unmap that releases the mapping removes
//! it. Two strategies are checked, chosen by the design's `Iommu` type:
//!
//! * `MfnRefcount` (Xen, XenPlainRw, XenFastSlots): `dev_bus_addr == mfn << 12`; one IOMMU
//!   entry per frame shared by every handle mapping it, read-write while a writer exists,
//!   downgraded when the last writer goes, removed with the last handle; one IOTLB flush per
//!   removal or downgrade.
//! * `PerMapBfn` (Fast, FastNoSlots, XenPerMapBfn): a fresh bus frame per map, above RAM,
//!   recorded and checked by unmap; one IOTLB flush per unmap chunk, and no bus frame is handed
//!   out again before the flush that invalidated its old translation.
//!
//! Every failure asserts the exact status and that nothing changed; `hv.check()` (which
//! includes invariant 13.9, the IOMMU mirror, and the BFN leak check) runs after every step.

#[macro_use]
mod common;
use common::*;

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

const G: GrantRef = GrantRef(8);

/// Every map kind a PV mapper can ask for.
const KINDS: [GntMap; 6] = [HOST, HOST_RO, DEV, DEV_RO, HOST_DEV, HOST_DEV_RO];

/// A rig whose mapper is in strict IOMMU mode, after `f` edits the configuration.
fn strict_with<D: Design>(f: impl FnOnce(&mut RigCfg)) -> Rig<D> {
    Rig::build(|c| {
        c.b.iommu = IommuMode::Strict;
        f(c);
    })
}

/// A rig whose mapper is in strict IOMMU mode.
fn strict<D: Design>() -> Rig<D> {
    strict_with::<D>(|_| {})
}

/// First bus address above RAM.
fn above_ram<D: Design>(r: &Rig<D>) -> u64 {
    r.hv.config().machine.max_frames << 12
}

/// The design's shape of a map's `dev_bus_addr` for frame `mfn`.
#[track_caller]
fn assert_bus_shape<D: Design>(r: &Rig<D>, bus: u64, mfn: Mfn) {
    if per_map_bfn::<D>() {
        assert!(
            bus >= above_ram(r),
            "per-map bus address {bus:#x} must lie above RAM ({:#x})",
            above_ram(r)
        );
        assert_eq!(bus & 0xFFF, 0, "page-aligned bus address");
    } else {
        assert_eq!(bus, mfn.addr(), "BFN == MFN");
    }
}

/// The device of the mapper reads `len` bytes at `bus`.
fn dma_get<D: Design>(r: &Rig<D>, bus: u64, len: usize) -> Result<Vec<u8>, DmaFault> {
    let mut buf = vec![0u8; len];
    r.hv.dma_read(r.b, bus, &mut buf).map(|()| buf)
}

/// Host address of a map of kind `flags` number `i` (0 for device-only maps).
fn host_of(flags: GntMap, i: u64) -> u64 {
    if flags.contains(GntMap::HOST_MAP) {
        va(i)
    } else {
        0
    }
}

/// Device address to name in the unmap of a map of kind `flags` (0 for host-only maps).
fn dev_of(flags: GntMap, bus: u64) -> u64 {
    if flags.contains(GntMap::DEVICE_MAP) {
        bus
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------
// Map kinds, bus addresses and DMA
// ---------------------------------------------------------------------------------------

/// Host, device and host|device maps, read-only and writable: each gets a translation of the
/// design's shape; the device reads the granter's bytes through it and writes through it
/// unless the map is read-only (`DmaFault::ReadOnly`, nothing written); before the map and
/// after the unmap the device faults (`NotMapped`).
fn map_kinds_and_dma<D: Design>() {
    let r = strict::<D>();
    let mut live = Vec::new();
    let mut buses = BTreeSet::new();
    for (i, &flags) in KINDS.iter().enumerate() {
        let i = i as u64;
        let gref = GrantRef(10 + i as u32);
        let gfn = Gfn(10 + i);
        let data = pattern(i as u8, 64);
        r.ga().write_page(gfn, 0, &data).unwrap();
        r.grant(gref, gfn, false);
        let mfn = r.mfn(r.a, gfn);
        // Strict mode: the granter's frame is not reachable before the map.
        assert_eq!(dma_get(&r, mfn.addr(), 4), Err(DmaFault::NotMapped));
        let m = r.map_ok(gref, flags, host_of(flags, i));
        assert_bus_shape(&r, m.dev_bus_addr, mfn);
        assert!(
            buses.insert(m.dev_bus_addr),
            "distinct frames, distinct bus addresses"
        );
        assert_eq!(dma_get(&r, m.dev_bus_addr, 64).unwrap(), data, "{flags:?}");
        assert_eq!(
            dma_get(&r, m.dev_bus_addr + 8, 8).unwrap(),
            &data[8..16],
            "offset inside the page"
        );
        assert_eq!(
            dma_get(&r, m.dev_bus_addr + 4090, 8),
            Err(DmaFault::OutOfPage)
        );
        let w = r.hv.dma_write(r.b, m.dev_bus_addr + 100, b"device");
        if flags.contains(GntMap::READONLY) {
            assert_eq!(w, Err(DmaFault::ReadOnly), "{flags:?}");
            assert_eq!(r.read_gfn(r.a, gfn, 100, 6), vec![0; 6], "nothing written");
        } else {
            assert_eq!(w, Ok(()), "{flags:?}");
            assert_eq!(r.read_gfn(r.a, gfn, 100, 6), b"device");
        }
        r.check();
        live.push((gref, flags, m));
    }
    for (i, (gref, flags, m)) in live.iter().enumerate() {
        r.unmap_ok(
            m.handle,
            host_of(*flags, i as u64),
            dev_of(*flags, m.dev_bus_addr),
        );
        assert_eq!(
            dma_get(&r, m.dev_bus_addr, 4),
            Err(DmaFault::NotMapped),
            "{flags:?}: translation gone after unmap and flush"
        );
        assert_eq!(
            r.hv.dma_write(r.b, m.dev_bus_addr, b"x"),
            Err(DmaFault::NotMapped)
        );
        assert_eq!(r.pins(*gref), [0; 4]);
        assert!(r.ga().end_access(*gref).unwrap());
        r.check();
    }
}

/// Two handles on one frame (two refs naming the same gfn, one writable device map and one
/// read-only device map). MfnRefcount: both get `mfn << 12` and share one IOMMU entry, which
/// is read-write while the writer lives, is downgraded (one flush) when the last writer goes and
/// disappears (one flush) with the last handle; the reader leaving first changes nothing and
/// flushes nothing. PerMapBfn: two distinct bus frames with their own permissions, each removed
/// (one flush each) by its own unmap.
fn two_handles_one_frame<D: Design>() {
    let r = strict::<D>();
    let gfn = Gfn(5);
    r.ga().write_page(gfn, 0, b"shared").unwrap();
    let (gw, gr) = (GrantRef(1), GrantRef(2));
    r.grant(gw, gfn, false);
    r.grant(gr, gfn, false);
    let mfn = r.mfn(r.a, gfn);
    let per_map = per_map_bfn::<D>();

    // Writer unmapped first.
    let f0 = r.iotlb_flushes(r.b);
    let w = r.map_ok(gw, DEV, 0);
    let ro = r.map_ok(gr, DEV_RO, 0);
    assert_eq!(r.iotlb_flushes(r.b), f0, "maps never flush");
    r.check();
    assert_eq!(dma_get(&r, w.dev_bus_addr, 6).unwrap(), b"shared");
    assert_eq!(dma_get(&r, ro.dev_bus_addr, 6).unwrap(), b"shared");
    assert_eq!(r.hv.dma_write(r.b, w.dev_bus_addr + 6, b"!"), Ok(()));
    if per_map {
        assert_ne!(w.dev_bus_addr, ro.dev_bus_addr, "one bus frame per map");
        assert_eq!(
            r.hv.dma_write(r.b, ro.dev_bus_addr, b"x"),
            Err(DmaFault::ReadOnly)
        );
    } else {
        assert_eq!((w.dev_bus_addr, ro.dev_bus_addr), (mfn.addr(), mfn.addr()));
    }
    r.unmap_ok(w.handle, 0, w.dev_bus_addr);
    r.check();
    assert_eq!(r.iotlb_flushes(r.b), f0 + 1);
    if per_map {
        assert_eq!(dma_get(&r, w.dev_bus_addr, 1), Err(DmaFault::NotMapped));
    }
    // The remaining translation reads the frame and is read-only (MfnRefcount: downgraded).
    assert_eq!(dma_get(&r, ro.dev_bus_addr, 7).unwrap(), b"shared!");
    assert_eq!(
        r.hv.dma_write(r.b, ro.dev_bus_addr, b"x"),
        Err(DmaFault::ReadOnly)
    );
    r.unmap_ok(ro.handle, 0, ro.dev_bus_addr);
    r.check();
    assert_eq!(r.iotlb_flushes(r.b), f0 + 2);
    assert_eq!(dma_get(&r, ro.dev_bus_addr, 1), Err(DmaFault::NotMapped));

    // Reader unmapped first.
    let w = r.map_ok(gw, DEV, 0);
    let ro = r.map_ok(gr, DEV_RO, 0);
    let f1 = r.iotlb_flushes(r.b);
    r.unmap_ok(ro.handle, 0, ro.dev_bus_addr);
    r.check();
    if per_map {
        assert_eq!(r.iotlb_flushes(r.b), f1 + 1);
        assert_eq!(dma_get(&r, ro.dev_bus_addr, 1), Err(DmaFault::NotMapped));
    } else {
        assert_eq!(r.iotlb_flushes(r.b), f1, "no IOMMU change, no flush");
    }
    assert_eq!(r.hv.dma_write(r.b, w.dev_bus_addr, b"S"), Ok(()));
    assert_eq!(r.read_gfn(r.a, gfn, 0, 6), b"Shared");
    r.unmap_ok(w.handle, 0, w.dev_bus_addr);
    r.check();
    assert_eq!(r.iotlb_flushes(r.b), f1 + if per_map { 2 } else { 1 });
    assert_eq!(dma_get(&r, w.dev_bus_addr, 1), Err(DmaFault::NotMapped));
    assert!(r.ga().end_access(gw).unwrap());
    assert!(r.ga().end_access(gr).unwrap());
    r.check();
}

/// Unmap checks a named device part against the recorded device address (spec 7.2 step 8):
/// any other address, including another live map's, is `bad_dev_addr` with nothing changed
/// (the host part named in the same op is not removed either). PerMapBfn: the machine address
/// is not the device address.
fn unmap_checks_dev_addr<D: Design>() {
    let r = strict::<D>();
    r.grant(G, Gfn(3), false);
    r.grant(GrantRef(9), Gfn(4), false);
    let m = r.map_ok(G, HOST_DEV, va(0));
    let other = r.map_ok(GrantRef(9), DEV, 0);
    assert_ne!(m.dev_bus_addr, other.dev_bus_addr);
    let mfn = r.mfn(r.a, Gfn(3));
    let mut bad = vec![
        m.dev_bus_addr + 0x1000,
        m.dev_bus_addr + 8,
        m.dev_bus_addr ^ (1 << 45),
        other.dev_bus_addr,
    ];
    if per_map_bfn::<D>() {
        bad.push(mfn.addr());
    }
    let before = r.snap();
    for &dev in &bad {
        for host in [0, va(0)] {
            assert_eq!(
                r.unmap(m.handle, host, dev),
                GntSt::BadDevAddr,
                "dev {dev:#x} host {host:#x}"
            );
            r.assert_unchanged(&before);
        }
    }
    // The device still works; the right address unmaps.
    assert!(dma_get(&r, m.dev_bus_addr, 4).is_ok());
    r.unmap_ok(m.handle, va(0), m.dev_bus_addr);
    r.unmap_ok(other.handle, 0, other.dev_bus_addr);
    assert_eq!(r.pins(G), [0; 4]);
    r.check();
}

// ---------------------------------------------------------------------------------------
// Partial unmaps (XSA-394)
// ---------------------------------------------------------------------------------------

/// Host part first, then device part: after the host part goes the device part still holds
/// the handle, so the translation stays (read-write, no flush); the device part's unmap
/// releases the handle and removes it.
fn partial_unmap_host_then_device<D: Design>() {
    let r = strict::<D>();
    r.ga().write_page(Gfn(3), 0, b"xsa-394").unwrap();
    r.grant(G, Gfn(3), false);
    let m = r.map_ok(G, HOST_DEV, va(0));
    let f0 = r.iotlb_flushes(r.b);
    r.unmap_ok(m.handle, va(0), 0);
    r.check();
    assert_eq!(r.pins(G), [0, 0, 1, 0]);
    assert_eq!(r.status_bits(G), RW_BITS);
    let mut buf = [0u8; 7];
    assert_eq!(
        r.gb().read_mapped(HostAddr::Linear(va(0)), 0, &mut buf),
        Err(AccessFault::NotMapped)
    );
    assert_eq!(dma_get(&r, m.dev_bus_addr, 7).unwrap(), b"xsa-394");
    assert_eq!(r.hv.dma_write(r.b, m.dev_bus_addr + 7, b"+"), Ok(()));
    assert_eq!(
        r.iotlb_flushes(r.b),
        f0,
        "handle not released: no IOMMU change"
    );
    r.unmap_ok(m.handle, 0, m.dev_bus_addr);
    r.check();
    assert_eq!(r.iotlb_flushes(r.b), f0 + 1);
    assert_eq!(dma_get(&r, m.dev_bus_addr, 1), Err(DmaFault::NotMapped));
    assert_eq!(r.pins(G), [0; 4]);
    assert_eq!(r.read_gfn(r.a, Gfn(3), 0, 8), b"xsa-394+");
    assert!(r.ga().end_access(G).unwrap());
    r.check();
}

/// Device part first, then host part (XSA-394): the IOMMU count is dropped only when the
/// handle is released, so the translation outlives the device part until the host part goes.
fn partial_unmap_device_then_host<D: Design>() {
    let r = strict::<D>();
    r.ga().write_page(Gfn(3), 0, b"xsa-394").unwrap();
    r.grant(G, Gfn(3), false);
    let m = r.map_ok(G, HOST_DEV, va(0));
    let f0 = r.iotlb_flushes(r.b);
    r.unmap_ok(m.handle, 0, m.dev_bus_addr);
    r.check();
    assert_eq!(r.pins(G), [1, 0, 0, 0]);
    assert_eq!(r.iotlb_flushes(r.b), f0);
    assert_eq!(dma_get(&r, m.dev_bus_addr, 7).unwrap(), b"xsa-394");
    assert_eq!(r.hv.dma_write(r.b, m.dev_bus_addr, b"X"), Ok(()));
    let mut buf = [0u8; 7];
    r.gb()
        .read_mapped(HostAddr::Linear(va(0)), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"Xsa-394");
    // A second device unmap names a part that is gone: no-op, the handle stays valid.
    assert_eq!(r.unmap(m.handle, 0, m.dev_bus_addr), GntSt::Okay);
    assert_eq!(r.pins(G), [1, 0, 0, 0]);
    assert!(dma_get(&r, m.dev_bus_addr, 1).is_ok());
    r.check();
    r.unmap_ok(m.handle, va(0), 0);
    r.check();
    assert_eq!(r.iotlb_flushes(r.b), f0 + 1);
    assert_eq!(dma_get(&r, m.dev_bus_addr, 1), Err(DmaFault::NotMapped));
    assert_eq!(r.pins(G), [0; 4]);
    assert!(r.ga().end_access(G).unwrap());
    r.check();
}

// ---------------------------------------------------------------------------------------
// Stale IOTLB entries and bus-frame reuse
// ---------------------------------------------------------------------------------------

/// One unmap of a device map on vCPU 0 pauses after phase 1, before the chunk's flush.
///
/// PerMapBfn: the device still reaches the page through the stale IOTLB entry (the page is
/// still pinned and referenced: phase 2 has not run), and the bus frame is not handed out
/// again: with a one-frame region a map on vCPU 1 is refused (`no_device_space`, nothing
/// changed); with a two-frame region it gets the other frame. After the flush the old bus
/// address faults and may then be reused (one-frame region: it is).
///
/// MfnRefcount: the translation was removed and flushed under the table write lock in phase 1,
/// so the device faults already at the pause, and vCPU 1 maps normally.
fn stale_iotlb_until_chunk_flush<D: Design>() {
    for region in [1u64, 2] {
        let r = strict_with::<D>(|c| c.b.bus_frames = region);
        let per_map = per_map_bfn::<D>();
        let (g1, g2) = (GrantRef(1), GrantRef(2));
        r.ga().write_page(Gfn(3), 0, b"first").unwrap();
        r.ga().write_page(Gfn(4), 0, b"second").unwrap();
        r.grant(g1, Gfn(3), false);
        r.grant(g2, Gfn(4), false);
        r.warm_vcpu(r.b, 1);
        let m1 = r.map_ok(g1, DEV, 0);
        if per_map && region == 1 {
            let before = r.snap();
            let m = map1(&mut r.vcpu(r.b, 1), r.a, g2, DEV, 0);
            assert_eq!(m.status, GntSt::NoDeviceSpace, "one-frame region is full");
            r.assert_unchanged(&before);
        }
        r.hooks
            .pause_once(Arm::at(HookPoint::UnmapBeforeFlush).dom(r.b).vcpu(0));
        thread::scope(|s| {
            let t = s.spawn(|| unmap1(&mut r.vcpu(r.b, 0), m1.handle, 0, m1.dev_bus_addr));
            r.hooks.wait_parked(HookPoint::UnmapBeforeFlush);
            // Phase 2 has not run: the grant is still in use.
            assert_eq!(r.pins(g1), [0, 0, 1, 0]);
            assert!(!r.ga().end_access(g1).unwrap());
            let before = r.snap();
            let m2 = map1(&mut r.vcpu(r.b, 1), r.a, g2, DEV, 0);
            if per_map {
                assert_eq!(
                    dma_get(&r, m1.dev_bus_addr, 5).unwrap(),
                    b"first",
                    "stale IOTLB entry until the chunk's flush"
                );
                if region == 1 {
                    assert_eq!(
                        m2.status,
                        GntSt::NoDeviceSpace,
                        "BFN reused before its flush"
                    );
                    let after = r.snap();
                    assert!(after == before, "state changed:\n{}", diff(&before, &after));
                } else {
                    assert_eq!(m2.status, GntSt::Okay);
                    assert_ne!(
                        m2.dev_bus_addr, m1.dev_bus_addr,
                        "BFN reused before its flush"
                    );
                    assert_eq!(dma_get(&r, m2.dev_bus_addr, 6).unwrap(), b"second");
                    assert_eq!(
                        unmap1(&mut r.vcpu(r.b, 1), m2.handle, 0, m2.dev_bus_addr),
                        GntSt::Okay
                    );
                }
            } else {
                assert_eq!(
                    dma_get(&r, m1.dev_bus_addr, 5),
                    Err(DmaFault::NotMapped),
                    "MfnRefcount flushes in phase 1"
                );
                assert_eq!(m2.status, GntSt::Okay);
                assert_eq!(m2.dev_bus_addr, r.mfn(r.a, Gfn(4)).addr());
                assert_eq!(
                    unmap1(&mut r.vcpu(r.b, 1), m2.handle, 0, m2.dev_bus_addr),
                    GntSt::Okay
                );
            }
            r.hooks.release(HookPoint::UnmapBeforeFlush);
            assert_eq!(t.join().unwrap(), GntSt::Okay);
        });
        r.check();
        assert_eq!(dma_get(&r, m1.dev_bus_addr, 1), Err(DmaFault::NotMapped));
        assert_eq!(r.pins(g1), [0; 4]);
        // After the flush the bus frame may be handed out again.
        let m2 = map1(&mut r.vcpu(r.b, 1), r.a, g2, DEV, 0);
        assert_eq!(m2.status, GntSt::Okay);
        if per_map && region == 1 {
            assert_eq!(
                m2.dev_bus_addr, m1.dev_bus_addr,
                "the only bus frame, reused"
            );
        }
        assert_eq!(dma_get(&r, m2.dev_bus_addr, 6).unwrap(), b"second");
        r.check();
        assert_eq!(
            unmap1(&mut r.vcpu(r.b, 1), m2.handle, 0, m2.dev_bus_addr),
            GntSt::Okay
        );
        assert!(r.ga().end_access(g1).unwrap());
        assert!(r.ga().end_access(g2).unwrap());
        r.check();
    }
}

/// A four-frame bus region (`bus_frames(4)`). PerMapBfn: four maps succeed, the fifth (device
/// or host-only: every map of a strict mapper needs a translation) is `no_device_space` with
/// nothing changed and no bus frame leaked (the checker compares frames handed out with live
/// mappings). Frames freed on vCPU 1 (into vCPU 1's cache) are found by vCPU 0. MfnRefcount
/// has no region: the same maps all succeed.
fn bus_space_exhaustion<D: Design>() {
    let r = strict_with::<D>(|c| c.b.bus_frames = 4);
    r.warm_vcpu(r.b, 1);
    for i in 1..=8u32 {
        r.grant(GrantRef(i), Gfn(i as u64), false);
    }
    let mut ms: Vec<MapGrantRef> = (1..=4).map(|i| r.map_ok(GrantRef(i), DEV, 0)).collect();
    r.check();
    if !per_map_bfn::<D>() {
        let m = r.map_ok(GrantRef(5), DEV, 0);
        let h = r.map_ok(GrantRef(6), HOST, va(6));
        r.check();
        r.unmap_ok(m.handle, 0, m.dev_bus_addr);
        r.unmap_ok(h.handle, va(6), 0);
    } else {
        let before = r.snap();
        for (flags, addr) in [(DEV, 0), (HOST, va(5)), (HOST_DEV_RO, va(5))] {
            let m = r.map(GrantRef(5), flags, addr);
            assert_eq!(m.status, GntSt::NoDeviceSpace, "{flags:?}");
            r.assert_unchanged(&before);
            let m = map1(&mut r.vcpu(r.b, 1), r.a, GrantRef(5), flags, addr);
            assert_eq!(m.status, GntSt::NoDeviceSpace, "{flags:?} on vCPU 1");
            r.assert_unchanged(&before);
        }
        // Free two on vCPU 1: they land in vCPU 1's cache; vCPU 0 still gets them.
        let mut cx1 = r.vcpu(r.b, 1);
        let freed: BTreeSet<u64> = ms
            .drain(..2)
            .map(|m| {
                assert_eq!(unmap1(&mut cx1, m.handle, 0, m.dev_bus_addr), GntSt::Okay);
                m.dev_bus_addr
            })
            .collect();
        drop(cx1);
        r.check();
        let again: BTreeSet<u64> = (5..=6)
            .map(|i| {
                let m = r.map_ok(GrantRef(i), DEV, 0);
                ms.push(m);
                m.dev_bus_addr
            })
            .collect();
        assert_eq!(
            again, freed,
            "the freed bus frames, found in vCPU 1's cache"
        );
        r.check();
        let before = r.snap();
        assert_eq!(r.map(GrantRef(7), DEV, 0).status, GntSt::NoDeviceSpace);
        r.assert_unchanged(&before);
    }
    for m in ms {
        r.unmap_ok(m.handle, 0, m.dev_bus_addr);
    }
    for i in 1..=8u32 {
        assert!(r.ga().end_access(GrantRef(i)).unwrap());
    }
    r.check();
    // Everything is free again: four maps fit.
    let ms: Vec<MapGrantRef> = (1..=4)
        .map(|i| {
            r.grant(GrantRef(i), Gfn(i as u64), true);
            r.map_ok(GrantRef(i), DEV_RO, 0)
        })
        .collect();
    r.check();
    for m in ms {
        r.unmap_ok(m.handle, 0, m.dev_bus_addr);
    }
    r.check();
}

// ---------------------------------------------------------------------------------------
// IOMMU failures, self grants, flush counts
// ---------------------------------------------------------------------------------------

/// An IOMMU operation that fails (hook `IommuMap` returning `Fail`) fails the map with
/// `general_error` and undoes everything (host mapping, references, pin, status bits, record,
/// bus frame), for every kind of map. MfnRefcount makes no IOMMU call when the frame's entry
/// already allows the access (a reader added to a writer), so a failure armed then is not
/// consumed and the map succeeds; PerMapBfn makes a translation for every map.
fn iommu_map_failure_rolls_back<D: Design>() {
    let r = strict::<D>();
    r.grant(G, Gfn(3), false);
    let mfn = r.mfn(r.a, Gfn(3));
    let arm = Arm::at(HookPoint::IommuMap).dom(r.b);
    let before = r.snap();
    for (i, &flags) in KINDS.iter().enumerate() {
        let hits = r.hooks.hits(HookPoint::IommuMap, r.b);
        r.hooks.fail(arm, 1);
        let m = r.map(G, flags, host_of(flags, i as u64));
        assert_eq!(m.status, GntSt::GeneralError, "{flags:?}");
        assert_eq!(r.hooks.hits(HookPoint::IommuMap, r.b), hits + 1);
        r.assert_unchanged(&before);
        assert_eq!(dma_get(&r, mfn.addr(), 1), Err(DmaFault::NotMapped));
    }
    // The failure was consumed: the next map works.
    let w = r.map_ok(G, DEV, 0);
    r.check();
    let before = r.snap();
    r.hooks.fail(arm, 1);
    let m = r.map(G, DEV_RO, 0);
    if per_map_bfn::<D>() {
        assert_eq!(m.status, GntSt::GeneralError);
        r.assert_unchanged(&before);
    } else {
        assert_eq!(
            m.status,
            GntSt::Okay,
            "no IOMMU change needed, no IOMMU call"
        );
        r.check();
        r.unmap_ok(m.handle, 0, m.dev_bus_addr);
        r.hooks.disarm();
    }
    r.unmap_ok(w.handle, 0, w.dev_bus_addr);
    assert_eq!(r.pins(G), [0; 4]);
    assert!(r.ga().end_access(G).unwrap());
    r.check();
}

/// A strict mapper mapping its own grant does no IOMMU work on either design (its own memory
/// is already identity-mapped in its IOMMU context and must not be removed on unmap):
/// `dev_bus_addr == mfn << 12`, the hook is never reached, nothing is flushed, and DMA to the
/// machine address works before, during and after the mapping.
fn self_grant_no_iommu_work<D: Design>() {
    let r = strict::<D>();
    let gb = r.gb();
    gb.write_page(Gfn(7), 0, b"own page").unwrap();
    // Two refs for the frame: with one ref, designs with inline slots would give both maps
    // one fast handle, and two device parts at the same (machine) address cannot be told apart.
    let (rw, ro) = (GrantRef(5), GrantRef(6));
    gb.grant_access(rw, r.b, Gfn(7), false).unwrap();
    gb.grant_access(ro, r.b, Gfn(7), true).unwrap();
    let mfn = r.mfn(r.b, Gfn(7));
    let hits = r.hooks.hits(HookPoint::IommuMap, r.b);
    let f0 = r.iotlb_flushes(r.b);
    assert_eq!(dma_get(&r, mfn.addr(), 8).unwrap(), b"own page");
    let mut cx = r.cx();
    let m1 = map1(&mut cx, r.b, rw, HOST_DEV, va(0));
    let m2 = map1(&mut cx, r.b, ro, DEV_RO, 0);
    drop(cx);
    assert_eq!((m1.status, m2.status), (GntSt::Okay, GntSt::Okay));
    assert_eq!(m1.dev_bus_addr, mfn.addr());
    assert_eq!(m2.dev_bus_addr, mfn.addr());
    r.check();
    assert_eq!(r.hv.dma_write(r.b, mfn.addr() + 8, b"+dma"), Ok(()));
    assert_eq!(r.read_gfn(r.b, Gfn(7), 0, 12), b"own page+dma");
    let mut cx = r.cx();
    assert_eq!(unmap1(&mut cx, m2.handle, 0, m2.dev_bus_addr), GntSt::Okay);
    assert_eq!(
        unmap1(&mut cx, m1.handle, va(0), m1.dev_bus_addr),
        GntSt::Okay
    );
    drop(cx);
    assert_eq!(r.hooks.hits(HookPoint::IommuMap, r.b), hits);
    assert_eq!(r.iotlb_flushes(r.b), f0);
    assert_eq!(dma_get(&r, mfn.addr(), 12).unwrap(), b"own page+dma");
    assert!(gb.end_access(rw).unwrap());
    assert!(gb.end_access(ro).unwrap());
    r.check();
}

/// IOTLB flushes (`DomainStats::iotlb_flushes`): maps never flush; MfnRefcount flushes once
/// per released translation, PerMapBfn once per unmap chunk (32 elements) that released any;
/// a chunk of partial unmaps that release no handle flushes nothing on either design.
fn iotlb_flush_counts<D: Design>() {
    let r = strict::<D>();
    let per_map = per_map_bfn::<D>();
    for i in 0..40u32 {
        r.grant(GrantRef(10 + i), Gfn(10 + i as u64), false);
    }
    let unmap_batch = |ms: &[(MapGrantRef, u64, u64)]| {
        let mut ops: Vec<UnmapGrantRef> = ms
            .iter()
            .map(|(m, host, dev)| UnmapGrantRef::new(m.handle, *host, *dev))
            .collect();
        r.cx().unmap_grant_ref(&mut ops).unwrap();
        assert!(ops.iter().all(|o| o.status == GntSt::Okay), "{ops:?}");
        r.check();
    };
    for (n, per_map_want) in [(5u32, 1u64), (40, 2)] {
        let f0 = r.iotlb_flushes(r.b);
        let ms: Vec<_> = (0..n)
            .map(|i| {
                let m = r.map_ok(GrantRef(10 + i), DEV, 0);
                (m, 0, m.dev_bus_addr)
            })
            .collect();
        assert_eq!(r.iotlb_flushes(r.b), f0, "maps never flush");
        unmap_batch(&ms);
        let want = if per_map { per_map_want } else { u64::from(n) };
        assert_eq!(r.iotlb_flushes(r.b) - f0, want, "{n} unmaps in one batch");
    }
    // Host parts first (no handle released), then the device parts.
    let ms: Vec<MapGrantRef> = (0..3)
        .map(|i| r.map_ok(GrantRef(10 + i), HOST_DEV, va(u64::from(i))))
        .collect();
    let f0 = r.iotlb_flushes(r.b);
    let hosts: Vec<_> = ms
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, va(i as u64), 0))
        .collect();
    unmap_batch(&hosts);
    assert_eq!(
        r.iotlb_flushes(r.b),
        f0,
        "no handle released, nothing flushed"
    );
    let devs: Vec<_> = ms.iter().map(|m| (*m, 0, m.dev_bus_addr)).collect();
    unmap_batch(&devs);
    assert_eq!(r.iotlb_flushes(r.b) - f0, if per_map { 1 } else { 3 });
    r.check();
}

/// A configured IOTLB flush cost is charged without changing behaviour (no timing asserted).
fn iotlb_flush_cost_configurable<D: Design>() {
    let r = strict_with::<D>(|c| c.hv.iotlb_flush_cost = Duration::from_micros(3));
    assert_eq!(r.hv.config().iotlb_flush_cost, Duration::from_micros(3));
    r.ga().write_page(Gfn(3), 0, b"cost").unwrap();
    r.grant(G, Gfn(3), false);
    let f0 = r.iotlb_flushes(r.b);
    for _ in 0..3 {
        let m = r.map_ok(G, HOST_DEV, va(0));
        assert_eq!(dma_get(&r, m.dev_bus_addr, 4).unwrap(), b"cost");
        r.unmap_ok(m.handle, va(0), m.dev_bus_addr);
        r.check();
    }
    assert_eq!(r.iotlb_flushes(r.b) - f0, 3);
    assert!(r.ga().end_access(G).unwrap());
    r.check();
}

/// Regression: a device address of 0 means "no device part" to unmap, so no map may return
/// it. The first domain's gfn 0 used to be machine frame 0 (`dev_bus_addr == 0` without an
/// IOMMU and with MfnRefcount, where BFN == MFN), whose device part could then never be
/// unmapped; frame 0 now belongs to the hypervisor, as in Xen.
fn device_map_of_machine_frame_zero<D: Design>() {
    for strict_mode in [false, true] {
        let r = if strict_mode {
            strict::<D>()
        } else {
            Rig::<D>::new()
        };
        r.grant(G, Gfn(0), false);
        let m = r.map_ok(G, DEV, 0);
        assert_ne!(m.dev_bus_addr, 0, "strict {strict_mode}: device address 0");
        r.unmap_ok(m.handle, 0, m.dev_bus_addr);
        assert_eq!(
            r.pins(G),
            [0; 4],
            "strict {strict_mode}: device part unmapped"
        );
        assert!(r.ga().end_access(G).unwrap());
        r.check();
    }
}

design_tests!(
    map_kinds_and_dma,
    two_handles_one_frame,
    unmap_checks_dev_addr,
    partial_unmap_host_then_device,
    partial_unmap_device_then_host,
    stale_iotlb_until_chunk_flush,
    bus_space_exhaustion,
    iommu_map_failure_rolls_back,
    self_grant_no_iommu_work,
    iotlb_flush_counts,
    iotlb_flush_cost_configurable,
    device_map_of_machine_frame_zero,
);
