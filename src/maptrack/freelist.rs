//! Xen's maptrack table with per-vCPU free lists (spec 5).
//!
//! The table is a grow-only array of [`MaptrackEntry`]s in pages of 256, published by
//! `limit`. Every vCPU owns a singly linked free list threaded through the entries' `gref`
//! field, with a head, a tail and its own lock (XSA-228). An initialised list is never
//! emptied: the last entry stays as a sentinel so that frees can always be appended at the
//! tail, which is why a vCPU's usable capacity is one less than what it holds.
//!
//! | operation            | locks                                  | spec |
//! |----------------------|----------------------------------------|------|
//! | pop own list         | own list lock                          | 5.1  |
//! | grow by one page     | `maptrack_lock`, then own list lock    | 5.2  |
//! | steal from a victim  | victim's list lock (one at a time)     | 5.2  |
//! | put (free)           | the entry owner's list lock            | 5.3  |
//! | validate a handle    | none: `h < limit` (Acquire), flags     | 5.4  |
//!
//! Free-list locks are innermost: nothing else is taken while one is held, and at most one is
//! held at a time.
//!
//! Both designs use this table: the Xen design for every map, the Fast design as the "slow"
//! table behind its inline slots.

use crate::segvec::SegDir;
use crate::sync::{AtomicU32, AtomicU64, CachePadded, Mutex, Ordering};

/// Free-list terminator (`MAPTRACK_TAIL`).
pub(crate) const MAPTRACK_TAIL: u32 = u32::MAX;

/// One maptrack entry (`struct grant_mapping`).
///
/// `flags` is written last when a mapping is published (Release) and read first by every user
/// (Acquire); 0 means free. While free, `gref` holds the next handle of the free list.
#[derive(Debug)]
pub(crate) struct MaptrackEntry {
    pub(crate) flags: AtomicU32,
    pub(crate) domid: AtomicU32,
    pub(crate) gref: AtomicU32,
    pub(crate) vcpu: AtomicU32,
    /// Device address recorded at map time (used by per-map bus addressing; Xen's own entry
    /// does not record addresses).
    pub(crate) bus: AtomicU64,
}

impl MaptrackEntry {
    fn free(next: u32, vcpu: u32) -> Self {
        Self {
            flags: AtomicU32::new(0),
            domid: AtomicU32::new(0),
            gref: AtomicU32::new(next),
            vcpu: AtomicU32::new(vcpu),
            bus: AtomicU64::new(0),
        }
    }
}

/// Head and tail of one vCPU's free list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FreeList {
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

impl Default for FreeList {
    fn default() -> Self {
        Self {
            head: MAPTRACK_TAIL,
            tail: MAPTRACK_TAIL,
        }
    }
}

/// A domain's maptrack table and its vCPUs' free lists.
#[derive(Debug)]
pub(crate) struct Maptrack {
    entries: SegDir<MaptrackEntry>,
    /// Handles that exist (a multiple of the page size), published with Release after the
    /// page is installed (XSA-218 `4b78efa91c`: never a limit covering an unpublished page).
    limit: AtomicU32,
    /// `maptrack_lock`: serialises growth only.
    grow_lock: Mutex<()>,
    lists: Box<[CachePadded<Mutex<FreeList>>]>,
    max_frames: u32,
    per_frame: u32,
}

impl Maptrack {
    pub(crate) fn new(vcpus: usize, max_frames: u32, per_frame: u32) -> Self {
        Self {
            entries: SegDir::new(per_frame as usize, max_frames as usize),
            limit: AtomicU32::new(0),
            grow_lock: Mutex::new(()),
            lists: (0..vcpus.max(1))
                .map(|_| CachePadded::new(Mutex::new(FreeList::default())))
                .collect(),
            max_frames,
            per_frame,
        }
    }

    /// Number of handles that exist (`maptrack_limit`).
    #[inline]
    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// The per-domain limit in frames.
    pub(crate) fn max_frames(&self) -> u32 {
        self.max_frames
    }

    /// Handles per page.
    pub(crate) fn per_frame(&self) -> u32 {
        self.per_frame
    }

    /// The entry for `h` if `h < limit` (spec 5.4's bounds check, no lock).
    #[inline]
    pub(crate) fn entry(&self, h: u32) -> Option<&MaptrackEntry> {
        // Acquire: pairs with the Release store of `limit` in `get_handle`.
        if h < self.limit.load(Ordering::Acquire) {
            // SAFETY: h is below the published limit, loaded with Acquire.
            Some(unsafe { self.entries.get(h as usize) })
        } else {
            None
        }
    }

    /// An entry known to exist: a handle taken from a free list or owned by the caller.
    #[inline]
    fn known(&self, h: u32) -> &MaptrackEntry {
        debug_assert_ne!(h, MAPTRACK_TAIL);
        // SAFETY: handles reach free lists or callers only after their page was installed and
        // `limit` published (Release, under `grow_lock`), and every list access is under a
        // list lock taken after that publication, or by the thread that got the handle from
        // such an access.
        unsafe { self.entries.get(h as usize) }
    }

    /// 5.1: pops from vCPU `v`'s list, never handing out the sentinel.
    fn pop(&self, v: usize) -> Option<u32> {
        let mut l = self.lists[v].lock();
        if l.head == MAPTRACK_TAIL {
            return None;
        }
        // Relaxed: list links are only read and written under the owning list's lock.
        let next = self.known(l.head).gref.load(Ordering::Relaxed);
        if next == MAPTRACK_TAIL {
            return None;
        }
        let h = l.head;
        l.head = next;
        Some(h)
    }

    /// 5.2: a handle for a map issued on vCPU `curr`, or `None` (`GNTST_no_space`).
    pub(crate) fn get_handle(&self, curr: usize, rng: &mut u64) -> Option<u32> {
        if let Some(h) = self.pop(curr) {
            return Some(h);
        }
        let g = self.grow_lock.lock();
        // Relaxed: `limit` is only written under `grow_lock`, which we hold.
        let base = self.limit.load(Ordering::Relaxed);
        let per = self.per_frame;
        if base / per < self.max_frames {
            let installed = self
                .entries
                .push_segment(|i| MaptrackEntry::free(i as u32 + 1, curr as u32));
            if installed.is_ok() {
                // Release: the page is installed and initialised before the limit covers it.
                self.limit.store(base + per, Ordering::Release);
                drop(g);
                let mut l = self.lists[curr].lock();
                if l.tail == MAPTRACK_TAIL {
                    l.tail = base + per - 1;
                }
                self.known(base + per - 1)
                    .gref
                    .store(l.head, Ordering::Relaxed);
                l.head = base + 1;
                return Some(base);
            }
        }
        drop(g);
        // The table cannot grow: steal (XSA-228's per-list locks make this safe).
        let uninitialised = self.lists[curr].lock().tail == MAPTRACK_TAIL;
        if uninitialised {
            let s = self.steal(curr, rng)?;
            let mut l = self.lists[curr].lock();
            self.known(s).gref.store(MAPTRACK_TAIL, Ordering::Relaxed);
            l.tail = s;
            if l.head == MAPTRACK_TAIL {
                l.head = s;
            }
        }
        self.steal(curr, rng)
    }

    /// Steals one free entry from a vCPU chosen at random, walking round-robin from there.
    fn steal(&self, curr: usize, rng: &mut u64) -> Option<u32> {
        let n = self.lists.len();
        let first = (crate::rng::next(rng) % n as u64) as usize;
        let mut i = first;
        loop {
            if let Some(h) = self.pop(i) {
                // Relaxed: the entry is ours now; `put_handle` reads `vcpu` on this thread or
                // after the mapping's publication (Release/Acquire on `flags`).
                self.known(h).vcpu.store(curr as u32, Ordering::Relaxed);
                return Some(h);
            }
            i = (i + 1) % n;
            if i == first {
                return None;
            }
        }
    }

    /// 5.3: frees `h` to its owner vCPU's tail.
    pub(crate) fn put_handle(&self, h: u32) {
        let e = self.known(h);
        e.gref.store(MAPTRACK_TAIL, Ordering::Relaxed);
        let v = e.vcpu.load(Ordering::Relaxed) as usize;
        let mut l = self.lists[v].lock();
        let old = l.tail;
        l.tail = h;
        self.known(old).gref.store(h, Ordering::Relaxed);
    }

    /// Publishes a mapping in entry `h` (spec 6.2 step 13): domid and ref, then flags last.
    #[inline]
    pub(crate) fn publish(&self, h: u32, domid: u16, gref: u32, bus: u64, flags: u32) {
        let e = self.known(h);
        e.domid.store(domid as u32, Ordering::Relaxed);
        e.gref.store(gref, Ordering::Relaxed);
        e.bus.store(bus, Ordering::Relaxed);
        // Release: the fields above happen-before any reader that sees non-zero flags.
        e.flags.store(flags, Ordering::Release);
    }

    /// Quiescent view of the free lists: for each vCPU, `(head, tail, chain)`; `chain` is the
    /// list from head following links, stopped at the tail, at `limit + 1` steps (a cycle), or
    /// at an out-of-range link.
    pub(crate) fn lists_snapshot(&self) -> Vec<(FreeList, Vec<u32>)> {
        let limit = self.limit();
        self.lists
            .iter()
            .map(|l| {
                let l = *l.lock();
                let mut chain = Vec::new();
                let mut h = l.head;
                while h != MAPTRACK_TAIL && h < limit && chain.len() <= limit as usize {
                    chain.push(h);
                    if h == l.tail {
                        break;
                    }
                    h = self.known(h).gref.load(Ordering::Relaxed);
                }
                (l, chain)
            })
            .collect()
    }

    /// Teardown's end (spec 11.2: `maptrack_limit = 0`): no handle is valid any more and the
    /// free lists are empty. The pages themselves are freed with the domain. Caller owns the
    /// paused, dying domain.
    pub(crate) fn retire_all(&self) {
        let _g = self.grow_lock.lock();
        // Release: pairs with the Acquire of `entry`'s bounds check.
        self.limit.store(0, Ordering::Release);
        for l in self.lists.iter() {
            *l.lock() = FreeList::default();
        }
    }
}
