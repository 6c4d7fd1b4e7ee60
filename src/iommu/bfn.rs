//! The per-map bus-frame allocator: per-vCPU magazines in front of a shared pool.
//!
//! Modelled on Linux's IOVA rcache: each vCPU keeps a `loaded` and a `prev` magazine of up to
//! [`MAG_SIZE`] free BFNs; allocation and free touch only the vCPU's own cache (its lock is
//! never contended in steady state: other vCPUs take it only to drain it when the pool runs
//! dry). The pool holds full magazines and the never-used rest of the region; its lock covers
//! only those lists (seed 003: a lock for the bitmap, not for the work around it). When both
//! the cache and the pool are empty, the allocator drains every vCPU's cache into the pool and
//! tries once more, so a map is refused (`GNTST_no_device_space`) only when no free BFN
//! exists anywhere. For that, every move of BFNs between a cache and the pool happens with the
//! pool lock held (lock order: pool, then one cache), and the drain holds the pool lock
//! throughout: no magazine is ever in flight outside both (found by the loom model
//! `iommu_bfn::map_vs_map_two_bfns`).

use crate::sync::{CachePadded, Mutex};
use std::collections::BTreeSet;

/// BFNs per magazine (Linux: `IOVA_MAG_SIZE`).
pub const MAG_SIZE: usize = 127;

#[derive(Debug, Default)]
struct Cache {
    loaded: Vec<u64>,
    prev: Vec<u64>,
}

#[derive(Debug)]
struct Pool {
    full: Vec<Vec<u64>>,
    /// Loose BFNs (from drained, partly filled magazines).
    loose: Vec<u64>,
    next: u64,
    end: u64,
}

/// Per-domain BFN allocator (see the module docs).
#[derive(Debug)]
pub struct BfnAllocator {
    caches: Box<[CachePadded<Mutex<Cache>>]>,
    pool: Mutex<Pool>,
    base: u64,
}

impl BfnAllocator {
    pub(crate) fn new(vcpus: usize, base: u64, frames: u64) -> Self {
        Self {
            caches: (0..vcpus.max(1))
                .map(|_| CachePadded::new(Mutex::new(Cache::default())))
                .collect(),
            pool: Mutex::new(Pool {
                full: Vec::new(),
                loose: Vec::new(),
                next: base,
                end: base + frames,
            }),
            base,
        }
    }

    /// A free BFN for vCPU `v`.
    pub(crate) fn alloc(&self, v: usize) -> Option<u64> {
        if let Some(b) = self.alloc_cached(v) {
            return Some(b);
        }
        if let Some(b) = self.refill(v) {
            return Some(b);
        }
        // Nothing in the pool: pull back what other vCPUs hold, then try once more.
        self.drain_all();
        self.refill(v)
    }

    fn alloc_cached(&self, v: usize) -> Option<u64> {
        let mut c = self.caches[v].lock();
        if let Some(b) = c.loaded.pop() {
            return Some(b);
        }
        if !c.prev.is_empty() {
            let Cache { loaded, prev } = &mut *c;
            core::mem::swap(loaded, prev);
            return c.loaded.pop();
        }
        None
    }

    /// Loads a magazine from the pool (full magazine, loose BFNs, or fresh region) into `v`'s
    /// cache and takes one BFN from it. The magazine moves with the pool lock held (then the
    /// cache lock), so a draining vCPU, which holds the pool lock, never misses it in flight.
    fn refill(&self, v: usize) -> Option<u64> {
        let mut p = self.pool.lock();
        let mag = if let Some(m) = p.full.pop() {
            m
        } else if !p.loose.is_empty() {
            let k = p.loose.len().saturating_sub(MAG_SIZE);
            p.loose.split_off(k)
        } else if p.next < p.end {
            let n = (p.end - p.next).min(MAG_SIZE as u64);
            let m: Vec<u64> = (p.next..p.next + n).rev().collect();
            p.next += n;
            m
        } else {
            return None;
        };
        let mut c = self.caches[v].lock();
        let old = core::mem::replace(&mut c.loaded, mag);
        let b = c.loaded.pop();
        drop(c);
        if !old.is_empty() {
            p.loose.extend(old);
        }
        b
    }

    /// Returns `bfn` to vCPU `v`'s cache. Caller guarantees the IOTLB no longer holds a
    /// translation for it (see the flush rule in the parent module).
    pub(crate) fn free(&self, v: usize, bfn: u64) {
        {
            let mut c = self.caches[v].lock();
            if c.loaded.len() < MAG_SIZE {
                c.loaded.push(bfn);
                return;
            }
            if c.prev.len() < MAG_SIZE {
                let Cache { loaded, prev } = &mut *c;
                core::mem::swap(loaded, prev);
                c.loaded.push(bfn);
                return;
            }
        }
        // Both full: the previous magazine goes to the pool, moved under the pool lock (then
        // the cache lock, as in `refill`) so that a drain never misses it. A drain may have
        // emptied the cache meanwhile: decide again.
        let mut p = self.pool.lock();
        let mut c = self.caches[v].lock();
        let Cache { loaded, prev } = &mut *c;
        if loaded.len() >= MAG_SIZE {
            if prev.len() >= MAG_SIZE {
                p.full
                    .push(core::mem::replace(prev, core::mem::take(loaded)));
            } else {
                core::mem::swap(loaded, prev);
            }
        }
        loaded.push(bfn);
    }

    /// Moves every vCPU's cached BFNs to the pool, holding the pool lock throughout (each cache
    /// lock in turn inside it): every move between a cache and the pool happens under the pool
    /// lock, so the drain sees every free BFN.
    fn drain_all(&self) {
        let mut p = self.pool.lock();
        for c in self.caches.iter() {
            let mut c = c.lock();
            let Cache { loaded, prev } = &mut *c;
            p.loose.append(loaded);
            p.loose.append(prev);
        }
    }

    /// Forgets every allocation (the domain's IOMMU context is destroyed).
    pub(crate) fn reset(&self) {
        for c in self.caches.iter() {
            *c.lock() = Cache::default();
        }
        let mut p = self.pool.lock();
        p.full.clear();
        p.loose.clear();
        p.next = self.base;
    }

    /// Every free BFN (caches and pool), for checks at quiescence.
    pub(crate) fn free_bfns(&self) -> BTreeSet<u64> {
        let mut s = BTreeSet::new();
        for c in self.caches.iter() {
            let c = c.lock();
            s.extend(c.loaded.iter().copied());
            s.extend(c.prev.iter().copied());
        }
        let p = self.pool.lock();
        for m in &p.full {
            s.extend(m.iter().copied());
        }
        s.extend(p.loose.iter().copied());
        s
    }

    /// BFNs currently handed out (allocated and not yet freed).
    pub(crate) fn handed_out(&self) -> u64 {
        let carved = self.pool.lock().next - self.base;
        carved - self.free_bfns().len() as u64
    }
}
