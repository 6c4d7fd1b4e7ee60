//! Exact per-domain limits on live grant maps, without a hot shared counter.
//!
//! With inline fast slots a mapper's maps live in its granters' tables, so its maptrack size no
//! longer bounds them (seed 004, "possible problem" 2). [`MapQuota`] brings the bound back:
//! every map holds one unit of its domain's quota from before its record is published until
//! after the record is released, so live maps never exceed the limit.
//!
//! Units live in a domain pool and in per-vCPU caches (`local`):
//!
//! | path                     | who                    | touches                                      |
//! |--------------------------|------------------------|----------------------------------------------|
//! | take / put (fast path)   | the vCPU itself        | its own `local` word: one compare-exchange    |
//! | refill / give back       | the vCPU itself        | `pool` lock + pool count (once per `chunk`)   |
//! | audit (cache and pool    | the vCPU that needs a  | `pool` lock, then freezes every other `local` |
//! | empty)                   | unit                   | in turn and takes what they hold              |
//!
//! `local` words are written only by their owner, except during an audit, which holds the pool
//! lock and replaces a word with `FROZEN` while it looks at it (the owner's take or put waits
//! for the word to thaw). Since every unit move between a cache and the pool also happens
//! under the pool lock, an audit that has frozen every cache sees every idle unit: it refuses
//! (`GNTST_no_space`) only when all units are held by maps, i.e. when the limit is really
//! reached, and otherwise takes the idle units back (as Xen's maptrack stealing does).

use crate::sync::{AtomicU32, CachePadded, Mutex, Ordering};

/// A `local` word being audited.
const FROZEN: u32 = u32::MAX;

/// How a domain's map limit is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MapLimit {
    /// Designs with inline slots: `max_maptrack_frames * 256` live maps (Xen's handle
    /// capacity); designs without: none beyond the maptrack table itself (Xen semantics).
    #[default]
    Default,
    /// No limit beyond what the design's maptrack imposes.
    Off,
    /// At most this many live maps (host or device, fast or slow) on any design.
    Limit(u32),
}

/// A domain's map quota (see the module docs).
#[derive(Debug)]
pub struct MapQuota {
    limit: u32,
    chunk: u32,
    /// Units in the pool. Changed only under `lock`.
    pool: Mutex<u32>,
    locals: Box<[CachePadded<AtomicU32>]>,
}

impl MapQuota {
    /// A quota of `limit` units for `vcpus` vCPUs, all in the pool.
    pub fn new(limit: u32, vcpus: usize) -> Self {
        let vcpus = vcpus.max(1);
        // Small enough that caches never hoard much of a small limit, large enough that
        // refills are rare.
        let chunk = (limit / (4 * vcpus as u32)).clamp(1, 64);
        Self {
            limit,
            chunk,
            pool: Mutex::new(limit),
            locals: (0..vcpus)
                .map(|_| CachePadded::new(AtomicU32::new(0)))
                .collect(),
        }
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Units not held by any map: pool plus every vCPU cache (exact at quiescence).
    pub fn idle(&self) -> u32 {
        let p = *self.pool.lock();
        p + self
            .locals
            .iter()
            .map(|l| l.load(Ordering::Acquire))
            .filter(|&v| v != FROZEN)
            .sum::<u32>()
    }

    /// Takes one unit for a map issued on vCPU `v`; false if every unit is held by a map.
    #[inline]
    pub fn take(&self, v: usize) -> bool {
        let l = &self.locals[v];
        let mut cur = l.load(Ordering::Relaxed);
        loop {
            if cur == FROZEN {
                crate::sync::spin_hint();
                cur = l.load(Ordering::Relaxed);
                continue;
            }
            if cur == 0 {
                return self.take_slow(v);
            }
            // Acquire: pairs with the audit's Release when it thaws the word.
            match l.compare_exchange_weak(cur, cur - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Returns one unit (a map's record was released) to vCPU `v`'s cache.
    #[inline]
    pub fn put(&self, v: usize) {
        let l = &self.locals[v];
        let mut cur = l.load(Ordering::Relaxed);
        loop {
            if cur == FROZEN {
                crate::sync::spin_hint();
                cur = l.load(Ordering::Relaxed);
                continue;
            }
            // Release: the map's release happens-before an auditor that counts this unit.
            match l.compare_exchange_weak(cur, cur + 1, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur + 1 > 2 * self.chunk {
            self.give_back(v);
        }
    }

    /// Moves `chunk` units from `v`'s cache to the pool (owner only).
    #[cold]
    fn give_back(&self, v: usize) {
        let mut pool = self.pool.lock();
        let l = &self.locals[v];
        // Under the pool lock no audit runs, so the word is ours alone: not frozen.
        let cur = l.load(Ordering::Acquire);
        if cur != FROZEN && cur > self.chunk {
            l.store(cur - self.chunk, Ordering::Release);
            *pool += self.chunk;
        }
    }

    /// Refill from the pool, else audit the other caches.
    #[cold]
    fn take_slow(&self, v: usize) -> bool {
        let mut pool = self.pool.lock();
        let l = &self.locals[v];
        if *pool > 0 {
            let n = (*pool).min(self.chunk);
            *pool -= n;
            // Our own word: nobody else writes it while we hold the pool lock.
            l.store(l.load(Ordering::Relaxed) + n - 1, Ordering::Release);
            return true;
        }
        // Audit: freeze every other cache, take what it holds.
        let mut got = 0u32;
        for (i, o) in self.locals.iter().enumerate() {
            if i == v {
                continue;
            }
            let held = loop {
                let cur = o.load(Ordering::Acquire);
                // AcqRel: freezing synchronises with the owner's last take or put.
                if o.compare_exchange(cur, FROZEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    break cur;
                }
            };
            got += held;
            // Release: thaws the word for its owner (now empty).
            o.store(0, Ordering::Release);
        }
        if got == 0 {
            return false;
        }
        l.store(l.load(Ordering::Relaxed) + got - 1, Ordering::Release);
        true
    }

    /// Teardown: `n` units of released maps go straight back to the pool.
    pub(crate) fn release_to_pool(&self, n: u32) {
        *self.pool.lock() += n;
    }

    /// Teardown: every cache is emptied into the pool.
    pub(crate) fn drain(&self) {
        let mut pool = self.pool.lock();
        for l in self.locals.iter() {
            *pool += l.swap(0, Ordering::AcqRel);
        }
    }
}
