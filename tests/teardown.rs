//! Conformance suite for domain teardown (spec 11, docs/design.md section 7), run on every
//! design.
//!
//! * The dying domain as mapper: `Teardown::step` releases every mapping it holds (fast slots,
//!   maptrack records, host, device, IOMMU, own grants) exactly as unmap would: pins back to 0,
//!   status bits cleared so the granter's end-access succeeds, page and type references back
//!   to their baselines; every step visits at most 256 records and the invariants hold after
//!   every step; the dying domain's own hypercalls fail with `-ESRCH`.
//! * The dying domain as granter: a zombie (`DomainState::Dead`, still registered) while a
//!   mapper holds its pages; new maps of it fail; the mapper's unmaps work and the last one
//!   destroys it; frames are freed only when their last reference goes.
//! * Killing twice, queries during a teardown, a teardown racing other domains' traffic, and
//!   the cost of a teardown (records visited) independent of other domains' table sizes.

#[macro_use]
mod common;
use common::*;

use gnttab::teardown::CHUNK;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// Sets the flag when dropped (stops helper loops even if the main thread panics).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Every hypercall of `dom` (each vCPU) fails with `-ESRCH` and leaves its outputs alone.
#[track_caller]
fn assert_srch<D: Design>(r: &Rig<D>, dom: DomId) {
    let nr = r.hv.domain(dom).expect("registered").nr_vcpus();
    for v in 0..nr {
        let mut cx =
            r.hv.vcpu(dom, v)
                .expect("a dying domain's vCPU can be entered");
        let mut m = [MapGrantRef::new(r.a, GrantRef(1), HOST, va(900))];
        m[0].status = GntSt::AddressTooBig;
        assert_eq!(cx.map_grant_ref(&mut m), Err(Errno::Srch));
        assert_eq!(m[0].status, GntSt::AddressTooBig);
        let mut u = [UnmapGrantRef::new(GrantHandle(0), va(900), 0)];
        u[0].status = GntSt::AddressTooBig;
        assert_eq!(cx.unmap_grant_ref(&mut u), Err(Errno::Srch));
        assert_eq!(u[0].status, GntSt::AddressTooBig);
        let mut c = [cp_ff(Gfn(1), 0, Gfn(2), 0, 8)];
        c[0].status = GntSt::AddressTooBig;
        assert_eq!(cx.copy(&mut c), Err(Errno::Srch));
        assert_eq!(c[0].status, GntSt::AddressTooBig);
        assert_eq!(cx.grant_table_op(GnttabOp::Copy(&mut c)), Err(Errno::Srch));
        let mut s = [SetupTable {
            dom: DomId::SELF,
            nr_frames: 2,
            ..SetupTable::default()
        }];
        assert_eq!(cx.setup_table(&mut s), Err(Errno::Srch));
        let mut q = [QuerySize {
            dom: DomId::SELF,
            ..QuerySize::default()
        }];
        assert_eq!(cx.query_size(&mut q), Err(Errno::Srch));
    }
}

/// Runs `t` step by step: checks after every step that it visited at most `CHUNK` records and
/// that every invariant holds, and calls `between` between steps. Returns the final stats.
fn run_checked<D: Design>(
    r: &Rig<D>,
    mut t: Teardown<'_, D>,
    mut between: impl FnMut(),
) -> TeardownStats {
    loop {
        let v0 = t.stats().visited;
        let s = t.step();
        let dv = t.stats().visited - v0;
        assert!(dv as usize <= CHUNK, "one step visited {dv} records");
        r.check();
        if s == Step::Done {
            break;
        }
        between();
    }
    assert_eq!(t.step(), Step::Done, "a finished teardown stays finished");
    t.stats()
}

// ---------------------------------------------------------------------------------------
// The dying domain as mapper
// ---------------------------------------------------------------------------------------

/// The mapper (strict IOMMU, 2 vCPUs) holds fast, slow, host, device, read-only, partial and
/// own-grant mappings on both vCPUs, then is killed. The teardown runs in steps of at most
/// 256 records with every invariant holding between them, its hypercalls fail with `-ESRCH`
/// throughout, and at the end every grant is free (pins 0, status bits clear, end-access
/// works), every reference is back to its baseline, and the mapper, which no one else
/// references, is destroyed.
fn mapper_teardown_releases_everything<D: Design>() {
    let r = Rig::<D>::build(|c| c.b.iommu = IommuMode::Strict);
    r.warm_vcpu(r.b, 1);
    r.grow(r.a, 2);
    let n = 600u32;
    for i in 0..n {
        r.grant(GrantRef(i), Gfn(1 + u64::from(i % 200)), i % 7 == 3);
    }
    r.gb()
        .grant_access(GrantRef(7), r.b, Gfn(7), false)
        .unwrap();
    let base_a = r.counts_of(r.a, 1..=200);
    let own = r.mfn(r.b, Gfn(7));
    let ro = |i: u32| i % 7 == 3;
    let mut live = 0u64;
    {
        let mut cx = r.cx();
        for i in 0..n {
            let flags = if ro(i) { HOST_RO } else { HOST };
            assert_eq!(
                map1(&mut cx, r.a, GrantRef(i), flags, va(u64::from(i))).status,
                GntSt::Okay
            );
            live += 1;
        }
        // Second and third maps of some refs (fast slot 2, then a maptrack record on designs
        // with slots), device parts, host|device.
        for i in 0..40u32 {
            let flags = if ro(i) { DEV_RO } else { DEV };
            assert_eq!(
                map1(&mut cx, r.a, GrantRef(i), flags, 0).status,
                GntSt::Okay
            );
            let flags = if ro(i) { HOST_DEV_RO } else { HOST_DEV };
            let m = map1(&mut cx, r.a, GrantRef(i), flags, va(1000 + u64::from(i)));
            assert_eq!(m.status, GntSt::Okay);
            live += 2;
            // A partial unmap: the host part of some host|device maps is already gone.
            if i % 5 == 0 {
                assert_eq!(
                    unmap1(&mut cx, m.handle, va(1000 + u64::from(i)), 0),
                    GntSt::Okay
                );
            }
        }
        // Own grant.
        let m = map1(&mut cx, r.b, GrantRef(7), HOST_DEV, va(2000));
        assert_eq!(m.status, GntSt::Okay);
        live += 1;
    }
    {
        let mut cx = r.vcpu(r.b, 1);
        for i in 40..80u32 {
            let flags = if ro(i) { DEV_RO } else { DEV };
            assert_eq!(
                map1(&mut cx, r.a, GrantRef(i), flags, 0).status,
                GntSt::Okay
            );
            live += 1;
        }
    }
    let rep = r.hv.check();
    rep.assert_ok();
    assert_eq!(rep.mappings as u64, live);
    let t = r.hv.kill_domain(r.b).unwrap();
    assert_eq!(r.hv.domain(r.b).unwrap().state(), DomainState::Dying);
    assert_srch(&r, r.b);
    let st = run_checked(&r, t, || {
        assert_eq!(r.hv.domain(r.b).unwrap().state(), DomainState::Dying);
        assert_srch(&r, r.b);
    });
    assert_eq!(st.mappings_released, live);
    assert!(st.steps >= 2 && st.steps as usize >= (st.visited as usize).div_ceil(CHUNK));
    assert!(st.destroyed, "nobody references the mapper's pages");
    assert!(r.hv.domain(r.b).is_none());
    assert_eq!(r.hv.vcpu(r.b, 0).err(), Some(EnterError::NoDomain));
    assert_eq!(r.hv.machine().owned_frames(r.b), 0);
    let mut buf = [0u8; 1];
    assert_eq!(r.hv.dma_read(r.b, 0, &mut buf), Err(DmaFault::NoDomain));
    for i in 0..n {
        assert_eq!(r.pins(GrantRef(i)), [0; 4], "g{i}");
        assert_eq!(r.status_bits(GrantRef(i)), 0, "g{i}");
        assert!(r.ga().end_access(GrantRef(i)).unwrap(), "g{i}");
    }
    assert_eq!(r.counts_of(r.a, 1..=200), base_a);
    // The mapper's own granted frame is freed with it (its allocation reference and the
    // own-grant mapping's references are all gone).
    assert_eq!(
        r.frame(own),
        FrameInfo {
            owner: None,
            refcount: 0,
            writable_types: 0
        }
    );
    r.check();
}

/// Teardown of a mapper with more maptrack records than one step covers (300 maps of three
/// refs on one vCPU: beyond the inline slots every map is a record, 512 records walked):
/// steps stay within the bound, every record is released, and the granter's entries are freed
/// as unmap would free them.
fn mapper_teardown_is_preemptible<D: Design>() {
    let r = Rig::<D>::new();
    let refs = [GrantRef(5), GrantRef(6), GrantRef(7)];
    for g in refs {
        r.grant(g, Gfn(g.0.into()), false);
    }
    let base: Vec<_> = refs
        .iter()
        .map(|g| r.counts(r.mfn(r.a, Gfn(g.0.into()))))
        .collect();
    let mut cx = r.cx();
    for (k, g) in refs.iter().enumerate() {
        for i in 0..100u64 {
            let addr = va(k as u64 * 100 + i);
            assert_eq!(map1(&mut cx, r.a, *g, HOST_RO, addr).status, GntSt::Okay);
        }
    }
    drop(cx);
    assert!(r.hv.domain(r.b).unwrap().maptrack_limit() >= 512);
    for g in refs {
        assert_eq!(r.pins(g), [0, 100, 0, 0]);
    }
    let st = run_checked(&r, r.hv.kill_domain(r.b).unwrap(), || {});
    assert_eq!(st.mappings_released, 300);
    assert!(st.steps >= 3, "{st:?}");
    for (g, b) in refs.iter().zip(&base) {
        assert_eq!(r.pins(*g), [0; 4]);
        assert_eq!(r.status_bits(*g), 0);
        assert_eq!(r.counts(r.mfn(r.a, Gfn(g.0.into()))), *b);
        assert!(r.ga().end_access(*g).unwrap());
    }
    r.check();
}

// ---------------------------------------------------------------------------------------
// The dying domain as granter
// ---------------------------------------------------------------------------------------

/// The granter dies while the mapper holds a host map of one page and a device map of
/// another: it becomes a zombie (Dead, still found by id and by name, owning exactly the two
/// referenced frames; the rest of its memory is freed). New maps of it fail with
/// `general_error` and change nothing; its own hypercalls fail with `-ESRCH`; the mapper still
/// reads through its mapping and unmaps normally; each frame is freed when its last reference
/// goes, and the last unmap destroys the zombie (grant frames freed too).
fn granter_becomes_zombie<D: Design>() {
    let r = Rig::<D>::new();
    for i in 1..=3u32 {
        r.ga()
            .write_page(Gfn(i.into()), 0, &pattern(i as u8, 16))
            .unwrap();
        r.grant(GrantRef(i), Gfn(i.into()), false);
    }
    let (m1, m2) = (r.mfn(r.a, Gfn(1)), r.mfn(r.a, Gfn(2)));
    let h1 = r.map_ok(GrantRef(1), HOST, va(1));
    let h2 = r.map_ok(GrantRef(2), DEV, 0);
    let alloc0 = r.hv.machine().allocated_frames();
    let pages = r.hv.machine().owned_frames(r.a);
    let grant_frames = u64::from(r.hv.domain(r.a).unwrap().nr_grant_frames());
    let st = r.hv.kill_domain(r.a).unwrap().run();
    assert!(!st.destroyed);
    assert_eq!(st.frames_released, pages);
    let d = r.hv.domain(r.a).expect("zombie still registered");
    assert_eq!(d.state(), DomainState::Dead);
    drop(d);
    assert_eq!(r.hv.domain_by_name("granter"), Some(r.a));
    assert_eq!(r.hv.machine().owned_frames(r.a), 2);
    assert_eq!(r.hv.machine().allocated_frames(), alloc0 - (pages - 2));
    // Only the mapper's references keep the two frames.
    assert_eq!(r.counts(m1), (1, 1));
    assert_eq!(r.counts(m2), (1, 1));
    r.check();
    assert_srch(&r, r.a);

    let before = r.snap();
    for (g, flags, addr) in [
        (3, HOST, va(3)),
        (3, DEV_RO, 0),
        (1, HOST_RO, va(4)),
        (2, DEV_RO, 0),
    ] {
        let m = r.map(GrantRef(g), flags, addr);
        assert_eq!(m.status, GntSt::GeneralError, "g{g} {flags:?}");
        r.assert_unchanged(&before);
    }
    let mut buf = [0u8; 16];
    r.gb()
        .read_mapped(HostAddr::Linear(va(1)), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &pattern(1, 16)[..]);

    r.unmap_ok(h1.handle, va(1), 0);
    r.check();
    assert!(
        r.hv.domain(r.a).is_some(),
        "still referenced by the device map"
    );
    assert_eq!(r.hv.machine().owned_frames(r.a), 1);
    assert_eq!(r.frame(m1).owner, None, "freed with its last reference");
    assert_eq!(r.frame(m1).refcount, 0);
    assert_eq!(r.hv.machine().allocated_frames(), alloc0 - (pages - 1));
    assert_eq!(
        r.gb().read_mapped(HostAddr::Linear(va(1)), 0, &mut buf),
        Err(AccessFault::NotMapped)
    );

    r.unmap_ok(h2.handle, 0, h2.dev_bus_addr);
    assert!(
        r.hv.domain(r.a).is_none(),
        "the last unmap destroyed the zombie"
    );
    assert_eq!(r.hv.domain_by_name("granter"), None);
    assert_eq!(r.frame(m2).refcount, 0);
    assert_eq!(
        r.hv.machine().allocated_frames(),
        alloc0 - pages - grant_frames
    );
    assert_eq!(r.map(GrantRef(3), HOST, va(3)).status, GntSt::BadDomain);
    r.check();
}

/// `kill_domain` on a dying domain is `AlreadyDying` (while its teardown is pending, and while
/// it is a zombie); on a destroyed or unknown domain `NoDomain`.
fn kill_twice<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(GrantRef(1), Gfn(1), false);
    let h = r.map_ok(GrantRef(1), HOST, va(1));
    let t = r.hv.kill_domain(r.a).unwrap();
    assert_eq!(r.hv.kill_domain(r.a).err(), Some(KillError::AlreadyDying));
    let st = t.run();
    assert!(!st.destroyed);
    assert_eq!(
        r.hv.kill_domain(r.a).err(),
        Some(KillError::AlreadyDying),
        "zombie"
    );
    r.unmap_ok(h.handle, va(1), 0);
    assert_eq!(r.hv.kill_domain(r.a).err(), Some(KillError::NoDomain));
    // A domain nobody references is destroyed by its own teardown.
    let mut t = r.hv.kill_domain(r.b).unwrap();
    assert_eq!(r.hv.kill_domain(r.b).err(), Some(KillError::AlreadyDying));
    assert_eq!(t.step(), Step::More);
    assert_eq!(r.hv.kill_domain(r.b).err(), Some(KillError::AlreadyDying));
    assert!(t.run().destroyed);
    assert_eq!(r.hv.kill_domain(r.b).err(), Some(KillError::NoDomain));
    assert_eq!(
        r.hv.kill_domain(DomId(999)).err(),
        Some(KillError::NoDomain)
    );
    r.check();
}

// ---------------------------------------------------------------------------------------
// Queries and concurrency
// ---------------------------------------------------------------------------------------

/// Queries answer during a teardown: between steps, a privileged third domain's
/// `query_size` on the dying domain is `okay` with its sizes, an unprivileged one's is
/// `permission_denied`, and lookups by id and by name find it; after the teardown both say it
/// is gone.
fn queries_during_teardown<D: Design>() {
    let r = Rig::<D>::new();
    let dom0 = r.add_domain(DomainConfig::new("dom0").privileged(true));
    let plain = r.add_domain(DomainConfig::new("plain"));
    r.grow(r.a, 2);
    r.grow(r.b, 3);
    for i in 0..600u32 {
        r.grant(GrantRef(i), Gfn(1 + u64::from(i % 200)), false);
    }
    let mut cx = r.cx();
    for i in 0..600u32 {
        assert_eq!(
            map1(&mut cx, r.a, GrantRef(i), HOST, va(u64::from(i))).status,
            GntSt::Okay
        );
    }
    drop(cx);
    let query = |from: DomId| {
        let mut q = [QuerySize {
            dom: r.b,
            ..QuerySize::default()
        }];
        r.vcpu(from, 0).query_size(&mut q).unwrap();
        q[0]
    };
    let t = r.hv.kill_domain(r.b).unwrap();
    let mut seen = 0;
    let st = run_checked(&r, t, || {
        seen += 1;
        let q = query(dom0);
        assert_eq!(q.status, GntSt::Okay);
        assert_eq!((q.nr_frames, q.max_nr_frames), (3, 64));
        assert_eq!(query(plain).status, GntSt::PermissionDenied);
        assert_eq!(r.hv.domain_by_name("mapper"), Some(r.b));
        assert!(r.hv.domain_ids().contains(&r.b));
        assert_eq!(r.hv.domain(r.b).unwrap().state(), DomainState::Dying);
    });
    assert!(seen >= 2, "several steps");
    assert!(st.destroyed);
    assert_eq!(query(dom0).status, GntSt::BadDomain);
    assert_eq!(r.hv.domain_by_name("mapper"), None);
    assert!(!r.hv.domain_ids().contains(&r.b));
    r.check();
}

/// A teardown while other threads keep going: the dying mapper `b` holds 600 maps of `a` and
/// grants pages to `e`; thread C (domain `c`) maps and unmaps other refs of `a`, thread E maps
/// and unmaps `b`'s grants (which start failing once `b` is dying), while the main thread
/// steps the teardown. E holds one of `b`'s pages throughout, so `b` stays a zombie; E's maps
/// racing the kill either work or fail cleanly. Afterwards every invariant holds, every grant
/// is free, and E's last unmap destroys the zombie.
fn teardown_concurrent_with_other_domains<D: Design>() {
    let r = Rig::<D>::new();
    let c = r.add_domain(DomainConfig::new("c"));
    let e = r.add_domain(DomainConfig::new("e"));
    r.grow(r.a, 2);
    for i in 0..600u32 {
        r.grant(GrantRef(i), Gfn(1 + u64::from(i % 200)), false);
    }
    for i in 600..620u32 {
        r.grant_to(GrantRef(i), c, Gfn(u64::from(i - 400)), false);
    }
    for i in 0..=20u32 {
        r.gb()
            .grant_access(GrantRef(100 + i), e, Gfn(u64::from(10 + i)), false)
            .unwrap();
    }
    // e holds one of b's pages across the whole teardown: b stays a zombie until the end.
    let pinned = map1(&mut r.vcpu(e, 0), r.b, GrantRef(120), HOST_RO, va(50));
    assert_eq!(pinned.status, GntSt::Okay);
    let mut cx = r.cx();
    for i in 0..600u32 {
        assert_eq!(
            map1(&mut cx, r.a, GrantRef(i), HOST, va(u64::from(i))).status,
            GntSt::Okay
        );
    }
    drop(cx);
    let stop = AtomicBool::new(false);
    let (a, b) = (r.a, r.b);
    thread::scope(|s| {
        let tc = s.spawn(|| {
            let mut cx = r.vcpu(c, 0);
            let mut rounds = 0u32;
            while !stop.load(Ordering::SeqCst) || rounds < 20 {
                let g = GrantRef(600 + rounds % 20);
                let m = map1(&mut cx, a, g, HOST, va(5000));
                assert_eq!(m.status, GntSt::Okay);
                assert_eq!(unmap1(&mut cx, m.handle, va(5000), 0), GntSt::Okay);
                rounds += 1;
                thread::yield_now();
            }
        });
        let te = s.spawn(|| {
            let mut cx = r.vcpu(e, 0);
            let mut held = Vec::new();
            let mut rounds = 0u32;
            while !stop.load(Ordering::SeqCst) || rounds < 20 {
                let k = rounds % 20;
                let m = map1(&mut cx, b, GrantRef(100 + k), HOST, va(u64::from(k)));
                match m.status {
                    GntSt::Okay => held.push((m, u64::from(k))),
                    GntSt::GeneralError | GntSt::BadPage => {}
                    other => panic!("unexpected {other:?}"),
                }
                // Keep a few mapped, unmap the rest as we go.
                if held.len() > 3 {
                    let (m, k) = held.remove(0);
                    assert_eq!(unmap1(&mut cx, m.handle, va(k), 0), GntSt::Okay);
                }
                rounds += 1;
                thread::yield_now();
            }
            held
        });
        let _stop = SetOnDrop(&stop);
        let mut t = r.hv.kill_domain(b).unwrap();
        while t.step() == Step::More {
            thread::yield_now();
        }
        assert_eq!(t.stats().mappings_released, 600);
        drop(_stop);
        tc.join().unwrap();
        let held = te.join().unwrap();
        r.check();
        let mut cx = r.vcpu(e, 0);
        for (m, k) in held {
            assert_eq!(unmap1(&mut cx, m.handle, va(k), 0), GntSt::Okay);
        }
        assert_eq!(r.hv.domain(b).unwrap().state(), DomainState::Dead);
        assert_eq!(unmap1(&mut cx, pinned.handle, va(50), 0), GntSt::Okay);
    });
    assert!(
        r.hv.domain(b).is_none(),
        "zombie destroyed by e's last unmap"
    );
    for i in 0..620u32 {
        assert_eq!(r.pins(GrantRef(i)), [0; 4], "g{i}");
        assert!(r.ga().end_access(GrantRef(i)).unwrap(), "g{i}");
    }
    r.check();
}

// ---------------------------------------------------------------------------------------
// Cost
// ---------------------------------------------------------------------------------------

/// The cost of tearing a mapper down (records visited) does not depend on how large other
/// domains' grant tables are: a mapper with 100 maps of `a` visits exactly as many records
/// whether `a` and three unrelated granters (each with a grant mapped by another domain) have
/// one grant frame or 64 (4 x 32768 entries), and that number stays within the mapper's own
/// records, maptrack and memory.
fn teardown_cost_independent_of_other_tables<D: Design>() {
    let m = 100u32;
    let run = |big: bool| -> TeardownStats {
        let r = Rig::<D>::new();
        let c = r.add_domain(DomainConfig::new("c"));
        let others: Vec<DomId> = (0..3)
            .map(|k| r.add_domain(DomainConfig::new(format!("o{k}"))))
            .collect();
        let mut cx = r.vcpu(c, 0);
        let mut held = Vec::new();
        for &o in others.iter().chain([&r.a]) {
            if big {
                r.grow(o, 64);
            }
            let last = GrantRef(r.hv.domain(o).unwrap().nr_grant_frames() * 512 - 1);
            r.guest(o).grant_access(last, c, Gfn(3), false).unwrap();
            let mm = map1(&mut cx, o, last, HOST, va(u64::from(o.0)));
            assert_eq!(mm.status, GntSt::Okay);
            held.push((mm, o));
        }
        drop(cx);
        for i in 0..m {
            r.grant(GrantRef(i), Gfn(1 + u64::from(i)), false);
        }
        let mut cx = r.cx();
        for i in 0..m {
            assert_eq!(
                map1(&mut cx, r.a, GrantRef(i), HOST, va(u64::from(i))).status,
                GntSt::Okay
            );
        }
        drop(cx);
        let limit = r.hv.domain(r.b).unwrap().maptrack_limit();
        let st = r.hv.kill_domain(r.b).unwrap().run();
        assert_eq!(st.mappings_released, u64::from(m));
        assert!(st.destroyed);
        assert!(
            st.visited <= u64::from(m) + u64::from(limit) + 256 + 16,
            "visited {} (maptrack limit {limit})",
            st.visited
        );
        r.check();
        let mut cx = r.vcpu(c, 0);
        for (mm, o) in held {
            assert_eq!(
                unmap1(&mut cx, mm.handle, va(u64::from(o.0)), 0),
                GntSt::Okay
            );
        }
        drop(cx);
        r.check();
        st
    };
    let small = run(false);
    let big = run(true);
    assert_eq!(small.visited, big.visited, "small {small:?}\nbig {big:?}");
    assert_eq!(small.mappings_released, big.mappings_released);
    assert!(
        big.visited < 4 * 64 * 512 / 16,
        "nowhere near the other tables' sizes"
    );
}

/// The hint log against unmaps that pop it: one vCPU maps a gref twice (both inline slots,
/// one hint: a repeated gref appends nothing), unmaps one mapping (the entry still holds the
/// other, so its hint must stay), then maps and unmaps other grefs (each unmap pops its own
/// hint); a second vCPU maps the first gref again after the first vCPU's unmap of it. The
/// teardown must still find and release every mapping left, and only those.
fn hint_log_survives_unmap_pops<D: Design>() {
    let r = Rig::<D>::build(|c| c.b = c.b.clone().vcpus(2));
    r.warm_vcpu(r.b, 1);
    for i in 0..8 {
        r.grant(GrantRef(i), Gfn(1 + u64::from(i)), false);
    }
    let g0 = GrantRef(0);
    let keep = {
        let mut cx = r.cx();
        let a = map1(&mut cx, r.a, g0, HOST, va(0));
        let b = map1(&mut cx, r.a, g0, HOST, va(1));
        assert_eq!((a.status, b.status), (GntSt::Okay, GntSt::Okay));
        assert_eq!(unmap1(&mut cx, a.handle, va(0), 0), GntSt::Okay);
        for i in 1..8 {
            let m = map1(&mut cx, r.a, GrantRef(i), HOST, va(10 + u64::from(i)));
            assert_eq!(m.status, GntSt::Okay);
            assert_eq!(
                unmap1(&mut cx, m.handle, va(10 + u64::from(i)), 0),
                GntSt::Okay
            );
        }
        b
    };
    {
        let mut cx = r.vcpu(r.b, 1);
        let c = map1(&mut cx, r.a, GrantRef(3), HOST, va(40));
        assert_eq!(c.status, GntSt::Okay);
    }
    assert_eq!(r.pins(g0), [1, 0, 0, 0], "{keep:?}");
    assert_eq!(r.pins(GrantRef(3)), [1, 0, 0, 0]);
    r.check();
    let st = run_checked(&r, r.hv.kill_domain(r.b).expect("kill"), || {});
    assert_eq!(st.mappings_released, 2, "{st:?}");
    for i in 0..8 {
        assert_eq!(r.pins(GrantRef(i)), [0; 4], "g{i}");
        assert_eq!(r.status_bits(GrantRef(i)), 0, "g{i}");
    }
    r.check();
}

design_tests!(
    mapper_teardown_releases_everything,
    hint_log_survives_unmap_pops,
    mapper_teardown_is_preemptible,
    granter_becomes_zombie,
    kill_twice,
    queries_during_teardown,
    teardown_concurrent_with_other_domains,
    teardown_cost_independent_of_other_tables,
);
