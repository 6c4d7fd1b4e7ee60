//! `GNTTABOP_unmap_grant_ref` (spec 7), generic over the design.
//!
//! Phase 1 validates the handle, removes the requested parts from the host page tables and the
//! mapping record, and frees the record when no part remains; it changes no pin, page reference
//! or status bit. After a chunk of up to 32 phase-1 steps the vCPU flushes its TLB; only then
//! does phase 2 drop references and pins and clear `GTF_reading`/`GTF_writing`, so the granter
//! never sees its grant free while a stale translation could still reach the page (XSA-218).

use super::{host_slot, put_refs, unpin_and_clear, Env};
use crate::abi::{GntMap, GntSt, GrantRef, Mfn, UnmapGrantRef, GNTTAB_UNMAP_BATCH_SIZE};
use crate::design::{Design, SlotExt};
use crate::domain::Domain;
use crate::grant::EntryRef;
use crate::handle::{self, Decoded};
use crate::hooks::HookPoint;
use crate::hypervisor::VcpuCtx;
use crate::iommu::{Deferred, IommuPolicy};
use crate::maptrack::{select_slot, FastSlot, MaptrackEntry, SlotPolicy};
use crate::reclaim::{self, Guard};
use crate::sync::Ordering;
use arrayvec::ArrayVec;

pub(crate) fn unmap_grant_ref<D: Design>(cx: &VcpuCtx<'_, D>, ops: &mut [UnmapGrantRef]) {
    let g = reclaim::pin();
    let env = Env::of(cx);
    for chunk in ops.chunks_mut(GNTTAB_UNMAP_BATCH_SIZE) {
        // Phase-1 results of the chunk, in order (no initialisation cost: most unmap
        // hypercalls carry one op).
        let mut done: ArrayVec<Done<'_, D>, GNTTAB_UNMAP_BATCH_SIZE> = ArrayVec::new();
        let mut pending = Deferred::default();
        for op in chunk.iter_mut() {
            match phase1(&env, op, &g, &mut pending) {
                Ok(x) => {
                    op.status = GntSt::Okay;
                    done.extend(x);
                }
                Err(st) => op.status = st,
            }
        }
        env.hv
            .hook(HookPoint::UnmapBeforeFlush, env.ld.id(), env.vcpu);
        env.tlb().flush();
        if let Some(io) = &env.ld.iommu {
            // Per-map bus frames: one IOTLB flush for the chunk, then the BFNs are reusable.
            D::Iommu::after_phase1(&env, io, &mut pending);
        }
        env.hv
            .hook(HookPoint::UnmapAfterFlush, env.ld.id(), env.vcpu);
        // `drain` iterates in place: `into_iter` would first move the whole 32-slot
        // ArrayVec (a ~1.3 KiB memcpy, 10 % of a hot pair's instructions).
        for d in done.drain(..) {
            phase2(&env, d);
        }
    }
}

/// What phase 1 removed, for phase 2.
struct Done<'g, D: Design> {
    rd: &'g Domain<D>,
    e: EntryRef<'g, SlotExt<D>>,
    mfn: Mfn,
    /// Host and/or device bits removed, plus `READONLY` if the mapping was read-only.
    parts: GntMap,
}

/// The record of the mapping an unmap names.
enum Record<'a> {
    Slow { h: u32, e: &'a MaptrackEntry },
    Fast(&'a FastSlot),
}

impl Record<'_> {
    #[inline]
    fn bus(&self) -> u64 {
        match self {
            Record::Slow { e, .. } => e.bus.load(Ordering::Relaxed),
            Record::Fast(s) => s.bus(),
        }
    }

    /// Under the entry lock: store the remaining parts (0 = free the record).
    #[inline]
    fn set_flags(&self, f: GntMap) {
        match self {
            // Relaxed: under the entry lock; readers re-check under it (spec 9.2 rule 7).
            Record::Slow { e, .. } => e.flags.store(f.bits() & 0xFFFF, Ordering::Relaxed),
            Record::Fast(s) => s.set_locked(f),
        }
    }
}

fn phase1<'g, D: Design>(
    env: &Env<'_, D>,
    op: &UnmapGrantRef,
    g: &'g Guard,
    pending: &mut Deferred,
) -> Result<Option<Done<'g, D>>, GntSt> {
    if D::Slots::ENABLED {
        if let Decoded::Fast { granter, gref } = handle::decode(op.handle) {
            return phase1_fast(env, op, granter, gref, g, pending);
        }
    }
    phase1_slow(env, op, g, pending)
}

/// Steps 1-6 for a maptrack handle (spec 7.2, 5.4).
fn phase1_slow<'g, D: Design>(
    env: &Env<'_, D>,
    op: &UnmapGrantRef,
    g: &'g Guard,
    pending: &mut Deferred,
) -> Result<Option<Done<'g, D>>, GntSt> {
    let ld = env.ld;
    let h = op.handle.0;
    // 1. Bounds (lock-free, Acquire on the limit).
    let me = ld.maptrack.entry(h).ok_or(GntSt::BadHandle)?;
    // 2. Flags first (Acquire: pairs with the Release publication).
    if me.flags.load(Ordering::Acquire) == 0 {
        return Err(GntSt::BadHandle);
    }
    let dom = crate::abi::DomId(me.domid.load(Ordering::Relaxed) as u16);
    let gref = me.gref.load(Ordering::Relaxed);
    // 3. The granter of a live mapping always exists; if not, Xen crashes the caller.
    let Some(rd) = env.hv.registry.get(dom, g) else {
        ld.crash();
        return Err(GntSt::GeneralError);
    };
    // 4. XSM: default policy allows. 5. The recorded ref must be inside the table.
    let _rl = env.read(rd);
    let e = rd.gt.entry(GrantRef(gref)).ok_or(GntSt::BadHandle)?;
    // 6. Under the entry lock the record must still be the same live mapping.
    let act = e.active.lock();
    let flags = me.flags.load(Ordering::Acquire);
    if flags == 0
        || me.domid.load(Ordering::Relaxed) != dom.0 as u32
        || me.gref.load(Ordering::Relaxed) != gref
    {
        return Err(GntSt::BadHandle);
    }
    let rec = Record::Slow { h, e: me };
    let mfn = act.mfn;
    let out = remove_parts(env, op, &rec, GntMap::from_bits_retain(flags), mfn)?;
    drop(act);
    drop(_rl);
    finish(env, rd, e, mfn, rec, out, pending)
}

/// Steps 1-6 for a fast handle: the handle names the granter and ref; the entry must be
/// pinned by the caller and hold a live slot.
fn phase1_fast<'g, D: Design>(
    env: &Env<'_, D>,
    op: &UnmapGrantRef,
    granter: crate::abi::DomId,
    gref: GrantRef,
    g: &'g Guard,
    pending: &mut Deferred,
) -> Result<Option<Done<'g, D>>, GntSt> {
    // A forged fast handle may name any domain: absent means bad handle (not a crash: the
    // value came from the guest, not from the hypervisor's own record).
    let rd = env.hv.registry.get(granter, g).ok_or(GntSt::BadHandle)?;
    let _rl = env.read(rd);
    let e = rd.gt.entry(gref).ok_or(GntSt::BadHandle)?;
    let act = e.active.lock();
    if act.pin == 0 || act.domid != env.ld.id() {
        return Err(GntSt::BadHandle);
    }
    let slots = D::Slots::slots(&e.active.ext);
    let (i, flags) = select_slot(slots, op.host_addr, op.dev_bus_addr).ok_or(GntSt::BadHandle)?;
    let rec = Record::Fast(&slots[i]);
    let mfn = act.mfn;
    let out = remove_parts(env, op, &rec, flags, mfn)?;
    if out.freed && !slots.iter().any(|s| s.looks_held_by(env.ld.id())) {
        // No slot of this entry is held by the domain any more (slots are claimed under the
        // entry lock we hold): this vCPU's newest hint, if it names the entry, is stale. A
        // later claim by any vCPU appends its own hint.
        // SAFETY: this thread runs `env.vcpu` (VcpuCtx is exclusive) inside a hypercall, the
        // only context besides a paused domain's teardown that touches the vCPU's log.
        env.ld.vcpus[env.vcpu as usize]
            .hints
            .with_mut(|h| unsafe { (*h).pop_if_last(granter, gref.0) });
    }
    drop(act);
    drop(_rl);
    finish(env, rd, e, mfn, rec, out, pending)
}

/// What phase 1 did under the entry lock.
struct Removed {
    /// Parts removed, plus `READONLY` if the mapping was read-only.
    done: GntMap,
    /// The record was released (no part left).
    freed: bool,
    /// The record's device address (for the IOMMU).
    bus: u64,
    /// The mapping was writable.
    writable: bool,
}

/// Steps 8-12 under the entry lock.
fn remove_parts<D: Design>(
    env: &Env<'_, D>,
    op: &UnmapGrantRef,
    rec: &Record<'_>,
    flags: GntMap,
    mfn: Mfn,
) -> Result<Removed, GntSt> {
    let mut f = flags;
    // 8. A named device part must be named by its exact device address.
    if op.dev_bus_addr != 0 && f.contains(GntMap::DEVICE_MAP) && op.dev_bus_addr != rec.bus() {
        return Err(GntSt::BadDevAddr);
    }
    let mut done = GntMap::empty();
    // 9-10. The host part: the entry at host_addr must map this frame with the mapping's
    //       permissions (XSA-234); nothing changes if it does not.
    if op.host_addr != 0 && f.contains(GntMap::HOST_MAP) {
        remove_host_mapping(env.ld, env, op.host_addr, f, mfn)?;
        f.remove(GntMap::HOST_MAP);
        done |= GntMap::HOST_MAP;
    }
    // 11.
    if op.dev_bus_addr != 0 && f.contains(GntMap::DEVICE_MAP) {
        f.remove(GntMap::DEVICE_MAP);
        done |= GntMap::DEVICE_MAP;
    }
    // 12. No part left: free the record (in phase 1: XSA-218 `b7f6cbb9d4`).
    let free = !f.intersects(GntMap::HOST_MAP | GntMap::DEVICE_MAP);
    if !done.is_empty() {
        rec.set_flags(if free { GntMap::empty() } else { f });
    }
    let removed_any = !done.is_empty();
    if flags.contains(GntMap::READONLY) {
        done |= GntMap::READONLY;
    }
    Ok(Removed {
        done,
        freed: free && removed_any,
        bus: rec.bus(),
        writable: !flags.contains(GntMap::READONLY),
    })
}

/// Steps 13-14 after the locks are dropped: free the handle, remove the IOMMU translation;
/// hand the removed parts to phase 2.
fn finish<'g, D: Design>(
    env: &Env<'_, D>,
    rd: &'g Domain<D>,
    e: EntryRef<'g, SlotExt<D>>,
    mfn: Mfn,
    rec: Record<'_>,
    r: Removed,
    pending: &mut Deferred,
) -> Result<Option<Done<'g, D>>, GntSt> {
    let done = r.done;
    if r.freed {
        if let Record::Slow { h, .. } = rec {
            env.ld.maptrack.put_handle(h);
        }
        if let Some(q) = &env.ld.quota {
            q.put(env.vcpu as usize);
        }
        // 14. The IOMMU translation lives as long as the record (XSA-394: dropped only when
        //     both parts are gone).
        if let Some(io) = &env.ld.iommu {
            if rd.id() != env.ld.id() {
                D::Iommu::unmap(env, io, mfn, r.bus, r.writable, pending);
            }
        }
    }
    if !done.intersects(GntMap::HOST_MAP | GntMap::DEVICE_MAP) {
        // Named no part the mapping has: a successful no-op, the handle stays valid.
        return Ok(None);
    }
    env.ld.vcpus[env.vcpu as usize].counters.unmapped();
    Ok(Some(Done {
        rd,
        e,
        mfn,
        parts: done,
    }))
}

/// `replace_grant_host_mapping` with `new_addr == 0`: validate and clear the entry, keeping the
/// old translation in this vCPU's TLB until the flush.
fn remove_host_mapping<D: Design>(
    ld: &Domain<D>,
    env: &Env<'_, D>,
    host_addr: u64,
    flags: GntMap,
    mfn: Mfn,
) -> Result<(), GntSt> {
    let slot = host_slot(ld, host_addr, flags).ok_or(GntSt::GeneralError)?;
    let pte = ld.aspace.get(slot);
    let ok = pte.present()
        && pte.mfn() == mfn
        && if ld.translated() {
            // HVM: the P2M entry must be a grant mapping of the frame.
            pte.is_grant()
        } else {
            // PV: every flag but the available bits (ours: the grant bit) must match what the
            // grant flags imply: present, RW, user (XSA-234).
            let want = crate::machine::Pte::grant(
                mfn,
                !flags.contains(GntMap::READONLY),
                flags.contains(GntMap::APPLICATION_MAP),
            );
            let mask =
                crate::machine::Pte::PRESENT | crate::machine::Pte::RW | crate::machine::Pte::USER;
            (pte.0 ^ want.0) & mask == 0
        };
    if !ok || !ld.aspace.remove(slot, pte) {
        return Err(GntSt::GeneralError);
    }
    env.tlb().retain_stale(slot, pte);
    Ok(())
}

/// Phase 2 (`unmap_common_complete`), after the flush: references, pins, status bits.
fn phase2<D: Design>(env: &Env<'_, D>, d: Done<'_, D>) {
    let _rl = env.read(d.rd);
    let mut act = d.e.active.lock();
    put_refs(env.hv, env.ld, d.rd, d.mfn, d.parts);
    unpin_and_clear(&mut act, d.e.shared, d.parts);
}
