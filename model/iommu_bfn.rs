//! Strict IOMMU, Fast design (`PerMapBfn`, docs/design.md section 6): every map of a strict
//! mapper gets its own bus frame (BFN) from a per-vCPU cache in front of a pool; unmap phase 1
//! removes the translation and defers the BFN; the chunk flushes the vCPU's IOTLB, and only
//! then goes the BFN back to the allocator (the flush rule).
//!
//! The region is one or two bus frames, so every allocation that misses its own cache goes to
//! the pool, and a vCPU whose cache and pool are empty drains the other vCPU's cache: the
//! cross-vCPU paths are the common case here, not an exception.
//!
//! A [`FlushProbe`] hook, called right after each bus-frame allocation, records how many IOTLB
//! flushes of the mapper had happened by then: a map that reuses a BFN another vCPU freed must
//! see that vCPU's flush (the allocator's locks order the free after the flush and the
//! allocation after the free).
//!
//! Device accesses are zero-length `dma_write`s: they resolve the translation (live entry,
//! else a stale IOTLB entry) and check its permission (`Ok` read-write, `ReadOnly`,
//! `NotMapped`) without touching page contents, which would add 512 tracked atomics per
//! execution.

use crate::common::*;
use crate::harness::{hooks_arc, model, thread, Outcomes};
use gnttab::prelude::*;

const DEV_RO: GntMap = GntMap::DEVICE_MAP.union(GntMap::READONLY);

/// Builds the hypervisor with a flush probe, a granter granting gfn 1 read-write as ref 0 and
/// gfn 0 read-only as ref 1, and a strict mapper with two vCPUs and `bus_frames` bus frames.
fn setup(
    bus_frames: u64,
) -> (
    crate::harness::Arc<Hypervisor<Fast>>,
    std::sync::Arc<FlushProbe>,
    DomId,
    DomId,
) {
    let probe = std::sync::Arc::new(FlushProbe::default());
    let hv = hypervisor_with_hooks::<Fast>(hooks_arc(probe.clone()));
    let (front, back) = strict_pair(&hv, 2, bus_frames);
    grant(&hv, front, 0, back, GFN, false);
    grant(&hv, front, 1, back, Gfn(0), true);
    (hv, probe, front, back)
}

/// One bus frame. A read-write device mapping A holds it; vCPU 0 unmaps A and then lets its
/// device write to A's old bus address, while vCPU 1 maps ref 1 read-only for its device.
///
/// The map either gets the only BFN (A's, after A's unmap freed it: it must have seen the
/// unmap's IOTLB flush) or is refused with `no_device_space` (the BFN was still held or
/// deferred). The device write after the unmap returned never succeeds: no translation
/// (`NotMapped`) or the new read-only one (`ReadOnly`, only if the map got that BFN).
#[test]
fn map_vs_unmap_one_bfn() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, probe, front, back) = setup(1);
        let a = map_ok(&hv, back, 0, front, 0, GntMap::DEVICE_MAP, 0);
        let a_bus = a.dev_bus_addr;
        assert!(
            a_bus >= hv.config().machine.max_frames << 12,
            "per-map bus address above RAM: {a:?}"
        );
        probe.watch(hv.domain(back).expect("mapper exists"));

        let unmapper = {
            let hv = hv.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 0).unwrap();
                let st = unmap(&mut cx, a.handle, 0, a_bus);
                drop(cx);
                (st, hv.dma_write(back, a_bus, &[]))
            })
        };
        let mapper = spawn_map(&hv, back, 1, front, 1, DEV_RO, 0);
        let (st, dma) = unmapper.join().unwrap();
        let b = mapper.join().unwrap();

        assert_eq!(st, GntSt::Okay, "unmap of a live device mapping failed");
        let allocs = probe.seen();
        match b.status {
            GntSt::Okay => {
                assert_eq!(
                    b.dev_bus_addr, a_bus,
                    "one bus frame: the map must reuse A's"
                );
                assert_eq!(allocs.len(), 1, "one allocation recorded: {allocs:?}");
                assert!(
                    allocs[0].1 >= 1,
                    "BFN {a_bus:#x} handed out again before the IOTLB flush that invalidated it \
                     (allocations and flushes seen: {allocs:?})"
                );
                seen.record("BFN reused after the flush");
            }
            GntSt::NoDeviceSpace => {
                assert!(allocs.is_empty(), "refused map allocated a BFN: {allocs:?}");
                seen.record("refused: no device space");
            }
            other => panic!("map: unexpected status {other:?}: {b:?}"),
        }
        match dma {
            Err(DmaFault::NotMapped) => {}
            Err(DmaFault::ReadOnly) => assert!(
                b.status == GntSt::Okay && b.dev_bus_addr == a_bus,
                "a read-only translation at {a_bus:#x} without the new map owning it"
            ),
            other => panic!(
                "device access through {a_bus:#x} after its unmap returned: {other:?} (stale \
                 translation)"
            ),
        }
        hv.check().assert_ok();

        if b.status == GntSt::Okay {
            unmap_ok(&hv, back, 1, b.handle, 0, b.dev_bus_addr);
            assert_eq!(
                hv.dma_write(back, a_bus, &[]),
                Err(DmaFault::NotMapped),
                "translation survives the unmap"
            );
        }
        hv.check().assert_ok();
        for gref in [0, 1] {
            assert!(
                hv.guest(front).unwrap().end_access(GrantRef(gref)).unwrap(),
                "granter cannot end access to ref {gref} after every unmap"
            );
        }
    });
    outcomes.assert_seen(&["BFN reused after the flush", "refused: no device space"]);
}

/// Two bus frames, nothing mapped; vCPUs 0 and 1 map one ref each for their devices. The first
/// allocation loads the whole region (one magazine) into its vCPU's cache; the other vCPU,
/// finding its cache and the pool empty, drains that cache. Two BFNs are free, so both maps
/// must succeed (the allocator refuses only when no BFN is free anywhere, docs/design.md
/// section 6), with distinct bus addresses. This is the minimal form of the refusal first
/// found by [`map_unmap_vs_map_unmap`]: a magazine in flight between the pool and a cache
/// (moved in two critical sections) was invisible to the drain.
#[test]
fn map_vs_map_two_bfns() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, _probe, front, back) = setup(2);
        let roles: Vec<_> = [(0u16, 0u32, GntMap::DEVICE_MAP), (1, 1, DEV_RO)]
            .into_iter()
            .map(|(v, gref, flags)| {
                let hv = hv.clone();
                thread::spawn(move || {
                    let mut cx = hv.vcpu(back, v).unwrap();
                    map(&mut cx, front, gref, flags, 0)
                })
            })
            .collect();
        let r: Vec<MapGrantRef> = roles.into_iter().map(|t| t.join().unwrap()).collect();

        for (v, m) in r.iter().enumerate() {
            assert_eq!(
                m.status,
                GntSt::Okay,
                "vCPU {v}: map refused although a bus frame is free: {m:?}"
            );
        }
        assert_ne!(
            r[0].dev_bus_addr, r[1].dev_bus_addr,
            "two live mappings share a bus frame"
        );
        hv.check().assert_ok();
        seen.record(if r[0].dev_bus_addr < r[1].dev_bus_addr {
            "vCPU 0 got the first bus frame"
        } else {
            "vCPU 1 got the first bus frame"
        });
        for (v, m) in r.iter().enumerate() {
            unmap_ok(&hv, back, v as u16, m.handle, 0, m.dev_bus_addr);
        }
        hv.check().assert_ok();
    });
    outcomes.assert_seen(&[
        "vCPU 0 got the first bus frame",
        "vCPU 1 got the first bus frame",
    ]);
}

/// Two bus frames; vCPU 0 maps twice (its first allocation loads both BFNs into its cache,
/// its second pops the other one from it) while vCPU 1 maps once (its cache and the pool are
/// empty: it drains vCPU 0's cache, under that cache's lock). Three maps, two BFNs: exactly
/// one map is refused, vCPU 0's second or vCPU 1's (both reached), never vCPU 0's first, and
/// the two live mappings have distinct bus addresses (a BFN popped by its owner and also
/// taken by the drain would be installed twice).
#[test]
fn alloc_vs_drain() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, _probe, front, back) = setup(2);
        let owner = {
            let hv = hv.clone();
            thread::spawn(move || {
                let mut cx = hv.vcpu(back, 0).unwrap();
                let a = map(&mut cx, front, 0, GntMap::DEVICE_MAP, 0);
                let b = map(&mut cx, front, 0, GntMap::DEVICE_MAP, 0);
                [a, b]
            })
        };
        let drainer = spawn_map(&hv, back, 1, front, 1, DEV_RO, 0);
        let [a, b] = owner.join().unwrap();
        let c = drainer.join().unwrap();

        let all = [(0u16, &a), (0, &b), (1, &c)];
        let live: Vec<_> = all
            .iter()
            .filter(|(_, m)| m.status == GntSt::Okay)
            .collect();
        for (_, m) in &all {
            assert!(
                matches!(m.status, GntSt::Okay | GntSt::NoDeviceSpace),
                "unexpected status: {m:?}"
            );
        }
        assert_eq!(
            live.len(),
            2,
            "two bus frames, three maps: exactly one refusal: {a:?} {b:?} {c:?}"
        );
        assert_eq!(
            a.status,
            GntSt::Okay,
            "the first map of all cannot be refused: {a:?}"
        );
        assert_ne!(
            live[0].1.dev_bus_addr, live[1].1.dev_bus_addr,
            "two live mappings share a bus frame"
        );
        hv.check().assert_ok();
        seen.record(if c.status == GntSt::Okay {
            "vCPU 1 drained a BFN, vCPU 0's second map refused"
        } else {
            "vCPU 0 kept both, vCPU 1 refused"
        });
        for (v, m) in live {
            unmap_ok(&hv, back, *v, m.handle, 0, m.dev_bus_addr);
        }
        hv.check().assert_ok();
    });
    outcomes.assert_seen(&[
        "vCPU 1 drained a BFN, vCPU 0's second map refused",
        "vCPU 0 kept both, vCPU 1 refused",
    ]);
}

/// Two bus frames, two vCPUs, each mapping its own ref for its device, using the mapping, and
/// unmapping it: vCPU 0 a read-write mapping of ref 0, vCPU 1 a read-only mapping of ref 1.
///
/// At most two mappings are ever live and two BFNs exist, so neither map may be refused; while
/// both are live their bus addresses differ (each device access goes through the thread's own
/// translation, with its own permission); a BFN that both got (one after the other) was
/// handed out the second time only after the first owner's IOTLB flush; after each unmap
/// returns, the device cannot reach the old frame through the old address.
#[test]
fn map_unmap_vs_map_unmap() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let (hv, probe, front, back) = setup(2);
        probe.watch(hv.domain(back).expect("mapper exists"));

        let roles: Vec<_> = [(0u16, 0u32, GntMap::DEVICE_MAP), (1, 1, DEV_RO)]
            .into_iter()
            .map(|(v, gref, flags)| {
                let hv = hv.clone();
                thread::spawn(move || {
                    let mut cx = hv.vcpu(back, v).unwrap();
                    let m = map(&mut cx, front, gref, flags, 0);
                    if m.status != GntSt::Okay {
                        return (m, None);
                    }
                    // While mapped: the device reaches this thread's frame with this
                    // mapping's permission (read-write for vCPU 0, read-only for vCPU 1).
                    let live = hv.dma_write(back, m.dev_bus_addr, &[]);
                    let st = unmap(&mut cx, m.handle, 0, m.dev_bus_addr);
                    drop(cx);
                    // After the unmap: no translation, or the other thread's new one.
                    let after = hv.dma_write(back, m.dev_bus_addr, &[]);
                    (m, Some((live, st, after)))
                })
            })
            .collect();
        let r: Vec<_> = roles.into_iter().map(|t| t.join().unwrap()).collect();

        for (v, (m, rest)) in r.iter().enumerate() {
            assert_eq!(
                m.status,
                GntSt::Okay,
                "vCPU {v}: map refused although at most two mappings are live and two bus \
                 frames exist: {m:?}"
            );
            let (live, st, after) = rest.expect("mapped");
            let want_live = if v == 0 {
                Ok(())
            } else {
                Err(DmaFault::ReadOnly)
            };
            assert_eq!(
                live, want_live,
                "vCPU {v}: device access through its own live mapping at {:#x}",
                m.dev_bus_addr
            );
            assert_eq!(st, GntSt::Okay, "vCPU {v}: unmap failed");
            let other = &r[1 - v].0;
            match after {
                Err(DmaFault::NotMapped) => {}
                // Only vCPU 1's read-only mapping can be found at vCPU 0's old address.
                Err(DmaFault::ReadOnly) if v == 0 && other.dev_bus_addr == m.dev_bus_addr => {}
                Ok(()) if v == 1 && other.dev_bus_addr == m.dev_bus_addr => {}
                x => panic!(
                    "vCPU {v}: device access through {:#x} after its unmap returned: {x:?}",
                    m.dev_bus_addr
                ),
            }
        }
        let allocs = probe.seen();
        assert_eq!(allocs.len(), 2, "two allocations: {allocs:?}");
        if r[0].0.dev_bus_addr == r[1].0.dev_bus_addr {
            // One BFN served both, one after the other: the second allocation came after the
            // first owner's unmap, and must have seen its IOTLB flush.
            assert!(
                allocs[1].1 >= 1,
                "BFN {:#x} handed out again before the IOTLB flush that invalidated it \
                 (allocations and flushes seen: {allocs:?})",
                r[0].0.dev_bus_addr
            );
            seen.record("one BFN, reused after the flush");
        } else {
            seen.record("two distinct BFNs");
        }
        hv.check().assert_ok();
        for gref in [0, 1] {
            assert!(
                hv.guest(front).unwrap().end_access(GrantRef(gref)).unwrap(),
                "granter cannot end access to ref {gref} after every unmap"
            );
        }
    });
    outcomes.assert_seen(&["one BFN, reused after the flush", "two distinct BFNs"]);
}
