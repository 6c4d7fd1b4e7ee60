//! The one switch point between real concurrency primitives and loom's.
//!
//! Nothing else in `src/` names `std::sync::atomic`, `parking_lot`, `std::thread` or loom.
//! (`src/reclaim.rs` is the one other module allowed to name `crossbeam_epoch`.) In a normal
//! build this module re-exports `core` atomics and wraps `parking_lot` locks; under
//! `RUSTFLAGS="--cfg loom"` it re-exports loom's atomics and wraps loom's locks behind the same
//! API, so the models in `model/` exercise the library's real code paths.
//!
//! Only the subset of the lock API that both worlds can offer is exposed: `new`, `lock`,
//! `read`, `write`, `into_inner`. Spin loops go through [`spin_hint`], which is
//! loom's `yield_now` under loom (otherwise a model aborts with "exceeded maximum number of
//! branches").

#[cfg(not(loom))]
mod imp {
    pub(crate) use core::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
    };
    pub(crate) use std::sync::Arc;

    /// Mutual exclusion lock: `parking_lot::Mutex` (no poisoning).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(parking_lot::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(parking_lot::Mutex::new(v))
        }
        #[inline]
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        #[allow(dead_code)]
        pub(crate) fn into_inner(self) -> T {
            self.0.into_inner()
        }
    }

    /// Reader-writer lock: `parking_lot::RwLock` (task-fair, writers are not starved).
    #[derive(Debug, Default)]
    pub struct RwLock<T>(parking_lot::RwLock<T>);
    pub(crate) type RwLockReadGuard<'a, T> = parking_lot::RwLockReadGuard<'a, T>;
    pub(crate) type RwLockWriteGuard<'a, T> = parking_lot::RwLockWriteGuard<'a, T>;

    impl<T> RwLock<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(parking_lot::RwLock::new(v))
        }
        #[inline]
        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read()
        }
        #[inline]
        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write()
        }
    }

    /// Busy-wait hint for spin loops.
    #[inline]
    pub(crate) fn spin_hint() {
        core::hint::spin_loop();
    }

    /// Spins for `d` (charges a modelled hardware cost, e.g. an IOTLB flush).
    pub(crate) fn busy_wait(d: std::time::Duration) {
        let t = std::time::Instant::now();
        while t.elapsed() < d {
            core::hint::spin_loop();
        }
    }

    /// Lets other threads run (used where a waiter may spin for long).
    #[inline]
    pub(crate) fn yield_now() {
        std::thread::yield_now();
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
    };
    pub(crate) use loom::sync::Arc;
    pub(crate) use std::sync::atomic::Ordering;

    /// Loom mutex with the same API as the parking_lot wrapper (poisoning swallowed).
    #[derive(Debug)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        #[allow(dead_code)]
        pub(crate) fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// Loom reader-writer lock with the parking_lot wrapper's API.
    #[derive(Debug)]
    pub struct RwLock<T>(loom::sync::RwLock<T>);
    pub(crate) type RwLockReadGuard<'a, T> = loom::sync::RwLockReadGuard<'a, T>;
    pub(crate) type RwLockWriteGuard<'a, T> = loom::sync::RwLockWriteGuard<'a, T>;

    impl<T: Default> Default for RwLock<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }

    impl<T> RwLock<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(loom::sync::RwLock::new(v))
        }
        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(|e| e.into_inner())
        }
        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(|e| e.into_inner())
        }
    }

    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }

    /// Modelled costs are not charged under loom.
    pub(crate) fn busy_wait(_: std::time::Duration) {}

    pub(crate) fn yield_now() {
        loom::thread::yield_now();
    }
}

pub(crate) use imp::*;

/// A cell for data with an ownership discipline the type system cannot see (here: state
/// touched only by the thread running a vCPU, or by teardown after the vCPU is paused). Under
/// loom it is loom's `UnsafeCell`, so the model checker verifies the discipline.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Runs `f` with a mutable pointer to the contents; the caller guarantees exclusivity.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(loom::cell::UnsafeCell<T>);

#[cfg(loom)]
impl<T: Default> Default for UnsafeCell<T> {
    fn default() -> Self {
        Self(loom::cell::UnsafeCell::new(T::default()))
    }
}

#[cfg(loom)]
impl<T> UnsafeCell<T> {
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.0.with_mut(f)
    }
}

/// Pads and aligns a value to a cache line (128 bytes on x86-64, to cover the adjacent-line
/// prefetcher), so per-vCPU state of two vCPUs never shares a line.
pub(crate) use crossbeam_utils::CachePadded;

/// A lazily initialised, never-replaced heap value: `get_or_init` installs it with one
/// compare-exchange. Used for frame contents, which most frames never need.
#[derive(Debug)]
pub(crate) struct OnceBox<T> {
    ptr: AtomicPtr<T>,
}

impl<T> Default for OnceBox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> OnceBox<T> {
    pub(crate) fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// The value, if installed.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // Acquire: pairs with the AcqRel compare-exchange in `get_or_init`, so the boxed
        // value's initialisation is visible.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer was produced by `Box::into_raw` in `get_or_init` and is
        // freed only in `drop`, which needs `&mut self`; the shared borrow keeps it alive.
        unsafe { p.as_ref() }
    }

    /// The value, installing `init()` if there was none. If two threads race, one box wins
    /// and the other is dropped.
    pub(crate) fn get_or_init(&self, init: impl FnOnce() -> Box<T>) -> &T {
        if let Some(v) = self.get() {
            return v;
        }
        let new = Box::into_raw(init());
        match self.ptr.compare_exchange(
            core::ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: we just installed `new`; it lives until `drop` (see `get`).
            Ok(_) => unsafe { &*new },
            Err(existing) => {
                // SAFETY: `new` came from `Box::into_raw` above and was never shared.
                drop(unsafe { Box::from_raw(new) });
                // SAFETY: `existing` is the installed non-null pointer (see `get`).
                unsafe { &*existing }
            }
        }
    }
}

impl<T> Drop for OnceBox<T> {
    fn drop(&mut self) {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: exclusive access in drop; the pointer came from `Box::into_raw`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

// SAFETY: OnceBox owns a `Box<T>`; sharing it shares `&T`, so it is Send/Sync exactly when T is.
unsafe impl<T: Send> Send for OnceBox<T> {}
// SAFETY: see above; `get` hands out `&T` to any thread, which needs `T: Sync`, and the box can
// be installed by one thread and dropped by another, which needs `T: Send`.
unsafe impl<T: Send + Sync> Sync for OnceBox<T> {}
