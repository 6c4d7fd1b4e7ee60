//! The invariant checker (spec section 13), callable at quiescence from any test or scenario.
//!
//! It walks every domain and cross-checks what the hypervisor recorded against what it
//! accounts:
//!
//! | #  | invariant                                                                       |
//! |----|---------------------------------------------------------------------------------|
//! | 1  | each pin counter equals the live mappings (maptrack entries and fast slots) of  |
//! |    | that part and mode                                                              |
//! | 2  | a pinned entry is used by exactly one grantee (`act.domid`); unpinned: unused   |
//! | 3  | every counter <= 128                                                            |
//! | 4  | (protocol-following granters) `GTF_reading` iff pinned, `GTF_writing` iff a     |
//! |    | writable pin exists                                                             |
//! | 6  | handles: free lists acyclic with a sentinel tail, disjoint, free + used = limit,|
//! |    | limit a multiple of the page size and within the domain's maximum              |
//! | 8  | page references = allocation reference + live host parts + live device parts;  |
//! |    | writable type references = live writable parts that take one                   |
//! | -  | host page tables hold exactly one grant entry per live host part; no stale TLB  |
//! |    | entry survives a hypercall; no fast slot is left reserved; no pCPU slot names a |
//! |    | lock                                                                            |

use crate::abi::{gtf, DomId, GntMap, GrantRef, Mfn};
use crate::design::Design;
use crate::domain::Domain;
use crate::grant::pin;
use crate::hypervisor::Hypervisor;
use crate::iommu::IommuPolicy;
use crate::machine::P2mEntry;
use crate::maptrack::{SlotPolicy, SlotState, MAPTRACK_TAIL};
use crate::sync::{Arc, Ordering};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (spec 13 numbering, or a short name).
    pub invariant: &'static str,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.invariant, self.detail)
    }
}

/// The checker's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every violation found (empty: all invariants hold).
    pub violations: Vec<Violation>,
    /// Live mappings seen.
    pub mappings: usize,
    /// Live mappings held in fast slots.
    pub fast_mappings: usize,
}

impl CheckReport {
    /// No violation.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics with every violation if any invariant is broken.
    #[track_caller]
    pub fn assert_ok(&self) {
        if !self.is_ok() {
            let list: Vec<String> = self.violations.iter().map(|v| v.to_string()).collect();
            panic!("invariant violations:\n  {}", list.join("\n  "));
        }
    }

    fn push(&mut self, invariant: &'static str, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }
}

/// Options for [`Hypervisor::check_with`].
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Granters that may have rewritten their shared entries: invariant 4 (status bits) is not
    /// checked for them.
    pub adversarial: BTreeSet<DomId>,
    /// Mappers whose host page tables a test rewrote on purpose: the host-PTE count check is
    /// skipped for them.
    pub tampered_page_tables: BTreeSet<DomId>,
}

/// A live mapping as recorded.
#[derive(Clone, Copy, Debug)]
struct Live {
    mapper: DomId,
    flags: GntMap,
    fast: bool,
    bus: u64,
}

impl<D: Design> Hypervisor<D> {
    /// Checks every invariant at quiescence (no hypercall in flight).
    pub fn check(&self) -> CheckReport {
        self.check_with(&CheckOptions::default())
    }

    /// [`check`](Self::check) with options.
    pub fn check_with(&self, opts: &CheckOptions) -> CheckReport {
        let mut r = CheckReport::default();
        let doms: BTreeMap<DomId, Arc<Domain<D>>> = self
            .domain_ids()
            .into_iter()
            .filter_map(|id| self.domain(id).map(|d| (id, d)))
            .collect();

        // Every live mapping, keyed by (granter, gref).
        let mut live: BTreeMap<(DomId, u32), Vec<Live>> = BTreeMap::new();
        for (&mid, m) in &doms {
            self.collect_slow(&mut r, mid, m, &mut live);
        }
        for (&gid, g) in &doms {
            for i in 0..g.gt.nr_entries() {
                let e = g.gt.entry(GrantRef(i)).expect("below nr_entries");
                let act = *e.active.lock();
                for (k, s) in D::Slots::slots(&e.active.ext).iter().enumerate() {
                    match s.state() {
                        SlotState::Free => {}
                        SlotState::Reserved => r.push(
                            "fast-slot",
                            format!("{gid:?} g{i} slot {k} left reserved at quiescence"),
                        ),
                        SlotState::Live(f) => live.entry((gid, i)).or_default().push(Live {
                            mapper: act.domid,
                            flags: f,
                            fast: true,
                            bus: s.bus(),
                        }),
                    }
                }
            }
        }

        // Expected page and type references per frame, and host PTEs per (mapper, frame).
        let mut refs: BTreeMap<Mfn, u64> = BTreeMap::new();
        let mut types: BTreeMap<Mfn, u64> = BTreeMap::new();
        let mut host_parts: BTreeMap<(DomId, Mfn), u64> = BTreeMap::new();
        // Live non-self mappings of strict-IOMMU mappers: (mfn, writable, bus).
        let mut io_live: BTreeMap<DomId, Vec<(Mfn, bool, u64)>> = BTreeMap::new();
        let mut mapper_counts: BTreeMap<DomId, u64> = BTreeMap::new();

        for (&gid, g) in &doms {
            for i in 0..g.gt.nr_entries() {
                let e = g.gt.entry(GrantRef(i)).expect("below nr_entries");
                let act = *e.active.lock();
                let maps = live.remove(&(gid, i)).unwrap_or_default();
                self.check_entry(
                    &mut r,
                    opts,
                    gid,
                    g,
                    i,
                    &act,
                    e.shared.snapshot().flags,
                    &maps,
                );
                for l in &maps {
                    r.mappings += 1;
                    r.fast_mappings += l.fast as usize;
                    *mapper_counts.entry(l.mapper).or_default() += 1;
                    let ro = l.flags.contains(GntMap::READONLY);
                    if l.mapper != gid && doms.get(&l.mapper).is_some_and(|m| m.needs_iommu()) {
                        io_live
                            .entry(l.mapper)
                            .or_default()
                            .push((act.mfn, !ro, l.bus));
                    }
                    if l.flags.contains(GntMap::DEVICE_MAP) {
                        *refs.entry(act.mfn).or_default() += 1;
                        if !ro {
                            *types.entry(act.mfn).or_default() += 1;
                        }
                    }
                    if l.flags.contains(GntMap::HOST_MAP) {
                        *refs.entry(act.mfn).or_default() += 1;
                        *host_parts.entry((l.mapper, act.mfn)).or_default() += 1;
                        let mapper_is_self = l.mapper == gid;
                        if !ro && (mapper_is_self || !g.translated()) {
                            *types.entry(act.mfn).or_default() += 1;
                        }
                    }
                }
            }
        }
        for ((gid, i), maps) in live {
            r.push(
                "2",
                format!(
                    "{} mapping(s) of {gid:?} g{i}, which has no such entry or domain",
                    maps.len()
                ),
            );
        }

        // Allocation references: frames their owner's P2M or grant table still holds.
        for (&id, d) in &doms {
            let mut own = BTreeSet::new();
            for gfn in 0..d.p2m.len() {
                if let P2mEntry::Present(m) | P2mEntry::PagedOut(m) =
                    d.p2m.lookup(crate::abi::Gfn(gfn))
                {
                    if self.machine.frame(m).and_then(|f| f.owner()) == Some(id) {
                        own.insert(m);
                    }
                }
            }
            own.extend(d.gt.frame_list(u32::MAX));
            for m in own {
                *refs.entry(m).or_default() += 1;
            }
        }
        // Frame 0 is the hypervisor's own, never granted.
        *refs.entry(Mfn(0)).or_default() += 1;
        for m in 0..self.machine.created_frames() {
            let mfn = Mfn(m);
            let f = self.machine.frame(mfn).expect("created frame");
            let want = refs.get(&mfn).copied().unwrap_or(0);
            if u64::from(f.refcount()) != want {
                r.push(
                    "8",
                    format!("{mfn:?}: {} page references, expected {want}", f.refcount()),
                );
            }
            let want_t = types.get(&mfn).copied().unwrap_or(0);
            if u64::from(f.writable_type_count()) != want_t {
                r.push(
                    "8",
                    format!(
                        "{mfn:?}: {} writable type references, expected {want_t}",
                        f.writable_type_count()
                    ),
                );
            }
        }

        // Map quotas: every unit is idle or held by a live map of the domain.
        let per_mapper = &mapper_counts;
        for (&id, d) in &doms {
            let Some(q) = d.quota() else { continue };
            if d.state() == crate::domain::DomainState::Dying {
                continue;
            }
            let live = per_mapper.get(&id).copied().unwrap_or(0);
            if u64::from(q.idle()) + live != u64::from(q.limit()) {
                r.push(
                    "quota",
                    format!(
                        "{id:?}: {} idle units + {live} live maps != limit {}",
                        q.idle(),
                        q.limit()
                    ),
                );
            }
        }

        // IOMMU mirrors (invariant 9) and IOTLBs.
        for (&id, d) in &doms {
            let Some(io) = &d.iommu else { continue };
            // A dying mapper's IOMMU context is destroyed wholesale at the end of its teardown
            // (as Xen deletes tree nodes without IOMMU calls): it is not a mirror meanwhile.
            if d.state() == crate::domain::DomainState::Dying {
                continue;
            }
            for v in D::Iommu::check(io, io_live.get(&id).map_or(&[][..], Vec::as_slice)) {
                r.push("9", format!("{id:?}: {v}"));
            }
            for (k, t) in io.iotlb.iter().enumerate() {
                if t.stale_len() != 0 {
                    r.push(
                        "iotlb",
                        format!(
                            "{id:?} v{k}: {} stale IOTLB entries unflushed",
                            t.stale_len()
                        ),
                    );
                }
            }
        }

        // Host page tables and TLBs.
        for (&id, d) in &doms {
            for (k, v) in d.vcpus.iter().enumerate() {
                if v.tlb.stale_len() != 0 {
                    r.push(
                        "tlb",
                        format!(
                            "{id:?} v{k}: {} stale translations unflushed",
                            v.tlb.stale_len()
                        ),
                    );
                }
            }
            // A dying domain's page tables are destroyed at the end of its teardown; until then
            // its grant PTEs outlive the records teardown already released.
            if opts.tampered_page_tables.contains(&id)
                || d.state() == crate::domain::DomainState::Dying
            {
                continue;
            }
            let mut ptes: BTreeMap<Mfn, u64> = BTreeMap::new();
            d.aspace.for_each(|_, p| {
                if p.present() && p.is_grant() {
                    *ptes.entry(p.mfn()).or_default() += 1;
                }
            });
            let want: BTreeMap<Mfn, u64> = host_parts
                .iter()
                .filter(|((mid, _), _)| *mid == id)
                .map(|((_, m), n)| (*m, *n))
                .collect();
            if ptes != want {
                r.push(
                    "host-ptes",
                    format!("{id:?}: grant PTEs per frame {ptes:?}, live host parts {want:?}"),
                );
            }
        }
        r
    }

    /// Slow mappings and the free lists of mapper `m` (invariant 6).
    fn collect_slow(
        &self,
        r: &mut CheckReport,
        mid: DomId,
        m: &Domain<D>,
        live: &mut BTreeMap<(DomId, u32), Vec<Live>>,
    ) {
        let mt = &m.maptrack;
        let limit = mt.limit();
        if limit % mt.per_frame() != 0 || limit > mt.per_frame() * mt.max_frames() {
            r.push("6", format!("{mid:?}: maptrack_limit {limit} not a whole number of frames within the maximum"));
        }
        let mut used = BTreeSet::new();
        for h in 0..limit {
            let e = mt.entry(h).expect("below limit");
            let flags = e.flags.load(Ordering::Acquire);
            if flags != 0 {
                used.insert(h);
                live.entry((
                    DomId(e.domid.load(Ordering::Relaxed) as u16),
                    e.gref.load(Ordering::Relaxed),
                ))
                .or_default()
                .push(Live {
                    mapper: mid,
                    flags: GntMap::from_bits_retain(flags),
                    fast: false,
                    bus: e.bus.load(Ordering::Relaxed),
                });
            }
        }
        let mut free = BTreeSet::new();
        for (v, (list, chain)) in mt.lists_snapshot().into_iter().enumerate() {
            if list.head == MAPTRACK_TAIL && list.tail == MAPTRACK_TAIL {
                continue;
            }
            if list.head == MAPTRACK_TAIL || list.tail == MAPTRACK_TAIL {
                r.push(
                    "6",
                    format!("{mid:?} v{v}: half-initialised free list {list:?}"),
                );
                continue;
            }
            if chain.last() != Some(&list.tail) {
                r.push("6", format!("{mid:?} v{v}: free list from {} does not reach its tail {} (cycle or bad link)", list.head, list.tail));
            }
            let tail_next = mt.entry(list.tail).map(|e| e.gref.load(Ordering::Relaxed));
            if tail_next != Some(MAPTRACK_TAIL) {
                r.push(
                    "6",
                    format!(
                        "{mid:?} v{v}: tail {} is not a sentinel (next {tail_next:?})",
                        list.tail
                    ),
                );
            }
            for h in chain {
                if used.contains(&h) {
                    r.push(
                        "6",
                        format!("{mid:?}: handle {h} is in use and on v{v}'s free list"),
                    );
                }
                if !free.insert(h) {
                    r.push(
                        "6",
                        format!("{mid:?}: handle {h} is on two free lists (or twice on one)"),
                    );
                }
                let owner = mt.entry(h).map(|e| e.vcpu.load(Ordering::Relaxed));
                if owner != Some(v as u32) {
                    r.push(
                        "6",
                        format!("{mid:?}: handle {h} on v{v}'s list but owned by {owner:?}"),
                    );
                }
            }
        }
        // Mid-teardown the table is being dismantled (Xen lowers the limit as it walks).
        let dismantling = m.state() == crate::domain::DomainState::Dying;
        if !dismantling && free.len() + used.len() != limit as usize {
            r.push(
                "6",
                format!(
                    "{mid:?}: {} free + {} used != maptrack_limit {limit}",
                    free.len(),
                    used.len()
                ),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_entry(
        &self,
        r: &mut CheckReport,
        opts: &CheckOptions,
        gid: DomId,
        g: &Domain<D>,
        i: u32,
        act: &crate::grant::ActiveData,
        flags: u16,
        maps: &[Live],
    ) {
        let _ = g;
        let mut want = 0u32;
        for l in maps {
            if l.mapper != act.domid || act.pin == 0 {
                r.push(
                    "2",
                    format!(
                        "{gid:?} g{i}: mapping by {:?} but the entry is pinned by {:?} (pin {:#x})",
                        l.mapper, act.domid, act.pin
                    ),
                );
            }
            want = want.wrapping_add(pin::incr_for(l.flags));
        }
        if act.pin != want {
            r.push(
                "1",
                format!(
                    "{gid:?} g{i}: pin {:?} but live mappings account for {:?}",
                    pin::counters(act.pin),
                    pin::counters(want)
                ),
            );
        }
        if pin::counters(act.pin).iter().any(|&c| c > 128) {
            r.push(
                "3",
                format!(
                    "{gid:?} g{i}: pin counter above 128: {:?}",
                    pin::counters(act.pin)
                ),
            );
        }
        if !opts.adversarial.contains(&gid) {
            let reading = flags & gtf::READING != 0;
            let writing = flags & gtf::WRITING != 0;
            if reading != (act.pin != 0) || writing != pin::has_writable(act.pin) {
                r.push(
                    "4",
                    format!("{gid:?} g{i}: flags {flags:#x} (reading {reading}, writing {writing}) vs pin {:?}", pin::counters(act.pin)),
                );
            }
        }
    }
}
