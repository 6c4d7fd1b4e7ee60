//! The "floor": the atomic read-modify-writes one Fast map+unmap pair performs, in program
//! order, on the same kind of memory layout, with none of the logic around them.
//!
//! Traced from `src/ops/map.rs`, `src/ops/unmap.rs` and the helpers they call, for a PV mapper
//! mapping a PV granter's ref with `GNTMAP_host_map` (writable), one op per hypercall, no
//! hooks, the entry unpinned before the map (docs/benchmarks.md lists the same table):
//!
//! | #  | where                                   | operation                          | ordering      |
//! |----|-----------------------------------------|------------------------------------|---------------|
//! |    | **map hypercall**                       |                                    |               |
//! | F1 | `VcpuCtx::enter_hypercall`              | `in_hypercall` store, then a fence | SeqCst fence  |
//! | 1  | `reclaim::pin` (crossbeam-epoch, x86)   | local epoch `lock cmpxchg`         | SeqCst        |
//! | 2  | `pin_entry`: `active.lock()`            | parking_lot lock: CAS              | Acquire       |
//! | 3  | `SharedEntry::set_status`               | flags word CAS (+reading/writing)  | AcqRel        |
//! | 4  | `get_paged_frame` -> `Frame::try_get`   | page count CAS (+1)                | Acquire       |
//! | 5  | end of `pin_entry`: unlock              | parking_lot unlock: `fetch_sub`    | Release       |
//! | 6  | `MapQuota::take` (own vCPU cache word)  | quota CAS (-1)                     | Acquire       |
//! | 7  | `take_refs` -> `get_writable_type`      | type count CAS (+1)                | AcqRel        |
//! | 8  | `create_host_mapping` -> `install`      | PTE CAS (0 -> pte)                 | AcqRel        |
//! |    | guard drops                             | epoch store, `in_hypercall` store  | Release       |
//! |    | **unmap hypercall**                     |                                    |               |
//! | F2 | `VcpuCtx::enter_hypercall`              | `in_hypercall` store, then a fence | SeqCst fence  |
//! | 9  | `reclaim::pin`                          | local epoch `lock cmpxchg`         | SeqCst        |
//! | 10 | `phase1_fast`: `active.lock()`          | lock CAS                           | Acquire       |
//! | 11 | `remove_host_mapping` -> `remove`       | PTE CAS (pte -> 0)                 | AcqRel        |
//! | 12 | `Tlb::retain_stale`: stale-list mutex   | lock CAS                           | Acquire       |
//! | 13 | (push, then) unlock                     | unlock `fetch_sub`                 | Release       |
//! | 14 | end of phase 1: entry unlock            | unlock `fetch_sub`                 | Release       |
//! | 15 | `finish` -> `MapQuota::put`             | quota CAS (+1)                     | Release       |
//! | 16 | `Tlb::flush`: stale-list mutex          | lock CAS                           | Acquire       |
//! | 17 | `flushes` (statistic)                   | load + store (no RMW since ec7f57e)| Relaxed       |
//! | 18 | (clear, then) unlock                    | unlock `fetch_sub`                 | Release       |
//! | 19 | `phase2`: `active.lock()`               | lock CAS                           | Acquire       |
//! | 20 | `put_refs` -> `put_writable_type`       | type count `fetch_sub`             | AcqRel        |
//! | 21 | `put_refs` -> `put_page` -> `Frame::put`| page count `fetch_sub`             | Release       |
//! | 22 | `unpin_and_clear` -> `clear_status`     | flags word `fetch_and`             | Release       |
//! | 23 | end of phase 2: entry unlock            | unlock `fetch_sub`                 | Release       |
//! |    | guard drops                             | epoch store, `in_hypercall` store  | Release       |
//!
//! 22 locked read-modify-writes and 2 SeqCst fences per pair (row 17 was a `lock inc` until
//! ec7f57e made the TLB's flush counter a single-writer store); rustc 1.95 compiles a SeqCst fence to `lock or $0, (%rsp)`, so that is 24 locked
//! instructions. `scripts/icount.sh` with
//! `ANNOTATE=1` counts the locked instructions each design executes per pair (from the
//! callgrind profile) and lists them with their source locations: this table is checked
//! against that. Not included (plain loads and stores on x86): the registry, domain-state,
//! table-size, segment, P2M and slot-state loads, the slot publication stores, the per-vCPU
//! counters and teardown hint log (single writer, no RMW), and crossbeam-epoch's collection
//! attempt every 128 pins.
//!
//! [`Floor::pair_xen`] is the same exercise for the Xen design (benchmark id `floor-xen`): the
//! Fast sequence without the map quota (Xen's maptrack is its bound: -2 RMWs) plus, per pair,
//! the maptrack free-list lock taken and released twice (handle pop in map, push in unmap:
//! +4 RMWs) and the per-CPU read lock's SeqCst fence three times (map's pin, unmap's phase 1
//! and phase 2): 24 RMWs and 5 fences (29 locked instructions). The ratio `floor / floor-xen` is what Fast/Xen would be
//! if everything but the atomics were free.
//!
//! Each structure sits on its own cache line, as in the real layout: the epoch word (the
//! thread's crossbeam `Local`), the vCPU's quota cache word, the active entry (lock byte next
//! to the pin word and slots), the shared entry, the frame (page count next to type count),
//! the PTE, and the vCPU's state (`in_hypercall` flag, TLB stale-list lock and flush counter).
//! A thread owns its `Floor` outright, so two threads never share a line: the 2-thread /
//! 1-thread ratio of the floor is the best scaling the machine offers for this sequence.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*,
};

const LOCKED: u8 = 1;
/// `GTF_permit_access` with the grantee's domid in the high half.
const GRANTED: u32 = 1 | (1 << 16);
/// `GTF_reading | GTF_writing`.
const RW_BITS: u32 = (1 << 3) | (1 << 4);
const PTE: u64 = (0x1234 << 12) | 0x203;
/// Units in the vCPU's quota cache.
const QUOTA: u32 = 64;

#[derive(Default)]
struct ActiveLine {
    lock: AtomicU8,
    pin: AtomicU32,
}

#[derive(Default)]
struct FrameLine {
    count: AtomicU32,
    type_info: AtomicU32,
}

#[derive(Default)]
struct VcpuLine {
    in_hypercall: AtomicBool,
    tlb_lock: AtomicU8,
    flushes: AtomicU64,
}

/// One thread's private copy of every line a Fast (or Xen) pair writes.
#[derive(Default)]
pub struct Floor {
    /// Fast only: this vCPU's map-quota cache word.
    quota: CachePadded<AtomicU32>,
    /// Xen only: this vCPU's maptrack free-list lock.
    maptrack_list: CachePadded<AtomicU8>,
    /// Xen only: the pCPU's per-CPU read-lock slot, and the lock's writer flag.
    pcpu_slot: CachePadded<AtomicUsize>,
    writer_activating: CachePadded<AtomicBool>,
    epoch: CachePadded<AtomicUsize>,
    active: CachePadded<ActiveLine>,
    shared: CachePadded<AtomicU32>,
    frame: CachePadded<FrameLine>,
    pte: CachePadded<AtomicU64>,
    vcpu: CachePadded<VcpuLine>,
}

#[inline(always)]
fn lock(l: &AtomicU8) {
    // parking_lot's fast path: one weak CAS (never fails here: the lock is private).
    while l
        .compare_exchange_weak(0, LOCKED, Acquire, Relaxed)
        .is_err()
    {}
}

#[inline(always)]
fn unlock(l: &AtomicU8) {
    // parking_lot 0.13's unlock fast path: a `fetch_sub` (`lock xadd`), not a store.
    l.fetch_sub(LOCKED, Release);
}

impl Floor {
    /// A floor whose state matches a granted, unmapped ref (allocation reference held).
    pub fn new() -> Box<Self> {
        let f = Box::<Self>::default();
        f.shared.store(GRANTED, Relaxed);
        f.frame.count.store(1, Relaxed);
        f.quota.store(QUOTA, Relaxed);
        f
    }

    #[inline(always)]
    fn enter(&self) {
        self.vcpu.in_hypercall.store(true, Relaxed);
        fence(SeqCst);
    }

    #[inline(always)]
    fn leave(&self) {
        self.vcpu.in_hypercall.store(false, Release);
    }

    #[inline(always)]
    fn pin(&self) {
        let _ = self.epoch.compare_exchange(0, 1, SeqCst, SeqCst);
    }

    #[inline(always)]
    fn unpin(&self) {
        self.epoch.store(0, Release);
    }

    /// The 22 RMWs and 2 fences of one pair (see the module table).
    #[inline(never)]
    pub fn pair(&self) {
        // map
        self.enter();
        self.pin();
        lock(&self.active.lock);
        let _ = self
            .shared
            .compare_exchange(GRANTED, GRANTED | RW_BITS, AcqRel, Acquire);
        let _ = self
            .frame
            .count
            .compare_exchange_weak(1, 2, Acquire, Relaxed);
        unlock(&self.active.lock);
        let _ = self
            .quota
            .compare_exchange_weak(QUOTA, QUOTA - 1, Acquire, Relaxed);
        let _ = self
            .frame
            .type_info
            .compare_exchange_weak(0, 1, AcqRel, Relaxed);
        let _ = self.pte.compare_exchange(0, PTE, AcqRel, Acquire);
        self.unpin();
        self.leave();
        // unmap, phase 1
        self.enter();
        self.pin();
        lock(&self.active.lock);
        let _ = self.pte.compare_exchange(PTE, 0, AcqRel, Acquire);
        lock(&self.vcpu.tlb_lock);
        unlock(&self.vcpu.tlb_lock);
        unlock(&self.active.lock);
        let _ = self
            .quota
            .compare_exchange_weak(QUOTA - 1, QUOTA, Release, Relaxed);
        // flush
        lock(&self.vcpu.tlb_lock);
        // A statistic written under the lock: a plain load and store since ec7f57e.
        self.vcpu
            .flushes
            .store(self.vcpu.flushes.load(Relaxed) + 1, Relaxed);
        unlock(&self.vcpu.tlb_lock);
        // phase 2
        lock(&self.active.lock);
        self.frame.type_info.fetch_sub(1, AcqRel);
        self.frame.count.fetch_sub(1, Release);
        self.shared.fetch_and(!RW_BITS, Release);
        unlock(&self.active.lock);
        self.unpin();
        self.leave();
    }

    /// Xen's per-CPU read lock (`PercpuRwLock::read`, fast path) and its release.
    #[inline(always)]
    fn percpu_read(&self) {
        self.pcpu_slot.store(1, Relaxed);
        fence(SeqCst);
        let _ = self.writer_activating.load(Acquire);
    }

    #[inline(always)]
    fn percpu_unread(&self) {
        self.pcpu_slot.store(0, Release);
    }

    /// The 24 RMWs and 5 fences of one Xen pair (see the module docs).
    #[inline(never)]
    pub fn pair_xen(&self) {
        // map
        self.enter();
        self.pin();
        lock(&self.maptrack_list); // get_handle: pop
        unlock(&self.maptrack_list);
        self.percpu_read();
        lock(&self.active.lock);
        let _ = self
            .shared
            .compare_exchange(GRANTED, GRANTED | RW_BITS, AcqRel, Acquire);
        let _ = self
            .frame
            .count
            .compare_exchange_weak(1, 2, Acquire, Relaxed);
        unlock(&self.active.lock);
        self.percpu_unread();
        let _ = self
            .frame
            .type_info
            .compare_exchange_weak(0, 1, AcqRel, Relaxed);
        let _ = self.pte.compare_exchange(0, PTE, AcqRel, Acquire);
        self.unpin();
        self.leave();
        // unmap, phase 1
        self.enter();
        self.pin();
        self.percpu_read();
        lock(&self.active.lock);
        let _ = self.pte.compare_exchange(PTE, 0, AcqRel, Acquire);
        lock(&self.vcpu.tlb_lock);
        unlock(&self.vcpu.tlb_lock);
        unlock(&self.active.lock);
        self.percpu_unread();
        lock(&self.maptrack_list); // put_handle: push
        unlock(&self.maptrack_list);
        // flush
        lock(&self.vcpu.tlb_lock);
        // A statistic written under the lock: a plain load and store since ec7f57e.
        self.vcpu
            .flushes
            .store(self.vcpu.flushes.load(Relaxed) + 1, Relaxed);
        unlock(&self.vcpu.tlb_lock);
        // phase 2
        self.percpu_read();
        lock(&self.active.lock);
        self.frame.type_info.fetch_sub(1, AcqRel);
        self.frame.count.fetch_sub(1, Release);
        self.shared.fetch_and(!RW_BITS, Release);
        unlock(&self.active.lock);
        self.percpu_unread();
        self.unpin();
        self.leave();
    }

    /// Whether the state is back to "granted, unmapped" (every RMW above succeeded).
    pub fn is_idle(&self) -> bool {
        self.epoch.load(Relaxed) == 0
            && self.active.lock.load(Relaxed) == 0
            && self.active.pin.load(Relaxed) == 0
            && self.shared.load(Relaxed) == GRANTED
            && self.frame.count.load(Relaxed) == 1
            && self.frame.type_info.load(Relaxed) == 0
            && self.pte.load(Relaxed) == 0
            && self.vcpu.tlb_lock.load(Relaxed) == 0
            && !self.vcpu.in_hypercall.load(Relaxed)
            && self.maptrack_list.load(Relaxed) == 0
            && self.quota.load(Relaxed) == QUOTA
            && self.pcpu_slot.load(Relaxed) == 0
    }
}
