//! `GNTTABOP_map_grant_ref` (spec 6.2), generic over the design.

use super::{get_paged_frame, host_slot, host_takes_type_ref, Env};
use crate::abi::{Gfn, GntMap, GntSt, GrantHandle, GrantRef, MapGrantRef, Mfn};
use crate::design::{Design, SlotExt};
use crate::domain::{Domain, HINT_SCAN};
use crate::grant::{pin, EntryRef};
use crate::handle;
use crate::hooks::{HookAction, HookPoint};
use crate::hypervisor::VcpuCtx;
use crate::iommu::IommuPolicy;
use crate::machine::Pte;
use crate::maptrack::SlotPolicy;
use crate::reclaim::{self, Guard};

/// Where the new mapping is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Track {
    /// Not yet decided (Fast design before the entry lock).
    None,
    /// Maptrack handle of the mapper's table.
    Slow(u32),
    /// Inline slot index of the active entry.
    Fast(usize),
}

pub(crate) fn map_grant_ref<D: Design>(
    cx: &VcpuCtx<'_, D>,
    rng: &mut u64,
    ops: &mut [MapGrantRef],
) {
    let g = reclaim::pin();
    let env = Env::of(cx);
    for op in ops.iter_mut() {
        match map_one(&env, rng, op, &g) {
            Ok((handle, bus)) => {
                op.status = GntSt::Okay;
                op.handle = handle;
                op.dev_bus_addr = bus;
            }
            Err(st) => op.status = st,
        }
    }
}

/// Steps 6-10 under the granter's read-side section and the entry lock.
struct Pinned<'g, E> {
    e: EntryRef<'g, E>,
    mfn: Mfn,
    /// Step 9 took the page reference of the first part.
    got_ref: bool,
}

fn map_one<D: Design>(
    env: &Env<'_, D>,
    rng: &mut u64,
    op: &MapGrantRef,
    g: &Guard,
) -> Result<(GrantHandle, u64), GntSt> {
    let ld = env.ld;
    let flags = GntMap::from_bits_retain(op.flags);

    // 1. Neither host nor device: Xen says bad_gntref.
    let incr = pin::incr_for(flags);
    if incr == 0 {
        return Err(GntSt::BadGntref);
    }
    // 2. Translated callers cannot ask for device, application or PTE mappings.
    if ld.translated()
        && flags.intersects(GntMap::DEVICE_MAP | GntMap::APPLICATION_MAP | GntMap::CONTAINS_PTE)
    {
        return Err(GntSt::GeneralError);
    }
    // 3. Lookup by id (DOMID_SELF is not translated). 4. XSM: default policy allows.
    let rd = env.hv.registry.get(op.dom, g).ok_or(GntSt::BadDomain)?;

    // 5. Xen allocates the handle before it even checks the ref. With inline slots the slow
    //    handle is only needed if no slot is free, so it is taken after step 10 instead
    //    (docs/design.md: "Check order").
    let mut track = Track::None;
    if !D::Slots::ENABLED {
        let h = ld
            .maptrack
            .get_handle(env.vcpu as usize, rng)
            .ok_or(GntSt::NoSpace)?;
        track = Track::Slow(h);
    }

    let pinned = match pin_entry(env, rd, op.ref_, flags, incr, &mut track) {
        Ok(p) => p,
        Err(st) => {
            if let Track::Slow(h) = track {
                ld.maptrack.put_handle(h);
            }
            return Err(st);
        }
    };
    let mfn = pinned.mfn;

    // Inline slots full (or the gref/domid does not fit a fast handle): slow table.
    if track == Track::None {
        match ld.maptrack.get_handle(env.vcpu as usize, rng) {
            Some(h) => track = Track::Slow(h),
            None => {
                let t = Taken {
                    refs: pinned.got_ref as u32,
                    ..Taken::default()
                };
                undo(env, rd, &pinned, flags, incr, t, track);
                return Err(GntSt::NoSpace);
            }
        }
    }

    // The live-map quota (designs whose maps escape the maptrack bound): one unit per map,
    // held until the record is released.
    let mut taken = Taken {
        refs: pinned.got_ref as u32,
        ..Taken::default()
    };
    if let Some(q) = &ld.quota {
        if !q.take(env.vcpu as usize) {
            undo(env, rd, &pinned, flags, incr, taken, track);
            return Err(GntSt::NoSpace);
        }
        taken.quota = true;
    }

    // 11. Page and type references, host mapping; no grant lock held.
    if let Err(st) = take_refs(env, rd, op, flags, mfn, &mut taken) {
        undo(env, rd, &pinned, flags, incr, taken, track);
        return Err(st);
    }

    // 12. IOMMU bookkeeping for a strict-mode mapper (self grants are already in its IOMMU);
    //     otherwise the device address is the machine address.
    let bus = match &ld.iommu {
        Some(io) if rd.id() != ld.id() => {
            match D::Iommu::map(env, io, mfn, !flags.contains(GntMap::READONLY)) {
                Ok(b) => b,
                Err(st) => {
                    undo(env, rd, &pinned, flags, incr, taken, track);
                    return Err(st);
                }
            }
        }
        _ => mfn.addr(),
    };

    // 13. Publish: fields first, flags last (Release).
    let counters = &ld.vcpus[env.vcpu as usize].counters;
    let handle = match track {
        Track::Slow(h) => {
            ld.maptrack
                .publish(h, rd.id().0, op.ref_.0, bus, op.flags & 0xFFFF);
            counters.mapped(false);
            handle::encode_slow(h).expect("maptrack index below 2^31")
        }
        Track::Fast(i) => {
            D::Slots::slots(&pinned.e.active.ext)[i].publish(flags, op.host_addr, bus);
            counters.mapped(true);
            // Remember where this domain holds a slot, for its teardown (owner-only log).
            // SAFETY: this thread runs `env.vcpu` (VcpuCtx is exclusive) inside a hypercall.
            ld.vcpus[env.vcpu as usize].hints.with_mut(|h| unsafe {
                if (*h).push(rd.id(), op.ref_.0) {
                    (*h).scan(HINT_SCAN, |gid, gref| {
                        crate::teardown::looks_held(env.hv, g, env.cpu, ld, gid, gref)
                    });
                }
            });
            handle::encode_fast(rd.id(), op.ref_).expect("fast slot only for encodable refs")
        }
        Track::None => unreachable!("track decided above"),
    };
    // 14.
    Ok((handle, bus))
}

/// Steps 6-10.
fn pin_entry<'g, D: Design>(
    env: &Env<'_, D>,
    rd: &'g Domain<D>,
    gref: GrantRef,
    flags: GntMap,
    incr: u32,
    track: &mut Track,
) -> Result<Pinned<'g, SlotExt<D>>, GntSt> {
    let ro = flags.contains(GntMap::READONLY);
    let me = env.ld.id();
    // A dying granter is being relinquished: refuse new maps outright (spec 6.2 note; Xen
    // fails later, at step 9 or 11, once its memory is gone).
    if rd.state() != crate::domain::DomainState::Alive {
        return Err(GntSt::GeneralError);
    }
    // 6. The validity check (under Xen's read lock; lock-free for the Fast design).
    let _rl = env.read(rd);
    let e = rd.gt.entry(gref).ok_or(GntSt::BadGntref)?;
    // 7.
    let mut act = e.active.lock();
    if act.pin != 0 && (act.domid != me || pin::would_overflow(act.pin, incr)) {
        return Err(GntSt::GeneralError);
    }
    // 8. First use, or first writable use: status bits (bounded compare-exchange).
    if act.pin == 0 || (!ro && !pin::has_writable(act.pin)) {
        e.shared.set_status(act.pin != 0, ro, true, me)?;
    }
    // 9. First use: the frame, with a page reference.
    let mut got_ref = false;
    if act.pin == 0 {
        let gfn = Gfn(e.shared.frame() as u64);
        match get_paged_frame(env.hv, rd, gfn) {
            Ok(mfn) => {
                act.domid = me;
                act.mfn = mfn;
                got_ref = true;
            }
            Err(st) => {
                // Roll the status bits back (pin still 0).
                e.shared.clear_status(act.status_to_clear(ro));
                return Err(st);
            }
        }
    }
    // 10.
    act.pin += incr;
    if D::Slots::ENABLED && *track == Track::None && handle::encode_fast(rd.id(), gref).is_some() {
        if let Some(i) = D::Slots::slots(&e.active.ext)
            .iter()
            .position(|s| s.try_reserve(me))
        {
            *track = Track::Fast(i);
        }
    }
    Ok(Pinned {
        e,
        mfn: act.mfn,
        got_ref,
    })
}

/// References taken in step 11, for the undo path.
#[derive(Clone, Copy, Debug, Default)]
struct Taken {
    refs: u32,
    types: u32,
    host_slot: Option<(u64, Pte)>,
    /// A unit of the mapper's quota.
    quota: bool,
}

/// Step 11.
fn take_refs<D: Design>(
    env: &Env<'_, D>,
    rd: &Domain<D>,
    op: &MapGrantRef,
    flags: GntMap,
    mfn: Mfn,
    t: &mut Taken,
) -> Result<(), GntSt> {
    let m = &env.hv.machine;
    let ro = flags.contains(GntMap::READONLY);
    // The first part's reference: step 9 took it if this map pinned the entry; otherwise
    // take it now ("page_get_owner_and_reference"), which also checks the owner.
    if t.refs == 0 {
        if !env.hv.get_page(mfn, rd.id()) {
            return Err(GntSt::GeneralError);
        }
        t.refs = 1;
    }
    if flags.contains(GntMap::DEVICE_MAP) && !ro {
        if !m.get_writable_type(mfn) {
            return Err(GntSt::GeneralError);
        }
        t.types += 1;
    }
    if flags.contains(GntMap::HOST_MAP) {
        if flags.contains(GntMap::DEVICE_MAP) {
            if !env.hv.get_page(mfn, rd.id()) {
                return Err(GntSt::GeneralError);
            }
            t.refs += 1;
        }
        if host_takes_type_ref(ro, env.ld, rd) {
            if !m.get_writable_type(mfn) {
                return Err(GntSt::GeneralError);
            }
            t.types += 1;
        }
        if env
            .hv
            .hook(HookPoint::MapBeforeHostMapping, env.ld.id(), env.vcpu)
            == HookAction::Fail
        {
            return Err(GntSt::GeneralError);
        }
        t.host_slot = Some(create_host_mapping(env.ld, op.host_addr, flags, mfn)?);
    }
    Ok(())
}

/// `create_grant_host_mapping`.
fn create_host_mapping<D: Design>(
    ld: &Domain<D>,
    host_addr: u64,
    flags: GntMap,
    mfn: Mfn,
) -> Result<(u64, Pte), GntSt> {
    let ro = flags.contains(GntMap::READONLY);
    // Translated: the P2M entry takes exactly host_map (+ readonly); anything else, PTE
    // "available" bits included, is refused.
    if ld.translated() && !(GntMap::HOST_MAP | GntMap::READONLY).contains(flags) {
        return Err(GntSt::GeneralError);
    }
    // Out of the address space, or a misaligned PTE address (XSA-227).
    let slot = host_slot(ld, host_addr, flags).ok_or(GntSt::GeneralError)?;
    let pte = Pte::grant(mfn, !ro, flags.contains(GntMap::APPLICATION_MAP));
    if !ld.aspace.install(slot, pte) {
        return Err(GntSt::GeneralError);
    }
    Ok((slot, pte))
}

/// `undo_out`: destroy the host mapping (with a flush), drop the references of step 11, then
/// under the locks drop the pin and the status bits, and free the handle or slot.
fn undo<D: Design>(
    env: &Env<'_, D>,
    rd: &Domain<D>,
    p: &Pinned<'_, SlotExt<D>>,
    flags: GntMap,
    incr: u32,
    t: Taken,
    track: Track,
) {
    let m = &env.hv.machine;
    let ro = flags.contains(GntMap::READONLY);
    if let Some((slot, pte)) = t.host_slot {
        let removed = env.ld.aspace.remove(slot, pte);
        debug_assert!(removed, "fresh host mapping changed under the map");
        env.tlb().retain_stale(slot, pte);
        env.tlb().flush();
    }
    for _ in 0..t.types {
        m.put_writable_type(p.mfn);
    }
    for _ in 0..t.refs {
        env.hv.put_page(p.mfn);
    }
    {
        let _rl = env.read(rd);
        let mut act = p.e.active.lock();
        act.pin -= incr;
        let clear = act.status_to_clear(ro);
        if clear != 0 {
            p.e.shared.clear_status(clear);
        }
        if let Track::Fast(i) = track {
            D::Slots::slots(&p.e.active.ext)[i].set_locked(GntMap::empty());
        }
    }
    if let Track::Slow(h) = track {
        env.ld.maptrack.put_handle(h);
    }
    if t.quota {
        if let Some(q) = &env.ld.quota {
            q.put(env.vcpu as usize);
        }
    }
}
