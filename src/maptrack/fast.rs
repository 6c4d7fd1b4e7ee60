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
/// share one fast handle). Rule, in order:
///
/// 1. only one slot is live: that one;
/// 2. `host_addr != 0` and a live slot has a host part recorded at exactly `host_addr`;
/// 3. `dev_bus_addr != 0` and a live slot has a device part recorded at exactly `dev_bus_addr`;
/// 4. `host_addr != 0` and a live slot has a host part (Xen does not bind a host part to its
///    map-time address: any address mapping the frame with the right permissions is accepted);
/// 5. `dev_bus_addr != 0` and a live slot has a device part;
/// 6. the first live slot (the op names no part it has: a no-op either way).
///
/// Returns the slot index and its flags, or `None` if no slot is live.
pub(crate) fn select_slot(
    slots: &[FastSlot],
    host_addr: u64,
    dev_bus_addr: u64,
) -> Option<(usize, GntMap)> {
    let mut live = [None; 2];
    let mut n = 0;
    for (i, s) in slots.iter().enumerate().take(2) {
        if let SlotState::Live(f) = s.state() {
            live[n] = Some((i, f));
            n += 1;
        }
    }
    let live = &live[..n];
    let first = *live.first()?;
    if n == 1 {
        return first;
    }
    let by = |pred: &dyn Fn(usize, GntMap) -> bool| {
        live.iter().flatten().copied().find(|&(i, f)| pred(i, f))
    };
    let host = |f: GntMap| f.contains(GntMap::HOST_MAP);
    let dev = |f: GntMap| f.contains(GntMap::DEVICE_MAP);
    if host_addr != 0 {
        if let Some(x) = by(&|i, f| host(f) && slots[i].host_addr() == host_addr) {
            return Some(x);
        }
    }
    if dev_bus_addr != 0 {
        if let Some(x) = by(&|i, f| dev(f) && slots[i].bus() == dev_bus_addr) {
            return Some(x);
        }
    }
    if host_addr != 0 {
        if let Some(x) = by(&|_, f| host(f)) {
            return Some(x);
        }
    }
    if dev_bus_addr != 0 {
        if let Some(x) = by(&|_, f| dev(f)) {
            return Some(x);
        }
    }
    first
}
