//! A domain's grant table: shared entries, active entries, and the published geometry.
//!
//! Both arrays grow together, one grant frame (512 v1 entries by default) at a time, into
//! [`SegDir`]s whose segments never move or shrink while the domain lives. The number of
//! usable refs is published in `nr_entries` with `Release` after the new segments are
//! installed; a reader's validity check is one `Acquire` load and a compare ([`GrantTable::entry`]).
//! Under the Xen design the same check runs inside the per-CPU read lock, as Xen's does.

mod active;
mod shared;

pub use active::pin;
pub(crate) use active::{ActiveData, ActiveEntry};
pub use shared::EntrySnapshot;
pub(crate) use shared::SharedEntry;

use crate::abi::{DomId, GntSt, GrantRef, Mfn};
use crate::design::{Design, SlotExt};
use crate::machine::Machine;
use crate::segvec::SegDir;
use crate::sync::{AtomicU32, Mutex, Ordering};
use crate::table::TableSync;

/// An entry's shared and active halves.
#[derive(Debug)]
pub(crate) struct EntryRef<'a, E> {
    pub(crate) shared: &'a SharedEntry,
    pub(crate) active: &'a ActiveEntry<E>,
}

impl<E> Clone for EntryRef<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for EntryRef<'_, E> {}

/// A domain's grant table.
#[derive(Debug)]
pub(crate) struct GrantTable<D: Design> {
    /// The table lock of the design's validity strategy.
    pub(crate) lock: <D::Table as TableSync>::Lock,
    nr_entries: AtomicU32,
    shared: SegDir<SharedEntry>,
    active: SegDir<ActiveEntry<SlotExt<D>>>,
    /// Machine frames backing the shared frames (hypervisor pages shared with the owner).
    frames: Mutex<Vec<Mfn>>,
    max_frames: u32,
    per_frame: u32,
}

impl<D: Design> GrantTable<D> {
    /// An empty table (0 frames) that may grow to `max_frames` frames of `per_frame` entries.
    pub(crate) fn new(max_frames: u32, per_frame: u32) -> Self {
        Self {
            lock: D::Table::new_lock(),
            nr_entries: AtomicU32::new(0),
            shared: SegDir::new(per_frame as usize, max_frames as usize),
            active: SegDir::new(per_frame as usize, max_frames as usize),
            frames: Mutex::new(Vec::new()),
            max_frames,
            per_frame,
        }
    }

    /// The validity check: the entry for `gref` if `gref < nr_entries`.
    #[inline]
    pub(crate) fn entry(&self, gref: GrantRef) -> Option<EntryRef<'_, SlotExt<D>>> {
        // Acquire: pairs with the Release store in `grow`, so the segments holding every
        // entry below the count are installed and initialised.
        if gref.0 < self.nr_entries.load(Ordering::Acquire) {
            let i = gref.0 as usize;
            // SAFETY: `i` is below the published count, loaded with Acquire just above.
            Some(unsafe {
                EntryRef {
                    shared: self.shared.get(i),
                    active: self.active.get(i),
                }
            })
        } else {
            None
        }
    }

    /// Number of usable refs.
    #[inline]
    pub(crate) fn nr_entries(&self) -> u32 {
        self.nr_entries.load(Ordering::Acquire)
    }

    /// Number of grant frames.
    pub(crate) fn nr_frames(&self) -> u32 {
        self.nr_entries() / self.per_frame
    }

    /// The per-domain limit.
    pub(crate) fn max_frames(&self) -> u32 {
        self.max_frames
    }

    /// `gnttab_grow_table` (spec 8.3): grows to `target` frames. Caller holds the table's
    /// write-side section (`_w`). Allocates every frame first and publishes only when all
    /// allocations succeeded; on failure frees what this call allocated and changes nothing.
    pub(crate) fn grow(
        &self,
        _w: &<D::Table as TableSync>::Write<'_>,
        machine: &Machine,
        owner: DomId,
        target: u32,
    ) -> Result<(), GntSt> {
        let cur = self.nr_frames();
        if target <= cur {
            return Ok(());
        }
        if target > self.max_frames {
            return Err(GntSt::GeneralError);
        }
        let mut new = Vec::with_capacity((target - cur) as usize);
        for _ in cur..target {
            match machine.alloc_frame(owner, true) {
                Some(m) => new.push(m),
                None => {
                    for m in new {
                        // Hypervisor pages never make their owner a zombie.
                        let _ = machine.put_page(m);
                    }
                    return Err(GntSt::GeneralError);
                }
            }
        }
        for _ in cur..target {
            // The directories are sized for max_frames, so these cannot fail.
            self.shared
                .push_segment(|_| SharedEntry::default())
                .expect("shared directory sized for max_frames");
            self.active
                .push_segment(|_| ActiveEntry::default())
                .expect("active directory sized for max_frames");
        }
        self.frames.lock().extend(new);
        // Release: publishes the installed segments (see `entry`).
        self.nr_entries
            .store(target * self.per_frame, Ordering::Release);
        Ok(())
    }

    /// The machine frames of the first `n` grant frames.
    pub(crate) fn frame_list(&self, n: u32) -> Vec<Mfn> {
        self.frames
            .lock()
            .iter()
            .take(n as usize)
            .copied()
            .collect()
    }

    /// Frees the table's frames (final destruction).
    pub(crate) fn release_frames(&self, machine: &Machine) {
        for m in self.frames.lock().drain(..) {
            // Hypervisor pages never make their owner a zombie.
            let _ = machine.put_page(m);
        }
    }
}
