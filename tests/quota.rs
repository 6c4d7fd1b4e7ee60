//! Conformance suite for per-domain map limits (`MapLimit`, src/quota.rs, docs/design.md
//! section 8), run on every design.
//!
//! What is observable and asserted:
//!
//! * with `MapLimit::Limit(n)` (any design) exactly `n` live maps succeed, single-threaded and
//!   with two vCPUs racing, and the refusal is `GNTST_no_space` with nothing changed;
//! * units idling in another vCPU's cache are found (no refusal while a unit is idle);
//! * `Domain::quota()` reports the limit and the idle units: `idle == limit - live maps` at
//!   quiescence (the checker asserts this for every domain too), back to `limit` after unmaps,
//!   after the mapper's own teardown (seen through an `Arc<Domain>` kept from before the kill:
//!   the domain is gone from the registry by then), and after a granter's teardown once the
//!   mapper unmapped the zombie's grants;
//! * `MapLimit::Default`: `max_maptrack_frames * 256` on designs with inline slots, no quota on
//!   the others; `MapLimit::Off`: no quota anywhere.

#[macro_use]
mod common;
use common::*;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Barrier;
use std::thread;

/// Rig whose mapper has `limit`, the granter a table of 2 frames (1024 refs), refs
/// `0..count` granted (gfn = 1 + ref % 200).
fn rig_with<D: Design>(limit: MapLimit, count: u32, f: impl FnOnce(&mut RigCfg)) -> Rig<D> {
    let r = Rig::<D>::build(|c| {
        c.b.map_limit = limit;
        f(c);
    });
    r.grow(r.a, 2);
    for i in 0..count {
        r.grant(GrantRef(i), Gfn(1 + u64::from(i % 200)), false);
    }
    r
}

/// `(limit, idle)` of the mapper's quota.
fn quota<D: Design>(r: &Rig<D>) -> (u32, u32) {
    r.quota_of(r.b).expect("mapper has a quota")
}

/// The `i`-th map of a mixed sequence: fast and slow records (a third map of a ref takes a
/// maptrack handle on slot designs), host and device, read-only and writable.
fn mixed_map<D: Design>(cx: &mut VcpuCtx<'_, D>, a: DomId, i: u32) -> (MapGrantRef, u64) {
    let gref = GrantRef(i / 3);
    let (flags, addr) = match i % 3 {
        0 => (HOST, va(u64::from(i))),
        1 => (DEV_RO, 0),
        _ => (HOST_DEV, va(u64::from(i))),
    };
    (map1(cx, a, gref, flags, addr), addr)
}

/// Unmaps what [`mixed_map`] mapped.
fn mixed_unmap<D: Design>(cx: &mut VcpuCtx<'_, D>, m: &MapGrantRef, addr: u64) {
    assert_eq!(unmap1(cx, m.handle, addr, m.dev_bus_addr), GntSt::Okay);
}

// ---------------------------------------------------------------------------------------
// Exactness, single-threaded
// ---------------------------------------------------------------------------------------

/// `Limit(n)`: exactly `n` maps (mixed kinds, own grants included) succeed; further maps of
/// any kind are `no_space` with nothing changed (a bad ref is still `bad_gntref`: the unit is
/// taken after the ref is validated); unmapping one makes room for exactly one.
fn limit_reached_exactly<D: Design>() {
    let n = 25u32;
    let r = rig_with::<D>(MapLimit::Limit(n), 40, |_| {});
    r.warm_vcpu(r.b, 1);
    assert_eq!(quota(&r), (n, n));
    r.gb()
        .grant_access(GrantRef(9), r.b, Gfn(9), false)
        .unwrap();
    let mut cx = r.cx();
    let mut live = Vec::new();
    for i in 0..n - 1 {
        let (m, addr) = mixed_map(&mut cx, r.a, i);
        assert_eq!(m.status, GntSt::Okay, "map {i}");
        live.push((m, addr));
    }
    // The last unit goes to a map of the mapper's own grant.
    let own = map1(&mut cx, r.b, GrantRef(9), HOST, va(500));
    assert_eq!(own.status, GntSt::Okay);
    drop(cx);
    assert_eq!(quota(&r), (n, 0));
    r.check();
    let before = r.snap();
    let mut cx = r.cx();
    for (dom, gref, flags, addr) in [
        (r.a, GrantRef(30), HOST, va(600)),
        (r.a, GrantRef(31), DEV, 0),
        (r.a, GrantRef(0), HOST_RO, va(601)),
        (r.b, GrantRef(9), DEV_RO, 0),
    ] {
        let m = map1(&mut cx, dom, gref, flags, addr);
        assert_eq!(m.status, GntSt::NoSpace, "{gref:?} {flags:?}");
    }
    let m = map1(&mut cx, r.a, GrantRef(5000), HOST, va(602));
    assert_eq!(
        m.status,
        GntSt::BadGntref,
        "ref validated before the unit is taken"
    );
    // The other vCPU is refused too.
    let m = map1(&mut r.vcpu(r.b, 1), r.a, GrantRef(30), HOST, va(600));
    assert_eq!(m.status, GntSt::NoSpace);
    drop(cx);
    r.assert_unchanged(&before);
    assert_eq!(quota(&r), (n, 0));
    // One unmap, one map.
    let (m0, a0) = live.remove(0);
    mixed_unmap(&mut r.cx(), &m0, a0);
    assert_eq!(quota(&r), (n, 1));
    let m = r.map_ok(GrantRef(30), HOST, va(600));
    assert_eq!(r.map(GrantRef(31), HOST, va(603)).status, GntSt::NoSpace);
    r.check();
    r.unmap_ok(m.handle, va(600), 0);
    let mut cx = r.cx();
    for (m, addr) in &live {
        mixed_unmap(&mut cx, m, *addr);
    }
    assert_eq!(unmap1(&mut cx, own.handle, va(500), 0), GntSt::Okay);
    drop(cx);
    assert_eq!(quota(&r), (n, n));
    r.check();
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

/// Two vCPUs race for a limit of `n`. Phase 1: both map until refused (each has more refs
/// than `n`); together they hold exactly `n` live maps. Phase 2: both churn (map, unmap, map
/// again) with the table full; an observer counter of maps known to be live never exceeds
/// `n`, and at the end every unit is back.
fn limit_exact_under_concurrency<D: Design>() {
    let n = 64u32;
    let r = rig_with::<D>(MapLimit::Limit(n), 2 * 80, |_| {});
    r.warm_vcpu(r.b, 1);
    let live_now = AtomicU32::new(0);
    let max_seen = AtomicU32::new(0);
    let barrier = Barrier::new(2);
    let held: Vec<Vec<(MapGrantRef, u64)>> = thread::scope(|s| {
        let ts: Vec<_> = (0..2u16)
            .map(|v| {
                let (r, live_now, max_seen, barrier) = (&r, &live_now, &max_seen, &barrier);
                s.spawn(move || {
                    let mut cx = r.vcpu(r.b, v);
                    let mut mine = Vec::new();
                    barrier.wait();
                    for k in 0..80u32 {
                        let gref = GrantRef(u32::from(v) * 80 + k);
                        let addr = va(u64::from(gref.0));
                        let m = map1(&mut cx, r.a, gref, HOST, addr);
                        match m.status {
                            GntSt::Okay => {
                                let now = live_now.fetch_add(1, Ordering::SeqCst) + 1;
                                max_seen.fetch_max(now, Ordering::SeqCst);
                                mine.push((m, addr));
                            }
                            GntSt::NoSpace => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    mine
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let total: usize = held.iter().map(Vec::len).sum();
    assert_eq!(
        total,
        n as usize,
        "exactly the limit: {:?}",
        held.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(quota(&r), (n, 0));
    r.check();

    // Phase 2: churn on both vCPUs while the table is full.
    thread::scope(|s| {
        for (v, mine) in held.into_iter().enumerate() {
            let (r, live_now, max_seen) = (&r, &live_now, &max_seen);
            s.spawn(move || {
                let mut cx = r.vcpu(r.b, v as u16);
                let mut mine = mine;
                for round in 0..200usize {
                    if round % 2 == 0 && !mine.is_empty() {
                        let (m, addr) = mine.swap_remove(round % mine.len());
                        live_now.fetch_sub(1, Ordering::SeqCst);
                        assert_eq!(unmap1(&mut cx, m.handle, addr, 0), GntSt::Okay);
                    } else {
                        let gref = GrantRef(v as u32 * 80 + (round as u32 % 80));
                        let addr = va(1000 + (v * 1000 + round) as u64);
                        let m = map1(&mut cx, r.a, gref, HOST, addr);
                        match m.status {
                            GntSt::Okay => {
                                let now = live_now.fetch_add(1, Ordering::SeqCst) + 1;
                                max_seen.fetch_max(now, Ordering::SeqCst);
                                mine.push((m, addr));
                            }
                            GntSt::NoSpace => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                for (m, addr) in mine {
                    live_now.fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(unmap1(&mut cx, m.handle, addr, 0), GntSt::Okay);
                }
            });
        }
    });
    assert!(
        max_seen.load(Ordering::SeqCst) <= n,
        "never more than the limit"
    );
    assert_eq!(live_now.load(Ordering::SeqCst), 0);
    assert_eq!(quota(&r), (n, n));
    r.check();
}

/// Units idling in vCPU 1's cache (it mapped and unmapped) are usable by vCPU 0: vCPU 0 alone
/// reaches exactly the limit; then the same with the roles swapped.
fn idle_units_on_other_vcpu_are_found<D: Design>() {
    let n = 64u32;
    let r = rig_with::<D>(MapLimit::Limit(n), 100, |_| {});
    r.warm_vcpu(r.b, 1);
    for (filler, taker) in [(1u16, 0u16), (0, 1)] {
        {
            let mut cx = r.vcpu(r.b, filler);
            let ms: Vec<_> = (0..5u32)
                .map(|i| {
                    let m = map1(&mut cx, r.a, GrantRef(90 + i), DEV_RO, 0);
                    assert_eq!(m.status, GntSt::Okay);
                    m
                })
                .collect();
            for m in ms {
                assert_eq!(unmap1(&mut cx, m.handle, 0, m.dev_bus_addr), GntSt::Okay);
            }
        }
        assert_eq!(quota(&r), (n, n));
        let mut cx = r.vcpu(r.b, taker);
        let ms: Vec<_> = (0..n)
            .map(|i| {
                let m = map1(&mut cx, r.a, GrantRef(i), HOST, va(u64::from(i)));
                assert_eq!(m.status, GntSt::Okay, "map {i} on vCPU {taker}");
                m
            })
            .collect();
        let before = r.snap();
        assert_eq!(
            map1(&mut cx, r.a, GrantRef(n), HOST, va(u64::from(n))).status,
            GntSt::NoSpace
        );
        drop(cx);
        r.assert_unchanged(&before);
        assert_eq!(quota(&r), (n, 0));
        let mut cx = r.vcpu(r.b, taker);
        for (i, m) in ms.iter().enumerate() {
            assert_eq!(unmap1(&mut cx, m.handle, va(i as u64), 0), GntSt::Okay);
        }
        drop(cx);
        assert_eq!(quota(&r), (n, n));
        r.check();
    }
}

// ---------------------------------------------------------------------------------------
// Teardown
// ---------------------------------------------------------------------------------------

/// Units come back: after unmaps; after the mapper's own teardown (fast, slow and device maps
/// released by the teardown, observed through an `Arc<Domain>` taken before the kill, since
/// the destroyed mapper is no longer in the registry); and after a granter's teardown, once the
/// mapper has unmapped the zombie's grants (until then they stay held).
fn teardown_returns_units<D: Design>() {
    let n = 40u32;
    let r = rig_with::<D>(MapLimit::Limit(n), 40, |_| {});
    // Mapper teardown.
    let mut cx = r.cx();
    let live: Vec<_> = (0..30).map(|i| mixed_map(&mut cx, r.a, i)).collect();
    drop(cx);
    assert!(live.iter().all(|(m, _)| m.status == GntSt::Okay));
    assert_eq!(quota(&r), (n, n - 30));
    let b = r.hv.domain(r.b).unwrap();
    let st = r.hv.kill_domain(r.b).unwrap().run();
    assert_eq!(st.mappings_released, 30);
    assert!(r.hv.domain(r.b).is_none(), "the mapper is gone");
    let q = b.quota().expect("quota");
    assert_eq!((q.limit(), q.idle()), (n, n), "every unit back");
    drop(b);
    r.check();
    for i in 0..10 {
        assert!(r.ga().end_access(GrantRef(i)).unwrap());
    }

    // Granter teardown: a new mapper maps a granter that then dies.
    let m = r.add_domain(DomainConfig::new("m2").map_limit(MapLimit::Limit(n)));
    let g = r.add_domain(DomainConfig::new("g2"));
    let gg = r.guest(g);
    for i in 0..6u32 {
        gg.grant_access(GrantRef(i), m, Gfn(u64::from(i)), false)
            .unwrap();
    }
    let mut cx = r.vcpu(m, 0);
    let maps: Vec<_> = (0..6u32)
        .map(|i| {
            let mm = map1(&mut cx, g, GrantRef(i), HOST, va(u64::from(i)));
            assert_eq!(mm.status, GntSt::Okay);
            mm
        })
        .collect();
    drop(cx);
    assert_eq!(r.quota_of(m), Some((n, n - 6)));
    let st = r.hv.kill_domain(g).unwrap().run();
    assert!(!st.destroyed, "zombie while mapped");
    assert_eq!(
        r.quota_of(m),
        Some((n, n - 6)),
        "the mapper's maps still hold units"
    );
    r.check();
    let mut cx = r.vcpu(m, 0);
    for (i, mm) in maps.iter().enumerate() {
        assert_eq!(unmap1(&mut cx, mm.handle, va(i as u64), 0), GntSt::Okay);
    }
    drop(cx);
    assert_eq!(r.quota_of(m), Some((n, n)));
    assert!(
        r.hv.domain(g).is_none(),
        "zombie destroyed by the last unmap"
    );
    r.check();
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `MapLimit::Default`: designs with inline slots get `max_maptrack_frames * 256` (exact: with
/// one maptrack frame, 256 fast maps of distinct refs work and the 257th is `no_space`);
/// designs without keep Xen's semantics and have no quota. `Limit(n)` gives every design a
/// quota.
fn default_limit<D: Design>() {
    let r = rig_with::<D>(MapLimit::Default, 300, |c| c.b.max_maptrack_frames = 1);
    let d = r.hv.domain(r.b).unwrap();
    if slots::<D>() {
        assert_eq!(quota(&r), (256, 256));
        let mut cx = r.cx();
        let ms: Vec<_> = (0..256u32)
            .map(|i| {
                let m = map1(&mut cx, r.a, GrantRef(i), DEV_RO, 0);
                assert_eq!(m.status, GntSt::Okay, "map {i}");
                m
            })
            .collect();
        drop(cx);
        let before = r.snap();
        assert_eq!(r.map(GrantRef(256), DEV_RO, 0).status, GntSt::NoSpace);
        r.assert_unchanged(&before);
        let mut cx = r.cx();
        for m in ms {
            assert_eq!(unmap1(&mut cx, m.handle, 0, m.dev_bus_addr), GntSt::Okay);
        }
    } else {
        assert!(d.quota().is_none());
    }
    r.check();
    for (frames, want) in [(2u32, 512u32), (1024, 1024 * 256)] {
        let x = r.add_domain(DomainConfig::new(format!("x{frames}")).max_maptrack_frames(frames));
        let q =
            r.hv.domain(x)
                .unwrap()
                .quota()
                .map(|q| (q.limit(), q.idle()));
        assert_eq!(q, slots::<D>().then_some((want, want)), "{frames} frames");
    }
    let y = r.add_domain(DomainConfig::new("y").map_limit(MapLimit::Limit(7)));
    assert_eq!(
        r.quota_of(y),
        Some((7, 7)),
        "explicit limits apply to every design"
    );
    r.check();
}

/// `MapLimit::Off`: no quota on any design. With one maptrack frame, designs with inline slots
/// map 300 distinct refs (two fast slots each, no maptrack handle needed); designs without run
/// out of maptrack handles (`no_space`) before 300.
fn limit_off<D: Design>() {
    let r = rig_with::<D>(MapLimit::Off, 300, |c| c.b.max_maptrack_frames = 1);
    assert!(r.quota_of(r.b).is_none());
    let mut cx = r.cx();
    let mut ms = Vec::new();
    let mut refused = 0;
    for i in 0..300u32 {
        let m = map1(&mut cx, r.a, GrantRef(i), DEV_RO, 0);
        match m.status {
            GntSt::Okay => ms.push(m),
            GntSt::NoSpace => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    if slots::<D>() {
        assert_eq!(refused, 0, "inline slots escape the maptrack bound");
    } else {
        assert!(refused > 0 && ms.len() <= 256, "{} maps", ms.len());
    }
    for m in ms {
        assert_eq!(unmap1(&mut cx, m.handle, 0, m.dev_bus_addr), GntSt::Okay);
    }
    drop(cx);
    r.check();
}

design_tests!(
    limit_reached_exactly,
    limit_exact_under_concurrency,
    idle_units_on_other_vcpu_are_found,
    teardown_returns_units,
    default_limit,
    limit_off,
);
