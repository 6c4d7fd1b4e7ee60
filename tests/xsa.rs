//! Adversarial scenarios from `xsa-scenarios.md` that concern map and unmap, run on every
//! design. Each scenario's "Expected" is turned into assertions, and the spec-13 invariants are
//! checked at the end (and at quiescent points in between).
//!
//! Threads use `std::thread::scope`; each enters its own vCPU. Iteration counts are small so
//! the whole file runs in a few seconds; the races are also explored exhaustively (bounded) by
//! the loom models in `model/`.

#[macro_use]
mod common;
use common::*;

use gnttab::abi::SHGNT_PER_PAGE_V1;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;

/// Sets the flag when dropped, so that a helper thread looping "until done" also stops when
/// the thread it waits for panics (instead of hanging the scope).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn adversarial(dom: DomId) -> CheckOptions {
    CheckOptions {
        adversarial: [dom].into(),
        ..CheckOptions::default()
    }
}

fn tampered(dom: DomId) -> CheckOptions {
    CheckOptions {
        tampered_page_tables: [dom].into(),
        ..CheckOptions::default()
    }
}

/// On designs with inline slots, occupies both slots of each ref with a device read-only map
/// (returned, to be unmapped at the end) so that further maps of these refs use maptrack
/// handles like the Xen design's.
fn occupy_slots<D: Design>(r: &Rig<D>, refs: &[GrantRef]) -> Vec<(GrantHandle, u64)> {
    let mut out = Vec::new();
    if slots::<D>() {
        let mut cx = r.cx();
        for &g in refs {
            for _ in 0..2 {
                let m = map1(&mut cx, r.a, g, DEV_RO, 0);
                assert_eq!(m.status, GntSt::Okay);
                assert!(is_fast(m.handle));
                out.push((m.handle, m.dev_bus_addr));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// XSA-218: races in the unmap code
// ---------------------------------------------------------------------------------------

/// XSA-218 (a), early release: with two mappings of g5, T1's unmap of the first pauses after
/// phase 1 (before its flush) while T2 unmaps the second completely. The granter's
/// end-access must fail until T1's phase 2 ran; B can still read through its stale
/// translation of V1 until T1's flush; whenever end-access succeeds no translation remains.
fn xsa218_early_release<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(5);
    r.ga().write_page(Gfn(5), 0, b"xsa-218").unwrap();
    r.grant(g, Gfn(5), false);
    let h1 = r.map_ok(g, HOST, va(1)).handle;
    let h2 = r.map_ok(g, HOST, va(2)).handle;
    if slots::<D>() {
        assert_eq!(h1, h2, "one fast handle for both mappings");
    }
    let (v1, v2) = (HostAddr::Linear(va(1)), HostAddr::Linear(va(2)));
    r.hooks
        .pause_once(Arm::at(HookPoint::UnmapBeforeFlush).dom(r.b).vcpu(0));
    r.hooks
        .pause_once(Arm::at(HookPoint::UnmapAfterFlush).dom(r.b).vcpu(0));
    let (ga, gb) = (r.ga(), r.gb());
    let t1_done = AtomicBool::new(false);
    thread::scope(|s| {
        let t1 = s.spawn(|| {
            let _done = SetOnDrop(&t1_done);
            let mut cx = r.vcpu(r.b, 0);
            unmap1(&mut cx, h1, va(1), 0)
        });
        // T3: the granter's end-access loop, with the oracle of the scenario.
        let t3 = s.spawn(|| {
            let mut buf = [0u8; 1];
            loop {
                let t1_finished = t1_done.load(Ordering::SeqCst);
                if ga.end_access(g).unwrap() {
                    assert_eq!(gb.read_mapped(v1, 0, &mut buf), Err(AccessFault::NotMapped));
                    assert_eq!(gb.read_mapped(v2, 0, &mut buf), Err(AccessFault::NotMapped));
                    return;
                }
                assert!(
                    !t1_finished,
                    "end-access still fails after both unmaps completed"
                );
                thread::yield_now();
            }
        });
        r.hooks.wait_parked(HookPoint::UnmapBeforeFlush);
        // T2 (vCPU 1) unmaps the other mapping, to completion.
        assert_eq!(unmap1(&mut r.vcpu(r.b, 1), h2, va(2), 0), GntSt::Okay);
        // T1's phase 2 is pending: the grant is still in use.
        assert_eq!(r.pins(g), [1, 0, 0, 0]);
        assert_eq!(r.status_bits(g), RW_BITS);
        assert!(!ga.end_access(g).unwrap());
        // B still reaches the page through T1's stale translation; T2 flushed its own.
        let mut buf = [0u8; 7];
        gb.read_mapped(v1, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"xsa-218");
        assert_eq!(gb.read_mapped(v2, 0, &mut buf), Err(AccessFault::NotMapped));
        r.hooks.release(HookPoint::UnmapBeforeFlush);
        r.hooks.wait_parked(HookPoint::UnmapAfterFlush);
        // Flushed, phase 2 not yet run: no translation, grant still in use.
        assert_eq!(gb.read_mapped(v1, 0, &mut buf), Err(AccessFault::NotMapped));
        assert_eq!(r.pins(g), [1, 0, 0, 0]);
        assert_eq!(r.status_bits(g), RW_BITS);
        assert!(!ga.end_access(g).unwrap());
        r.hooks.release(HookPoint::UnmapAfterFlush);
        assert_eq!(t1.join().unwrap(), GntSt::Okay);
        t3.join().unwrap();
    });
    assert_eq!(r.pins(g), [0; 4]);
    assert_eq!(ga.entry_snapshot(g).unwrap().flags, 0, "T3 ended access");
    r.check();
}

/// XSA-218 (b), double free: two partial unmaps of one host|device handle race on two vCPUs.
/// Both succeed, the pins return to 0 only after both, and the record is freed exactly once
/// (the checker validates the free lists: no handle twice, free + used = limit).
fn xsa218_partial_unmap_race<D: Design>() {
    const ITERS: usize = 150;
    let r = Rig::<D>::new();
    let g = GrantRef(5);
    let mfn = r.mfn(r.a, Gfn(5));
    r.grant(g, Gfn(5), false);
    let base = r.counts(mfn);
    let barrier = Barrier::new(2);
    let unmaps0 = r.hv.domain(r.b).unwrap().stats().unmaps;
    for i in 0..ITERS {
        let m = r.map_ok(g, HOST_DEV, va(0));
        let d = m.dev_bus_addr;
        let (s1, s2) = thread::scope(|s| {
            let t1 = s.spawn(|| {
                let mut cx = r.vcpu(r.b, 0);
                barrier.wait();
                unmap1(&mut cx, m.handle, va(0), 0)
            });
            let t2 = s.spawn(|| {
                let mut cx = r.vcpu(r.b, 1);
                barrier.wait();
                unmap1(&mut cx, m.handle, 0, d)
            });
            (t1.join().unwrap(), t2.join().unwrap())
        });
        assert_eq!((s1, s2), (GntSt::Okay, GntSt::Okay), "iteration {i}");
        assert_eq!(r.pins(g), [0; 4]);
        assert_eq!(r.status_bits(g), 0);
        assert_eq!(r.counts(mfn), base);
        assert_eq!(r.unmap(m.handle, va(0), d), GntSt::BadHandle);
        if i % 25 == 0 {
            r.check();
        }
    }
    assert_eq!(
        r.hv.domain(r.b).unwrap().stats().unmaps - unmaps0,
        2 * ITERS as u64
    );
    // Later maps get distinct handles, and the freed records are reusable.
    let ms: Vec<_> = (0..4u32)
        .map(|i| {
            r.grant(GrantRef(20 + i), Gfn(20 + i as u64), false);
            r.map_ok(GrantRef(20 + i), HOST_DEV, va(10 + i as u64))
        })
        .collect();
    assert_eq!(
        ms.iter().map(|m| m.handle).collect::<BTreeSet<_>>().len(),
        4
    );
    r.check();
    for (i, m) in ms.iter().enumerate() {
        r.unmap_ok(m.handle, va(10 + i as u64), m.dev_bus_addr);
    }
    r.check();
}

/// XSA-218 (c), publication: vCPU 0 uses every handle of the first maptrack page, then maps
/// more (growing the table to 512) while vCPU 1 keeps unmapping handles 256..511. vCPU 1 gets
/// `bad_handle` or acts on a fully initialised mapping, never anything else.
fn xsa218_unmap_during_maptrack_growth<D: Design>() {
    let r = Rig::<D>::new();
    let refs: Vec<GrantRef> = (8..72).map(GrantRef).collect();
    for &g in &refs {
        r.grant(g, Gfn(g.0 as u64), false);
    }
    let big = GrantRef(100);
    r.grant(big, Gfn(100), false);
    let bus_big = r.mfn(r.a, Gfn(100)).addr();
    // On slot designs `big`'s two inline slots are occupied too, so its maps below need
    // maptrack handles.
    let mut fixed = occupy_slots(&r, &[&refs[..], &[big]].concat());
    assert_eq!(r.hv.domain(r.b).unwrap().maptrack_limit(), 256);
    // vCPU 0 uses the 255 usable handles of page 0 (one is its free list's sentinel).
    let mut cx = r.cx();
    for i in 0..255 {
        let g = refs[i % refs.len()];
        let m = map1(&mut cx, r.a, g, DEV_RO, 0);
        assert_eq!(m.status, GntSt::Okay, "fill {i}");
        assert!(!is_fast(m.handle) && m.handle.0 < 256);
        fixed.push((m.handle, m.dev_bus_addr));
    }
    drop(cx);
    assert_eq!(r.hv.domain(r.b).unwrap().maptrack_limit(), 256);
    let t1_done = AtomicBool::new(false);
    let (mapped, unmapped) = thread::scope(|s| {
        let t1 = s.spawn(|| {
            let _done = SetOnDrop(&t1_done);
            let mut cx = r.vcpu(r.b, 0);
            let mut hs = Vec::new();
            for k in 0..40 {
                let m = map1(&mut cx, r.a, big, DEV_RO, 0);
                assert_eq!(m.status, GntSt::Okay, "growth map {k}");
                hs.push(m.handle);
            }
            hs
        });
        let t2 = s.spawn(|| {
            let mut cx = r.vcpu(r.b, 1);
            let mut got = Vec::new();
            loop {
                let last = t1_done.load(Ordering::SeqCst);
                for h in 256..512 {
                    match unmap1(&mut cx, GrantHandle(h), 0, bus_big) {
                        GntSt::Okay => got.push(GrantHandle(h)),
                        GntSt::BadHandle => {}
                        st => panic!("unmap of handle {h} during growth returned {st:?}"),
                    }
                }
                if last {
                    return got;
                }
            }
        });
        (t1.join().unwrap(), t2.join().unwrap())
    });
    assert_eq!(r.hv.domain(r.b).unwrap().maptrack_limit(), 512);
    assert!(
        mapped.iter().all(|h| (256..512).contains(&h.0)),
        "{mapped:?}"
    );
    let mapped_set: BTreeSet<_> = mapped.iter().copied().collect();
    assert_eq!(
        mapped_set.len(),
        mapped.len(),
        "duplicate handles: {mapped:?}"
    );
    let unmapped_set: BTreeSet<_> = unmapped.iter().copied().collect();
    assert_eq!(
        unmapped_set.len(),
        unmapped.len(),
        "a handle unmapped twice: {unmapped:?}"
    );
    assert!(unmapped_set.is_subset(&mapped_set));
    let live: Vec<_> = mapped_set.difference(&unmapped_set).copied().collect();
    let prefill = if slots::<D>() { 2 } else { 0 };
    assert_eq!(r.pins(big), [0, 0, 0, (live.len() + prefill) as u32]);
    r.check();
    let mut cx = r.cx();
    for h in live {
        assert_eq!(unmap1(&mut cx, h, 0, bus_big), GntSt::Okay);
    }
    for (h, d) in fixed {
        assert_eq!(unmap1(&mut cx, h, 0, d), GntSt::Okay);
    }
    drop(cx);
    for &g in refs.iter().chain([&big]) {
        assert_eq!(r.pins(g), [0; 4]);
        assert!(r.ga().end_access(g).unwrap());
    }
    r.check();
}

// ---------------------------------------------------------------------------------------
// XSA-224: reference counting in map/unmap
// ---------------------------------------------------------------------------------------

/// XSA-224 steps 1-7 and 9. (Step 8, MMIO frames owned by DOMID_IO, is not modelled: the
/// simulator has no I/O memory, so there is no device-only MMIO map to check.)
fn xsa224_reference_counting<D: Design>() {
    let r = Rig::<D>::new();
    let g7 = GrantRef(7);
    let mfn = r.mfn(r.a, Gfn(7));
    r.grant(g7, Gfn(7), false);
    r.grant(GrantRef(8), Gfn(8), false);
    let (r0, t0) = r.counts(mfn);
    let v = va(0);
    // 1.
    let m = r.map_ok(g7, HOST_DEV, v);
    let (h, d) = (m.handle, m.dev_bus_addr);
    assert_eq!(r.counts(mfn), (r0 + 2, t0 + 2));
    // 2. Naming no part: ten successful no-ops.
    let raw = r.hv.snapshot();
    for _ in 0..10 {
        assert_eq!(r.unmap(h, 0, 0), GntSt::Okay);
    }
    assert_eq!(r.hv.snapshot(), raw);
    // 3. A wrong device address (the low bits count).
    assert_eq!(r.unmap(h, 0, d + 1), GntSt::BadDevAddr);
    assert_eq!(r.hv.snapshot(), raw);
    // 4. The host part only.
    assert_eq!(r.unmap(h, v, 0), GntSt::Okay);
    assert_eq!(r.counts(mfn), (r0 + 1, t0 + 1));
    assert!(!r.gb().pte(HostAddr::Linear(v)).unwrap().present());
    assert_eq!(r.pins(g7), [0, 0, 1, 0]);
    r.check();
    // 5. Again: the host part is gone, so this is a no-op.
    let raw = r.hv.snapshot();
    assert_eq!(r.unmap(h, v, 0), GntSt::Okay);
    assert_eq!(r.hv.snapshot(), raw);
    // 6. The device part: everything back, handle freed.
    assert_eq!(r.unmap(h, 0, d), GntSt::Okay);
    assert_eq!(r.counts(mfn), (r0, t0));
    assert_eq!(r.pins(g7), [0; 4]);
    assert_eq!(r.status_bits(g7), 0);
    assert_eq!(r.unmap(h, 0, d), GntSt::BadHandle);
    r.check();
    // 7. Type counts: device-only writable.
    let m = r.map_ok(g7, DEV, 0);
    assert_eq!(r.counts(mfn), (r0 + 1, t0 + 1));
    r.unmap_ok(m.handle, 0, m.dev_bus_addr);
    assert_eq!(r.counts(mfn), (r0, t0));
    // 9. Completion is all-or-nothing: a host address that does not map the frame fails the
    //    whole element, device part included.
    let m = r.map_ok(g7, HOST_DEV, v);
    let other = r.map_ok(GrantRef(8), HOST, va(1));
    let before = r.snap();
    for wrong in [va(1), va(2)] {
        assert_eq!(
            r.unmap(m.handle, wrong, m.dev_bus_addr),
            GntSt::GeneralError
        );
    }
    r.assert_unchanged(&before);
    assert_eq!(r.counts(mfn), (r0 + 2, t0 + 2));
    assert_eq!(r.pins(g7), [1, 0, 1, 0]);
    r.unmap_ok(m.handle, v, m.dev_bus_addr);
    r.unmap_ok(other.handle, va(1), 0);
    assert_eq!(r.counts(mfn), (r0, t0));
    r.check();

    // 7, HVM granter: a writable host map takes no type reference, a writable device map does.
    let r = Rig::<D>::build(|c| c.a.kind = DomainKind::Hvm);
    let mfn = r.mfn(r.a, Gfn(7));
    r.grant(g7, Gfn(7), false);
    let (r0, t0) = r.counts(mfn);
    let hm = r.map_ok(g7, HOST, v);
    assert_eq!(r.counts(mfn), (r0 + 1, t0));
    let dm = r.map_ok(g7, DEV, 0);
    assert_eq!(r.counts(mfn), (r0 + 2, t0 + 1));
    r.check();
    r.unmap_ok(hm.handle, v, 0);
    r.unmap_ok(dm.handle, 0, dm.dev_bus_addr);
    assert_eq!(r.counts(mfn), (r0, t0));
    r.check();
}

// ---------------------------------------------------------------------------------------
// XSA-227, XSA-228, XSA-234
// ---------------------------------------------------------------------------------------

/// XSA-227: misaligned `contains_pte` addresses fail with no host mapping, no pin and no
/// handle consumed; P+8 works. A translated mapper cannot use `contains_pte` at all.
fn xsa227_misaligned_pte<D: Design>() {
    let r = Rig::<D>::new();
    let g1 = GrantRef(1);
    r.grant(g1, Gfn(1), false);
    let p = 0x2_0000u64;
    let f = HOST | GntMap::CONTAINS_PTE;
    let before = r.snap();
    for off in [4, 1, 7] {
        assert_eq!(r.map(g1, f, p + off).status, GntSt::GeneralError, "P+{off}");
        assert_eq!(r.pins(g1), [0; 4]);
        assert!(!r.gb().pte(HostAddr::Pte(p)).unwrap().present());
        assert!(!r.gb().pte(HostAddr::Pte(p + 8)).unwrap().present());
    }
    r.assert_unchanged(&before);
    let m = r.map_ok(g1, f, p + 8);
    let pte = r.gb().pte(HostAddr::Pte(p + 8)).unwrap();
    assert!(pte.present() && pte.is_grant() && pte.mfn() == r.mfn(r.a, Gfn(1)));
    assert!(!r.gb().pte(HostAddr::Pte(p)).unwrap().present());
    assert!(!r.gb().pte(HostAddr::Pte(p + 16)).unwrap().present());
    r.unmap_ok(m.handle, p + 8, 0);
    r.check();

    let r = Rig::<D>::build(|c| c.b.kind = DomainKind::Hvm);
    r.grant(g1, Gfn(1), false);
    let raw = r.hv.snapshot();
    for addr in [p, p + 4, p + 8] {
        for flags in [f, f | GntMap::READONLY] {
            assert_eq!(r.map(g1, flags, addr).status, GntSt::GeneralError);
        }
    }
    assert_eq!(r.hv.snapshot(), raw);
    r.check();
}

/// XSA-228: maptrack free-list races with stealing. The mapper has `max_maptrack_frames = 2`
/// (512 handles); vCPU 0 fills the table; then T0 (vCPU 0) maps and unmaps in a loop, T1
/// (vCPU 1) maps in a loop, stealing free entries from vCPU 0's list, and T2 unmaps handles
/// owned by vCPU 0 (they go back to vCPU 0's tail). The scenario puts T1 and T2 on one vCPU;
/// a vCPU runs one context at a time, so T2 runs on a third vCPU that never maps (its free
/// list stays uninitialised, which is the same situation for the lists involved).
///
/// Live handles stay pairwise distinct, the checker's free-list invariants hold, and mapping
/// beyond capacity gives `no_space`.
fn xsa228_free_list_races<D: Design>() {
    const LOOPS: usize = 300;
    // MapLimit::Off: on designs with inline slots the map quota would otherwise count the
    // inline maps that `occupy_slots` makes against the 512; this scenario is about the
    // maptrack free lists.
    let r = Rig::<D>::build(|c| {
        c.b.vcpus = 3;
        c.b.max_maptrack_frames = 2;
        c.b.map_limit = MapLimit::Off;
    });
    let refs: Vec<GrantRef> = (8..72).map(GrantRef).collect();
    let bus: BTreeMap<GrantRef, u64> = refs
        .iter()
        .map(|&g| {
            r.grant(g, Gfn(g.0 as u64), false);
            (g, r.mfn(r.a, Gfn(g.0 as u64)).addr())
        })
        .collect();
    let fast = occupy_slots(&r, &refs);
    let pick = |i: usize| refs[i % refs.len()];

    // 1. vCPU 0 maps until the table is full.
    let mut fill = Vec::new();
    let mut cx = r.cx();
    let last = loop {
        let g = pick(fill.len());
        let m = map1(&mut cx, r.a, g, DEV_RO, 0);
        if m.status != GntSt::Okay {
            break m.status;
        }
        assert!(!is_fast(m.handle));
        fill.push((m.handle, g));
    };
    drop(cx);
    assert_eq!(last, GntSt::NoSpace);
    assert_eq!(r.hv.domain(r.b).unwrap().maptrack_limit(), 512);
    assert_eq!(fill.len(), 511, "512 handles minus vCPU 0's sentinel");
    r.check();

    // Deterministic steal: free ten handles from vCPU 2, then vCPU 1 (uninitialised list)
    // steals a sentinel and one entry, which becomes its own.
    let mut cx2 = r.vcpu(r.b, 2);
    for (h, g) in fill.drain(..10) {
        assert_eq!(unmap1(&mut cx2, h, 0, bus[&g]), GntSt::Okay);
    }
    drop(cx2);
    let g = pick(0);
    let stolen = map1(&mut r.vcpu(r.b, 1), r.a, g, DEV_RO, 0);
    assert_eq!(stolen.status, GntSt::Okay);
    let snap = r.hv.snapshot();
    assert_eq!(
        snap.domains[&r.b].maptrack[&stolen.handle.0].vcpu, 1,
        "stolen entry belongs to the thief"
    );
    r.check();

    // 2. The race.
    let keep: Vec<_> = fill.drain(..250).collect();
    let to_unmap = fill;
    let barrier = Barrier::new(3);
    let t1_maps = thread::scope(|s| {
        s.spawn(|| {
            let mut cx = r.vcpu(r.b, 0);
            barrier.wait();
            for i in 0..LOOPS {
                let g = pick(i);
                let m = map1(&mut cx, r.a, g, DEV_RO, 0);
                match m.status {
                    GntSt::Okay => assert_eq!(unmap1(&mut cx, m.handle, 0, bus[&g]), GntSt::Okay),
                    GntSt::NoSpace => {}
                    st => panic!("T0 map: {st:?}"),
                }
            }
        });
        let t1 = s.spawn(|| {
            let mut cx = r.vcpu(r.b, 1);
            barrier.wait();
            let mut got = Vec::new();
            for i in 0..LOOPS {
                let g = pick(i + 7);
                let m = map1(&mut cx, r.a, g, DEV_RO, 0);
                match m.status {
                    GntSt::Okay => got.push((m.handle, g)),
                    GntSt::NoSpace => {}
                    st => panic!("T1 map: {st:?}"),
                }
            }
            got
        });
        s.spawn(|| {
            let mut cx = r.vcpu(r.b, 2);
            barrier.wait();
            for &(h, g) in &to_unmap {
                assert_eq!(unmap1(&mut cx, h, 0, bus[&g]), GntSt::Okay);
            }
        });
        t1.join().unwrap()
    });
    let mut live: Vec<(GrantHandle, GrantRef)> = keep;
    live.push((stolen.handle, g));
    live.extend(t1_maps);
    let hs: BTreeSet<_> = live.iter().map(|(h, _)| *h).collect();
    assert_eq!(hs.len(), live.len(), "two live mappings share a handle");
    let snap = r.hv.snapshot();
    let recorded: BTreeMap<GrantHandle, GrantRef> = snap.domains[&r.b]
        .maptrack
        .iter()
        .map(|(&h, m)| (GrantHandle(h), m.gref))
        .collect();
    assert_eq!(recorded, live.iter().copied().collect::<BTreeMap<_, _>>());
    r.check();

    // 3. Fill to capacity from every vCPU: then every handle but one sentinel per initialised
    //    free list is in use, and further maps get no_space.
    for v in 0..3 {
        let mut cx = r.vcpu(r.b, v);
        loop {
            let g = pick(live.len());
            let m = map1(&mut cx, r.a, g, DEV_RO, 0);
            if m.status == GntSt::NoSpace {
                break;
            }
            assert_eq!(m.status, GntSt::Okay);
            live.push((m.handle, g));
        }
    }
    let snap = r.hv.snapshot();
    let lists = &snap.domains[&r.b].free_lists;
    let initialised = lists.iter().filter(|l| l.0 != u32::MAX).count();
    assert!(
        lists
            .iter()
            .all(|l| l.2.len() == (l.0 != u32::MAX) as usize),
        "only sentinels left: {lists:?}"
    );
    assert_eq!(live.len(), 512 - initialised);
    for v in 0..3 {
        assert_eq!(
            map1(&mut r.vcpu(r.b, v), r.a, pick(v as usize), DEV_RO, 0).status,
            GntSt::NoSpace
        );
    }
    let hs: BTreeSet<_> = live.iter().map(|(h, _)| *h).collect();
    assert_eq!(hs.len(), live.len());
    r.check();

    let mut cx = r.cx();
    for (h, g) in live {
        assert_eq!(unmap1(&mut cx, h, 0, bus[&g]), GntSt::Okay);
    }
    for (h, d) in fast {
        assert_eq!(unmap1(&mut cx, h, 0, d), GntSt::Okay);
    }
    drop(cx);
    for &g in &refs {
        assert_eq!(r.pins(g), [0; 4]);
    }
    r.check();
}

/// XSA-234: unmap validates the PTE's present and RW bits, not only its frame. A PTE the guest
/// rewrote to read-only, not-present or another frame makes the unmap fail with nothing
/// changed; restored, it succeeds. Xen does not record the map-time address: an address
/// mapping the same frame with the same rights through another mapping is accepted and the
/// accounting stays consistent.
fn xsa234_pte_permissions<D: Design>() {
    let r = Rig::<D>::new();
    let g1 = GrantRef(11);
    let mfn = r.mfn(r.a, Gfn(11));
    let other = r.mfn(r.a, Gfn(12));
    r.grant(g1, Gfn(11), false);
    let base = r.counts(mfn);
    let gb = r.gb();
    let v = HostAddr::Linear(va(0));
    let m = r.map_ok(g1, HOST, va(0));
    let good = gb.pte(v).unwrap();
    assert_eq!(good, Pte::grant(mfn, true, false));
    for bad in [
        Pte::grant(mfn, false, false),
        Pte(0),
        Pte(good.0 & !Pte::PRESENT),
        Pte::grant(other, true, false),
    ] {
        assert_eq!(gb.set_pte_raw(v, bad), Some(good));
        let before = r.snap();
        assert_eq!(r.unmap(m.handle, va(0), 0), GntSt::GeneralError, "{bad:?}");
        assert_eq!(r.snap(), before, "{bad:?}");
        r.hv.check_with(&tampered(r.b)).assert_ok();
        assert_eq!(r.pins(g1), [1, 0, 0, 0]);
        assert_eq!(r.counts(mfn), (base.0 + 1, base.1 + 1));
        // The handle is still live.
        assert_eq!(r.unmap(m.handle, 0, 0), GntSt::Okay);
        gb.set_pte_raw(v, good);
        r.check();
    }
    r.unmap_ok(m.handle, va(0), 0);
    assert_eq!(r.counts(mfn), base);
    r.check();

    // Another address with the same frame and rights (mapped through another handle).
    let h1 = r.map_ok(g1, HOST, va(1));
    let filler = r.map_ok(g1, HOST, va(3));
    let h2 = r.map_ok(g1, HOST, va(2));
    if slots::<D>() {
        assert_eq!(h1.handle, filler.handle);
        assert!(!is_fast(h2.handle));
    }
    assert_ne!(h1.handle, h2.handle);
    r.unmap_ok(h1.handle, va(2), 0);
    assert!(!gb.pte(HostAddr::Linear(va(2))).unwrap().present());
    assert!(gb.pte(HostAddr::Linear(va(1))).unwrap().present());
    assert_eq!(r.pins(g1), [2, 0, 0, 0]);
    assert_eq!(r.counts(mfn), (base.0 + 2, base.1 + 2));
    r.check();
    // h2's mapping is now the PTE at V1 as far as the accounting goes.
    r.unmap_ok(h2.handle, va(1), 0);
    r.check();
    r.unmap_ok(filler.handle, va(3), 0);
    assert_eq!(r.pins(g1), [0; 4]);
    assert_eq!(r.counts(mfn), base);
    assert!(r.ga().end_access(g1).unwrap());
    r.check();
}

// ---------------------------------------------------------------------------------------
// XSA-295, XSA-380, XSA-134, XSA-24
// ---------------------------------------------------------------------------------------

/// XSA-295: a granter thread flips its entry's flags continuously (permit_access vs
/// permit_access|readonly, then vs permit_access|reading) while the mapper maps and unmaps
/// 1000 times. Every map returns (okay or general_error), every unmap of a successful map
/// succeeds, and once the granter restores and ends the grant everything is clean.
fn xsa295_flag_flipping<D: Design>() {
    for flip in [gtf::READONLY, gtf::READING] {
        let r = Rig::<D>::new();
        let g = GrantRef(13);
        let mfn = r.mfn(r.a, Gfn(13));
        r.grant(g, Gfn(13), false);
        let base = r.counts(mfn);
        let stop = AtomicBool::new(false);
        let (ok, err) = thread::scope(|s| {
            s.spawn(|| {
                let ga = r.ga();
                let mut k = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let f = gtf::PERMIT_ACCESS | if k % 2 == 0 { 0 } else { flip };
                    ga.write_entry_flags(g, f).unwrap();
                    k = k.wrapping_add(1);
                    if k % 64 == 0 {
                        thread::yield_now();
                    }
                }
            });
            let _stop = SetOnDrop(&stop);
            let mut cx = r.cx();
            let (mut ok, mut err) = (0, 0);
            for i in 0..1000 {
                let m = map1(&mut cx, r.a, g, HOST, va(0));
                match m.status {
                    GntSt::Okay => {
                        assert_eq!(
                            unmap1(&mut cx, m.handle, va(0), 0),
                            GntSt::Okay,
                            "unmap {i}"
                        );
                        ok += 1;
                    }
                    GntSt::GeneralError => err += 1,
                    st => panic!("map {i} under flag flipping returned {st:?}"),
                }
            }
            (ok, err)
        });
        assert_eq!(ok + err, 1000);
        assert_eq!(r.pins(g), [0; 4]);
        assert_eq!(r.counts(mfn), base);
        r.hv.check_with(&adversarial(r.a)).assert_ok();
        r.grant(g, Gfn(13), false);
        assert!(r.ga().end_access(g).unwrap());
        assert_eq!(r.ga().entry_snapshot(g).unwrap().flags, 0);
        r.check();
    }
}

/// XSA-380 mitigation knob: `max_maptrack_frames = 0` makes every map fail with `no_space`
/// and change nothing, on every design with its default map limit (designs with inline slots
/// enforce `max_maptrack_frames * 256` live maps through their map quota, src/quota.rs), self
/// grants included.
///
/// With `MapLimit::Off` the inline slots escape the knob: two concurrent maps per grant are
/// recorded in the active entry (see api.rs `map_no_maptrack_space`); anything that needs a
/// maptrack handle (a third map, a ref that does not fit a fast handle) still gets `no_space`.
fn xsa380_no_maptrack<D: Design>() {
    for limit in [MapLimit::Default, MapLimit::Off] {
        let r = Rig::<D>::build(|c| {
            c.b.max_maptrack_frames = 0;
            c.b.map_limit = limit;
            c.a.max_grant_frames = 130;
        });
        r.grow(r.a, 129);
        let hi = GrantRef((1 << 16) + 1);
        for g in [GrantRef(20), GrantRef(21), hi] {
            r.grant(g, Gfn(20), false);
        }
        r.gb()
            .grant_access(GrantRef(3), r.b, Gfn(3), false)
            .unwrap();
        let inline = slots::<D>() && limit == MapLimit::Off;
        let mut live = Vec::new();
        if inline {
            let m1 = r.map_ok(GrantRef(20), HOST, va(0));
            let m2 = r.map_ok(GrantRef(20), DEV_RO, 0);
            assert_eq!(m1.handle, m2.handle);
            live.push((m1.handle, va(0), 0));
            live.push((m2.handle, 0, m2.dev_bus_addr));
        }
        let before = r.snap();
        for (g, flags) in [(GrantRef(20), HOST_RO), (hi, HOST), (hi, DEV_RO)] {
            assert_eq!(
                r.map(g, flags, va(1)).status,
                GntSt::NoSpace,
                "{limit:?} {g:?} {flags:?}"
            );
        }
        r.assert_unchanged(&before);
        if !inline {
            assert_eq!(r.map(GrantRef(20), HOST, va(0)).status, GntSt::NoSpace);
            assert_eq!(r.map(GrantRef(21), DEV, 0).status, GntSt::NoSpace);
            assert_eq!(
                map1(&mut r.cx(), r.b, GrantRef(3), HOST, va(2)).status,
                GntSt::NoSpace
            );
            r.assert_unchanged(&before);
        } else {
            let m = r.map_ok(GrantRef(21), DEV, 0);
            live.push((m.handle, 0, m.dev_bus_addr));
            let s = map1(&mut r.cx(), r.b, GrantRef(3), HOST, va(2));
            assert_eq!(s.status, GntSt::Okay);
            live.push((s.handle, va(2), 0));
        }
        assert_eq!(r.hv.domain(r.b).unwrap().maptrack_limit(), 0);
        for (h, a, d) in live {
            r.unmap_ok(h, a, d);
        }
        r.check();
    }
}

/// XSA-134-like: a freshly created granter (no setup_table) has a valid v1 table of one frame;
/// mapping an entry it never wrote fails cleanly (`GTF_invalid`).
fn xsa134_fresh_table<D: Design>() {
    let r = Rig::<D>::new();
    let mut cx = r.vcpu(r.a, 0);
    let mut q = [QuerySize {
        dom: DomId::SELF,
        ..QuerySize::default()
    }];
    cx.query_size(&mut q).unwrap();
    assert_eq!(
        (q[0].status, q[0].nr_frames, q[0].max_nr_frames),
        (GntSt::Okay, 1, 64)
    );
    drop(cx);
    assert_eq!(
        r.ga().entry_snapshot(GrantRef(0)).unwrap(),
        EntrySnapshot::default()
    );
    let before = r.snap();
    for flags in [HOST, HOST_RO, DEV, HOST_DEV_RO] {
        assert_eq!(
            r.map(GrantRef(0), flags, va(0)).status,
            GntSt::GeneralError,
            "{flags:?}"
        );
        assert_eq!(
            r.map(GrantRef(SHGNT_PER_PAGE_V1 - 1), flags, va(0)).status,
            GntSt::GeneralError
        );
    }
    r.assert_unchanged(&before);
    let mut cx = r.vcpu(r.a, 0);
    let mut s = [SetupTable {
        dom: DomId::SELF,
        nr_frames: 1,
        ..SetupTable::default()
    }];
    cx.setup_table(&mut s).unwrap();
    assert_eq!((s[0].status, s[0].frame_list.len()), (GntSt::Okay, 1));
    drop(cx);
    r.assert_unchanged(&before);
}

/// XSA-24-like: batches of 0, 1, 33 and 1000 elements for map and unmap all return, with every
/// element's status written (pre-filled with a value neither op returns).
fn xsa24_batches<D: Design>() {
    const UNSET: GntSt = GntSt::NoDeviceSpace;
    let r = Rig::<D>::new();
    r.grow(r.a, 2);
    for i in 0..1000u32 {
        r.grant(GrantRef(8 + i), Gfn(10 + (i % 200) as u64), false);
    }
    let bad = |i: usize| i % 7 == 3;
    for n in [0usize, 1, 33, 1000] {
        let mut ops: Vec<_> = (0..n)
            .map(|i| {
                let g = if bad(i) {
                    GrantRef(60_000)
                } else {
                    GrantRef(8 + i as u32)
                };
                MapGrantRef {
                    status: UNSET,
                    handle: GrantHandle(0xDEAD_BEEF),
                    dev_bus_addr: u64::MAX,
                    ..MapGrantRef::new(r.a, g, HOST, va(i as u64))
                }
            })
            .collect();
        r.cx().map_grant_ref(&mut ops).unwrap();
        for (i, o) in ops.iter().enumerate() {
            if bad(i) {
                assert_eq!(o.status, GntSt::BadGntref, "map {i} of {n}");
            } else {
                assert_eq!(o.status, GntSt::Okay, "map {i} of {n}");
                assert_ne!(o.handle, GrantHandle(0xDEAD_BEEF));
                assert_eq!(
                    o.dev_bus_addr,
                    r.mfn(r.a, Gfn(10 + (i % 200) as u64)).addr()
                );
            }
        }
        r.check();
        let mut un: Vec<_> = ops
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let h = if bad(i) {
                    GrantHandle(0x7FFF_FFF0)
                } else {
                    o.handle
                };
                UnmapGrantRef {
                    status: UNSET,
                    ..UnmapGrantRef::new(h, o.host_addr, 0)
                }
            })
            .collect();
        let f0 = r.flushes(r.b);
        r.cx().unmap_grant_ref(&mut un).unwrap();
        assert_eq!(r.flushes(r.b) - f0, n.div_ceil(32) as u64);
        for (i, u) in un.iter().enumerate() {
            let want = if bad(i) {
                GntSt::BadHandle
            } else {
                GntSt::Okay
            };
            assert_eq!(u.status, want, "unmap {i} of {n}");
        }
        r.check();
    }
}

design_tests!(
    xsa218_early_release,
    xsa218_partial_unmap_race,
    xsa218_unmap_during_maptrack_growth,
    xsa224_reference_counting,
    xsa227_misaligned_pte,
    xsa228_free_list_races,
    xsa234_pte_permissions,
    xsa295_flag_flipping,
    xsa380_no_maptrack,
    xsa134_fresh_table,
    xsa24_batches,
);
