//! Deferred reclamation: the only module that names `crossbeam_epoch`.
//!
//! A hypercall pins a [`Guard`] once and passes it down; domain lookups return references that
//! live as long as the guard. Removing a domain from the registry retires its box, which is
//! freed only once no guard that could have seen it remains (design.md section 3: "a domain's
//! memory is reclaimed only when no concurrent lookup can still hold it"). Pin once per
//! hypercall batch, never per element: the outermost pin costs a full fence.
//!
//! Under loom, crossbeam-epoch's synchronisation is invisible to the model checker, so this
//! module swaps in a backend that never frees during a model execution: retired boxes go to a
//! [`Graveyard`] owned by the structure that retired them and are dropped with it.

use crate::sync::{AtomicPtr, Ordering};
use core::marker::PhantomData;
use core::ptr;

/// Keeps retired objects alive while it is held. Pin with [`pin`].
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct Guard(crossbeam_epoch::Guard);

/// Keeps retired objects alive while it is held (loom: everything lives to the end).
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct Guard(());

/// Pins the current thread.
#[inline]
pub(crate) fn pin() -> Guard {
    #[cfg(not(loom))]
    {
        Guard(crossbeam_epoch::pin())
    }
    #[cfg(loom)]
    {
        Guard(())
    }
}

/// Where retired objects wait under loom; zero-sized otherwise.
#[derive(Debug)]
pub(crate) struct Graveyard<T> {
    #[cfg(loom)]
    dead: crate::sync::Mutex<Vec<Box<T>>>,
    _t: PhantomData<fn(T)>,
}

impl<T> Default for Graveyard<T> {
    fn default() -> Self {
        Self {
            #[cfg(loom)]
            dead: crate::sync::Mutex::new(Vec::new()),
            _t: PhantomData,
        }
    }
}

/// An owned, atomically replaceable `Option<Box<T>>` whose readers need only a [`Guard`].
#[derive(Debug)]
pub(crate) struct Slot<T> {
    ptr: AtomicPtr<T>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

impl<T: Send + 'static> Slot<T> {
    /// The current value, valid while `g` is held.
    #[inline]
    pub(crate) fn load<'g>(&self, _g: &'g Guard) -> Option<&'g T> {
        // Acquire: pairs with the Release compare-exchange in `install`, so the value's
        // construction is visible.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `install`. It is freed only
        // through `retire`, which defers the free until every guard pinned before the removal
        // is dropped (epoch), or never during the execution (loom); `_g` is such a guard.
        unsafe { p.as_ref() }
    }

    /// Installs `v` if the slot is empty; gives it back otherwise.
    pub(crate) fn install(&self, v: Box<T>) -> Result<(), Box<T>> {
        let p = Box::into_raw(v);
        // Release: publishes the value's construction to `load`.
        match self
            .ptr
            .compare_exchange(ptr::null_mut(), p, Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => Ok(()),
            // SAFETY: `p` was never published; we still own it.
            Err(_) => Err(unsafe { Box::from_raw(p) }),
        }
    }

    /// Atomically replaces the value (readers see the old or the new one, never none) and
    /// retires the old one.
    pub(crate) fn replace(&self, v: Box<T>, g: &Guard, yard: &Graveyard<T>) {
        let p = Box::into_raw(v);
        // AcqRel: Release publishes the new value; Acquire orders the old one's retirement.
        let old = self.ptr.swap(p, Ordering::AcqRel);
        if !old.is_null() {
            Self::retire_ptr(old, g, yard);
        }
    }

    /// Empties the slot if it holds `expect` (compared by address), retiring the value: it is
    /// dropped once no guard that may have loaded it remains.
    pub(crate) fn retire(&self, expect: &T, g: &Guard, yard: &Graveyard<T>) -> bool {
        let e = expect as *const T as *mut T;
        // AcqRel: the removal is ordered after the value's last use by this thread.
        if self
            .ptr
            .compare_exchange(e, ptr::null_mut(), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        Self::retire_ptr(e, g, yard);
        true
    }
}

impl<T: Send + 'static> Slot<T> {
    fn retire_ptr(e: *mut T, g: &Guard, yard: &Graveyard<T>) {
        #[cfg(not(loom))]
        {
            let _ = yard;
            let addr = e as usize;
            // SAFETY: the pointer came from `Box::into_raw` and is no longer reachable from
            // the slot; the closure runs only after all guards pinned before this point are
            // gone, so no reference obtained through `load` survives it.
            unsafe {
                g.0.defer_unchecked(move || drop(Box::from_raw(addr as *mut T)));
            }
        }
        #[cfg(loom)]
        {
            let _ = g;
            // SAFETY: as above; the box is kept until the graveyard is dropped.
            yard.dead.lock().push(unsafe { Box::from_raw(e) });
        }
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: exclusive access; the pointer came from `Box::into_raw`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

// SAFETY: a Slot owns a `Box<T>`.
unsafe impl<T: Send> Send for Slot<T> {}
// SAFETY: readers get `&T` from any thread (T: Sync) and the box may be dropped on another
// thread (T: Send).
unsafe impl<T: Send + Sync> Sync for Slot<T> {}
