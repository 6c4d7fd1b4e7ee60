//! Xen's per-CPU reader-writer lock (`xen/include/xen/rwlock.h`, spec 9.3), modelled with one
//! slot per pCPU.
//!
//! Each running vCPU context owns a pCPU slot in the hypervisor's [`PcpuSet`]. The slot names
//! the per-CPU lock the context currently read-holds (0 = none). Protocol:
//!
//! | reader (`read`)                                 | writer (`write`)                            |
//! |-------------------------------------------------|---------------------------------------------|
//! | slot already names a lock? take `rw.read()`     | `rw.write()` (excludes fallback readers and |
//! | (the per-CPU path is not recursive)             | other writers)                              |
//! | `slot = id` (Relaxed)                           | `writer_activating = true` (Relaxed)        |
//! | `fence(SeqCst)`                                 | `fence(SeqCst)`                             |
//! | `writer_activating`? (Acquire)                  | for each slot: spin while `slot == id`      |
//! |   yes: `slot = 0`; wait in `rw.read()`;          |   (Acquire; pairs with the reader's         |
//! |        `slot = id`; release `rw`                 |    Release on unlock)                       |
//! | ... critical section ...                        | ... critical section ...                    |
//! | unlock: `slot = 0` (Release)                    | unlock: `writer_activating = false`         |
//! |                                                 | (Release), then release `rw`                |
//!
//! The two SeqCst fences make a store-buffering (Dekker) pair: a reader that misses the
//! writer's flag is seen by the writer's slot scan, so the writer waits for it. A reader on the
//! fast path touches only its own slot's cache line and reads the shared flag (which stays in
//! every cache in the shared state while no writer runs): no shared line is written.

use crate::sync::{
    fence, AtomicBool, AtomicUsize, CachePadded, Mutex, Ordering, RwLock, RwLockReadGuard,
    RwLockWriteGuard,
};

/// The machine's pCPU slots: one per concurrently running vCPU context.
#[derive(Debug)]
pub struct PcpuSet {
    slots: Box<[CachePadded<AtomicUsize>]>,
    used: Mutex<Vec<bool>>,
    /// One past the highest slot ever handed out; writers scan `0..high`.
    high: AtomicUsize,
}

impl PcpuSet {
    /// A set of `n` pCPU slots.
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n)
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            used: Mutex::new(vec![false; n]),
            high: AtomicUsize::new(0),
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes a free slot (a vCPU context starts running on a pCPU).
    pub fn acquire(&self) -> Option<usize> {
        let mut used = self.used.lock();
        let i = used.iter().position(|u| !u)?;
        used[i] = true;
        // Relaxed: readers of `high` are writers, which scan after taking `rw.write()`; a slot
        // acquired concurrently holds no read lock yet, so missing it is harmless.
        self.high.fetch_max(i + 1, Ordering::Relaxed);
        Some(i)
    }

    /// Takes a free slot, waiting for one if all are busy (toolstack work such as teardown
    /// steps, which must run on some pCPU).
    pub(crate) fn acquire_wait(&self) -> usize {
        loop {
            if let Some(i) = self.acquire() {
                return i;
            }
            crate::sync::yield_now();
        }
    }

    /// Returns a slot (the context stops running).
    pub fn release(&self, i: usize) {
        debug_assert_eq!(
            self.slots[i].load(Ordering::Relaxed),
            0,
            "pCPU released with a read lock held"
        );
        self.used.lock()[i] = false;
    }

    #[inline]
    fn slot(&self, i: usize) -> &AtomicUsize {
        &self.slots[i]
    }
}

/// A per-CPU reader-writer lock.
#[derive(Debug, Default)]
pub struct PercpuRwLock {
    rw: RwLock<()>,
    writer_activating: AtomicBool,
}

/// Read-side guard of a [`PercpuRwLock`].
#[derive(Debug)]
pub enum PercpuRead<'a> {
    /// Fast path: the pCPU slot names the lock.
    Slot(&'a AtomicUsize),
    /// Fallback for a second per-CPU lock on the same pCPU: the plain rwlock.
    Plain(RwLockReadGuard<'a, ()>),
}

/// Write-side guard of a [`PercpuRwLock`].
#[derive(Debug)]
pub struct PercpuWrite<'a> {
    lock: &'a PercpuRwLock,
    _g: RwLockWriteGuard<'a, ()>,
}

impl PercpuRwLock {
    /// A new, unlocked lock.
    pub fn new() -> Self {
        Self {
            rw: RwLock::new(()),
            writer_activating: AtomicBool::new(false),
        }
    }

    #[inline]
    fn id(&self) -> usize {
        self as *const Self as usize
    }

    /// Read-locks on behalf of pCPU slot `cpu`.
    #[inline]
    pub fn read<'a>(&'a self, cpus: &'a PcpuSet, cpu: usize) -> PercpuRead<'a> {
        let slot = cpus.slot(cpu);
        // Relaxed: the slot is only written by this pCPU's own context.
        if slot.load(Ordering::Relaxed) != 0 {
            return PercpuRead::Plain(self.rw.read());
        }
        let id = self.id();
        slot.store(id, Ordering::Relaxed);
        // SeqCst fence: orders the slot store before the flag load; pairs with the writer's
        // fence between its flag store and its slot scan.
        fence(Ordering::SeqCst);
        // Acquire: pairs with the Release clear in `PercpuWrite::drop`, so this reader sees
        // everything the previous writer did.
        if self.writer_activating.load(Ordering::Acquire) {
            slot.store(0, Ordering::Release);
            let g = self.rw.read();
            // Relaxed, then the rwlock's release: a writer can only get `rw.write()` after
            // `g` is dropped, and then sees this store.
            slot.store(id, Ordering::Relaxed);
            drop(g);
        }
        PercpuRead::Slot(slot)
    }

    /// Write-locks: excludes other writers, raises the flag, waits out slot readers.
    pub fn write<'a>(&'a self, cpus: &'a PcpuSet) -> PercpuWrite<'a> {
        let g = self.rw.write();
        self.writer_activating.store(true, Ordering::Relaxed);
        // SeqCst fence: pairs with the reader's fence (see the module docs).
        fence(Ordering::SeqCst);
        let id = self.id();
        let high = cpus.high.load(Ordering::Relaxed).min(cpus.slots.len());
        for i in 0..high {
            // Acquire: pairs with the reader's Release on unlock, so the reader's critical
            // section happens-before ours.
            while cpus.slot(i).load(Ordering::Acquire) == id {
                crate::sync::spin_hint();
            }
        }
        PercpuWrite { lock: self, _g: g }
    }
}

impl Drop for PercpuRead<'_> {
    #[inline]
    fn drop(&mut self) {
        if let PercpuRead::Slot(s) = self {
            // Release: the critical section happens-before a writer's Acquire scan.
            s.store(0, Ordering::Release);
        }
    }
}

impl Drop for PercpuWrite<'_> {
    fn drop(&mut self) {
        // Release: pairs with the readers' Acquire flag load.
        self.lock.writer_activating.store(false, Ordering::Release);
    }
}
