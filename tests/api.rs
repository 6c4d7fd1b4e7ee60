//! Conformance suite for `GNTTABOP_map_grant_ref`, `unmap_grant_ref`, `setup_table` and
//! `query_size` (spec sections 4-8 and 13), run on every design.
//!
//! Every failure test asserts the exact `GNTST_*` status and that nothing changed (a
//! normalized snapshot, see `common::normalize`, and where no handle can have been touched a
//! raw `hv.snapshot()` too) and that every spec-13 invariant still holds.

#[macro_use]
mod common;
use common::*;

use gnttab::abi::SHGNT_PER_PAGE_V1;
use std::collections::BTreeSet;

const G: GrantRef = GrantRef(8);

// ---------------------------------------------------------------------------------------
// map: failures (spec 6.2 in order)
// ---------------------------------------------------------------------------------------

/// Step 1: neither host nor device requested is `bad_gntref`, before any other check.
fn map_needs_host_or_device<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(G, Gfn(1), false);
    let raw = r.hv.snapshot();
    let before = r.snap();
    let mut cx = r.cx();
    for flags in [
        0,
        GntMap::READONLY.bits(),
        (GntMap::APPLICATION_MAP | GntMap::READONLY).bits(),
        GntMap::CONTAINS_PTE.bits(),
        1 << 16,
    ] {
        let m = map1_raw(&mut cx, r.a, G, flags, va(0));
        assert_eq!(m.status, GntSt::BadGntref, "flags {flags:#x}");
    }
    // Before the domain lookup and the ref check.
    let m = map1_raw(&mut cx, DomId(999), GrantRef(u32::MAX), 0, 0);
    assert_eq!(m.status, GntSt::BadGntref);
    drop(cx);
    assert_eq!(r.hv.snapshot(), raw);
    r.assert_unchanged(&before);
}

/// Step 6: `ref >= nr_grant_entries` is `bad_gntref` (the Xen design's handle is freed again).
fn map_ref_out_of_range<D: Design>() {
    let r = Rig::<D>::new();
    let before = r.snap();
    for gref in [SHGNT_PER_PAGE_V1, SHGNT_PER_PAGE_V1 + 1, 1 << 16, u32::MAX] {
        for flags in [HOST, HOST_RO, DEV, HOST_DEV_RO] {
            let m = r.map(GrantRef(gref), flags, va(1));
            assert_eq!(m.status, GntSt::BadGntref, "ref {gref} {flags:?}");
        }
    }
    r.assert_unchanged(&before);
    // After growth the same ref is valid (and, not being granted, refused by step 8).
    r.grow(r.a, 2);
    r.grant(GrantRef(SHGNT_PER_PAGE_V1), Gfn(2), false);
    let m = r.map_ok(GrantRef(SHGNT_PER_PAGE_V1), HOST, va(1));
    r.unmap_ok(m.handle, va(1), 0);
    assert_eq!(
        r.map(GrantRef(SHGNT_PER_PAGE_V1 + 1), HOST, va(1)).status,
        GntSt::GeneralError
    );
    r.check();
}

/// Step 3: lookup by id; `DOMID_SELF` is not translated for map.
fn map_unknown_domain_and_domid_self<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(G, Gfn(1), false);
    // The mapper grants itself a ref: naming itself as DOMID_SELF still fails.
    r.gb()
        .grant_access(GrantRef(9), r.b, Gfn(3), false)
        .unwrap();
    let raw = r.hv.snapshot();
    let before = r.snap();
    let mut cx = r.cx();
    for dom in [
        DomId(77),
        DomId(0x7FEF),
        DomId::SELF,
        DomId::IO,
        DomId::XEN,
        DomId::INVALID,
    ] {
        for flags in [HOST, DEV_RO] {
            assert_eq!(
                map1(&mut cx, dom, G, flags, va(0)).status,
                GntSt::BadDomain,
                "{dom:?}"
            );
        }
        assert_eq!(
            map1(&mut cx, dom, GrantRef(9), HOST, va(0)).status,
            GntSt::BadDomain
        );
    }
    drop(cx);
    assert_eq!(r.hv.snapshot(), raw);
    r.assert_unchanged(&before);
    // By its real id the self-grant maps.
    let mut cx = r.cx();
    let m = map1(&mut cx, r.b, GrantRef(9), HOST, va(0));
    assert_eq!(m.status, GntSt::Okay);
    assert_eq!(unmap1(&mut cx, m.handle, va(0), 0), GntSt::Okay);
    drop(cx);
    r.check();
}

/// Step 2: a translated caller may not ask for device, application or PTE mappings; this
/// check comes before the domain lookup.
fn map_hvm_caller_flags<D: Design>() {
    let r = Rig::<D>::build(|c| c.b.kind = DomainKind::Hvm);
    r.grant(G, Gfn(1), false);
    let raw = r.hv.snapshot();
    let before = r.snap();
    let cases = [
        DEV,
        DEV_RO,
        HOST_DEV,
        HOST_DEV_RO,
        HOST | GntMap::APPLICATION_MAP,
        HOST_RO | GntMap::APPLICATION_MAP,
        HOST | GntMap::CONTAINS_PTE,
        HOST_RO | GntMap::CONTAINS_PTE,
    ];
    for flags in cases {
        assert_eq!(
            r.map(G, flags, va(0)).status,
            GntSt::GeneralError,
            "{flags:?}"
        );
    }
    let mut cx = r.cx();
    assert_eq!(
        map1(&mut cx, DomId(77), G, DEV, 0).status,
        GntSt::GeneralError
    );
    drop(cx);
    assert_eq!(r.hv.snapshot(), raw);
    r.assert_unchanged(&before);
    // A plain host map (a P2M entry at a guest-physical address) works.
    let m = r.map_ok(G, HOST, va(0));
    let mut buf = [0u8; 4];
    r.gb()
        .read_mapped(HostAddr::Linear(va(0)), 0, &mut buf)
        .unwrap();
    r.unmap_ok(m.handle, va(0), 0);
    r.check();
}

/// Steps 7-8: the shared entry must permit access to this grantee, with the right mode.
fn map_entry_not_usable<D: Design>() {
    let r = Rig::<D>::new();
    let c = r.add_domain(DomainConfig::new("c"));
    let ga = r.ga();
    // 20: never granted. 21: granted to c. 22: read-only grant. 23: accept_transfer.
    // 24: permit_access | sub_page. 25: transitive type.
    r.grant_to(GrantRef(21), c, Gfn(21), false);
    r.grant(GrantRef(22), Gfn(22), true);
    ga.write_entry_raw(GrantRef(23), gtf::ACCEPT_TRANSFER, r.b, 23)
        .unwrap();
    ga.write_entry_raw(GrantRef(24), gtf::PERMIT_ACCESS | gtf::SUB_PAGE, r.b, 24)
        .unwrap();
    ga.write_entry_raw(GrantRef(25), gtf::TRANSITIVE, r.b, 25)
        .unwrap();
    let before = r.snap();
    for (gref, flags) in [
        (20, HOST),
        (20, DEV_RO),
        (21, HOST),
        (21, HOST_RO),
        (22, HOST),
        (22, DEV),
        (22, HOST_DEV),
        (23, HOST),
        (23, HOST_RO),
        (24, HOST_RO),
        (25, HOST_RO),
    ] {
        let m = r.map(GrantRef(gref), flags, va(gref as u64));
        assert_eq!(m.status, GntSt::GeneralError, "g{gref} {flags:?}");
    }
    r.assert_unchanged(&before);
    // The read-only grant maps read-only.
    let m = r.map_ok(GrantRef(22), HOST_RO, va(22));
    assert_eq!(r.status_bits(GrantRef(22)), gtf::READING);
    // ... and a writable use cannot be added while it is pinned read-only (upgrade check).
    let before = r.snap();
    assert_eq!(
        r.map(GrantRef(22), HOST, va(23)).status,
        GntSt::GeneralError
    );
    assert_eq!(r.map(GrantRef(22), DEV, 0).status, GntSt::GeneralError);
    r.assert_unchanged(&before);
    r.unmap_ok(m.handle, va(22), 0);
    r.check();
}

/// Step 7: an entry pinned by another domain cannot be used, even if the shared entry now
/// names the caller.
fn map_pinned_by_other_domain<D: Design>() {
    let r = Rig::<D>::new();
    let c = r.add_domain(DomainConfig::new("c"));
    let g = GrantRef(30);
    r.grant_to(g, c, Gfn(30), false);
    let mut cxc = r.vcpu(c, 0);
    let mc = map1(&mut cxc, r.a, g, HOST_RO, va(0));
    assert_eq!(mc.status, GntSt::Okay);
    // The granter retargets the pinned entry to b (Xen ignores this while it is pinned).
    let e = r.ga().entry_snapshot(g).unwrap();
    r.ga().write_entry_raw(g, e.flags, r.b, e.frame).unwrap();
    let before = r.snap();
    for flags in [HOST_RO, HOST, DEV_RO, DEV] {
        assert_eq!(
            r.map(g, flags, va(1)).status,
            GntSt::GeneralError,
            "{flags:?}"
        );
    }
    r.assert_unchanged(&before);
    assert_eq!(r.hv.active_entry(r.a, g).unwrap().domid, c);
    assert_eq!(unmap1(&mut cxc, mc.handle, va(0), 0), GntSt::Okay);
    drop(cxc);
    // Unpinned: the entry is read afresh and now names b.
    let m = r.map_ok(g, HOST, va(1));
    assert_eq!(r.hv.active_entry(r.a, g).unwrap().domid, r.b);
    r.unmap_ok(m.handle, va(1), 0);
    r.check();
}

/// Pin counters stop at 128: the 129th use of one kind is `general_error`; other kinds still
/// work (current rule, spec 1.3).
fn map_pin_overflow<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(40);
    r.grant(g, Gfn(40), false);
    let mut live = Vec::new();
    let mut cx = r.cx();
    for i in 0..128 {
        let m = map1(&mut cx, r.a, g, HOST_RO, va(i));
        assert_eq!(m.status, GntSt::Okay, "map {i}");
        live.push((m.handle, va(i), 0));
        assert!(r.pins(g).iter().all(|&c| c <= 128));
    }
    drop(cx);
    assert_eq!(r.pins(g), [0, 128, 0, 0]);
    let before = r.snap();
    for i in 0..3 {
        assert_eq!(r.map(g, HOST_RO, va(200 + i)).status, GntSt::GeneralError);
    }
    // Also as part of a host+device read-only map.
    assert_eq!(r.map(g, HOST_DEV_RO, va(203)).status, GntSt::GeneralError);
    r.assert_unchanged(&before);
    assert_eq!(r.pins(g), [0, 128, 0, 0]);
    // Other counters are independent.
    let m = r.map_ok(g, HOST, va(300));
    live.push((m.handle, va(300), 0));
    let m = r.map_ok(g, DEV_RO, 0);
    live.push((m.handle, 0, m.dev_bus_addr));
    assert_eq!(r.pins(g), [1, 128, 0, 1]);
    // Freeing one read-only use makes room for exactly one more.
    let (h, a, _) = live.remove(0);
    r.unmap_ok(h, a, 0);
    let m = r.map_ok(g, HOST_RO, va(400));
    live.push((m.handle, va(400), 0));
    assert_eq!(r.map(g, HOST_RO, va(401)).status, GntSt::GeneralError);
    r.check();
    let mut cx = r.cx();
    for (h, a, d) in live {
        assert_eq!(unmap1(&mut cx, h, a, d), GntSt::Okay);
    }
    drop(cx);
    assert_eq!(r.pins(g), [0; 4]);
    assert_eq!(r.status_bits(g), 0);
    r.check();
}

/// Step 9: an absent gfn, or one backed by another domain's frame, is `bad_page`; the status
/// bits are rolled back.
fn map_bad_page<D: Design>() {
    let r = Rig::<D>::new();
    let a_pages = r.hv.domain(r.a).unwrap().p2m(Gfn(255));
    assert!(matches!(a_pages, P2mEntry::Present(_)));
    // Beyond the populated range.
    r.grant(GrantRef(50), Gfn(10_000), false);
    let before = r.snap();
    for flags in [HOST, HOST_RO, DEV, HOST_DEV_RO] {
        assert_eq!(
            r.map(GrantRef(50), flags, va(0)).status,
            GntSt::BadPage,
            "{flags:?}"
        );
    }
    r.assert_unchanged(&before);
    assert_eq!(
        r.ga().entry_snapshot(GrantRef(50)).unwrap().flags,
        gtf::PERMIT_ACCESS
    );

    // A gfn made absent, and a gfn pointing at the mapper's own frame. (While the P2M is
    // edited the allocation-reference invariant does not hold, so only the snapshot is
    // compared until it is restored.)
    let foreign = r.mfn(r.b, Gfn(60));
    for (gfn, e) in [
        (Gfn(61), P2mEntry::Absent),
        (Gfn(60), P2mEntry::Present(foreign)),
    ] {
        let old = r.hv.set_p2m(r.a, gfn, e).unwrap();
        r.grant(GrantRef(51), gfn, false);
        let before = r.snap();
        for flags in [HOST, HOST_RO, DEV_RO] {
            assert_eq!(
                r.map(GrantRef(51), flags, va(1)).status,
                GntSt::BadPage,
                "{gfn:?} {flags:?}"
            );
        }
        assert_eq!(r.snap(), before, "{}", diff(&before, &r.snap()));
        r.hv.set_p2m(r.a, gfn, old);
        r.check();
        let m = r.map_ok(GrantRef(51), HOST, va(1));
        assert_eq!(m.dev_bus_addr, r.mfn(r.a, gfn).addr());
        r.unmap_ok(m.handle, va(1), 0);
    }
    r.check();
}

/// Step 9: a paged-out gfn is `eagain`; after paging in the map works.
fn map_paged_out_eagain<D: Design>() {
    let r = Rig::<D>::new();
    let gfn = Gfn(70);
    let mfn = r.mfn(r.a, gfn);
    r.hv.set_p2m(r.a, gfn, P2mEntry::PagedOut(mfn));
    r.grant(GrantRef(55), gfn, false);
    let before = r.snap();
    for flags in [HOST, HOST_RO, DEV, HOST_DEV] {
        assert_eq!(
            r.map(GrantRef(55), flags, va(0)).status,
            GntSt::Eagain,
            "{flags:?}"
        );
    }
    r.assert_unchanged(&before);
    assert_eq!(r.status_bits(GrantRef(55)), 0);
    r.hv.set_p2m(r.a, gfn, P2mEntry::Present(mfn));
    let m = r.map_ok(GrantRef(55), HOST, va(0));
    r.unmap_ok(m.handle, va(0), 0);
    r.check();
}

/// Step 11: a writable map needs a writable type reference, refused while the frame has
/// another type (e.g. is a page table).
fn map_writable_other_type<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(60);
    let gfn = Gfn(80);
    let mfn = r.mfn(r.a, gfn);
    r.grant(g, gfn, false);
    assert!(r.hv.machine().frame(mfn).unwrap().set_other_type(true));
    let base = r.counts(mfn);
    let before = r.snap();
    for flags in [HOST, DEV, HOST_DEV] {
        assert_eq!(
            r.map(g, flags, va(0)).status,
            GntSt::GeneralError,
            "{flags:?}"
        );
    }
    r.assert_unchanged(&before);
    // While pinned read-only, the writable upgrade fails the same way.
    let ro = r.map_ok(g, HOST_RO, va(1));
    let dro = r.map_ok(g, DEV_RO, 0);
    assert_eq!(r.counts(mfn), (base.0 + 2, base.1));
    let before = r.snap();
    for flags in [HOST, DEV] {
        assert_eq!(
            r.map(g, flags, va(2)).status,
            GntSt::GeneralError,
            "{flags:?}"
        );
    }
    r.assert_unchanged(&before);
    assert_eq!(r.status_bits(g), gtf::READING);
    r.unmap_ok(ro.handle, va(1), 0);
    r.unmap_ok(dro.handle, 0, dro.dev_bus_addr);
    assert!(r.hv.machine().frame(mfn).unwrap().set_other_type(false));
    let m = r.map_ok(g, HOST, va(0));
    assert_eq!(r.counts(mfn), (base.0 + 1, base.1 + 1));
    r.unmap_ok(m.handle, va(0), 0);
    assert_eq!(r.counts(mfn), base);
    r.check();
}

/// Host mapping at an occupied address is refused (simulator choice) and rolled back.
fn map_host_address_occupied<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(GrantRef(61), Gfn(61), false);
    r.grant(GrantRef(62), Gfn(62), false);
    let m = r.map_ok(GrantRef(61), HOST, va(5));
    let before = r.snap();
    for (g, flags) in [
        (62, HOST),
        (62, HOST_RO),
        (62, HOST_DEV),
        (61, HOST),
        (61, HOST_RO),
    ] {
        assert_eq!(
            r.map(GrantRef(g), flags, va(5)).status,
            GntSt::GeneralError,
            "g{g} {flags:?}"
        );
    }
    r.assert_unchanged(&before);
    r.unmap_ok(m.handle, va(5), 0);
    let m = r.map_ok(GrantRef(62), HOST, va(5));
    r.unmap_ok(m.handle, va(5), 0);
    r.check();
}

/// Host mapping beyond the mapper's address space is refused.
fn map_host_address_out_of_range<D: Design>() {
    let r = Rig::<D>::build(|c| c.b.host_pages = 1024);
    r.grant(G, Gfn(1), false);
    let before = r.snap();
    for (addr, flags) in [
        (1024 << 12, HOST),
        (1025 << 12, HOST_RO),
        (!0xFFFu64, HOST),
        (1 << 40, HOST_DEV),
        (1024 * 8, HOST | GntMap::CONTAINS_PTE),
    ] {
        assert_eq!(
            r.map(G, flags, addr).status,
            GntSt::GeneralError,
            "{addr:#x} {flags:?}"
        );
    }
    r.assert_unchanged(&before);
    let m = r.map_ok(G, HOST, 1023 << 12);
    let p = r.map_ok(G, HOST | GntMap::CONTAINS_PTE, 1022 * 8);
    r.unmap_ok(m.handle, 1023 << 12, 0);
    r.unmap_ok(p.handle, 1022 * 8, 0);
    r.check();
}

/// XSA-227: a `contains_pte` address must be 8-byte aligned.
fn map_contains_pte_alignment<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(G, Gfn(1), false);
    r.ga().write_page(Gfn(1), 0, b"pte-mapped").unwrap();
    let p = 0x8000u64;
    let f = HOST | GntMap::CONTAINS_PTE;
    let before = r.snap();
    for off in [1, 4, 7, 9, 12, 15] {
        assert_eq!(r.map(G, f, p + off).status, GntSt::GeneralError, "P+{off}");
    }
    r.assert_unchanged(&before);
    let m = r.map_ok(G, f, p + 8);
    let pte = r.gb().pte(HostAddr::Pte(p + 8)).unwrap();
    assert!(pte.present() && pte.writable() && pte.is_grant());
    assert_eq!(pte.mfn(), r.mfn(r.a, Gfn(1)));
    assert!(!r.gb().pte(HostAddr::Pte(p)).unwrap().present());
    let mut buf = [0u8; 10];
    r.gb()
        .read_mapped(HostAddr::Pte(p + 8), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"pte-mapped");
    // Unmap with a misaligned PTE address fails and changes nothing.
    let before = r.snap();
    assert_eq!(r.unmap(m.handle, p + 9, 0), GntSt::GeneralError);
    r.assert_unchanged(&before);
    r.unmap_ok(m.handle, p + 8, 0);
    r.check();
}

/// A translated caller's host mapping takes exactly host_map (+ readonly): the PTE
/// "available" bits make creation fail (after the pin: everything is rolled back). A PV
/// caller may pass them.
fn map_hvm_avail_bits<D: Design>() {
    let r = Rig::<D>::build(|c| c.b.kind = DomainKind::Hvm);
    r.grant(G, Gfn(1), false);
    let before = r.snap();
    let mut cx = r.cx();
    for flags in [
        HOST.bits() | 1 << 16,
        HOST_RO.bits() | 1 << 31,
        HOST.bits() | 0xFFFF_0000,
    ] {
        assert_eq!(
            map1_raw(&mut cx, r.a, G, flags, va(0)).status,
            GntSt::GeneralError,
            "{flags:#x}"
        );
    }
    drop(cx);
    r.assert_unchanged(&before);

    let r = Rig::<D>::new();
    r.grant(G, Gfn(1), false);
    let mut cx = r.cx();
    let m = map1_raw(&mut cx, r.a, G, HOST.bits() | 1 << 16, va(0));
    assert_eq!(m.status, GntSt::Okay);
    assert_eq!(unmap1(&mut cx, m.handle, va(0), 0), GntSt::Okay);
    drop(cx);
    r.check();
}

/// A host-mapping failure injected at `MapBeforeHostMapping` undoes everything the map did.
fn map_hook_failure_rolls_back<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(63);
    r.grant(g, Gfn(63), false);
    let arm = Arm::at(HookPoint::MapBeforeHostMapping).dom(r.b);
    let before = r.snap();
    for flags in [HOST, HOST_RO, HOST_DEV, HOST_DEV_RO] {
        r.hooks.fail(arm, 1);
        assert_eq!(
            r.map(g, flags, va(0)).status,
            GntSt::GeneralError,
            "{flags:?}"
        );
        r.assert_unchanged(&before);
    }
    // Device-only maps create no host mapping and never reach the hook.
    let hits = r.hooks.hits(HookPoint::MapBeforeHostMapping, r.b);
    r.hooks.fail(arm, 1);
    let d = r.map_ok(g, DEV_RO, 0);
    assert_eq!(r.hooks.hits(HookPoint::MapBeforeHostMapping, r.b), hits);
    r.hooks.disarm();
    // With an existing read-only pin, a failed writable map keeps the pin and GTF_reading.
    let ro = r.map_ok(g, HOST_RO, va(1));
    let before = r.snap();
    r.hooks.fail(arm, 2);
    assert_eq!(r.map(g, HOST, va(2)).status, GntSt::GeneralError);
    assert_eq!(r.map(g, HOST_DEV, va(2)).status, GntSt::GeneralError);
    r.assert_unchanged(&before);
    assert_eq!(r.status_bits(g), gtf::READING);
    let rw = r.map_ok(g, HOST, va(2));
    assert_eq!(r.status_bits(g), RW_BITS);
    r.unmap_ok(rw.handle, va(2), 0);
    r.unmap_ok(ro.handle, va(1), 0);
    r.unmap_ok(d.handle, 0, d.dev_bus_addr);
    r.check();
}

/// `max_maptrack_frames = 0`: Xen designs cannot map at all (`no_space`).
///
/// Designs with inline slots record the first two concurrent maps of a gref in the active
/// entry's slots, without any maptrack handle. With the default map limit
/// (`MapLimit::Default`: `max_maptrack_frames * 256` live maps, src/quota.rs) they also
/// refuse every map, like Xen. With `MapLimit::Off` only the maptrack bounds them: the first
/// two maps of a gref succeed (inline, one fast handle) and the third, which needs a slow
/// handle, gets `no_space`.
fn map_no_maptrack_space<D: Design>() {
    for limit in [MapLimit::Default, MapLimit::Off] {
        let r = Rig::<D>::build(|c| {
            c.b.max_maptrack_frames = 0;
            c.b.map_limit = limit;
        });
        r.grant(GrantRef(64), Gfn(64), false);
        r.grant(GrantRef(65), Gfn(65), false);
        let inline = slots::<D>() && limit == MapLimit::Off;
        let mut live = Vec::new();
        if inline {
            let m1 = r.map_ok(GrantRef(64), HOST, va(0));
            let m2 = r.map_ok(GrantRef(64), HOST_RO, va(1));
            assert!(is_fast(m1.handle) && m1.handle == m2.handle);
            live.push((m1.handle, va(0), 0));
            live.push((m2.handle, va(1), 0));
        }
        let before = r.snap();
        for flags in [HOST, HOST_RO, DEV, HOST_DEV_RO] {
            assert_eq!(
                r.map(GrantRef(64), flags, va(2)).status,
                GntSt::NoSpace,
                "{limit:?} {flags:?}"
            );
        }
        r.assert_unchanged(&before);
        let other = r.map(GrantRef(65), HOST, va(3));
        if inline {
            assert_eq!(other.status, GntSt::Okay);
            live.push((other.handle, va(3), 0));
        } else {
            assert_eq!(other.status, GntSt::NoSpace, "{limit:?}");
            r.assert_unchanged(&before);
        }
        assert_eq!(r.hv.domain(r.b).unwrap().maptrack_limit(), 0);
        for (h, a, d) in live {
            r.unmap_ok(h, a, d);
        }
        r.check();
    }
}

/// The documented check-order difference: with the maptrack exhausted, Xen allocates the
/// handle (step 5) before it checks the ref and says `no_space`; designs with inline slots
/// allocate a slow handle only after the entry is pinned and say `bad_gntref`. Checks before
/// step 5 are the same everywhere.
fn map_check_order_exhausted_maptrack<D: Design>() {
    let r = Rig::<D>::build(|c| c.b.max_maptrack_frames = 0);
    r.grant(G, Gfn(1), false);
    let raw = r.hv.snapshot();
    let bad_ref = GrantRef(SHGNT_PER_PAGE_V1 + 3);
    let st = r.map(bad_ref, HOST, va(0)).status;
    if <D::Slots as SlotPolicy>::ENABLED {
        assert_eq!(st, GntSt::BadGntref);
    } else {
        assert_eq!(st, GntSt::NoSpace);
    }
    let mut cx = r.cx();
    assert_eq!(
        map1(&mut cx, DomId(77), bad_ref, HOST, va(0)).status,
        GntSt::BadDomain
    );
    assert_eq!(
        map1_raw(&mut cx, r.a, bad_ref, 0, va(0)).status,
        GntSt::BadGntref
    );
    drop(cx);
    assert_eq!(r.hv.snapshot(), raw);
    r.check();
}

// ---------------------------------------------------------------------------------------
// map: successes
// ---------------------------------------------------------------------------------------

/// Spec 3.3: which status bits a map sets and an unmap clears.
fn map_status_bits<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(70);
    r.grant(g, Gfn(70), false);
    assert_eq!(r.status_bits(g), 0);
    let ro1 = r.map_ok(g, HOST_RO, va(0));
    assert_eq!(r.status_bits(g), gtf::READING);
    let ro2 = r.map_ok(g, DEV_RO, 0);
    assert_eq!(r.status_bits(g), gtf::READING);
    let rw = r.map_ok(g, HOST, va(1));
    assert_eq!(r.status_bits(g), RW_BITS);
    // A read-only use added while writable pins exist changes nothing.
    let ro3 = r.map_ok(g, HOST_RO, va(2));
    assert_eq!(r.status_bits(g), RW_BITS);
    assert_eq!(r.pins(g), [1, 2, 0, 1]);
    // Read-only drops never touch GTF_writing; the last writable drop clears it.
    r.unmap_ok(ro3.handle, va(2), 0);
    assert_eq!(r.status_bits(g), RW_BITS);
    r.unmap_ok(rw.handle, va(1), 0);
    assert_eq!(r.status_bits(g), gtf::READING);
    r.unmap_ok(ro2.handle, 0, ro2.dev_bus_addr);
    assert_eq!(r.status_bits(g), gtf::READING);
    r.unmap_ok(ro1.handle, va(0), 0);
    assert_eq!(r.status_bits(g), 0);
    // Writable first (device-only): both bits at once, both cleared at once.
    let d = r.map_ok(g, DEV, 0);
    assert_eq!(r.status_bits(g), RW_BITS);
    assert_eq!(r.pins(g), [0, 0, 1, 0]);
    r.unmap_ok(d.handle, 0, d.dev_bus_addr);
    assert_eq!(r.ga().entry_snapshot(g).unwrap().flags, gtf::PERMIT_ACCESS);
    r.check();
}

/// While an entry is pinned, later maps use the frame captured when the pin went non-zero;
/// the granter rewriting the entry's frame has no effect until the pin drops to 0 (spec 1.2).
fn map_pinned_entry_uses_active_frame<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(95);
    let ga = r.ga();
    ga.write_page(Gfn(95), 0, b"old").unwrap();
    ga.write_page(Gfn(96), 0, b"new").unwrap();
    let (old, new) = (r.mfn(r.a, Gfn(95)), r.mfn(r.a, Gfn(96)));
    r.grant(g, Gfn(95), false);
    let m1 = r.map_ok(g, HOST_RO, va(0));
    ga.write_entry_frame(g, 96).unwrap();
    let m2 = r.map_ok(g, HOST, va(1));
    assert_eq!(m2.dev_bus_addr, old.addr());
    assert_eq!(r.hv.active_entry(r.a, g).unwrap().mfn, old);
    let mut buf = [0u8; 3];
    r.gb()
        .read_mapped(HostAddr::Linear(va(1)), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"old");
    assert_eq!(r.counts(old), (3, 1));
    assert_eq!(r.counts(new), (1, 0));
    r.check();
    r.unmap_ok(m2.handle, va(1), 0);
    r.unmap_ok(m1.handle, va(0), 0);
    // Unpinned: the next map reads the entry afresh.
    let m3 = r.map_ok(g, HOST_RO, va(2));
    assert_eq!(m3.dev_bus_addr, new.addr());
    r.gb()
        .read_mapped(HostAddr::Linear(va(2)), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"new");
    r.unmap_ok(m3.handle, va(2), 0);
    assert_eq!((r.counts(old), r.counts(new)), ((1, 0), (1, 0)));
    r.check();
}

/// Page and writable-type references per mapping kind with a PV granter.
fn map_refcounts_pv_granter<D: Design>() {
    let r = Rig::<D>::new();
    refcount_cases(
        &r,
        &[
            (HOST, 1, 1),
            (HOST_RO, 1, 0),
            (DEV, 1, 1),
            (DEV_RO, 1, 0),
            (HOST_DEV, 2, 2),
            (HOST_DEV_RO, 2, 0),
        ],
    );
}

/// With an HVM granter a writable host map takes no type reference (x86
/// `gnttab_host_mapping_get_page_type`), a writable device map does; a self-map by an HVM
/// domain takes one.
fn map_refcounts_hvm_granter<D: Design>() {
    let r = Rig::<D>::build(|c| c.a.kind = DomainKind::Hvm);
    refcount_cases(
        &r,
        &[
            (HOST, 1, 0),
            (HOST_RO, 1, 0),
            (DEV, 1, 1),
            (DEV_RO, 1, 0),
            (HOST_DEV, 2, 1),
            (HOST_DEV_RO, 2, 0),
        ],
    );
    // Self-map by the HVM granter.
    let g = GrantRef(72);
    let mfn = r.mfn(r.a, Gfn(72));
    r.ga().grant_access(g, r.a, Gfn(72), false).unwrap();
    let base = r.counts(mfn);
    let mut cx = r.vcpu(r.a, 0);
    let m = map1(&mut cx, r.a, g, HOST, va(0));
    assert_eq!(m.status, GntSt::Okay);
    assert_eq!(r.counts(mfn), (base.0 + 1, base.1 + 1));
    assert_eq!(unmap1(&mut cx, m.handle, va(0), 0), GntSt::Okay);
    drop(cx);
    assert_eq!(r.counts(mfn), base);
    r.check();
}

fn refcount_cases<D: Design>(r: &Rig<D>, cases: &[(GntMap, u32, u32)]) {
    let g = GrantRef(71);
    let gfn = Gfn(71);
    let mfn = r.mfn(r.a, gfn);
    r.grant(g, gfn, false);
    let base = r.counts(mfn);
    assert_eq!(base, (1, 0));
    for &(flags, refs, types) in cases {
        let host = if flags.contains(GntMap::HOST_MAP) {
            va(0)
        } else {
            0
        };
        let m = r.map_ok(g, flags, host);
        assert_eq!(r.counts(mfn), (base.0 + refs, base.1 + types), "{flags:?}");
        r.check();
        let dev = if flags.contains(GntMap::DEVICE_MAP) {
            m.dev_bus_addr
        } else {
            0
        };
        r.unmap_ok(m.handle, host, dev);
        assert_eq!(r.counts(mfn), base, "{flags:?} after unmap");
    }
    // Several at once add up (the first takes its reference when pinning, later ones in
    // step 11).
    let mut live = Vec::new();
    let (mut refs, mut types) = (0, 0);
    for (i, &(flags, dr, dt)) in cases.iter().enumerate() {
        let host = if flags.contains(GntMap::HOST_MAP) {
            va(10 + i as u64)
        } else {
            0
        };
        let m = r.map_ok(g, flags, host);
        refs += dr;
        types += dt;
        assert_eq!(
            r.counts(mfn),
            (base.0 + refs, base.1 + types),
            "cumulative {flags:?}"
        );
        let dev = if flags.contains(GntMap::DEVICE_MAP) {
            m.dev_bus_addr
        } else {
            0
        };
        live.push((m.handle, host, dev));
    }
    r.check();
    for (h, a, d) in live {
        r.unmap_ok(h, a, d);
    }
    assert_eq!(r.counts(mfn), base);
    assert_eq!(r.pins(g), [0; 4]);
    r.check();
}

/// `dev_bus_addr = mfn << 12`, filled for host-only maps too; the active entry records the
/// frame and the grantee.
fn map_dev_bus_addr<D: Design>() {
    let r = Rig::<D>::new();
    for (i, flags) in [HOST, HOST_RO, DEV, DEV_RO, HOST_DEV]
        .into_iter()
        .enumerate()
    {
        let g = GrantRef(100 + i as u32);
        let gfn = Gfn(100 + i as u64);
        r.grant(g, gfn, false);
        let mfn = r.mfn(r.a, gfn);
        let host = if flags.contains(GntMap::HOST_MAP) {
            va(i as u64)
        } else {
            0
        };
        let m = r.map_ok(g, flags, host);
        assert_eq!(m.dev_bus_addr, mfn.0 << 12, "{flags:?}");
        let act = r.hv.active_entry(r.a, g).unwrap();
        assert_eq!((act.mfn, act.domid), (mfn, r.b));
        let dev = if flags.contains(GntMap::DEVICE_MAP) {
            m.dev_bus_addr
        } else {
            0
        };
        r.unmap_ok(m.handle, host, dev);
    }
    r.check();
}

/// Bytes the granter wrote are readable through the mapping; writes go through a writable
/// mapping and are refused through a read-only one.
fn map_data_through_mapping<D: Design>() {
    let r = Rig::<D>::new();
    let ga = r.ga();
    let gb = r.gb();
    ga.write_page(Gfn(90), 100, b"hello grant").unwrap();
    ga.write_page(Gfn(91), 0, b"read only").unwrap();
    r.grant(GrantRef(90), Gfn(90), false);
    r.grant(GrantRef(91), Gfn(91), true);
    let rw = r.map_ok(GrantRef(90), HOST, va(0));
    let ro = r.map_ok(GrantRef(91), HOST_RO, va(1));
    let mut buf = [0u8; 11];
    gb.read_mapped(HostAddr::Linear(va(0)), 100, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"hello grant");
    gb.write_mapped(HostAddr::Linear(va(0)), 200, b"reply")
        .unwrap();
    let mut back = [0u8; 5];
    ga.read_page(Gfn(90), 200, &mut back).unwrap();
    assert_eq!(&back, b"reply");
    let mut buf = [0u8; 9];
    gb.read_mapped(HostAddr::Linear(va(1)), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"read only");
    assert_eq!(
        gb.write_mapped(HostAddr::Linear(va(1)), 0, b"x"),
        Err(AccessFault::ReadOnly)
    );
    ga.read_page(Gfn(91), 0, &mut buf).unwrap();
    assert_eq!(&buf, b"read only");
    let pte = gb.pte(HostAddr::Linear(va(1))).unwrap();
    assert!(pte.present() && !pte.writable() && pte.is_grant());
    r.unmap_ok(rw.handle, va(0), 0);
    r.unmap_ok(ro.handle, va(1), 0);
    assert_eq!(
        gb.read_mapped(HostAddr::Linear(va(0)), 0, &mut buf),
        Err(AccessFault::NotMapped)
    );
    assert_eq!(
        gb.read_mapped(HostAddr::Linear(va(1)), 0, &mut buf),
        Err(AccessFault::NotMapped)
    );
    r.check();
}

/// A domain may map its own grant (naming itself by id).
fn map_self_grant<D: Design>() {
    let r = Rig::<D>::new();
    let ga = r.ga();
    let g = GrantRef(73);
    ga.write_page(Gfn(73), 0, b"mine").unwrap();
    ga.grant_access(g, r.a, Gfn(73), false).unwrap();
    let mfn = r.mfn(r.a, Gfn(73));
    let mut cx = r.vcpu(r.a, 0);
    let m = map1(&mut cx, r.a, g, HOST, va(0));
    assert_eq!(m.status, GntSt::Okay);
    assert_eq!(m.dev_bus_addr, mfn.addr());
    assert_eq!(r.hv.active_entry(r.a, g).unwrap().domid, r.a);
    assert_eq!(r.counts(mfn), (2, 1));
    let mut buf = [0u8; 4];
    ga.read_mapped(HostAddr::Linear(va(0)), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"mine");
    assert!(!ga.end_access(g).unwrap());
    r.check();
    assert_eq!(unmap1(&mut cx, m.handle, va(0), 0), GntSt::Okay);
    drop(cx);
    assert!(ga.end_access(g).unwrap());
    assert_eq!(r.counts(mfn), (1, 0));
    r.check();
}

/// Each element of a batch gets its own status; failures do not stop the batch, and the
/// elements run in order (element 6 finds the address element 0 took).
fn map_batch_mixed<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(GrantRef(74), Gfn(74), false);
    r.grant(GrantRef(75), Gfn(75), true);
    r.grant(GrantRef(77), Gfn(77), false);
    let a = r.a;
    let mut ops = [
        MapGrantRef::new(a, GrantRef(74), HOST, va(0)),
        MapGrantRef::new(a, GrantRef(9999), HOST, va(1)),
        MapGrantRef::new(a, GrantRef(75), HOST_RO, va(2)),
        MapGrantRef::new(DomId(300), GrantRef(74), HOST, va(3)),
        MapGrantRef::new(a, GrantRef(74), GntMap::empty(), va(4)),
        MapGrantRef::new(a, GrantRef(76), HOST, va(5)),
        MapGrantRef::new(a, GrantRef(74), HOST, va(0)),
        MapGrantRef::new(a, GrantRef(75), HOST, va(7)),
        MapGrantRef::new(a, GrantRef(77), DEV, 0),
    ];
    r.cx().map_grant_ref(&mut ops).unwrap();
    let want = [
        GntSt::Okay,
        GntSt::BadGntref,
        GntSt::Okay,
        GntSt::BadDomain,
        GntSt::BadGntref,
        GntSt::GeneralError,
        GntSt::GeneralError,
        GntSt::GeneralError,
        GntSt::Okay,
    ];
    let got: Vec<GntSt> = ops.iter().map(|o| o.status).collect();
    assert_eq!(got, want);
    assert_eq!(r.pins(GrantRef(74)), [1, 0, 0, 0]);
    assert_eq!(r.pins(GrantRef(75)), [0, 1, 0, 0]);
    assert_eq!(r.pins(GrantRef(77)), [0, 0, 1, 0]);
    r.check();
    let mut un = [
        UnmapGrantRef::new(ops[0].handle, va(0), 0),
        UnmapGrantRef::new(ops[2].handle, va(2), 0),
        UnmapGrantRef::new(ops[8].handle, 0, ops[8].dev_bus_addr),
    ];
    r.cx().unmap_grant_ref(&mut un).unwrap();
    assert!(un.iter().all(|u| u.status == GntSt::Okay), "{un:?}");
    r.check();
}

/// `count == 0` is a successful no-op for map and unmap (no flush either).
fn map_and_unmap_count_zero<D: Design>() {
    let r = Rig::<D>::new();
    let raw = r.hv.snapshot();
    let flushes = r.flushes(r.b);
    let mut cx = r.cx();
    assert_eq!(cx.map_grant_ref(&mut []), Ok(()));
    assert_eq!(cx.unmap_grant_ref(&mut []), Ok(()));
    assert_eq!(cx.grant_table_op(GnttabOp::MapGrantRef(&mut [])), Ok(()));
    assert_eq!(cx.grant_table_op(GnttabOp::UnmapGrantRef(&mut [])), Ok(()));
    drop(cx);
    assert_eq!(r.flushes(r.b), flushes);
    assert_eq!(r.hv.snapshot(), raw);
    r.check();
}

/// Map only ever returns the statuses spec 6.2 lists (never -4, -5, -6, -7, -10, -11, never
/// positive), over a varied batch that reaches most of them.
fn map_statuses_in_documented_set<D: Design>() {
    let r = Rig::<D>::build(|c| c.b.max_maptrack_frames = 1);
    let c = r.add_domain(DomainConfig::new("c"));
    let ga = r.ga();
    // 8..16 granted RW, 16..24 RO, 24..28 to c, 28 paged out, 29 absent gfn, 30 never granted.
    for i in 8..16 {
        r.grant(GrantRef(i), Gfn(i as u64), false);
    }
    for i in 16..24 {
        r.grant(GrantRef(i), Gfn(i as u64), true);
    }
    for i in 24..28 {
        r.grant_to(GrantRef(i), c, Gfn(i as u64), false);
    }
    let paged = r.mfn(r.a, Gfn(28));
    r.hv.set_p2m(r.a, Gfn(28), P2mEntry::PagedOut(paged));
    r.grant(GrantRef(28), Gfn(28), false);
    r.grant(GrantRef(29), Gfn(50_000), false);
    ga.write_entry_raw(GrantRef(31), gtf::PERMIT_ACCESS | gtf::READONLY, r.b, 31)
        .unwrap();
    let doms = [r.a, r.a, r.a, r.b, DomId::SELF, DomId(77)];
    let mut seed = 0x1234_5678_9ABC_DEF0u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut ops = Vec::new();
    for i in 0..2000u64 {
        let gref = match next(8) {
            0..=4 => 8 + next(24) as u32,
            5 => 28 + next(4) as u32,
            6 => 500 + next(20) as u32,
            _ => next(1 << 20) as u32,
        };
        let mut flags = next(32) as u32;
        if next(16) == 0 {
            flags |= 1 << (16 + next(16));
        }
        let addr = match next(6) {
            0 => va(next(64)),
            1 => va(1000 + i) + 1 + next(7),
            2 => !0xFFFu64,
            _ => va(1000 + i),
        };
        ops.push(MapGrantRef {
            host_addr: addr,
            flags,
            ref_: GrantRef(gref),
            dom: doms[next(doms.len() as u64) as usize],
            ..MapGrantRef::default()
        });
    }
    // Then enough good device maps to exhaust the one maptrack page.
    for k in 0..300u32 {
        ops.push(MapGrantRef::new(r.a, GrantRef(8 + k % 8), DEV_RO, 0));
    }
    r.cx().map_grant_ref(&mut ops).unwrap();
    let mut seen = BTreeSet::new();
    for o in &ops {
        assert!(
            MAP_STATUSES.contains(&o.status),
            "map returned {:?} for {o:?}",
            o.status
        );
        assert!(o.status.code() <= 0);
        assert!(!matches!(o.status.code(), -4 | -5 | -6 | -7 | -10 | -11));
        seen.insert(o.status.code());
    }
    for want in [
        GntSt::Okay,
        GntSt::GeneralError,
        GntSt::BadDomain,
        GntSt::BadGntref,
        GntSt::BadPage,
        GntSt::Eagain,
        GntSt::NoSpace,
    ] {
        assert!(
            seen.contains(&want.code()),
            "batch never produced {want:?}: {seen:?}"
        );
    }
    r.check();
    // Undo every successful map, each unmap naming exactly its mapping's parts. With inline
    // slots two mappings of one gref share a handle; `select_slot` must still pick the right
    // one (or an indistinguishable one) every time, so one pass releases everything and a
    // second finds every handle gone.
    let un: Vec<UnmapGrantRef> = ops
        .iter()
        .filter(|o| o.status == GntSt::Okay)
        .map(|o| {
            let f = GntMap::from_bits_retain(o.flags);
            UnmapGrantRef::new(
                o.handle,
                if f.contains(GntMap::HOST_MAP) {
                    o.host_addr
                } else {
                    0
                },
                if f.contains(GntMap::DEVICE_MAP) {
                    o.dev_bus_addr
                } else {
                    0
                },
            )
        })
        .collect();
    let mut first = un.clone();
    r.cx().unmap_grant_ref(&mut first).unwrap();
    assert!(first.iter().all(|u| u.status == GntSt::Okay), "{first:?}");
    for i in 8..32 {
        assert_eq!(r.pins(GrantRef(i)), [0; 4], "g{i}");
    }
    let mut again = un.clone();
    r.cx().unmap_grant_ref(&mut again).unwrap();
    assert!(
        again.iter().all(|u| u.status == GntSt::BadHandle),
        "{again:?}"
    );
    r.hv.set_p2m(r.a, Gfn(28), P2mEntry::Present(paged));
    r.check();
}

// ---------------------------------------------------------------------------------------
// unmap
// ---------------------------------------------------------------------------------------

/// Handles out of range, never used, or already freed are `bad_handle`.
fn unmap_bad_handle<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(G, Gfn(1), false);
    r.grant(GrantRef(9), Gfn(2), false);
    let m = r.map_ok(G, HOST, va(0));
    r.unmap_ok(m.handle, va(0), 0);
    let live = r.map_ok(GrantRef(9), HOST_RO, va(1));
    let raw = r.hv.snapshot();
    let before = r.snap();
    for h in [
        m.handle,
        GrantHandle(200),
        GrantHandle(255),
        GrantHandle(256),
        GrantHandle(1_000_000),
        GrantHandle(0x7FFF_FFFF),
    ] {
        assert_ne!(h, live.handle);
        for (host, dev) in [(va(0), 0), (0, 0), (va(1), 0), (0, 0x1000)] {
            assert_eq!(
                r.unmap(h, host, dev),
                GntSt::BadHandle,
                "{h:?} host {host:#x} dev {dev:#x}"
            );
        }
    }
    assert_eq!(r.hv.snapshot(), raw);
    r.assert_unchanged(&before);
    r.unmap_ok(live.handle, va(1), 0);
    r.check();
}

/// Forged fast handles (bit 31 set) naming a nonexistent domain, an out-of-range ref, an
/// unpinned entry, an entry pinned by another domain, or an entry the caller pins only
/// through slow handles are `bad_handle`, and never crash the caller. (Without inline slots
/// such a value is a maptrack index beyond the limit: the same answer.)
fn unmap_forged_fast_handle<D: Design>() {
    let r = Rig::<D>::new();
    let c = r.add_domain(DomainConfig::new("c"));
    r.grant_to(GrantRef(81), c, Gfn(81), false);
    r.grant(GrantRef(82), Gfn(82), false);
    let mut cxc = r.vcpu(c, 0);
    let mc = map1(&mut cxc, r.a, GrantRef(81), HOST, va(0));
    assert_eq!(mc.status, GntSt::Okay);
    // b maps 82 three times and unmaps the first two: the remaining mapping is slow on slot
    // designs, so the entry is pinned by b with no live inline slot.
    let m: Vec<_> = (0..3)
        .map(|i| r.map_ok(GrantRef(82), HOST, va(i)))
        .collect();
    r.unmap_ok(m[0].handle, va(0), 0);
    r.unmap_ok(m[1].handle, va(1), 0);
    if slots::<D>() {
        assert!(!is_fast(m[2].handle));
    }
    let forged = |d: DomId, g: u32| handle::encode_fast(d, GrantRef(g)).unwrap();
    let raw = r.hv.snapshot();
    let before = r.snap();
    for h in [
        forged(DomId(77), 5),
        forged(DomId(0x7FEF), 0xFFFF),
        forged(r.a, 0xFFFF),
        forged(r.a, 80),
        forged(r.a, 81),
        forged(r.a, 82),
        forged(r.b, 0),
        forged(c, 0),
    ] {
        for (host, dev) in [(va(0), 0), (va(2), 0), (0, mc.dev_bus_addr), (0, 0)] {
            assert_eq!(r.unmap(h, host, dev), GntSt::BadHandle, "{h:?}");
        }
    }
    assert!(!r.hv.domain(r.b).unwrap().crashed());
    assert_eq!(r.hv.snapshot(), raw);
    r.assert_unchanged(&before);
    assert_eq!(unmap1(&mut cxc, mc.handle, va(0), 0), GntSt::Okay);
    drop(cxc);
    r.unmap_ok(m[2].handle, va(2), 0);
    r.check();
}

/// Step 8: a named device part must be named by its exact 64-bit device address; the check
/// comes before the host part is touched. Naming a device part the mapping does not have is a
/// no-op.
fn unmap_bad_dev_addr<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(GrantRef(83), Gfn(83), false);
    r.grant(GrantRef(84), Gfn(84), false);
    let m = r.map_ok(GrantRef(83), HOST_DEV, va(0));
    let d = m.dev_bus_addr;
    let raw = r.hv.snapshot();
    let before = r.snap();
    for (host, dev) in [
        (0, d + 1),
        (0, d - 0x1000),
        (0, d | 1 << 63),
        (0, d ^ 1 << 40),
        (va(0), d + 1),
        (va(0), 1),
    ] {
        assert_eq!(
            r.unmap(m.handle, host, dev),
            GntSt::BadDevAddr,
            "host {host:#x} dev {dev:#x}"
        );
    }
    assert_eq!(r.hv.snapshot(), raw);
    r.assert_unchanged(&before);
    let h = r.map_ok(GrantRef(84), HOST, va(1));
    let raw = r.hv.snapshot();
    assert_eq!(r.unmap(h.handle, 0, 12345), GntSt::Okay);
    assert_eq!(r.unmap(h.handle, 0, h.dev_bus_addr), GntSt::Okay);
    assert_eq!(r.hv.snapshot(), raw);
    r.unmap_ok(h.handle, va(1), 0);
    r.unmap_ok(m.handle, va(0), d);
    r.check();
}

/// Step 9: the PTE at `host_addr` must map the frame with the mapping's RW bit; anything
/// else is `general_error` with nothing changed.
fn unmap_wrong_host_addr<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(GrantRef(85), Gfn(85), false);
    r.grant(GrantRef(86), Gfn(86), false);
    let m1 = r.map_ok(GrantRef(85), HOST, va(0));
    let filler = r.map_ok(GrantRef(85), HOST, va(1));
    // The third mapping of 85: a slow handle on slot designs, so it names only itself.
    let ro = r.map_ok(GrantRef(85), HOST_RO, va(2));
    let other = r.map_ok(GrantRef(86), HOST, va(3));
    let raw = r.hv.snapshot();
    let before = r.snap();
    for (h, addr, why) in [
        (ro.handle, va(0), "RW PTE for a read-only mapping"),
        (ro.handle, va(1), "RW PTE for a read-only mapping"),
        (ro.handle, va(3), "another frame"),
        (m1.handle, va(3), "another frame"),
        (m1.handle, va(7), "nothing mapped"),
        (m1.handle, 1 << 40, "beyond the address space"),
        (other.handle, va(0), "another frame"),
    ] {
        assert_eq!(
            r.unmap(h, addr, 0),
            GntSt::GeneralError,
            "{why}: {h:?} at {addr:#x}"
        );
    }
    assert_eq!(r.hv.snapshot(), raw);
    r.assert_unchanged(&before);
    r.unmap_ok(ro.handle, va(2), 0);
    r.unmap_ok(m1.handle, va(0), 0);
    r.unmap_ok(filler.handle, va(1), 0);
    r.unmap_ok(other.handle, va(3), 0);
    assert!(r.ga().end_access(GrantRef(85)).unwrap());
    assert!(r.ga().end_access(GrantRef(86)).unwrap());
    r.check();
}

/// `host_addr == 0 && dev_bus_addr == 0` is a successful no-op; the handle stays valid.
fn unmap_noop<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(GrantRef(87), Gfn(87), false);
    let m = r.map_ok(GrantRef(87), HOST_DEV, va(0));
    let raw = r.hv.snapshot();
    let unmaps = r.hv.domain(r.b).unwrap().stats().unmaps;
    for _ in 0..3 {
        assert_eq!(r.unmap(m.handle, 0, 0), GntSt::Okay);
    }
    assert_eq!(r.hv.snapshot(), raw);
    assert_eq!(r.hv.domain(r.b).unwrap().stats().unmaps, unmaps);
    r.check();
    r.unmap_ok(m.handle, va(0), m.dev_bus_addr);
    assert_eq!(r.unmap(m.handle, 0, 0), GntSt::BadHandle);
    r.check();
}

/// Partial unmaps, host part first: only the removed part's pin and references drop.
fn unmap_partial_host_then_device<D: Design>() {
    partial_unmaps::<D>(true);
}

/// Partial unmaps, device part first.
fn unmap_partial_device_then_host<D: Design>() {
    partial_unmaps::<D>(false);
}

fn partial_unmaps<D: Design>(host_first: bool) {
    let r = Rig::<D>::new();
    let g = GrantRef(88);
    let mfn = r.mfn(r.a, Gfn(88));
    r.grant(g, Gfn(88), false);
    let base = r.counts(mfn);
    let gb = r.gb();
    for ro in [false, true] {
        let flags = if ro { HOST_DEV_RO } else { HOST_DEV };
        let m = r.map_ok(g, flags, va(0));
        let d = m.dev_bus_addr;
        let t = if ro { 0 } else { 1 };
        let (host_pin, dev_pin) = if ro {
            ([0, 1, 0, 0], [0, 0, 0, 1])
        } else {
            ([1, 0, 0, 0], [0, 0, 1, 0])
        };
        let bits = if ro { gtf::READING } else { RW_BITS };
        assert_eq!(r.counts(mfn), (base.0 + 2, base.1 + 2 * t));
        let host_part = |st: &Rig<D>| {
            st.unmap_ok(m.handle, va(0), 0);
            assert!(!gb.pte(HostAddr::Linear(va(0))).unwrap().present());
            let mut b = [0u8; 1];
            assert_eq!(
                gb.read_mapped(HostAddr::Linear(va(0)), 0, &mut b),
                Err(AccessFault::NotMapped)
            );
        };
        let dev_part = |st: &Rig<D>| st.unmap_ok(m.handle, 0, d);
        if host_first {
            host_part(&r);
            assert_eq!(r.pins(g), dev_pin, "ro {ro}");
            assert_eq!(r.status_bits(g), bits);
            assert_eq!(r.counts(mfn), (base.0 + 1, base.1 + t));
            r.check();
            // Again: the host part is gone, so this names nothing: okay, no change.
            let raw = r.hv.snapshot();
            assert_eq!(r.unmap(m.handle, va(0), 0), GntSt::Okay);
            assert_eq!(r.hv.snapshot(), raw);
            dev_part(&r);
        } else {
            dev_part(&r);
            assert_eq!(r.pins(g), host_pin, "ro {ro}");
            assert_eq!(r.status_bits(g), bits);
            assert_eq!(r.counts(mfn), (base.0 + 1, base.1 + t));
            assert!(gb.pte(HostAddr::Linear(va(0))).unwrap().present());
            r.check();
            let raw = r.hv.snapshot();
            assert_eq!(r.unmap(m.handle, 0, d), GntSt::Okay);
            assert_eq!(r.hv.snapshot(), raw);
            host_part(&r);
        }
        assert_eq!(r.pins(g), [0; 4]);
        assert_eq!(r.status_bits(g), 0);
        assert_eq!(r.counts(mfn), base);
        // Both parts gone: the handle is free.
        assert_eq!(r.unmap(m.handle, va(0), d), GntSt::BadHandle);
        r.check();
    }
}

/// A second unmap of the same handle is `bad_handle` and changes nothing.
fn unmap_double<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(GrantRef(89), Gfn(89), false);
    for (flags, host) in [(HOST, va(0)), (DEV, 0), (HOST_DEV_RO, va(1))] {
        let m = r.map_ok(GrantRef(89), flags, host);
        let dev = if flags.contains(GntMap::DEVICE_MAP) {
            m.dev_bus_addr
        } else {
            0
        };
        r.unmap_ok(m.handle, host, dev);
        let raw = r.hv.snapshot();
        assert_eq!(r.unmap(m.handle, host, dev), GntSt::BadHandle, "{flags:?}");
        assert_eq!(r.hv.snapshot(), raw);
        r.check();
    }
}

/// The granter's end-access fails while any mapping exists and succeeds after the last
/// unmap; afterwards the entry can no longer be mapped.
fn unmap_then_end_access<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(90);
    r.grant(g, Gfn(90), false);
    let ga = r.ga();
    let m1 = r.map_ok(g, HOST_RO, va(0));
    let m2 = r.map_ok(g, DEV, 0);
    let e = ga.entry_snapshot(g).unwrap();
    assert!(!ga.end_access(g).unwrap());
    assert_eq!(
        ga.entry_snapshot(g).unwrap(),
        e,
        "a failed end-access changes nothing"
    );
    r.unmap_ok(m2.handle, 0, m2.dev_bus_addr);
    assert!(!ga.end_access(g).unwrap());
    r.unmap_ok(m1.handle, va(0), 0);
    assert!(ga.end_access(g).unwrap());
    assert_eq!(ga.entry_snapshot(g).unwrap().flags, 0);
    let before = r.snap();
    assert_eq!(r.map(g, HOST_RO, va(0)).status, GntSt::GeneralError);
    r.assert_unchanged(&before);
}

/// Unmap batches: one TLB flush per chunk of 32 (`ceil(n / 32)`), statuses per element.
fn unmap_batches_flush_per_chunk<D: Design>() {
    let r = Rig::<D>::new();
    r.grow(r.a, 2);
    for i in 0..1000u32 {
        r.grant(GrantRef(8 + i), Gfn(10 + (i % 200) as u64), false);
    }
    for n in [0usize, 1, 31, 32, 33, 64, 65, 1000] {
        let mut ops: Vec<_> = (0..n)
            .map(|i| MapGrantRef::new(r.a, GrantRef(8 + i as u32), HOST, va(i as u64)))
            .collect();
        r.cx().map_grant_ref(&mut ops).unwrap();
        assert!(ops.iter().all(|o| o.status == GntSt::Okay), "map batch {n}");
        let mut un: Vec<_> = ops
            .iter()
            .map(|o| UnmapGrantRef::new(o.handle, o.host_addr, 0))
            .collect();
        let f0 = r.flushes(r.b);
        let u0 = r.hv.domain(r.b).unwrap().stats().unmaps;
        r.cx().unmap_grant_ref(&mut un).unwrap();
        assert!(
            un.iter().all(|u| u.status == GntSt::Okay),
            "unmap batch {n}"
        );
        assert_eq!(
            r.flushes(r.b) - f0,
            n.div_ceil(32) as u64,
            "flushes for a batch of {n}"
        );
        assert_eq!(r.hv.domain(r.b).unwrap().stats().unmaps - u0, n as u64);
        for i in 0..n as u32 {
            assert_eq!(r.status_bits(GrantRef(8 + i)), 0);
        }
        r.check();
    }
    // A mixed batch: every 5th element is bad; flushes still per chunk.
    let mut ops: Vec<_> = (0..40u64)
        .map(|i| MapGrantRef::new(r.a, GrantRef(8 + i as u32), HOST_RO, va(i)))
        .collect();
    r.cx().map_grant_ref(&mut ops).unwrap();
    let mut un: Vec<_> = ops
        .iter()
        .enumerate()
        .map(|(i, o)| {
            if i % 5 == 4 {
                UnmapGrantRef::new(GrantHandle(0x7FFF_0000), o.host_addr, 0)
            } else {
                UnmapGrantRef::new(o.handle, o.host_addr, 0)
            }
        })
        .collect();
    let f0 = r.flushes(r.b);
    r.cx().unmap_grant_ref(&mut un).unwrap();
    assert_eq!(r.flushes(r.b) - f0, 2);
    for (i, u) in un.iter().enumerate() {
        let want = if i % 5 == 4 {
            GntSt::BadHandle
        } else {
            GntSt::Okay
        };
        assert_eq!(u.status, want, "element {i}");
    }
    r.check();
    let mut rest: Vec<_> = ops
        .iter()
        .skip(4)
        .step_by(5)
        .map(|o| UnmapGrantRef::new(o.handle, o.host_addr, 0))
        .collect();
    r.cx().unmap_grant_ref(&mut rest).unwrap();
    assert!(rest.iter().all(|u| u.status == GntSt::Okay));
    r.check();
}

/// A removed translation stays reachable through the TLB until the chunk's flush, and the
/// pins and status bits drop only after it (spec 7.3; the XSA-218 window).
fn unmap_stale_translation_until_flush<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(91);
    r.ga().write_page(Gfn(92), 0, b"stale").unwrap();
    r.grant(g, Gfn(92), false);
    let m = r.map_ok(g, HOST, va(0));
    let addr = HostAddr::Linear(va(0));
    r.hooks
        .pause_once(Arm::at(HookPoint::UnmapBeforeFlush).dom(r.b).vcpu(0));
    r.hooks
        .pause_once(Arm::at(HookPoint::UnmapAfterFlush).dom(r.b).vcpu(0));
    let (ga, gb) = (r.ga(), r.gb());
    std::thread::scope(|s| {
        let t = s.spawn(|| r.unmap(m.handle, va(0), 0));
        r.hooks.wait_parked(HookPoint::UnmapBeforeFlush);
        // Phase 1 removed the PTE, but the stale translation still reaches the frame.
        assert!(!gb.pte(addr).unwrap().present());
        let mut buf = [0u8; 5];
        gb.read_mapped(addr, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"stale");
        assert_eq!(r.pins(g), [1, 0, 0, 0]);
        assert_eq!(r.status_bits(g), RW_BITS);
        assert!(!ga.end_access(g).unwrap());
        r.hooks.release(HookPoint::UnmapBeforeFlush);
        r.hooks.wait_parked(HookPoint::UnmapAfterFlush);
        // Flushed: unreachable; phase 2 has not run yet, so the grant is still in use.
        assert_eq!(
            gb.read_mapped(addr, 0, &mut buf),
            Err(AccessFault::NotMapped)
        );
        assert_eq!(r.pins(g), [1, 0, 0, 0]);
        assert!(!ga.end_access(g).unwrap());
        r.hooks.release(HookPoint::UnmapAfterFlush);
        assert_eq!(t.join().unwrap(), GntSt::Okay);
    });
    assert_eq!(r.pins(g), [0; 4]);
    assert!(ga.end_access(g).unwrap());
    r.check();
}

// ---------------------------------------------------------------------------------------
// inline fast slots (Fast, XenFastSlots); the same tests check plain handles elsewhere
// ---------------------------------------------------------------------------------------

/// Two maps of one gref by one mapper share one fast handle; the third is slow. Without
/// slots every handle is a distinct maptrack index.
fn fast_same_gref_handles<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(93);
    r.grant(g, Gfn(93), false);
    let s0 = r.hv.domain(r.b).unwrap().stats();
    let m1 = r.map_ok(g, HOST, va(0));
    let m2 = r.map_ok(g, HOST_RO, va(1));
    let m3 = r.map_ok(g, DEV, 0);
    let s1 = r.hv.domain(r.b).unwrap().stats();
    let snap = r.hv.snapshot();
    let e = &snap.domains[&r.a].entries[&g.0];
    if slots::<D>() {
        assert_eq!(m1.handle, m2.handle);
        assert_eq!(Some(m1.handle), handle::encode_fast(r.a, g));
        assert!(is_fast(m1.handle));
        assert!(!is_fast(m3.handle));
        assert_eq!(
            (s1.fast_maps - s0.fast_maps, s1.slow_maps - s0.slow_maps),
            (2, 1)
        );
        assert_eq!(
            e.slots,
            vec![
                SlotInfo::Live {
                    flags: HOST,
                    host_addr: va(0),
                    bus: m1.dev_bus_addr
                },
                SlotInfo::Live {
                    flags: HOST_RO,
                    host_addr: va(1),
                    bus: m2.dev_bus_addr
                },
            ]
        );
        assert_eq!(snap.domains[&r.b].maptrack.len(), 1);
    } else {
        let hs: BTreeSet<_> = [m1.handle, m2.handle, m3.handle].into();
        assert_eq!(hs.len(), 3);
        assert!(hs.iter().all(|&h| !is_fast(h)));
        assert_eq!(
            (s1.fast_maps - s0.fast_maps, s1.slow_maps - s0.slow_maps),
            (0, 3)
        );
        assert!(e.slots.is_empty());
        assert_eq!(snap.domains[&r.b].maptrack.len(), 3);
    }
    let mt = &snap.domains[&r.b].maptrack[&m3.handle.0];
    assert_eq!((mt.domid, mt.gref, mt.flags), (r.a, g, DEV));
    r.check();
    // A freed slot is reused by the next map.
    r.unmap_ok(m1.handle, va(0), 0);
    let m4 = r.map_ok(g, HOST, va(4));
    if slots::<D>() {
        assert_eq!(m4.handle, m2.handle);
    }
    r.unmap_ok(m4.handle, va(4), 0);
    r.unmap_ok(m2.handle, va(1), 0);
    r.unmap_ok(m3.handle, 0, m3.dev_bus_addr);
    r.check();
}

/// Refs of 2^16 and above cannot be encoded in a fast handle: always slow.
fn fast_high_gref_slow_handle<D: Design>() {
    let r = Rig::<D>::build(|c| c.a.max_grant_frames = 130);
    r.grow(r.a, 129);
    assert_eq!(r.hv.domain(r.a).unwrap().nr_grant_frames(), 129);
    let hi = GrantRef((1 << 16) + 5);
    let edge = GrantRef((1 << 16) - 1);
    r.grant(hi, Gfn(3), false);
    r.grant(edge, Gfn(4), false);
    let m_hi = r.map_ok(hi, HOST, va(0));
    let m_edge = r.map_ok(edge, HOST, va(1));
    assert!(!is_fast(m_hi.handle));
    assert_eq!(is_fast(m_edge.handle), slots::<D>());
    assert_eq!(r.pins(hi), [1, 0, 0, 0]);
    r.check();
    r.unmap_ok(m_hi.handle, va(0), 0);
    r.unmap_ok(m_edge.handle, va(1), 0);
    assert_eq!(r.pins(hi), [0; 4]);
    r.check();
}

/// Unmap by host address picks the right mapping (src/maptrack/fast.rs `select_slot`): a
/// read-only mapping at V1 and a writable one at V2 share one fast handle; unmapping V2 drops
/// the writable pin and `GTF_writing` only.
fn fast_unmap_picks_slot_by_address<D: Design>() {
    let r = Rig::<D>::new();
    let g = GrantRef(94);
    r.grant(g, Gfn(94), false);
    for writable_first in [true, false] {
        let ro = r.map_ok(g, HOST_RO, va(1));
        let rw = r.map_ok(g, HOST, va(2));
        if slots::<D>() {
            assert_eq!(ro.handle, rw.handle);
        }
        assert_eq!(r.pins(g), [1, 1, 0, 0]);
        if writable_first {
            r.unmap_ok(rw.handle, va(2), 0);
            assert_eq!(r.pins(g), [0, 1, 0, 0]);
            assert_eq!(r.status_bits(g), gtf::READING);
            let p = r.gb().pte(HostAddr::Linear(va(1))).unwrap();
            assert!(p.present() && !p.writable());
            r.check();
            r.unmap_ok(ro.handle, va(1), 0);
        } else {
            r.unmap_ok(ro.handle, va(1), 0);
            assert_eq!(r.pins(g), [1, 0, 0, 0]);
            assert_eq!(r.status_bits(g), RW_BITS);
            assert!(r.gb().pte(HostAddr::Linear(va(2))).unwrap().writable());
            r.check();
            r.unmap_ok(rw.handle, va(2), 0);
        }
        assert_eq!(r.pins(g), [0; 4]);
        assert_eq!(r.status_bits(g), 0);
    }
    // A device address picks the mapping with a device part.
    let hd = r.map_ok(g, HOST_DEV, va(3));
    let ho = r.map_ok(g, HOST_RO, va(4));
    r.unmap_ok(ho.handle, 0, hd.dev_bus_addr);
    if slots::<D>() {
        assert_eq!(r.pins(g), [1, 1, 0, 0]);
        r.unmap_ok(hd.handle, va(3), 0);
        r.unmap_ok(ho.handle, va(4), 0);
    } else {
        // Plain handles name exactly one mapping: the read-only host mapping has no device
        // part, so that was a no-op.
        assert_eq!(r.pins(g), [1, 1, 1, 0]);
        r.unmap_ok(hd.handle, va(3), hd.dev_bus_addr);
        r.unmap_ok(ho.handle, va(4), 0);
    }
    assert_eq!(r.pins(g), [0; 4]);
    r.check();
    // A host+device map in slot 0 and a device-only map in slot 1 (without per-map bus
    // frames both carry the machine address): unmapping each with exactly its own parts, the
    // device-only one first, releases both. (The device address alone used to pick slot 0,
    // leaving the device-only mapping pinned for ever: tests/teardown_stress.rs found it.)
    for ro in [false, true] {
        let (hd_f, d_f) = if ro {
            (HOST_DEV_RO, DEV_RO)
        } else {
            (HOST_DEV, DEV)
        };
        let hd = r.map_ok(g, hd_f, va(5));
        let d = r.map_ok(g, d_f, va(6));
        r.unmap_ok(d.handle, 0, d.dev_bus_addr);
        r.check();
        r.unmap_ok(hd.handle, va(5), hd.dev_bus_addr);
        assert_eq!(r.pins(g), [0; 4], "read-only {ro}");
        assert_eq!(r.status_bits(g), 0);
        r.check();
    }
}

// ---------------------------------------------------------------------------------------
// setup_table, query_size, dispatch
// ---------------------------------------------------------------------------------------

fn setup(dom: DomId, nr_frames: u32) -> SetupTable {
    SetupTable {
        dom,
        nr_frames,
        ..SetupTable::default()
    }
}

fn query(dom: DomId) -> QuerySize {
    QuerySize {
        dom,
        ..QuerySize::default()
    }
}

/// `count != 1` is `-EINVAL` for setup_table and query_size, with nothing written.
fn setup_and_query_count_inval<D: Design>() {
    let r = Rig::<D>::new();
    let raw = r.hv.snapshot();
    let mut cx = r.vcpu(r.a, 0);
    assert_eq!(cx.setup_table(&mut []), Err(Errno::Inval));
    let mut two = [setup(DomId::SELF, 2), setup(DomId::SELF, 3)];
    assert_eq!(cx.setup_table(&mut two), Err(Errno::Inval));
    assert_eq!(two, [setup(DomId::SELF, 2), setup(DomId::SELF, 3)]);
    assert_eq!(cx.query_size(&mut []), Err(Errno::Inval));
    let mut two = [query(DomId::SELF), query(DomId(77))];
    assert_eq!(cx.query_size(&mut two), Err(Errno::Inval));
    assert_eq!(two, [query(DomId::SELF), query(DomId(77))]);
    assert_eq!(
        cx.grant_table_op(GnttabOp::SetupTable(&mut [])),
        Err(Errno::Inval)
    );
    assert_eq!(
        cx.grant_table_op(GnttabOp::QuerySize(&mut [])),
        Err(Errno::Inval)
    );
    drop(cx);
    assert_eq!(r.hv.snapshot(), raw);
    r.check();
}

/// setup_table: lookup by any id (`bad_domain`), XSM (`permission_denied` for another
/// domain unless privileged, checked before the size).
fn setup_table_domains_and_permissions<D: Design>() {
    let r = Rig::<D>::new();
    let d0 = r.add_domain(DomainConfig::new("dom0").privileged(true));
    let raw = r.hv.snapshot();
    let mut cx = r.vcpu(r.a, 0);
    for (dom, n, want) in [
        (DomId(77), 1, GntSt::BadDomain),
        (DomId::IO, 1, GntSt::BadDomain),
        (DomId::INVALID, 0, GntSt::BadDomain),
        (r.b, 2, GntSt::PermissionDenied),
        (r.b, 0, GntSt::PermissionDenied),
        (r.b, 1000, GntSt::PermissionDenied),
        (d0, 2, GntSt::PermissionDenied),
    ] {
        let mut op = [setup(dom, n)];
        cx.setup_table(&mut op).unwrap();
        assert_eq!(op[0].status, want, "{dom:?} {n}");
        assert!(op[0].frame_list.is_empty());
    }
    drop(cx);
    assert_eq!(r.hv.snapshot(), raw);
    r.check();
    // The control domain may set up another domain's table.
    let mut cx = r.vcpu(d0, 0);
    let mut op = [setup(r.b, 2)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::Okay);
    assert_eq!(op[0].frame_list.len(), 2);
    drop(cx);
    assert_eq!(r.hv.domain(r.b).unwrap().nr_grant_frames(), 2);
    // By DOMID_SELF and by its own id.
    let mut cx = r.vcpu(r.a, 0);
    for dom in [DomId::SELF, r.a] {
        let mut op = [setup(dom, 1)];
        cx.setup_table(&mut op).unwrap();
        assert_eq!(op[0].status, GntSt::Okay, "{dom:?}");
        assert_eq!(op[0].frame_list.len(), 1);
    }
    drop(cx);
    r.check();
}

/// `nr_frames > max_grant_frames` is `general_error` and changes nothing.
fn setup_table_too_many_frames<D: Design>() {
    let r = Rig::<D>::build(|c| c.a.max_grant_frames = 4);
    let mut cx = r.vcpu(r.a, 0);
    for n in [5, 64, u32::MAX] {
        let raw = r.hv.snapshot();
        let mut op = [setup(DomId::SELF, n)];
        cx.setup_table(&mut op).unwrap();
        assert_eq!(op[0].status, GntSt::GeneralError, "{n}");
        assert!(op[0].frame_list.is_empty());
        assert_eq!(r.hv.snapshot(), raw);
    }
    let mut op = [setup(DomId::SELF, 4)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::Okay);
    assert_eq!(op[0].frame_list.len(), 4);
    let raw = r.hv.snapshot();
    let mut op = [setup(DomId::SELF, 5)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::GeneralError);
    assert_eq!(r.hv.snapshot(), raw);
    drop(cx);
    r.check();
}

/// Growth: frame lists, `nr_frames` only grows, `nr_frames == 0` is a no-op, new refs are
/// valid and start invalid (`GTF_invalid`).
fn setup_table_growth<D: Design>() {
    let r = Rig::<D>::build(|c| c.a.max_grant_frames = 8);
    let dom_a = r.hv.domain(r.a).unwrap();
    let mut cx = r.vcpu(r.a, 0);
    let mut op = [setup(DomId::SELF, 1)];
    cx.setup_table(&mut op).unwrap();
    let first = op[0].frame_list.clone();
    assert_eq!(first.len(), 1);
    let mut op = [setup(DomId::SELF, 3)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::Okay);
    let three = op[0].frame_list.clone();
    assert_eq!(three.len(), 3);
    assert_eq!(three[0], first[0]);
    assert_eq!(three.iter().collect::<BTreeSet<_>>().len(), 3);
    for &m in &three {
        let f = r.frame(m);
        assert_eq!((f.owner, f.refcount), (Some(r.a), 1));
    }
    assert_eq!(dom_a.nr_grant_frames(), 3);
    let mut q = [query(DomId::SELF)];
    cx.query_size(&mut q).unwrap();
    assert_eq!(
        (q[0].status, q[0].nr_frames, q[0].max_nr_frames),
        (GntSt::Okay, 3, 8)
    );
    // Fewer frames than exist: the first ones, no shrink.
    let mut op = [setup(DomId::SELF, 2)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::Okay);
    assert_eq!(op[0].frame_list, three[..2].to_vec());
    assert_eq!(dom_a.nr_grant_frames(), 3);
    // Zero: a no-op.
    let raw = r.hv.snapshot();
    let mut op = [setup(DomId::SELF, 0)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::Okay);
    assert!(op[0].frame_list.is_empty());
    assert_eq!(r.hv.snapshot(), raw);
    drop(cx);
    // New refs exist, start invalid, and work once granted.
    let last = GrantRef(3 * SHGNT_PER_PAGE_V1 - 1);
    assert_eq!(
        r.ga().entry_snapshot(last).unwrap(),
        EntrySnapshot::default()
    );
    assert_eq!(r.map(last, HOST, va(0)).status, GntSt::GeneralError);
    r.grant(last, Gfn(5), false);
    let m = r.map_ok(last, HOST, va(0));
    r.unmap_ok(m.handle, va(0), 0);
    assert_eq!(
        r.map(GrantRef(3 * SHGNT_PER_PAGE_V1), HOST, va(0)).status,
        GntSt::BadGntref
    );
    r.check();
}

/// Growth that runs the machine out of frames fails with `general_error`, changes nothing
/// and leaks no frame.
fn setup_table_out_of_machine_frames<D: Design>() {
    // Frame 0 is the hypervisor's; a: 8 pages + 1 grant frame, b: 8 + 1: 19 frames; 2 spare.
    let r = Rig::<D>::build(|c| {
        c.hv.machine = MachineConfig { max_frames: 21 };
        c.a.memory_pages = 8;
        c.b.memory_pages = 8;
    });
    let m = r.hv.machine();
    let alloc = m.allocated_frames();
    assert_eq!(alloc, 19);
    let before = r.snap();
    let mut cx = r.vcpu(r.a, 0);
    let mut op = [setup(DomId::SELF, 5)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::GeneralError);
    assert!(op[0].frame_list.is_empty());
    assert_eq!(m.allocated_frames(), alloc);
    drop(cx);
    r.assert_unchanged(&before);
    assert_eq!(r.hv.domain(r.a).unwrap().nr_grant_frames(), 1);
    // The frames the failed growth took were returned: exactly two more fit.
    let mut cx = r.vcpu(r.a, 0);
    let mut op = [setup(DomId::SELF, 3)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::Okay);
    assert_eq!(m.allocated_frames(), alloc + 2);
    let before = r.snap();
    let mut op = [setup(DomId::SELF, 4)];
    cx.setup_table(&mut op).unwrap();
    assert_eq!(op[0].status, GntSt::GeneralError);
    assert_eq!(m.allocated_frames(), alloc + 2);
    drop(cx);
    r.assert_unchanged(&before);
}

/// query_size: lookup by any id, permission, values.
fn query_size_cases<D: Design>() {
    let r = Rig::<D>::build(|c| c.b.max_grant_frames = 16);
    let d0 = r.add_domain(DomainConfig::new("dom0").privileged(true));
    let raw = r.hv.snapshot();
    let mut cx = r.vcpu(r.a, 0);
    for (dom, want) in [
        (DomId::SELF, Some((1, 64))),
        (r.a, Some((1, 64))),
        (DomId(77), None),
        (DomId::XEN, None),
    ] {
        let mut q = [query(dom)];
        cx.query_size(&mut q).unwrap();
        match want {
            Some((n, max)) => assert_eq!(
                (q[0].status, q[0].nr_frames, q[0].max_nr_frames),
                (GntSt::Okay, n, max)
            ),
            None => assert_eq!(q[0].status, GntSt::BadDomain, "{dom:?}"),
        }
    }
    let mut q = [query(r.b)];
    cx.query_size(&mut q).unwrap();
    assert_eq!(q[0].status, GntSt::PermissionDenied);
    drop(cx);
    let mut cx = r.vcpu(d0, 0);
    let mut q = [query(r.b)];
    cx.query_size(&mut q).unwrap();
    assert_eq!(
        (q[0].status, q[0].nr_frames, q[0].max_nr_frames),
        (GntSt::Okay, 1, 16)
    );
    drop(cx);
    assert_eq!(r.hv.snapshot(), raw);
    r.grow(r.b, 5);
    let mut cx = r.vcpu(r.b, 1);
    let mut q = [query(DomId::SELF)];
    cx.grant_table_op(GnttabOp::QuerySize(&mut q)).unwrap();
    assert_eq!(
        (q[0].status, q[0].nr_frames, q[0].max_nr_frames),
        (GntSt::Okay, 5, 16)
    );
    drop(cx);
    r.check();
}

/// `grant_table_op` dispatches each op.
fn grant_table_op_dispatch<D: Design>() {
    let r = Rig::<D>::new();
    r.grant(G, Gfn(1), false);
    let mut cx = r.cx();
    let mut m = [MapGrantRef::new(r.a, G, HOST, va(0))];
    cx.grant_table_op(GnttabOp::MapGrantRef(&mut m)).unwrap();
    assert_eq!(m[0].status, GntSt::Okay);
    assert_eq!(r.pins(G), [1, 0, 0, 0]);
    let mut u = [UnmapGrantRef::new(m[0].handle, va(0), 0)];
    cx.grant_table_op(GnttabOp::UnmapGrantRef(&mut u)).unwrap();
    assert_eq!(u[0].status, GntSt::Okay);
    assert_eq!(r.pins(G), [0; 4]);
    let mut s = [setup(DomId::SELF, 2)];
    cx.grant_table_op(GnttabOp::SetupTable(&mut s)).unwrap();
    assert_eq!((s[0].status, s[0].frame_list.len()), (GntSt::Okay, 2));
    let mut q = [query(DomId::SELF)];
    cx.grant_table_op(GnttabOp::QuerySize(&mut q)).unwrap();
    assert_eq!((q[0].status, q[0].nr_frames), (GntSt::Okay, 2));
    drop(cx);
    assert_eq!(r.hv.domain(r.b).unwrap().nr_grant_frames(), 2);
    r.check();
}

design_tests!(
    map_needs_host_or_device,
    map_ref_out_of_range,
    map_unknown_domain_and_domid_self,
    map_hvm_caller_flags,
    map_entry_not_usable,
    map_pinned_by_other_domain,
    map_pin_overflow,
    map_bad_page,
    map_paged_out_eagain,
    map_writable_other_type,
    map_host_address_occupied,
    map_host_address_out_of_range,
    map_contains_pte_alignment,
    map_hvm_avail_bits,
    map_hook_failure_rolls_back,
    map_no_maptrack_space,
    map_check_order_exhausted_maptrack,
    map_status_bits,
    map_pinned_entry_uses_active_frame,
    map_refcounts_pv_granter,
    map_refcounts_hvm_granter,
    map_dev_bus_addr,
    map_data_through_mapping,
    map_self_grant,
    map_batch_mixed,
    map_and_unmap_count_zero,
    map_statuses_in_documented_set,
    unmap_bad_handle,
    unmap_forged_fast_handle,
    unmap_bad_dev_addr,
    unmap_wrong_host_addr,
    unmap_noop,
    unmap_partial_host_then_device,
    unmap_partial_device_then_host,
    unmap_double,
    unmap_then_end_access,
    unmap_batches_flush_per_chunk,
    unmap_stale_translation_until_flush,
    fast_same_gref_handles,
    fast_high_gref_slow_handle,
    fast_unmap_picks_slot_by_address,
    setup_and_query_count_inval,
    setup_table_domains_and_permissions,
    setup_table_too_many_frames,
    setup_table_growth,
    setup_table_out_of_machine_frames,
    query_size_cases,
    grant_table_op_dispatch,
);
