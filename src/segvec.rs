//! Grow-only segmented arrays with stable element addresses.
//!
//! A [`SegDir`] is a fixed-size directory of segment pointers. Segments are allocated once,
//! installed in order, and freed only when the directory is dropped, so a reference to an
//! element stays valid for as long as the directory lives, whatever growth happens meanwhile.
//! That is the property that lets the Fast design check a grant ref or handle with one acquire
//! load and a compare and then touch the entry without any lock (design.md section 2, point 1).
//!
//! The directory does not publish a length itself: its owner keeps one count per group of
//! directories that grow together (the grant table publishes one `nr_entries` for the shared
//! and active arrays) and stores it with `Release` after installing segments; readers load it
//! with `Acquire`, compare, and then call [`SegDir::get`] with the index they checked.
//!
//! | step (grower, serialised by the owner's growth lock) | reader                         |
//! |------------------------------------------------------|--------------------------------|
//! | allocate + initialise segment                        |                                |
//! | `dir[k].store(ptr, Release)` via compare-exchange    |                                |
//! | owner: `count.store(new, Release)`                   | `count.load(Acquire)`; `i < n` |
//! |                                                      | `dir[i >> shift].load(Acquire)`|

use crate::sync::{AtomicPtr, AtomicUsize, Ordering};
use core::ptr;

/// A fixed directory of equally sized, grow-only segments.
#[derive(Debug)]
pub(crate) struct SegDir<T> {
    shift: u32,
    dir: Box<[AtomicPtr<T>]>,
    installed: AtomicUsize,
}

/// Returned when the directory is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectoryFull;

impl<T> SegDir<T> {
    /// A directory for up to `max_segments` segments of `seg_len` elements (a power of two).
    pub(crate) fn new(seg_len: usize, max_segments: usize) -> Self {
        assert!(
            seg_len.is_power_of_two(),
            "segment length must be a power of two"
        );
        let dir = (0..max_segments)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            shift: seg_len.trailing_zeros(),
            dir,
            installed: AtomicUsize::new(0),
        }
    }

    /// Elements per segment.
    #[inline]
    pub(crate) fn seg_len(&self) -> usize {
        1 << self.shift
    }

    /// Number of installed segments, as seen by the grower (or at quiescence).
    pub(crate) fn segments(&self) -> usize {
        // Relaxed: only growers (serialised by the owner's lock) and quiescent readers use it;
        // concurrent readers synchronise through the owner's published count instead.
        self.installed.load(Ordering::Relaxed)
    }

    /// Installs one more segment built element by element with `init(index)`. Growth must be
    /// serialised by the owner (two concurrent growers would panic, not corrupt). The new
    /// elements become visible to readers only once the owner publishes a count covering them.
    pub(crate) fn push_segment(
        &self,
        mut init: impl FnMut(usize) -> T,
    ) -> Result<(), DirectoryFull> {
        let k = self.installed.load(Ordering::Relaxed);
        if k >= self.dir.len() {
            return Err(DirectoryFull);
        }
        let base = k << self.shift;
        let seg: Box<[T]> = (0..self.seg_len()).map(|i| init(base + i)).collect();
        let p = Box::into_raw(seg) as *mut T;
        // Release: the segment's contents happen-before any Acquire load of the pointer.
        // Readers in fact synchronise through the owner's count (Release/Acquire) first.
        let installed =
            self.dir[k].compare_exchange(ptr::null_mut(), p, Ordering::Release, Ordering::Relaxed);
        assert!(installed.is_ok(), "SegDir grown concurrently");
        self.installed.store(k + 1, Ordering::Relaxed);
        Ok(())
    }

    /// The element at `i`.
    ///
    /// # Safety
    ///
    /// `i` must be below a count the owner published (with `Release`) after installing the
    /// segment holding `i`, and the caller must have loaded that count with `Acquire` (or be
    /// the grower itself, or hold a lock that orders it after the growth).
    #[inline]
    pub(crate) unsafe fn get(&self, i: usize) -> &T {
        // SAFETY: by the caller's contract `i >> shift` is an installed segment index, below
        // `dir.len()`.
        let slot = unsafe { self.dir.get_unchecked(i >> self.shift) };
        // Acquire: pairs with the Release compare-exchange in `push_segment`. (The owner's
        // count already orders this; the Acquire costs nothing on x86 and keeps loom honest.)
        let seg = slot.load(Ordering::Acquire);
        debug_assert!(!seg.is_null(), "SegDir::get beyond the installed segments");
        // SAFETY: `seg` points at a live boxed slice of `seg_len` elements (installed before
        // the published count, freed only in `drop`), and `i & mask < seg_len`.
        unsafe { &*seg.add(i & (self.seg_len() - 1)) }
    }
}

impl<T> Drop for SegDir<T> {
    fn drop(&mut self) {
        let n = self.segments();
        let len = self.seg_len();
        for slot in &self.dir[..n] {
            let p = slot.load(Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: `p` came from `Box::into_raw` of a `Box<[T]>` of `len` elements in
                // `push_segment`; `drop` has exclusive access, so no reference to it survives.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(p, len)) });
            }
        }
    }
}

// SAFETY: the directory owns its segments (boxed `T`s); moving it to another thread moves them.
unsafe impl<T: Send> Send for SegDir<T> {}
// SAFETY: shared access hands out `&T` to any thread (needs `T: Sync`); segments may be
// installed by one thread and dropped by another (needs `T: Send`).
unsafe impl<T: Send + Sync> Sync for SegDir<T> {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn grow_and_get() {
        let d: SegDir<u32> = SegDir::new(4, 3);
        d.push_segment(|i| i as u32 * 10).unwrap();
        d.push_segment(|i| i as u32 * 10).unwrap();
        // SAFETY: both segments are installed and this thread installed them.
        unsafe {
            assert_eq!(*d.get(0), 0);
            assert_eq!(*d.get(5), 50);
        }
        // SAFETY: as above.
        assert_eq!(unsafe { *d.get(7) }, 70);
        assert_eq!(d.segments(), 2);
        d.push_segment(|_| 0).unwrap();
        assert_eq!(d.push_segment(|_| 0), Err(DirectoryFull));
    }
}
