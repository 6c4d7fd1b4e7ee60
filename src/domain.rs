//! Domains: configuration, per-domain state and per-vCPU state.

use crate::abi::{DomId, Gfn, DEFAULT_MAX_GRANT_FRAMES, DEFAULT_MAX_MAPTRACK_FRAMES};
use crate::design::Design;
use crate::grant::GrantTable;
use crate::iommu::{IommuCtx, IommuMode};
use crate::machine::{AddressSpace, P2m, P2mEntry, Tlb};
use crate::maptrack::Maptrack;
use crate::maptrack::SlotPolicy;
use crate::quota::{MapLimit, MapQuota};
use crate::sync::{AtomicBool, AtomicU64, AtomicU8, CachePadded, Ordering, UnsafeCell};

/// Paging mode of a domain, which decides several checks (spec 6.2 steps 2 and 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DomainKind {
    /// Paravirtualised: host mappings are page-table entries at linear addresses.
    #[default]
    Pv,
    /// Translated (HVM/PVH): host mappings are P2M entries at guest-physical addresses.
    Hvm,
}

/// How a domain is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Unique name.
    pub name: String,
    /// Number of vCPUs (at least 1).
    pub vcpus: u16,
    /// Paging mode.
    pub kind: DomainKind,
    /// Guest frames populated at creation (gfn 0 .. memory_pages).
    pub memory_pages: u64,
    /// `max_grant_frames` (at least 1).
    pub max_grant_frames: u32,
    /// `max_maptrack_frames` (0 forbids every map, as XSA-380 recommends for plain guests).
    pub max_maptrack_frames: u32,
    /// Control domain: may query or set up other domains' tables.
    pub privileged: bool,
    /// Size of the host-mapping address space in pages.
    pub host_pages: u64,
    /// IOMMU mode (strict: every grant map of a PV domain updates its IOMMU).
    pub iommu: IommuMode,
    /// Size of the per-map bus-address region in frames (designs with per-map bus frames).
    pub bus_frames: u64,
    /// Limit on live grant maps by this domain (see [`MapLimit`]).
    pub map_limit: MapLimit,
}

impl DomainConfig {
    /// A PV domain with Xen's default limits, 1 vCPU and 256 pages of memory.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            vcpus: 1,
            kind: DomainKind::Pv,
            memory_pages: 256,
            max_grant_frames: DEFAULT_MAX_GRANT_FRAMES,
            max_maptrack_frames: DEFAULT_MAX_MAPTRACK_FRAMES,
            privileged: false,
            host_pages: 1 << 20,
            iommu: IommuMode::Off,
            bus_frames: 1 << 20,
            map_limit: MapLimit::Default,
        }
    }
    /// Sets the map limit.
    pub fn map_limit(mut self, l: MapLimit) -> Self {
        self.map_limit = l;
        self
    }
    /// Sets the IOMMU mode.
    pub fn iommu(mut self, m: IommuMode) -> Self {
        self.iommu = m;
        self
    }
    /// Sets the per-map bus-address region size in frames.
    pub fn bus_frames(mut self, n: u64) -> Self {
        self.bus_frames = n;
        self
    }
    /// Sets the number of vCPUs.
    pub fn vcpus(mut self, n: u16) -> Self {
        self.vcpus = n;
        self
    }
    /// Sets the paging mode.
    pub fn kind(mut self, k: DomainKind) -> Self {
        self.kind = k;
        self
    }
    /// Sets the populated memory.
    pub fn memory_pages(mut self, n: u64) -> Self {
        self.memory_pages = n;
        self
    }
    /// Sets `max_grant_frames`.
    pub fn max_grant_frames(mut self, n: u32) -> Self {
        self.max_grant_frames = n;
        self
    }
    /// Sets `max_maptrack_frames`.
    pub fn max_maptrack_frames(mut self, n: u32) -> Self {
        self.max_maptrack_frames = n;
        self
    }
    /// Makes the domain a control domain.
    pub fn privileged(mut self, p: bool) -> Self {
        self.privileged = p;
        self
    }
    /// Sets the host address-space size in pages.
    pub fn host_pages(mut self, n: u64) -> Self {
        self.host_pages = n;
        self
    }
}

/// Life-cycle state (spec 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DomainState {
    /// Running.
    Alive = 0,
    /// Being torn down (or a zombie kept by foreign mappings).
    Dying = 1,
    /// Torn down.
    Dead = 2,
}

/// Per-vCPU counters. Each is written only by the thread running the vCPU (a load and a store,
/// no read-modify-write) and may be read by anyone.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    maps: AtomicU64,
    fast_maps: AtomicU64,
    slow_maps: AtomicU64,
    unmaps: AtomicU64,
}

/// A snapshot of [`VcpuCounters`], summed over vCPUs by [`Domain::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainStats {
    /// Successful maps.
    pub maps: u64,
    /// Successful maps recorded in an inline fast slot.
    pub fast_maps: u64,
    /// Successful maps recorded in the maptrack table.
    pub slow_maps: u64,
    /// Successful unmap operations.
    pub unmaps: u64,
    /// TLB flushes issued by this domain's vCPUs.
    pub tlb_flushes: u64,
    /// IOTLB flushes issued for this domain's IOMMU.
    pub iotlb_flushes: u64,
}

impl VcpuCounters {
    #[inline]
    fn bump(c: &AtomicU64) {
        // Relaxed load + store: single writer (the running vCPU); readers tolerate staleness.
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
    #[inline]
    pub(crate) fn mapped(&self, fast: bool) {
        Self::bump(&self.maps);
        Self::bump(if fast {
            &self.fast_maps
        } else {
            &self.slow_maps
        });
    }
    #[inline]
    pub(crate) fn unmapped(&self) {
        Self::bump(&self.unmaps);
    }
}

/// Where a vCPU's maps put records in other domains' fast slots: `(granter, gref)` hints,
/// appended by the vCPU's own map path (no shared write), validated under the entry lock when
/// teardown uses them. Teardown of the domain as mapper walks these logs, so its cost is the
/// number of hints, not the size of other domains' tables (design.md section 2, point 4).
///
/// Stale hints (the slot was released since) are dropped incrementally: every push also looks
/// at [`HINT_SCAN`] older hints at a rotating cursor and removes those whose entry no longer
/// seems to hold a slot of the domain. A full pass over the log therefore completes within
/// `len / HINT_SCAN` pushes, which keeps the log within about twice the slots the vCPU holds
/// (plus the pushes of one pass), with O(1) work per map: no compaction spike on any map.
#[derive(Debug, Default)]
pub(crate) struct HintLog {
    pub(crate) hints: Vec<(DomId, u32)>,
    /// Next hint the incremental scan looks at.
    pub(crate) cursor: usize,
}

/// Older hints examined per push.
pub(crate) const HINT_SCAN: usize = 2;

impl HintLog {
    /// Records a fast slot claimed at `(g, r)`; false if it repeats the last hint (nothing
    /// new to scan for).
    #[inline]
    pub(crate) fn push(&mut self, g: DomId, r: u32) -> bool {
        if self.hints.last() == Some(&(g, r)) {
            return false;
        }
        self.hints.push((g, r));
        true
    }

    /// Drops the newest hint if it is `(g, r)`: called by an unmap on this vCPU that left no
    /// slot of the entry held by the domain (checked under the entry lock), so pairs of map
    /// and unmap keep the log near empty and the scan has nothing old to examine.
    #[inline]
    pub(crate) fn pop_if_last(&mut self, g: DomId, r: u32) {
        if self.hints.last() == Some(&(g, r)) {
            self.hints.pop();
        }
    }

    /// Examines up to `n` hints at the cursor with `held`, dropping the stale ones. The newest
    /// hint (just pushed, its slot just claimed) is never examined and stays the newest, so an
    /// unmap of that mapping can still pop it.
    #[inline]
    pub(crate) fn scan(&mut self, n: usize, mut held: impl FnMut(DomId, u32) -> bool) {
        for _ in 0..n {
            let older = self.hints.len().saturating_sub(1);
            if older == 0 {
                return;
            }
            if self.cursor >= older {
                self.cursor = 0;
            }
            let (g, r) = self.hints[self.cursor];
            if held(g, r) {
                self.cursor += 1;
            } else {
                // Move the newest into the hole, then back to the end behind the hint that
                // was second newest.
                self.hints.swap_remove(self.cursor);
                let last = self.hints.len() - 1;
                self.hints.swap(self.cursor, last);
            }
        }
    }
}

/// State of one vCPU.
#[derive(Debug, Default)]
pub(crate) struct VcpuState {
    /// A context is running on this vCPU.
    pub(crate) running: AtomicBool,
    /// The vCPU is inside a hypercall (the domain's pause waits for this to clear).
    pub(crate) in_hypercall: AtomicBool,
    pub(crate) tlb: Tlb,
    pub(crate) counters: VcpuCounters,
    /// Only touched by the thread running the vCPU (a [`crate::VcpuCtx`] is exclusive), or by
    /// teardown after the domain is paused.
    pub(crate) hints: UnsafeCell<HintLog>,
}

// SAFETY: every field but `hints` is Sync by itself. `hints` is an unsynchronised cell whose
// discipline is: only the thread running the vCPU touches it (entering a vCPU is exclusive,
// `running` is claimed by compare-exchange, and the claim's Acquire orders the new thread after
// the previous one's Release on exit), or teardown, after the domain's pause has waited for the
// vCPU's `in_hypercall` to clear (Acquire, pairing with the hypercall's Release on exit) and
// every later hypercall of the vCPU fails before touching it.
unsafe impl Sync for VcpuState {}

/// A domain.
#[derive(Debug)]
pub struct Domain<D: Design> {
    id: DomId,
    name: Box<str>,
    kind: DomainKind,
    privileged: bool,
    pub(crate) state: AtomicU8,
    crashed: AtomicBool,
    /// Final destruction happened (removed from the registry, grant frames freed).
    pub(crate) finalized: AtomicBool,
    pub(crate) gt: GrantTable<D>,
    pub(crate) maptrack: Maptrack,
    pub(crate) vcpus: Box<[CachePadded<VcpuState>]>,
    pub(crate) p2m: P2m,
    pub(crate) aspace: AddressSpace,
    /// IOMMU state, present when grant maps must update the IOMMU (strict PV).
    pub(crate) iommu: Option<IommuCtx<D::Iommu>>,
    /// Live-map quota, present when the domain's maps are limited beyond its maptrack.
    pub(crate) quota: Option<MapQuota>,
}

impl<D: Design> Domain<D> {
    pub(crate) fn new(
        id: DomId,
        cfg: &DomainConfig,
        geom: (u32, u32),
        ram_frames: u64,
        flush_cost: std::time::Duration,
    ) -> Self {
        let (per_frame, maptrack_per_frame) = geom;
        // gnttab_need_iommu_mapping: PV domains in strict mode (a translated domain's IOMMU
        // follows its P2M, so grant maps need no extra work).
        let iommu = (cfg.iommu == IommuMode::Strict && cfg.kind == DomainKind::Pv)
            .then(|| IommuCtx::new(cfg.vcpus as usize, ram_frames, cfg.bus_frames, flush_cost));
        let limit = match cfg.map_limit {
            MapLimit::Off => None,
            MapLimit::Limit(n) => Some(n),
            // Inline slots escape the maptrack bound: restore Xen's handle capacity.
            MapLimit::Default => D::Slots::ENABLED
                .then(|| cfg.max_maptrack_frames.saturating_mul(maptrack_per_frame)),
        };
        let quota = limit.map(|n| MapQuota::new(n, cfg.vcpus as usize));
        Self {
            id,
            name: cfg.name.clone().into_boxed_str(),
            kind: cfg.kind,
            privileged: cfg.privileged,
            state: AtomicU8::new(DomainState::Alive as u8),
            crashed: AtomicBool::new(false),
            finalized: AtomicBool::new(false),
            gt: GrantTable::new(cfg.max_grant_frames, per_frame),
            maptrack: Maptrack::new(
                cfg.vcpus as usize,
                cfg.max_maptrack_frames,
                maptrack_per_frame,
            ),
            vcpus: (0..cfg.vcpus)
                .map(|_| CachePadded::new(VcpuState::default()))
                .collect(),
            p2m: P2m::new(cfg.memory_pages),
            aspace: AddressSpace::new(cfg.host_pages),
            iommu,
            quota,
        }
    }

    /// The domain id.
    #[inline]
    pub fn id(&self) -> DomId {
        self.id
    }
    /// The name (immutable, so lookups by name never need the domain's locks: seed 000).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Paging mode.
    pub fn kind(&self) -> DomainKind {
        self.kind
    }
    /// Whether the domain is translated (HVM/PVH).
    #[inline]
    pub fn translated(&self) -> bool {
        self.kind == DomainKind::Hvm
    }
    /// Whether grant maps of this domain update an IOMMU (strict-mode PV).
    #[inline]
    pub fn needs_iommu(&self) -> bool {
        self.iommu.is_some()
    }
    /// The live-map quota, if the domain has one.
    pub fn quota(&self) -> Option<&MapQuota> {
        self.quota.as_ref()
    }
    /// Whether the domain is a control domain.
    pub fn privileged(&self) -> bool {
        self.privileged
    }
    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> u16 {
        self.vcpus.len() as u16
    }
    /// Life-cycle state.
    #[inline]
    pub fn state(&self) -> DomainState {
        // Acquire: pairs with the state transitions' Release (kill, end of teardown).
        match self.state.load(Ordering::Acquire) {
            0 => DomainState::Alive,
            1 => DomainState::Dying,
            _ => DomainState::Dead,
        }
    }
    /// Whether the hypervisor crashed the domain (e.g. an unmap found its granter gone).
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::Acquire)
    }
    pub(crate) fn crash(&self) {
        self.crashed.store(true, Ordering::Release);
    }
    /// Current number of grant frames.
    pub fn nr_grant_frames(&self) -> u32 {
        self.gt.nr_frames()
    }
    /// `max_grant_frames`.
    pub fn max_grant_frames(&self) -> u32 {
        self.gt.max_frames()
    }
    /// Current number of maptrack handles (`maptrack_limit`).
    pub fn maptrack_limit(&self) -> u32 {
        self.maptrack.limit()
    }
    /// What the P2M says about `gfn`.
    pub fn p2m(&self, gfn: Gfn) -> P2mEntry {
        self.p2m.lookup(gfn)
    }
    /// Counters summed over vCPUs.
    pub fn stats(&self) -> DomainStats {
        let mut s = DomainStats::default();
        for v in self.vcpus.iter() {
            let c = &v.counters;
            s.maps += c.maps.load(Ordering::Relaxed);
            s.fast_maps += c.fast_maps.load(Ordering::Relaxed);
            s.slow_maps += c.slow_maps.load(Ordering::Relaxed);
            s.unmaps += c.unmaps.load(Ordering::Relaxed);
            s.tlb_flushes += v.tlb.flushes();
        }
        s.iotlb_flushes = self.iommu.as_ref().map_or(0, IommuCtx::flushes);
        s
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The scan drops exactly the stale hints among the older ones, never examines the newest,
    /// and keeps it last (so the matching unmap can pop it).
    #[test]
    fn hint_scan_keeps_newest_last() {
        let d = DomId(1);
        let mut h = HintLog::default();
        for r in 0..6 {
            assert!(h.push(d, r));
        }
        assert!(!h.push(d, 5), "a repeated hint is not appended");
        // Refs 1 and 3 are stale; asking about the newest (5) would be a bug.
        for _ in 0..10 {
            h.scan(HINT_SCAN, |_, r| {
                assert_ne!(r, 5, "the newest hint was examined");
                r != 1 && r != 3
            });
            assert_eq!(h.hints.last(), Some(&(d, 5)));
        }
        let mut left: Vec<u32> = h.hints.iter().map(|&(_, r)| r).collect();
        left.sort_unstable();
        assert_eq!(left, [0, 2, 4, 5]);
        h.pop_if_last(d, 4);
        assert_eq!(h.hints.len(), 4, "pops only the newest");
        h.pop_if_last(d, 5);
        assert_eq!(h.hints.len(), 3);
        // A log with only the newest hint has nothing older to examine.
        let mut one = HintLog::default();
        one.push(d, 9);
        one.scan(HINT_SCAN, |_, _| panic!("examined the only hint"));
    }
}
