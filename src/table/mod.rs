//! Table validity strategies: how a grant operation gets a consistent view of a grant table's
//! geometry before it indexes an entry.
//!
//! Storage is the same for every strategy (grow-only segments at stable addresses, a published
//! entry count); what differs is what a reader must do first:
//!
//! | strategy       | reader                                    | writer (grow, IOMMU mirror)            |
//! |----------------|-------------------------------------------|----------------------------------------|
//! | [`LockFree`]   | nothing: one Acquire load of the count    | a growth mutex (readers never wait)    |
//! | [`PercpuRw`]   | Xen's per-CPU read lock (own slot + flag) | Xen's per-CPU write lock (polls slots) |
//! | [`PlainRw`]    | a shared rwlock (one hot shared line)     | the same rwlock                        |
//!
//! `PlainRw` exists as the benchmark sanity check: Xen moved from it to the per-CPU lock in
//! 2016 because readers on many CPUs bounce the lock's cache line (spec section 12).

mod percpu;

pub use percpu::{PcpuSet, PercpuRead, PercpuRwLock, PercpuWrite};

use crate::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use core::fmt::Debug;

/// A table validity strategy (see the module docs).
pub trait TableSync: Send + Sync + Debug + 'static {
    /// Short name used in benchmark ids and reports.
    const NAME: &'static str;
    /// Per-table lock state.
    type Lock: Send + Sync + Debug;
    /// Held while a reader indexes the table.
    type Read<'a>;
    /// Held while the table grows (or, for Xen's IOMMU bookkeeping, while the mapper's
    /// mirror is updated).
    type Write<'a>;

    /// A new lock.
    fn new_lock() -> Self::Lock;
    /// Enters a read-side section on behalf of the vCPU running on pCPU slot `cpu`.
    fn read<'a>(lock: &'a Self::Lock, cpus: &'a PcpuSet, cpu: usize) -> Self::Read<'a>;
    /// Enters the write-side section.
    fn write<'a>(lock: &'a Self::Lock, cpus: &'a PcpuSet) -> Self::Write<'a>;
}

/// Grow-only tables, lock-free readers (the Fast design).
#[derive(Debug)]
pub enum LockFree {}

impl TableSync for LockFree {
    const NAME: &'static str = "lockfree";
    type Lock = Mutex<()>;
    type Read<'a> = ();
    type Write<'a> = MutexGuard<'a, ()>;

    fn new_lock() -> Self::Lock {
        Mutex::new(())
    }
    #[inline(always)]
    fn read<'a>(_: &'a Self::Lock, _: &'a PcpuSet, _: usize) -> Self::Read<'a> {}
    fn write<'a>(lock: &'a Self::Lock, _: &'a PcpuSet) -> Self::Write<'a> {
        lock.lock()
    }
}

/// Xen's per-CPU reader-writer lock (the Xen design).
#[derive(Debug)]
pub enum PercpuRw {}

impl TableSync for PercpuRw {
    const NAME: &'static str = "percpu-rw";
    type Lock = PercpuRwLock;
    type Read<'a> = PercpuRead<'a>;
    type Write<'a> = PercpuWrite<'a>;

    fn new_lock() -> Self::Lock {
        PercpuRwLock::new()
    }
    #[inline]
    fn read<'a>(lock: &'a Self::Lock, cpus: &'a PcpuSet, cpu: usize) -> Self::Read<'a> {
        lock.read(cpus, cpu)
    }
    fn write<'a>(lock: &'a Self::Lock, cpus: &'a PcpuSet) -> Self::Write<'a> {
        lock.write(cpus)
    }
}

/// A plain shared reader-writer lock (benchmark baseline).
#[derive(Debug)]
pub enum PlainRw {}

impl TableSync for PlainRw {
    const NAME: &'static str = "plain-rw";
    type Lock = RwLock<()>;
    type Read<'a> = RwLockReadGuard<'a, ()>;
    type Write<'a> = RwLockWriteGuard<'a, ()>;

    fn new_lock() -> Self::Lock {
        RwLock::new(())
    }
    #[inline]
    fn read<'a>(lock: &'a Self::Lock, _: &'a PcpuSet, _: usize) -> Self::Read<'a> {
        lock.read()
    }
    fn write<'a>(lock: &'a Self::Lock, _: &'a PcpuSet) -> Self::Write<'a> {
        lock.write()
    }
}
