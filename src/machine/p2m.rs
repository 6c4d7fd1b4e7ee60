//! A domain's physical-to-machine map: one atomic word per guest frame.
//!
//! | bits  | meaning                                   |
//! |-------|-------------------------------------------|
//! | 63    | present                                   |
//! | 62    | paged out (a lookup must say "try again") |
//! | 0..51 | machine frame number (when present)       |
//!
//! A word of 0 is an absent entry. Lookups are one `Acquire` load; updates (populate, page
//! out, page in) are rare and made by the toolstack or the guest, never by grant operations.

use crate::abi::{Gfn, Mfn};
use crate::sync::{AtomicU64, Ordering};

const PRESENT: u64 = 1 << 63;
const PAGED_OUT: u64 = 1 << 62;
const MFN_MASK: u64 = (1 << 52) - 1;

/// What the P2M says about a guest frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2mEntry {
    /// No frame behind this gfn.
    Absent,
    /// The frame is paged out; a grant lookup returns `GNTST_eagain`.
    PagedOut(Mfn),
    /// Backed by this machine frame.
    Present(Mfn),
}

impl P2mEntry {
    fn encode(self) -> u64 {
        match self {
            P2mEntry::Absent => 0,
            P2mEntry::PagedOut(m) => PAGED_OUT | (m.0 & MFN_MASK),
            P2mEntry::Present(m) => PRESENT | (m.0 & MFN_MASK),
        }
    }

    fn decode(w: u64) -> Self {
        if w & PRESENT != 0 {
            P2mEntry::Present(Mfn(w & MFN_MASK))
        } else if w & PAGED_OUT != 0 {
            P2mEntry::PagedOut(Mfn(w & MFN_MASK))
        } else {
            P2mEntry::Absent
        }
    }
}

/// A P2M of fixed size.
#[derive(Debug)]
pub(crate) struct P2m {
    entries: Box<[AtomicU64]>,
}

impl P2m {
    pub(crate) fn new(pages: u64) -> Self {
        Self {
            entries: (0..pages).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Number of gfns the P2M covers.
    pub(crate) fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    #[inline]
    pub(crate) fn lookup(&self, gfn: Gfn) -> P2mEntry {
        match self.entries.get(gfn.0 as usize) {
            // Acquire: pairs with the Release store in `set`, so a present entry's frame is
            // seen with its owner assignment.
            Some(e) => P2mEntry::decode(e.load(Ordering::Acquire)),
            None => P2mEntry::Absent,
        }
    }

    /// Replaces the entry, returning the old one (`None` if gfn is out of range).
    pub(crate) fn set(&self, gfn: Gfn, e: P2mEntry) -> Option<P2mEntry> {
        let slot = self.entries.get(gfn.0 as usize)?;
        // AcqRel: publishes the new entry (Release) and reads the old one consistently.
        Some(P2mEntry::decode(slot.swap(e.encode(), Ordering::AcqRel)))
    }
}
