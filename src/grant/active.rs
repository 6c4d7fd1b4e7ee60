//! Active entries: the hypervisor's trusted shadow of a shared entry while it is in use.
//!
//! The pin word holds four 8-bit use counters (spec 1.3):
//!
//! | bits   | counter                     | increment          |
//! |--------|-----------------------------|--------------------|
//! | 0..7   | host writable (`hstw`)      | [`pin::HSTW_INC`]  |
//! | 8..15  | host read-only (`hstr`)     | [`pin::HSTR_INC`]  |
//! | 16..23 | device writable (`devw`)    | [`pin::DEVW_INC`]  |
//! | 24..31 | device read-only (`devr`)   | [`pin::DEVR_INC`]  |
//!
//! An increment is refused when the counter about to grow already has bit 7 set, so a counter
//! never exceeds 128 (Xen `8cec5d065c`). `domid` and `mfn` are written only when the pin goes
//! from 0 to non-zero; while pinned, later users must be `domid` and use `mfn` (the shared
//! entry is not re-read). All fields are protected by the entry's lock, which is taken only
//! inside the table's read-side section (spec 9.2 rule 1).

use crate::abi::{DomId, GntMap, Mfn};
use crate::sync::{Mutex, MutexGuard};

/// Pin-word constants and rules.
pub mod pin {
    use crate::abi::GntMap;

    /// Host writable increment.
    pub const HSTW_INC: u32 = 0x1;
    /// Host read-only increment.
    pub const HSTR_INC: u32 = 0x100;
    /// Device writable increment.
    pub const DEVW_INC: u32 = 0x1_0000;
    /// Device read-only increment.
    pub const DEVR_INC: u32 = 0x100_0000;
    /// Writable counters (`hstw | devw`).
    pub const WRITABLE_MASK: u32 = 0x00FF_00FF;

    /// The increment a map with `flags` applies (0 if it asks for neither part).
    #[inline]
    pub const fn incr_for(flags: GntMap) -> u32 {
        let ro = flags.contains(GntMap::READONLY);
        let mut inc = 0;
        if flags.contains(GntMap::DEVICE_MAP) {
            inc += if ro { DEVR_INC } else { DEVW_INC };
        }
        if flags.contains(GntMap::HOST_MAP) {
            inc += if ro { HSTR_INC } else { HSTW_INC };
        }
        inc
    }

    /// Xen's overflow rule: refuse if a counter about to be incremented has bit 7 set.
    #[inline]
    pub const fn would_overflow(pin: u32, incr: u32) -> bool {
        pin & (incr << 7) != 0
    }

    /// Whether any writable use exists.
    #[inline]
    pub const fn has_writable(pin: u32) -> bool {
        pin & WRITABLE_MASK != 0
    }

    /// The four counters `(hstw, hstr, devw, devr)`.
    pub const fn counters(pin: u32) -> [u32; 4] {
        [pin & 0xFF, (pin >> 8) & 0xFF, (pin >> 16) & 0xFF, pin >> 24]
    }
}

/// Lock-protected state of an active entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActiveData {
    pub(crate) pin: u32,
    pub(crate) domid: DomId,
    pub(crate) mfn: Mfn,
}

impl Default for ActiveData {
    fn default() -> Self {
        Self {
            pin: 0,
            domid: DomId::INVALID,
            mfn: Mfn(u64::MAX),
        }
    }
}

impl ActiveData {
    /// The bits `reduce_status_for_pin` must clear after a use of kind `readonly` was
    /// dropped (spec 3.2).
    #[inline]
    pub(crate) fn status_to_clear(&self, readonly: bool) -> u16 {
        let mut clear = 0;
        if self.pin == 0 {
            clear |= crate::abi::gtf::READING;
        }
        if !readonly && !pin::has_writable(self.pin) {
            clear |= crate::abi::gtf::WRITING;
        }
        clear
    }

    /// Removes the uses `parts` (a `GNTMAP_*` set holding host and/or device bits and the
    /// readonly bit) from the pin.
    #[inline]
    pub(crate) fn unpin(&mut self, parts: GntMap) {
        let dec = pin::incr_for(parts);
        debug_assert!(
            pin::counters(self.pin)
                .iter()
                .zip(pin::counters(dec))
                .all(|(have, take)| *have >= take),
            "pin underflow: pin {:#x} dec {:#x}",
            self.pin,
            dec
        );
        self.pin -= dec;
    }
}

/// An active entry with the maptrack strategy's extension `E` (the Fast design's inline slots,
/// or nothing).
#[derive(Debug, Default)]
pub(crate) struct ActiveEntry<E> {
    data: Mutex<ActiveData>,
    pub(crate) ext: E,
}

impl<E> ActiveEntry<E> {
    /// Takes the entry lock. Caller must be inside the table's read-side section.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, ActiveData> {
        self.data.lock()
    }
}
