//! The Fast design's inline maptrack slots.
//!
//! Each active entry carries two slots. A slot's `state` word:
//!
//! | value              | meaning                                        | written by                     |
//! |--------------------|------------------------------------------------|--------------------------------|
//! | 0                  | free                                           | unmap phase 1 / map undo       |
//! |                    |                                                | (entry lock held)              |
//! | `RESERVED` (bit 31)| claimed by a map still taking page references  | map, step 10 (entry lock held) |
//! | `GNTMAP_*` (< 2^16)| live mapping with these parts and mode         | map, step 13 (no lock; Release)|
//! |                    |                                                | unmap phase 1 (entry lock)     |
//!
//! `host_addr` and `bus` are written before the Release store that publishes the state, and
//! read under the entry lock after an Acquire load of it, exactly like Xen's maptrack entries
//! (flags written last, read first: spec 9.2 rule 7). Only the map that reserved a slot ever
//! moves it out of `RESERVED`, and only the entry-lock holder frees a live slot, so the two
//! transitions made without the lock never race with each other.
//!
//! The slot does not name its mapper: a slot is live only while the entry is pinned, and a
//! pinned entry belongs to exactly one grantee (`act.domid`).

use crate::abi::GntMap;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

const RESERVED: u32 = 1 << 31;

/// One inline maptrack slot.
#[derive(Debug, Default)]
pub struct FastSlot {
    state: AtomicU32,
    /// The domain that last reserved the slot (written under the entry lock at reservation).
    /// Read without the lock only as a hint (teardown hint-log compaction); every decision that
    /// matters re-checks `act.domid` under the lock.
    mapper: AtomicU32,
    host_addr: AtomicU64,
    bus: AtomicU64,
}

/// What a slot holds, read under the entry lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Free,
    Reserved,
    Live(GntMap),
}

impl FastSlot {
    /// Under the entry lock: the slot's state.
    #[inline]
    pub(crate) fn state(&self) -> SlotState {
        // Acquire: pairs with the Release in `publish`, so `host_addr` and `bus` are visible.
        match self.state.load(Ordering::Acquire) {
            0 => SlotState::Free,
            RESERVED => SlotState::Reserved,
            f => SlotState::Live(GntMap::from_bits_retain(f)),
        }
    }

    /// Under the entry lock: reserves the slot for `mapper` if free.
    #[inline]
    pub(crate) fn try_reserve(&self, mapper: crate::abi::DomId) -> bool {
        // Relaxed: free -> reserved happens only under the entry lock, which orders it.
        if self.state.load(Ordering::Relaxed) == 0 {
            self.mapper.store(u32::from(mapper.0), Ordering::Relaxed);
            self.state.store(RESERVED, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Without the entry lock: whether the slot looks held (reserved or live) by `mapper`. A
    /// hint only: it may be stale in either direction while the slot changes hands.
    #[inline]
    pub(crate) fn looks_held_by(&self, mapper: crate::abi::DomId) -> bool {
        // Relaxed: see the field docs; the answer is only used to keep or drop a hint.
        self.state.load(Ordering::Relaxed) != 0
            && self.mapper.load(Ordering::Relaxed) == u32::from(mapper.0)
    }

    /// Publishes the reserved slot as a live mapping (no lock needed: only the reserving map
    /// writes a reserved slot).
    #[inline]
    pub(crate) fn publish(&self, flags: GntMap, host_addr: u64, bus: u64) {
        debug_assert_eq!(self.state.load(Ordering::Relaxed), RESERVED);
        let f = flags.bits() & 0xFFFF;
        debug_assert!(f != 0 && f & RESERVED == 0);
        self.host_addr.store(host_addr, Ordering::Relaxed);
        self.bus.store(bus, Ordering::Relaxed);
        // Release: see the module docs.
        self.state.store(f, Ordering::Release);
    }

    /// Under the entry lock: replaces the live flags (a part was unmapped) or frees the slot
    /// (`flags` empty). Also frees a reserved slot on a map's undo path.
    #[inline]
    pub(crate) fn set_locked(&self, flags: GntMap) {
        // Relaxed: under the entry lock, which orders it against every other locked access;
        // the slot's address fields are not republished.
        self.state.store(flags.bits() & 0xFFFF, Ordering::Relaxed);
    }

    /// The host address recorded at map time (valid when live).
    #[inline]
    pub(crate) fn host_addr(&self) -> u64 {
        self.host_addr.load(Ordering::Relaxed)
    }

    /// The device address recorded at map time (valid when live).
    #[inline]
    pub(crate) fn bus(&self) -> u64 {
        self.bus.load(Ordering::Relaxed)
    }
}

/// Chooses which live slot an unmap means when a mapper holds both slots of an entry (both
/// share one fast handle). Each live slot is ranked by these tests, in order (the first test
/// that tells two slots apart decides; a full tie picks the lower slot):
///
/// 1. `host_addr != 0` and the slot has a host part recorded at exactly `host_addr` (a live
///    host address belongs to one mapping: a second map at it fails);
/// 2. `dev_bus_addr != 0` and the slot has a device part recorded at exactly `dev_bus_addr`
///    (unique with per-map bus frames; the machine address, shared by every device map of
///    the gref, without them);
/// 3. the slot has exactly the parts the op names (so the op frees it);
/// 4. the slot has every part the op names;
/// 5. the slot has some part the op names.
///
/// An op that names exactly one mapping's parts (with its host address) therefore picks that
/// mapping or one indistinguishable from it, so a mapper that unmaps each of its mappings
/// releases them all. (Rule 3 matters without per-map bus frames: a device-only map and a
/// host+device map of one gref carry the same device address, and an op naming only that
/// address must take the device-only one, or the host+device op later finds no device part
/// left and the device-only mapping leaks; found by `tests/teardown_stress.rs`.)
///
/// Returns the slot index and its flags, or `None` if no slot is live.
pub(crate) fn select_slot(
    slots: &[FastSlot],
    host_addr: u64,
    dev_bus_addr: u64,
) -> Option<(usize, GntMap)> {
    let live = |i: usize| match slots.get(i).map(FastSlot::state) {
        Some(SlotState::Live(f)) => Some((i, f)),
        _ => None,
    };
    match (live(0), live(1)) {
        (None, None) => None,
        // The common case: one live slot, nothing to rank.
        (Some(x), None) | (None, Some(x)) => Some(x),
        (Some(a), Some(b)) => {
            let rank = |(i, f): (usize, GntMap)| {
                let s = &slots[i];
                slot_rank(f, s.host_addr(), s.bus(), host_addr, dev_bus_addr)
            };
            // A tie keeps slot 0.
            Some(if rank(b) > rank(a) { b } else { a })
        }
    }
}

/// The tests of [`select_slot`] in order (compared lexicographically).
type SlotRank = (bool, bool, bool, bool, bool);

/// The ranking tuple of [`select_slot`] for a live slot with flags `f` recorded at
/// (`host`, `bus`), for an op naming (`host_addr`, `dev_bus_addr`): larger is better.
#[inline]
fn slot_rank(f: GntMap, host: u64, bus: u64, host_addr: u64, dev_bus_addr: u64) -> SlotRank {
    let has_host = f.contains(GntMap::HOST_MAP);
    let has_dev = f.contains(GntMap::DEVICE_MAP);
    let (want_host, want_dev) = (host_addr != 0, dev_bus_addr != 0);
    let covers = (!want_host || has_host) && (!want_dev || has_dev);
    (
        want_host && has_host && host == host_addr,
        want_dev && has_dev && bus == dev_bus_addr,
        covers && has_host == want_host && has_dev == want_dev,
        covers,
        (want_host && has_host) || (want_dev && has_dev),
    )
}
