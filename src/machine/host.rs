//! Host mappings (a mapper's page-table entries for grant mappings) and the TLB model.
//!
//! Each domain has one address space of page-table entries, allocated lazily in tables of 512
//! entries like x86 L1 tables. A PV domain's `host_addr` is a linear address (slot =
//! `addr >> 12`); with `GNTMAP_contains_pte` it is the machine address of the PTE itself
//! (slot = `addr / 8`, which must be 8-byte aligned: XSA-227). A translated (HVM) domain's
//! `host_addr` is a guest-physical address whose grant entry lives in the same structure.
//!
//! PTE word:
//!
//! | bits   | meaning                                  |
//! |--------|------------------------------------------|
//! | 0      | present                                  |
//! | 1      | writable                                 |
//! | 2      | user (PV `GNTMAP_application_map`)       |
//! | 9      | grant mapping (`_PAGE_GNTTAB`-like)      |
//! | 12..63 | machine frame number                     |
//!
//! Entries change only by compare-exchange, as hardware page tables are updated. Removing an
//! entry leaves the old translation in the removing vCPU's [`Tlb`] stale list, where it stays
//! usable until that vCPU flushes; unmap drops pins and page references only after the flush
//! (spec 7.3), so a stale translation never reaches a page that could have been reused.

use crate::abi::{Mfn, PAGE_SHIFT};
use crate::sync::{AtomicU64, Mutex, OnceBox, Ordering};

/// Entries per page-table page (x86: 512; loom builds use 8 so models stay small).
#[cfg(not(loom))]
const L1_ENTRIES: usize = 512;
#[cfg(loom)]
const L1_ENTRIES: usize = 8;

/// A page-table entry value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pte(pub u64);

impl Pte {
    /// Present bit.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable bit.
    pub const RW: u64 = 1 << 1;
    /// User bit.
    pub const USER: u64 = 1 << 2;
    /// Grant-mapping bit.
    pub const GRANT: u64 = 1 << 9;

    /// A present grant PTE.
    pub const fn grant(mfn: Mfn, writable: bool, user: bool) -> Self {
        Pte(mfn.0 << PAGE_SHIFT
            | Self::PRESENT
            | Self::GRANT
            | if writable { Self::RW } else { 0 }
            | if user { Self::USER } else { 0 })
    }
    /// A present IOMMU entry (same layout, no grant bit).
    pub const fn io(mfn: Mfn, writable: bool) -> Self {
        Pte(mfn.0 << PAGE_SHIFT | Self::PRESENT | if writable { Self::RW } else { 0 })
    }
    /// Whether the entry is present.
    pub const fn present(self) -> bool {
        self.0 & Self::PRESENT != 0
    }
    /// Whether the entry is writable.
    pub const fn writable(self) -> bool {
        self.0 & Self::RW != 0
    }
    /// Whether the entry was made by a grant map.
    pub const fn is_grant(self) -> bool {
        self.0 & Self::GRANT != 0
    }
    /// The frame the entry points at.
    pub const fn mfn(self) -> Mfn {
        Mfn(self.0 >> PAGE_SHIFT)
    }
}

impl core::fmt::Debug for Pte {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if !self.present() {
            return write!(f, "pte:none({:#x})", self.0);
        }
        write!(
            f,
            "pte:{:?}{}{}",
            self.mfn(),
            if self.writable() { ":rw" } else { ":ro" },
            if self.is_grant() { ":grant" } else { "" }
        )
    }
}

/// How a `host_addr` names an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAddr {
    /// A linear (PV) or guest-physical (HVM) address; the page offset is ignored.
    Linear(u64),
    /// The machine address of the PTE (`GNTMAP_contains_pte`); must be 8-byte aligned.
    Pte(u64),
}

/// Why an access through a host mapping failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessFault {
    /// No translation (live or stale) for the address.
    NotMapped,
    /// Write through a read-only translation.
    ReadOnly,
    /// The access crosses the page.
    OutOfPage,
    /// The translation reached a frame that is no longer allocated: a use-after-free the
    /// hypervisor should have prevented. Tests assert this never happens.
    FreedFrame,
}

#[derive(Debug)]
struct L1 {
    ptes: [AtomicU64; L1_ENTRIES],
}

/// A domain's table of host PTEs.
#[derive(Debug)]
pub(crate) struct AddressSpace {
    l1: Box<[OnceBox<L1>]>,
}

impl AddressSpace {
    /// An address space of `slots` entries (rounded up to whole tables).
    pub(crate) fn new(slots: u64) -> Self {
        let tables = (slots as usize).div_ceil(L1_ENTRIES).max(1);
        Self {
            l1: (0..tables).map(|_| OnceBox::new()).collect(),
        }
    }

    /// Number of slots.
    pub(crate) fn slots(&self) -> u64 {
        (self.l1.len() * L1_ENTRIES) as u64
    }

    /// The slot an address names, if valid.
    pub(crate) fn slot_of(&self, a: HostAddr) -> Option<u64> {
        let s = match a {
            HostAddr::Linear(addr) => addr >> PAGE_SHIFT,
            HostAddr::Pte(addr) => {
                if addr % 8 != 0 {
                    return None;
                }
                addr / 8
            }
        };
        (s < self.slots()).then_some(s)
    }

    fn entry(&self, slot: u64) -> &AtomicU64 {
        let t = self.l1[slot as usize / L1_ENTRIES].get_or_init(|| {
            Box::new(L1 {
                ptes: core::array::from_fn(|_| AtomicU64::new(0)),
            })
        });
        &t.ptes[slot as usize % L1_ENTRIES]
    }

    /// The current entry at `slot` (no allocation for untouched tables).
    pub(crate) fn get(&self, slot: u64) -> Pte {
        match self
            .l1
            .get(slot as usize / L1_ENTRIES)
            .and_then(OnceBox::get)
        {
            // Acquire: pairs with the compare-exchange that installed the entry.
            Some(t) => Pte(t.ptes[slot as usize % L1_ENTRIES].load(Ordering::Acquire)),
            None => Pte(0),
        }
    }

    /// Installs `pte` at an empty slot. Fails if the slot holds anything (the simulator
    /// refuses to overwrite a live entry rather than modelling PV PTE replacement).
    pub(crate) fn install(&self, slot: u64, pte: Pte) -> bool {
        // AcqRel: publishes the mapping; pairs with the Acquire loads of readers.
        self.entry(slot)
            .compare_exchange(0, pte.0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Removes the entry at `slot` if it is exactly `expect`.
    pub(crate) fn remove(&self, slot: u64, expect: Pte) -> bool {
        self.entry(slot)
            .compare_exchange(expect.0, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Writes an arbitrary entry (a guest updating its own page tables by a non-grant path).
    pub(crate) fn set_raw(&self, slot: u64, pte: Pte) -> Pte {
        Pte(self.entry(slot).swap(pte.0, Ordering::AcqRel))
    }

    /// Calls `f(slot, pte)` for every non-zero entry (quiescent walks).
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, Pte)) {
        for (t, l1) in self.l1.iter().enumerate() {
            if let Some(l1) = l1.get() {
                for (i, e) in l1.ptes.iter().enumerate() {
                    let v = e.load(Ordering::Acquire);
                    if v != 0 {
                        f((t * L1_ENTRIES + i) as u64, Pte(v));
                    }
                }
            }
        }
    }
}

/// One vCPU's TLB, modelled as the translations it removed and has not flushed yet.
#[derive(Debug, Default)]
pub(crate) struct Tlb {
    stale: Mutex<Vec<(u64, Pte)>>,
    flushes: AtomicU64,
}

impl Tlb {
    /// Records that the translation `slot -> pte` was removed but may still be cached.
    pub(crate) fn retain_stale(&self, slot: u64, pte: Pte) {
        self.stale.lock().push((slot, pte));
    }

    /// Flushes: every stale translation of this vCPU becomes unreachable.
    pub(crate) fn flush(&self) {
        let mut s = self.stale.lock();
        s.clear();
        // Relaxed load + store under the stale-list lock (flushes of one TLB are serialised by
        // it): a statistic, no read-modify-write needed.
        self.flushes
            .store(self.flushes.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// The most recent stale translation of `slot`, if any.
    pub(crate) fn lookup(&self, slot: u64) -> Option<Pte> {
        self.stale
            .lock()
            .iter()
            .rev()
            .find(|(s, _)| *s == slot)
            .map(|&(_, p)| p)
    }

    /// Number of stale translations.
    pub(crate) fn stale_len(&self) -> usize {
        self.stale.lock().len()
    }

    /// Flushes done so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}
