//! Shared (guest-visible) v1 grant entries and the two sides of the status-bit protocol.
//!
//! A v1 entry is `{ flags: u16, domid: u16, frame: u32 }`. Xen treats `flags` and `domid` as
//! one 32-bit word so it can compare-and-swap both together; this model stores exactly that:
//!
//! | word    | bits   | writer                       | meaning                                 |
//! |---------|--------|------------------------------|-----------------------------------------|
//! | `combo` | 0..15  | guest; hypervisor sets and   | `GTF_*` flags                           |
//! |         |        | clears `GTF_reading/writing` |                                         |
//! |         | 16..31 | guest                        | domid of the grantee                    |
//! | `frame` | 0..31  | guest                        | gfn being granted                       |
//!
//! The entry is guest memory: a misbehaving guest may rewrite either word at any moment. The
//! hypervisor side touches it only with the bounded compare-exchange of [`set_status`] (5
//! attempts, XSA-295) and the atomic AND-NOT of [`clear_status`]; it trusts nothing it read
//! before taking its locks.
//!
//! Guest side ([`SharedEntry::guest_grant`], [`SharedEntry::guest_end_access`]) follows Linux's
//! v1 protocol: write domid and frame, barrier (Release), then flags; end access with the
//! compare-exchange loop that fails while `GTF_reading` or `GTF_writing` is set.
//!
//! [`set_status`]: SharedEntry::set_status
//! [`clear_status`]: SharedEntry::clear_status

use crate::abi::{gtf, DomId, GntSt, GNTTAB_CMPXCHG_ATTEMPTS};
use crate::sync::{AtomicU32, Ordering};

/// One v1 shared entry.
#[derive(Debug, Default)]
pub(crate) struct SharedEntry {
    combo: AtomicU32,
    frame: AtomicU32,
}

#[inline]
const fn combo(flags: u16, domid: DomId) -> u32 {
    flags as u32 | (domid.0 as u32) << 16
}

/// A snapshot of a shared entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EntrySnapshot {
    /// `GTF_*` flags.
    pub flags: u16,
    /// Grantee.
    pub domid: DomId,
    /// Granted gfn.
    pub frame: u32,
}

impl SharedEntry {
    /// `_set_status_v1` (spec 3.1): sets `GTF_reading` (and `GTF_writing` for a writable use).
    /// `pinned` says whether the active entry already has pins (then type and domid are not
    /// re-checked); `mapflag` additionally refuses sub-page entries.
    #[inline]
    pub(crate) fn set_status(
        &self,
        pinned: bool,
        readonly: bool,
        mapflag: bool,
        ldomid: DomId,
    ) -> Result<(), GntSt> {
        let mask = gtf::TYPE_MASK | if mapflag { gtf::SUB_PAGE } else { 0 };
        // Relaxed: only a guess for the first compare-exchange; the CAS validates it.
        let mut cur = self.combo.load(Ordering::Relaxed);
        for _ in 0..GNTTAB_CMPXCHG_ATTEMPTS {
            let flags = cur as u16;
            let domid = DomId((cur >> 16) as u16);
            if !pinned && ((flags & mask) != gtf::PERMIT_ACCESS || domid != ldomid) {
                return Err(GntSt::GeneralError);
            }
            let mut new = flags | gtf::READING;
            if !readonly {
                new |= gtf::WRITING;
                if flags & gtf::READONLY != 0 {
                    return Err(GntSt::GeneralError);
                }
            }
            // AcqRel on success: Acquire pairs with the guest's Release store of the flags
            // (so the frame it wrote before is visible to the `frame()` load that follows);
            // Release orders nothing in particular but keeps the status change a clean
            // publication point. Acquire on failure: the observed value is the next snapshot.
            match self.combo.compare_exchange(
                cur,
                combo(new, domid),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
        // The guest kept changing the word: "unstable", give up (XSA-295).
        Err(GntSt::GeneralError)
    }

    /// `gnttab_clear_flags`: atomic AND-NOT of `bits` on the flags half of the word.
    #[inline]
    pub(crate) fn clear_status(&self, bits: u16) {
        // Release: everything the hypervisor did with the grant (the flushed unmap, the copy)
        // happens-before a guest that sees the bits clear (its end-access CAS is Acquire).
        self.combo.fetch_and(!(bits as u32), Ordering::Release);
    }

    /// The granted frame, read after a successful `set_status` (which ordered it).
    #[inline]
    pub(crate) fn frame(&self) -> u32 {
        // Relaxed: ordered by the Acquire of the preceding `set_status` compare-exchange.
        self.frame.load(Ordering::Relaxed)
    }

    /// A snapshot (for guests, checks and reports).
    pub(crate) fn snapshot(&self) -> EntrySnapshot {
        let c = self.combo.load(Ordering::Acquire);
        EntrySnapshot {
            flags: c as u16,
            domid: DomId((c >> 16) as u16),
            frame: self.frame.load(Ordering::Relaxed),
        }
    }

    /// Guest: grant `gfn` to `domid` (Linux `gnttab_update_entry_v1`): frame, domid, barrier,
    /// flags.
    pub(crate) fn guest_grant(&self, domid: DomId, gfn: u32, readonly: bool) {
        self.frame.store(gfn, Ordering::Relaxed);
        self.combo.store(combo(0, domid), Ordering::Relaxed);
        let flags = gtf::PERMIT_ACCESS | if readonly { gtf::READONLY } else { 0 };
        // Release: the write barrier before the flags (the frame and domid happen-before any
        // hypervisor compare-exchange that reads these flags).
        self.combo.store(combo(flags, domid), Ordering::Release);
    }

    /// Guest: end foreign access (Linux `gnttab_end_foreign_access_ref_v1`). Fails while the
    /// hypervisor has the grant in use. On success the entry is invalid and no mapping or copy
    /// of it exists or can be created from its old contents.
    pub(crate) fn guest_end_access(&self) -> bool {
        // Acquire: see `clear_status`.
        let mut cur = self.combo.load(Ordering::Acquire);
        loop {
            let flags = cur as u16;
            if flags & (gtf::READING | gtf::WRITING) != 0 {
                return false;
            }
            // AcqRel: Acquire pairs with the hypervisor's Release AND-NOT, so every use of the
            // page is finished before the guest reuses it.
            match self.combo.compare_exchange(
                cur,
                cur & 0xFFFF_0000,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Guest (misbehaving or not): store raw values.
    pub(crate) fn guest_write_raw(&self, flags: u16, domid: DomId, frame: u32) {
        self.frame.store(frame, Ordering::Relaxed);
        self.combo.store(combo(flags, domid), Ordering::Release);
    }

    /// Guest: overwrite only the flags half, keeping the domid (e.g. flip `GTF_readonly`).
    pub(crate) fn guest_write_flags(&self, flags: u16) {
        let _ = self
            .combo
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some((c & 0xFFFF_0000) | flags as u32)
            });
    }

    /// Guest: overwrite only the frame.
    pub(crate) fn guest_write_frame(&self, frame: u32) {
        self.frame.store(frame, Ordering::Release);
    }
}
