//! Adversarial scenarios from `xsa-scenarios.md` (and the advisories the brief names) that
//! concern `GNTTABOP_copy`, run on every design: XSA-318 (continuations), XSA-448 (zero-length
//! elements), XSA-500 (upgrade re-read against the active entry), XSA-230 (release must look at
//! every pin counter) and XSA-236 (pin versus page-reference ordering on release).
//!
//! Not modelled: v2 grants, so neither the transitive `ERESTART` path of XSA-318 nor the
//! sub-page variant of XSA-500. The preemption point is before every element but the first, so
//! "a restart at element 0" is the same as issuing the hypercall again.

#[macro_use]
mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

/// A status `GNTTABOP_copy` never returns, to pre-fill outputs with (the scenario's 0x7FFF).
const GARBAGE: GntSt = GntSt::AddressTooBig;

const SRC: GrantRef = COPY_SRC;
const DST: GrantRef = COPY_DST;

/// Sets the flag when dropped (stops a helper loop even if the main thread panics).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs `ops` on the mapper's vCPU 0 with every status pre-filled with [`GARBAGE`], preempting
/// (hook `CopyPreempt` returning `Fail`) exactly at the boundaries before the elements listed
/// in `preempt` (indices in `1..ops.len()`) and continuing at the others. Asserts the hook was
/// reached exactly once per boundary. Returns the ops.
fn run_preempted<D: Design>(r: &Rig<D>, ops: &[GnttabCopy], preempt: &[usize]) -> Vec<GnttabCopy> {
    let mut ops = ops.to_vec();
    for o in &mut ops {
        o.status = GARBAGE;
    }
    let n = ops.len();
    let arm = Arm::at(HookPoint::CopyPreempt).dom(r.b).vcpu(0);
    let hits = r.hooks.hits(HookPoint::CopyPreempt, r.b);
    // Arms the boundaries after `p`: failures for the run of preempting ones (failures take
    // precedence over pauses), then a pause at the next one that continues; returns it.
    let arm_after = |p: usize| -> Option<usize> {
        let mut q = p + 1;
        let mut k = 0;
        while q < n && preempt.contains(&q) {
            k += 1;
            q += 1;
        }
        if k > 0 {
            r.hooks.fail(arm, k);
        }
        (q < n).then(|| {
            r.hooks.pause_once(arm);
            q
        })
    };
    let out = thread::scope(|s| {
        let mut next = arm_after(0);
        let t = s.spawn(move || {
            let mut cx = r.vcpu(r.b, 0);
            cx.copy(&mut ops).unwrap();
            ops
        });
        while let Some(q) = next {
            r.hooks.wait_parked(HookPoint::CopyPreempt);
            next = arm_after(q);
            r.hooks.release(HookPoint::CopyPreempt);
        }
        t.join().unwrap()
    });
    r.hooks.disarm();
    assert_eq!(
        r.hooks.hits(HookPoint::CopyPreempt, r.b),
        hits + (n as u64).saturating_sub(1),
        "one hook call per boundary: no element re-run"
    );
    out
}

fn statuses(ops: &[GnttabCopy]) -> Vec<GntSt> {
    ops.iter().map(|o| o.status).collect()
}

// ---------------------------------------------------------------------------------------
// XSA-318
// ---------------------------------------------------------------------------------------

/// Applies `ops` (all between frames of one domain, given as `gfn -> bytes`) in order, as the
/// model copies: through a buffer, so overlapping ranges behave like `memmove`.
fn simulate(mem: &mut std::collections::BTreeMap<u64, Vec<u8>>, ops: &[GnttabCopy]) {
    for o in ops {
        let (so, d, len) = (
            o.source.offset as usize,
            o.dest.offset as usize,
            o.len as usize,
        );
        let tmp = mem[&o.source.u][so..so + len].to_vec();
        mem.get_mut(&o.dest.u).unwrap()[d..d + len].copy_from_slice(&tmp);
    }
}

/// XSA-318: 3-element batches with statuses pre-filled with garbage, preempted before element
/// 1, before element 2, before both, or not at all. Every status gets its real value and no
/// element runs twice: every element moves a range onto an overlapping one (so running it
/// again changes the bytes) and feeds the next, and the result must equal one in-order pass.
/// The same through grant sides, and with a failing element in the middle.
fn xsa318_copy_continuation<D: Design>() {
    let r = copy_rig::<D>();
    let a = r.a;
    for preempt in [&[][..], &[1], &[2], &[1, 2]] {
        // Own frames 5 and 6.
        let mut mem = std::collections::BTreeMap::new();
        for g in [5u64, 6] {
            let p = pattern(40 + g as u8 + preempt.len() as u8, 64);
            r.gb().write_page(Gfn(g), 0, &p).unwrap();
            mem.insert(g, p);
        }
        let chain = [
            cp_ff(Gfn(5), 0, Gfn(5), 8, 16),
            cp_ff(Gfn(5), 4, Gfn(6), 0, 16),
            cp_ff(Gfn(6), 0, Gfn(6), 5, 20),
        ];
        let done = run_preempted(&r, &chain, preempt);
        assert_eq!(statuses(&done), [GntSt::Okay; 3], "preempt {preempt:?}");
        simulate(&mut mem, &chain);
        for g in [5u64, 6] {
            assert_eq!(
                r.read_gfn(r.b, Gfn(g), 0, 64),
                mem[&g],
                "gfn {g}, preempt {preempt:?}"
            );
        }

        // The same through the writable grant (source and destination cached across elements).
        let p = pattern(50 + preempt.len() as u8, 64);
        r.ga().write_page(Gfn(2), 0, &p).unwrap();
        let mut g2 = std::collections::BTreeMap::from([(2u64, p)]);
        let chain = [
            cp_gg(a, DST, 0, a, DST, 8, 16),
            cp_gg(a, DST, 4, a, DST, 0, 16),
            cp_gg(a, DST, 0, a, DST, 5, 20),
        ];
        let done = run_preempted(&r, &chain, preempt);
        assert_eq!(statuses(&done), [GntSt::Okay; 3], "preempt {preempt:?}");
        let as_frames: Vec<GnttabCopy> = chain
            .iter()
            .map(|o| {
                let mut o = *o;
                (o.source.u, o.dest.u) = (2, 2);
                o
            })
            .collect();
        simulate(&mut g2, &as_frames);
        assert_eq!(
            r.read_gfn(r.a, Gfn(2), 0, 64),
            g2[&2],
            "preempt {preempt:?}"
        );

        // A failing element in the middle keeps its own status; its neighbours run.
        let mixed = [
            cp_gf(a, SRC, 0, Gfn(7), 0, 8),
            cp_gf(a, GrantRef(u32::MAX), 0, Gfn(7), 8, 8),
            cp_gf(a, SRC, 8, Gfn(7), 8, 8),
        ];
        let done = run_preempted(&r, &mixed, preempt);
        assert_eq!(
            statuses(&done),
            [GntSt::Okay, GntSt::BadGntref, GntSt::Okay],
            "preempt {preempt:?}"
        );
        assert_eq!(r.read_gfn(r.b, Gfn(7), 0, 16), &pattern(1, 16)[..]);
        for g in [SRC, DST] {
            assert_eq!(r.pins(g), [0; 4]);
            assert_eq!(r.status_bits(g), 0);
        }
        r.check();
    }
    // A long batch preempted at every other boundary: every status written.
    let long: Vec<GnttabCopy> = (0..65u16)
        .map(|i| cp_gf(a, SRC, i * 8, Gfn(8), i * 8, 8))
        .collect();
    let every_other: Vec<usize> = (1..65).filter(|i| i % 2 == 1).collect();
    let done = run_preempted(&r, &long, &every_other);
    assert!(done.iter().all(|o| o.status == GntSt::Okay), "{done:?}");
    assert_eq!(r.read_gfn(r.b, Gfn(8), 0, 520), &pattern(1, 520)[..]);
    r.check();
}

// ---------------------------------------------------------------------------------------
// XSA-448
// ---------------------------------------------------------------------------------------

/// XSA-448: zero-length elements with garbage domids, refs, offsets and flags are `okay`
/// without any validation: no domain lookup (unknown domains and non-`DOMID_SELF` frame sides
/// pass), no pin and no status bit (observed at the next element boundary, for a valid grant
/// too), nothing changed at all (raw snapshot). Mixed into a batch with real copies they do not
/// disturb them.
fn xsa448_zero_length_copies<D: Design>() {
    let r = copy_rig::<D>();
    let a = r.a;
    let garbage = vec![
        cp_gg(
            DomId(999),
            GrantRef(u32::MAX),
            u16::MAX,
            DomId::INVALID,
            GrantRef(7),
            9999,
            0,
        ),
        cp_ff(Gfn(u64::MAX), u16::MAX, Gfn(1 << 50), u16::MAX, 0),
        GnttabCopy {
            source: CopyPtr {
                u: u64::MAX,
                domid: a,
                offset: 4096,
            },
            dest: CopyPtr {
                u: 5,
                domid: DomId::XEN,
                offset: 0,
            },
            len: 0,
            flags: 0xFFFC,
            status: GARBAGE,
        },
        // Valid grants, zero length: still nothing.
        cp_gg(a, SRC, 0, a, DST, 0, 0),
        cp_fg(Gfn(5), 0, a, SRC, 0, 0),
    ];
    let raw = r.hv.snapshot();
    let mut ops = garbage.clone();
    assert_eq!(r.copy(&mut ops), vec![GntSt::Okay; ops.len()]);
    assert_eq!(r.hv.snapshot(), raw, "nothing touched");
    // Mid-batch: no pin, no bits.
    let done = copy_observed(&r, garbage.clone(), |i| {
        for g in [SRC, DST] {
            assert_eq!(r.pins(g), [0; 4], "before element {i}");
            assert_eq!(r.status_bits(g), 0);
        }
    });
    assert!(done.iter().all(|o| o.status == GntSt::Okay));
    assert_eq!(r.hv.snapshot(), raw, "nothing touched");
    // Interleaved with real copies.
    let mut mixed = vec![cp_gf(a, SRC, 0, Gfn(5), 0, 8)];
    mixed.extend(garbage.iter().copied());
    mixed.push(cp_gf(a, SRC, 8, Gfn(5), 8, 8));
    mixed.push(cp_fg(Gfn(6), 0, a, DST, 0, 8));
    for o in &mut mixed {
        o.status = GARBAGE;
    }
    assert_eq!(r.copy(&mut mixed), vec![GntSt::Okay; mixed.len()]);
    assert_eq!(r.read_gfn(r.b, Gfn(5), 0, 16), &pattern(1, 16)[..]);
    assert_eq!(r.read_gfn(r.a, Gfn(2), 0, 8), &pattern(6, 8)[..]);
    for g in [SRC, DST] {
        assert_eq!(r.pins(g), [0; 4]);
        assert_eq!(r.status_bits(g), 0);
    }
    r.check();
}

// ---------------------------------------------------------------------------------------
// XSA-500
// ---------------------------------------------------------------------------------------

/// XSA-500: B maps A's writable grant g1 (frame F1) read-only; a copy into g1 upgrades the pin
/// to writable and re-reads the entry. Unchanged entry: the copy works and writes F1. After A
/// rewrites g1's frame to F2: the copy is `general_error`, no reference is leaked on F2, F1 and
/// F2 are not written, `GTF_writing` is not left set, the read-only mapping is intact, and A
/// can end access after B unmaps.
fn xsa500_copy_upgrade_checked<D: Design>() {
    let r = copy_rig::<D>();
    let a = r.a;
    let g1 = GrantRef(10);
    r.ga().write_page(Gfn(10), 0, &pattern(10, 4096)).unwrap();
    r.ga().write_page(Gfn(11), 0, &pattern(11, 4096)).unwrap();
    r.grant(g1, Gfn(10), false);
    let (f1, f2) = (r.mfn(r.a, Gfn(10)), r.mfn(r.a, Gfn(11)));
    let (b1, b2) = (r.counts(f1), r.counts(f2));
    let h = r.map_ok(g1, HOST_RO, va(1));
    assert_eq!(r.pins(g1), [0, 1, 0, 0]);
    assert_eq!(r.status_bits(g1), gtf::READING);
    // Control: the upgrade with an unchanged entry.
    assert_eq!(
        r.copy(&mut [cp_fg(Gfn(5), 0, a, g1, 100, 8)]),
        [GntSt::Okay]
    );
    assert_eq!(r.read_gfn(r.a, Gfn(10), 100, 8), &pattern(5, 8)[..]);
    assert_eq!(r.pins(g1), [0, 1, 0, 0]);
    assert_eq!(r.status_bits(g1), gtf::READING, "GTF_writing dropped again");
    r.check();
    let (c1, c2) = (r.counts(f1), r.counts(f2));
    let (p1, p2) = (r.read_gfn(r.a, Gfn(10), 0, 4096), pattern(11, 4096));

    // The misbehaving granter points g1 at F2 (still permit_access for B).
    r.ga().write_entry_frame(g1, 11).unwrap();
    let before = r.snap();
    for op in [
        cp_fg(Gfn(6), 0, a, g1, 0, 8),
        cp_gg(a, SRC, 0, a, g1, 0, 8),
        cp_gg(a, g1, 0, a, g1, 8, 8),
    ] {
        assert_eq!(r.copy(&mut [op]), [GntSt::GeneralError], "{op:?}");
        r.assert_unchanged(&before);
        assert_eq!(r.counts(f2), c2, "no reference leaked on F2");
        assert_eq!(r.counts(f1), c1);
        assert_eq!(r.status_bits(g1), gtf::READING, "GTF_writing not left set");
        assert_eq!(r.pins(g1), [0, 1, 0, 0]);
    }
    assert_eq!(r.read_gfn(r.a, Gfn(10), 0, 4096), p1, "F1 not written");
    assert_eq!(r.read_gfn(r.a, Gfn(11), 0, 4096), p2, "F2 not written");
    // Reading through the pinned entry still uses F1, the frame the pins hold.
    assert_eq!(
        r.copy(&mut [cp_gf(a, g1, 100, Gfn(7), 0, 8)]),
        [GntSt::Okay]
    );
    assert_eq!(r.read_gfn(r.b, Gfn(7), 0, 8), &pattern(5, 8)[..]);
    let mut buf = [0u8; 8];
    r.gb()
        .read_mapped(HostAddr::Linear(va(1)), 100, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &pattern(5, 8)[..]);
    r.unmap_ok(h.handle, va(1), 0);
    assert_eq!(
        (r.counts(f1), r.counts(f2)),
        (b1, b2),
        "back to the baselines"
    );
    assert!(r.ga().end_access(g1).unwrap());
    r.check();
}

// ---------------------------------------------------------------------------------------
// XSA-230
// ---------------------------------------------------------------------------------------

/// XSA-230: releasing a copy's pin must look at all four counters. A grant pinned only by a
/// device map keeps `GTF_reading` after a copy from it, and a grant with a writable device map
/// keeps `GTF_writing` after a copy into (and from) it; the granter cannot end access until
/// the device maps go.
fn xsa230_copy_release_keeps_device_pins<D: Design>() {
    let r = copy_rig::<D>();
    let a = r.a;
    let (g, gw) = (GrantRef(12), GrantRef(13));
    r.grant(g, Gfn(12), false);
    r.grant(gw, Gfn(13), false);
    let m = r.map_ok(g, DEV_RO, 0);
    let mw = r.map_ok(gw, DEV, 0);
    assert_eq!(r.status_bits(g), gtf::READING);
    assert_eq!(r.status_bits(gw), RW_BITS);
    let ops = vec![
        cp_gf(a, g, 0, Gfn(5), 0, 8),
        cp_fg(Gfn(6), 0, a, gw, 0, 8),
        cp_gf(a, gw, 0, Gfn(7), 0, 8),
        cp_gg(a, g, 0, a, gw, 8, 8),
    ];
    for op in ops.iter().copied() {
        assert_eq!(r.copy(&mut [op]), [GntSt::Okay], "{op:?}");
        assert_eq!(r.pins(g), [0, 0, 0, 1]);
        assert_eq!(r.pins(gw), [0, 0, 1, 0]);
        assert_eq!(r.status_bits(g), gtf::READING, "after {op:?}");
        assert_eq!(r.status_bits(gw), RW_BITS, "after {op:?}");
        assert!(!r.ga().end_access(g).unwrap());
        assert!(!r.ga().end_access(gw).unwrap());
        r.check();
    }
    // As one batch, with the pins observed in between.
    let done = copy_observed(&r, ops, |_| {
        assert_eq!(r.status_bits(g), gtf::READING);
        assert_eq!(r.status_bits(gw), RW_BITS);
    });
    assert!(done.iter().all(|o| o.status == GntSt::Okay), "{done:?}");
    assert_eq!(r.status_bits(g), gtf::READING);
    assert_eq!(r.status_bits(gw), RW_BITS);
    r.check();
    r.unmap_ok(m.handle, 0, m.dev_bus_addr);
    r.unmap_ok(mw.handle, 0, mw.dev_bus_addr);
    assert!(r.ga().end_access(g).unwrap());
    assert!(r.ga().end_access(gw).unwrap());
    r.check();
}

// ---------------------------------------------------------------------------------------
// XSA-236
// ---------------------------------------------------------------------------------------

/// XSA-236: a copy buffer's release drops the pin before the page references. Whatever the
/// batch does (cached buffers, failed elements, preemption, writable destinations taking type
/// references) every page and type reference count returns to its baseline; and while the
/// granter keeps ending and re-granting its grant concurrently, copies either work or fail
/// cleanly and the counts still end at their baselines.
fn xsa236_refcounts_back_to_baseline<D: Design>() {
    let r = copy_rig::<D>();
    let a = r.a;
    let frames: Vec<Mfn> = [(r.a, 1), (r.a, 2), (r.b, 5), (r.b, 6), (r.b, 7)]
        .iter()
        .map(|&(d, g)| r.mfn(d, Gfn(g)))
        .collect();
    let base: Vec<_> = frames.iter().map(|&m| r.counts(m)).collect();
    let counts = || frames.iter().map(|&m| r.counts(m)).collect::<Vec<_>>();
    let batches: Vec<Vec<GnttabCopy>> = vec![
        vec![
            cp_gf(a, SRC, 0, Gfn(5), 0, 8),
            cp_gg(a, SRC, 0, a, DST, 0, 8),
            cp_gg(a, DST, 0, a, DST, 64, 8),
            cp_fg(Gfn(6), 0, a, DST, 128, 8),
        ],
        vec![
            cp_gf(a, SRC, 0, Gfn(5), 0, 8),
            cp_gf(a, SRC, 4095, Gfn(5), 0, 8),
            cp_gg(a, SRC, 0, a, SRC, 0, 8),
            cp_gg(a, SRC, 0, a, DST, 0, 8),
            cp_gf(a, GrantRef(40), 0, Gfn(7), 0, 8),
            cp_ff(Gfn(6), 0, Gfn(7), 0, 8),
        ],
    ];
    for b in &batches {
        let mut ops = b.clone();
        r.copy(&mut ops);
        assert_eq!(counts(), base, "{ops:?}");
        let done = run_preempted(&r, b, &(1..b.len()).collect::<Vec<_>>());
        assert_eq!(statuses(&done), statuses(&ops));
        assert_eq!(counts(), base);
        r.check();
    }
    // Concurrently: the granter ends and re-grants SRC in a loop while B copies from it.
    let stop = AtomicBool::new(false);
    let (ok, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|s| {
        let granter = s.spawn(|| {
            let ga = r.ga();
            let mut ended = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if ga.end_access(SRC).unwrap() {
                    ended += 1;
                    ga.grant_access(SRC, r.b, Gfn(1), true).unwrap();
                }
                thread::yield_now();
            }
            ended
        });
        let _stop = SetOnDrop(&stop);
        let mut cx = r.vcpu(r.b, 0);
        for i in 0..300u16 {
            let off = (i % 64) * 8;
            let mut ops = [
                cp_gf(a, SRC, off, Gfn(5), off, 8),
                cp_gf(a, SRC, off, Gfn(6), off, 8),
            ];
            for s in copy_on(&mut cx, &mut ops) {
                match s {
                    GntSt::Okay => ok.fetch_add(1, Ordering::Relaxed),
                    GntSt::GeneralError => refused.fetch_add(1, Ordering::Relaxed),
                    other => panic!("unexpected {other:?}"),
                };
            }
        }
        drop(cx);
        drop(_stop);
        granter.join().unwrap();
    });
    assert!(ok.load(Ordering::Relaxed) > 0, "some copies worked");
    assert_eq!(counts(), base);
    assert_eq!(r.pins(SRC), [0; 4]);
    assert!(r.ga().end_access(SRC).unwrap());
    r.check();
}

design_tests!(
    xsa318_copy_continuation,
    xsa448_zero_length_copies,
    xsa500_copy_upgrade_checked,
    xsa230_copy_release_keeps_device_pins,
    xsa236_refcounts_back_to_baseline,
);
