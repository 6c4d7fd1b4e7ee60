//! Read-only views of hypervisor state for tests, the reference model and reports.
//!
//! [`Hypervisor::snapshot`] captures everything an operation may change (shared and active
//! entries, mapping records, free lists, host page tables, TLBs, frame accounting) as plain
//! comparable values, so a test can assert that a failed operation "changed nothing" by
//! comparing snapshots taken before and after. Take snapshots at quiescence.

use crate::abi::{DomId, GntMap, GrantRef, Mfn};
use crate::design::Design;
use crate::grant::{pin, EntrySnapshot};
use crate::hypervisor::Hypervisor;
use crate::machine::Pte;
use crate::maptrack::{SlotPolicy, SlotState};
use crate::sync::Ordering;
use std::collections::BTreeMap;

/// The hypervisor's view of one grant entry in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActiveInfo {
    /// The raw pin word.
    pub pin: u32,
    /// The grantee using the entry (meaningful while `pin != 0`).
    pub domid: DomId,
    /// The frame captured when the pin went non-zero.
    pub mfn: Mfn,
}

impl ActiveInfo {
    /// `(hstw, hstr, devw, devr)`.
    pub fn counters(&self) -> [u32; 4] {
        pin::counters(self.pin)
    }
}

/// A fast slot's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotInfo {
    /// Free.
    Free,
    /// Claimed by a map in progress.
    Reserved,
    /// A live mapping.
    Live {
        /// `GNTMAP_*` bits of the mapping.
        flags: GntMap,
        /// Host address recorded at map time.
        host_addr: u64,
        /// Device address recorded at map time.
        bus: u64,
    },
}

/// One grant entry, shared and active halves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryInfo {
    /// Guest-visible half.
    pub shared: EntrySnapshot,
    /// Hypervisor half.
    pub active: ActiveInfo,
    /// Inline slots (empty for designs without them).
    pub slots: Vec<SlotInfo>,
}

/// A live maptrack record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaptrackInfo {
    /// `GNTMAP_*` bits.
    pub flags: GntMap,
    /// Granter.
    pub domid: DomId,
    /// Grant ref.
    pub gref: GrantRef,
    /// Owning vCPU (its free list gets the handle back).
    pub vcpu: u32,
}

/// Everything about one domain that grant operations change.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DomainSnapshot {
    /// Grant frames.
    pub nr_grant_frames: u32,
    /// Entries that are not all-zero (shared word or active state).
    pub entries: BTreeMap<u32, EntryInfo>,
    /// `maptrack_limit`.
    pub maptrack_limit: u32,
    /// Live maptrack records by handle index.
    pub maptrack: BTreeMap<u32, MaptrackInfo>,
    /// Free lists: `(head, tail, chain)` per vCPU.
    pub free_lists: Vec<(u32, u32, Vec<u32>)>,
    /// Non-zero host page-table entries by slot.
    pub ptes: BTreeMap<u64, Pte>,
    /// Unflushed stale translations per vCPU.
    pub stale: Vec<usize>,
    /// Crashed by the hypervisor.
    pub crashed: bool,
}

/// Accounting of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameInfo {
    /// Owner, if allocated.
    pub owner: Option<DomId>,
    /// Page references.
    pub refcount: u32,
    /// Writable type references.
    pub writable_types: u32,
}

/// A comparable picture of the whole hypervisor.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StateSnapshot {
    /// Per domain.
    pub domains: BTreeMap<DomId, DomainSnapshot>,
    /// Per created frame.
    pub frames: Vec<FrameInfo>,
}

impl<D: Design> Hypervisor<D> {
    /// The active entry `gref` of domain `dom` (None if either does not exist).
    pub fn active_entry(&self, dom: DomId, gref: GrantRef) -> Option<ActiveInfo> {
        let d = self.domain(dom)?;
        let e = d.gt.entry(gref)?;
        let a = *e.active.lock();
        Some(ActiveInfo {
            pin: a.pin,
            domid: a.domid,
            mfn: a.mfn,
        })
    }

    /// Accounting of frame `mfn`.
    pub fn frame_info(&self, mfn: Mfn) -> Option<FrameInfo> {
        let f = self.machine.frame(mfn)?;
        Some(FrameInfo {
            owner: f.owner(),
            refcount: f.refcount(),
            writable_types: f.writable_type_count(),
        })
    }

    /// A snapshot of everything grant operations change (take it at quiescence).
    pub fn snapshot(&self) -> StateSnapshot {
        let mut s = StateSnapshot::default();
        for id in self.domain_ids() {
            let Some(d) = self.domain(id) else { continue };
            let mut ds = DomainSnapshot {
                nr_grant_frames: d.gt.nr_frames(),
                maptrack_limit: d.maptrack.limit(),
                crashed: d.crashed(),
                ..DomainSnapshot::default()
            };
            for i in 0..d.gt.nr_entries() {
                let e = d.gt.entry(GrantRef(i)).expect("below nr_entries");
                let a = *e.active.lock();
                let shared = e.shared.snapshot();
                let slots: Vec<SlotInfo> = D::Slots::slots(&e.active.ext)
                    .iter()
                    .map(|s| match s.state() {
                        SlotState::Free => SlotInfo::Free,
                        SlotState::Reserved => SlotInfo::Reserved,
                        SlotState::Live(flags) => SlotInfo::Live {
                            flags,
                            host_addr: s.host_addr(),
                            bus: s.bus(),
                        },
                    })
                    .collect();
                let trivial = shared == EntrySnapshot::default()
                    && a.pin == 0
                    && slots.iter().all(|s| *s == SlotInfo::Free);
                if !trivial {
                    ds.entries.insert(
                        i,
                        EntryInfo {
                            shared,
                            active: ActiveInfo {
                                pin: a.pin,
                                domid: a.domid,
                                mfn: a.mfn,
                            },
                            slots,
                        },
                    );
                }
            }
            for h in 0..d.maptrack.limit() {
                let e = d.maptrack.entry(h).expect("below limit");
                let flags = e.flags.load(Ordering::Acquire);
                if flags != 0 {
                    ds.maptrack.insert(
                        h,
                        MaptrackInfo {
                            flags: GntMap::from_bits_retain(flags),
                            domid: DomId(e.domid.load(Ordering::Relaxed) as u16),
                            gref: GrantRef(e.gref.load(Ordering::Relaxed)),
                            vcpu: e.vcpu.load(Ordering::Relaxed),
                        },
                    );
                }
            }
            ds.free_lists = d
                .maptrack
                .lists_snapshot()
                .into_iter()
                .map(|(l, chain)| (l.head, l.tail, chain))
                .collect();
            d.aspace.for_each(|slot, p| {
                ds.ptes.insert(slot, p);
            });
            ds.stale = d.vcpus.iter().map(|v| v.tlb.stale_len()).collect();
            s.domains.insert(id, ds);
        }
        s.frames = (0..self.machine.created_frames())
            .map(|m| self.frame_info(Mfn(m)).expect("created frame"))
            .collect();
        s
    }
}
