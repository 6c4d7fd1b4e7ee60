//! Domain teardown (spec 11): preemptible, and as the mapper proportional to the dying
//! domain's own mappings.
//!
//! [`Hypervisor::kill_domain`](crate::Hypervisor::kill_domain) marks the domain dying and
//! pauses it; the returned [`Teardown`] then runs in bounded steps ([`Teardown::step`]), each
//! visiting at most [`CHUNK`] records or frames and holding no lock across steps:
//!
//! 1. **Fast slots.** Pop the vCPUs' hint logs (`(granter, gref)` pairs the dying domain's
//!    maps appended when they claimed an inline slot) and release every live slot the domain
//!    still holds in that entry. Cost: the number of hints, independent of how large other
//!    domains' tables are (the O(D * G) walk of seed 004 is never needed).
//! 2. **Maptrack table**, backwards from the limit as Xen walks it (`gnttab_release_mappings`).
//! 3. **Memory**: drop the allocation reference of every populated frame. Frames that foreign
//!    mappings still reference stay allocated; the domain stays a zombie until they are gone.
//! 4. **Page tables and IOMMU**: the dying domain's grant PTEs, stale TLB entries and IOMMU
//!    context are destroyed (their page references were dropped with the records above).
//! 5. **Dead**: if the domain owns no frame any more it is destroyed for good now; otherwise
//!    when the last foreign mapping of its pages goes (the unmap that frees the last frame
//!    finalises it).
//!
//! Releasing a record drops exactly what unmap's phase 2 drops (page and type references,
//! pins, then `GTF_reading`/`GTF_writing` by spec 3.2), under the granter's read-side section
//! and entry lock, so the granter learns its grant is free the same way.

use crate::abi::{DomId, GntMap, GrantRef};
use crate::design::Design;
use crate::domain::{Domain, DomainState};
use crate::hypervisor::Hypervisor;
use crate::iommu::IommuPolicy;
use crate::machine::P2mEntry;
use crate::maptrack::{SlotPolicy, SlotState};
use crate::ops::{put_refs, unpin_and_clear};
use crate::reclaim::{self, Guard};
use crate::sync::{Arc, Ordering};
use crate::table::TableSync;
use std::time::{Duration, Instant};

/// Records or frames visited per step at most (Xen checks for preemption every 256 maptrack
/// entries).
pub const CHUNK: usize = 256;

/// Whether a teardown has more to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Call [`Teardown::step`] again (the continuation).
    More,
    /// Finished.
    Done,
}

/// What a teardown did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TeardownStats {
    /// Steps run (preemption points + 1).
    pub steps: u64,
    /// Hints, maptrack entries and frames visited.
    pub visited: u64,
    /// Mappings (fast slots and maptrack records) released.
    pub mappings_released: u64,
    /// Frames whose allocation reference was dropped.
    pub frames_released: u64,
    /// Longest single step (the longest non-preemptible stretch).
    pub longest_step: Duration,
    /// Sum of all steps.
    pub busy: Duration,
    /// The domain was destroyed for good at the end (no foreign mapping held its pages).
    pub destroyed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    FastHints { vcpu: usize },
    Maptrack { cursor: u32 },
    Memory { gfn: u64 },
    PageTables,
    Finish,
    Done,
}

/// A preemptible teardown job (see the module docs).
#[derive(Debug)]
pub struct Teardown<'h, D: Design> {
    hv: &'h Hypervisor<D>,
    dom: Arc<Domain<D>>,
    phase: Phase,
    stats: TeardownStats,
}

impl<'h, D: Design> Teardown<'h, D> {
    pub(crate) fn new(hv: &'h Hypervisor<D>, dom: Arc<Domain<D>>) -> Self {
        Self {
            hv,
            dom,
            phase: Phase::FastHints { vcpu: 0 },
            stats: TeardownStats::default(),
        }
    }

    /// The dying domain.
    pub fn domain(&self) -> DomId {
        self.dom.id()
    }

    /// Statistics so far.
    pub fn stats(&self) -> TeardownStats {
        self.stats
    }

    /// Runs to completion (every step back to back).
    pub fn run(mut self) -> TeardownStats {
        while self.step() == Step::More {}
        self.stats
    }

    /// Runs one bounded step: at most [`CHUNK`] records or frames, no lock held on return.
    pub fn step(&mut self) -> Step {
        if self.phase == Phase::Done {
            return Step::Done;
        }
        let t = Instant::now();
        let cpu = self.hv.pcpus.acquire_wait();
        {
            let g = reclaim::pin();
            let mut budget = CHUNK;
            while budget > 0 && self.phase != Phase::Done {
                self.phase = self.advance(&g, cpu, &mut budget);
            }
        }
        self.hv.pcpus.release(cpu);
        let dt = t.elapsed();
        self.stats.steps += 1;
        self.stats.busy += dt;
        self.stats.longest_step = self.stats.longest_step.max(dt);
        if self.phase == Phase::Done {
            Step::Done
        } else {
            Step::More
        }
    }

    fn advance(&mut self, g: &Guard, cpu: usize, budget: &mut usize) -> Phase {
        let d = &*self.dom;
        match self.phase {
            Phase::FastHints { vcpu } => {
                if !D::Slots::ENABLED || vcpu >= d.vcpus.len() {
                    return Phase::Maptrack {
                        cursor: d.maptrack.limit(),
                    };
                }
                while *budget > 0 {
                    // SAFETY: the domain is paused (`kill_domain` waited for every vCPU to
                    // leave its hypercall, and later hypercalls fail before touching hints),
                    // and only this job (which owns the dying domain) touches the log now.
                    let hint = d.vcpus[vcpu]
                        .hints
                        .with_mut(|h| unsafe { (*h).hints.pop() });
                    let Some((gid, gref)) = hint else {
                        return Phase::FastHints { vcpu: vcpu + 1 };
                    };
                    *budget -= 1;
                    self.stats.visited += 1;
                    let n = release_fast(self.hv, g, cpu, d, gid, gref);
                    self.stats.mappings_released += n;
                    if let Some(q) = &d.quota {
                        q.release_to_pool(n as u32);
                    }
                }
                self.phase
            }
            Phase::Maptrack { cursor } => {
                let mut c = cursor;
                while *budget > 0 && c > 0 {
                    c -= 1;
                    *budget -= 1;
                    self.stats.visited += 1;
                    let n = release_slow(self.hv, g, cpu, d, c);
                    self.stats.mappings_released += n;
                    if let Some(q) = &d.quota {
                        q.release_to_pool(n as u32);
                    }
                }
                if c == 0 {
                    // Xen: maptrack_limit = 0 at the end; no handle is valid any more.
                    d.maptrack.retire_all();
                    Phase::Memory { gfn: 0 }
                } else {
                    Phase::Maptrack { cursor: c }
                }
            }
            Phase::Memory { gfn } => {
                let mut k = gfn;
                while *budget > 0 && k < d.p2m.len() {
                    if let Some(P2mEntry::Present(m) | P2mEntry::PagedOut(m)) =
                        d.p2m.set(crate::abi::Gfn(k), P2mEntry::Absent)
                    {
                        self.hv.put_page(m);
                        self.stats.frames_released += 1;
                    }
                    k += 1;
                    *budget -= 1;
                    self.stats.visited += 1;
                }
                if k >= d.p2m.len() {
                    Phase::PageTables
                } else {
                    Phase::Memory { gfn: k }
                }
            }
            Phase::PageTables => {
                // The grant PTEs' page references went with their records above; what is
                // left is the page-table memory itself and the TLBs.
                d.aspace.for_each(|slot, p| {
                    d.aspace.set_raw(slot, crate::machine::Pte(0));
                    let _ = p;
                });
                for v in d.vcpus.iter() {
                    v.tlb.flush();
                }
                if let Some(io) = &d.iommu {
                    D::Iommu::teardown(io);
                }
                if let Some(q) = &d.quota {
                    q.drain();
                }
                *budget = budget.saturating_sub(1);
                Phase::Finish
            }
            Phase::Finish => {
                // Release: the whole teardown happens-before anyone who sees Dead.
                d.state.store(DomainState::Dead as u8, Ordering::Release);
                // SeqCst fence: pairs with `Hypervisor::frames_gone` (an unmap freeing the
                // zombie's last frame concurrently): one of us finalises.
                crate::sync::fence(Ordering::SeqCst);
                if self.hv.machine.owned_frames(d.id()) == 0 {
                    self.hv.finalize(d);
                    self.stats.destroyed = true;
                }
                Phase::Done
            }
            Phase::Done => Phase::Done,
        }
    }
}

/// Releases every live inline slot mapper `m` holds in `(gid, gref)`; returns how many.
fn release_fast<D: Design>(
    hv: &Hypervisor<D>,
    g: &Guard,
    cpu: usize,
    m: &Domain<D>,
    gid: DomId,
    gref: u32,
) -> u64 {
    // A granter that is gone cannot hold our slots: our pins would have kept it alive.
    let Some(rd) = hv.registry.get(gid, g) else {
        return 0;
    };
    let _rl = D::Table::read(&rd.gt.lock, &hv.pcpus, cpu);
    let Some(e) = rd.gt.entry(GrantRef(gref)) else {
        return 0;
    };
    let mut act = e.active.lock();
    if act.pin == 0 || act.domid != m.id() {
        return 0;
    }
    let mut n = 0;
    for s in D::Slots::slots(&e.active.ext) {
        if let SlotState::Live(f) = s.state() {
            let parts = f & (GntMap::HOST_MAP | GntMap::DEVICE_MAP | GntMap::READONLY);
            s.set_locked(GntMap::empty());
            put_refs(hv, m, rd, act.mfn, parts);
            unpin_and_clear(&mut act, e.shared, parts);
            n += 1;
        }
    }
    n
}

/// Releases maptrack record `h` of mapper `m` if live; returns 1 if it was.
fn release_slow<D: Design>(
    hv: &Hypervisor<D>,
    g: &Guard,
    cpu: usize,
    m: &Domain<D>,
    h: u32,
) -> u64 {
    let Some(me) = m.maptrack.entry(h) else {
        return 0;
    };
    // Acquire: pairs with the Release publication of the record.
    let flags = me.flags.load(Ordering::Acquire);
    if flags == 0 {
        return 0;
    }
    let gid = DomId(me.domid.load(Ordering::Relaxed) as u16);
    let gref = me.gref.load(Ordering::Relaxed);
    let Some(rd) = hv.registry.get(gid, g) else {
        // The granter is gone: just clear the record (spec 11.2).
        me.flags.store(0, Ordering::Relaxed);
        return 0;
    };
    let _rl = D::Table::read(&rd.gt.lock, &hv.pcpus, cpu);
    let Some(e) = rd.gt.entry(GrantRef(gref)) else {
        me.flags.store(0, Ordering::Relaxed);
        return 0;
    };
    let mut act = e.active.lock();
    let parts = GntMap::from_bits_retain(flags)
        & (GntMap::HOST_MAP | GntMap::DEVICE_MAP | GntMap::READONLY);
    me.flags.store(0, Ordering::Relaxed);
    put_refs(hv, m, rd, act.mfn, parts);
    unpin_and_clear(&mut act, e.shared, parts);
    1
}

/// Whether some inline slot of `(gid, gref)` seems held by mapper `m`, read without entry
/// locks: the test of the hint log's incremental scan on the map path.
///
/// Dropping a hint on `false` is safe: a slot this vCPU claimed is seen (program order); a slot
/// another vCPU of the domain is claiming right now is covered by the hint that vCPU pushes
/// into its own log. A stale `true` only keeps a hint one pass longer.
pub(crate) fn looks_held<D: Design>(
    hv: &Hypervisor<D>,
    g: &Guard,
    cpu: usize,
    m: &Domain<D>,
    gid: DomId,
    gref: u32,
) -> bool {
    let Some(rd) = hv.registry.get(gid, g) else {
        return false;
    };
    let _rl = D::Table::read(&rd.gt.lock, &hv.pcpus, cpu);
    let Some(e) = rd.gt.entry(GrantRef(gref)) else {
        return false;
    };
    D::Slots::slots(&e.active.ext)
        .iter()
        .any(|s| s.looks_held_by(m.id()))
}
