//! Maptrack strategies: where the hypervisor records a mapping so that unmap can find it.
//!
//! Every mapping domain has a [`Maptrack`] table with per-vCPU free lists (Xen's scheme,
//! spec 5). A [`SlotPolicy`] adds optional inline slots to each active entry:
//!
//! | policy        | per active entry       | map records the mapping in                        | handle     |
//! |---------------|------------------------|---------------------------------------------------|------------|
//! | [`NoSlots`]   | nothing                | the mapper's table, handle taken *before* the ref | index      |
//! |               |                        | check (Xen's order, spec 6.2 step 5)              |            |
//! | [`FastSlots`] | two [`FastSlot`]s      | a free inline slot (claimed under the entry lock);| fast, or   |
//! |               |                        | the third concurrent map of one gref, or a gref   | slow index |
//! |               |                        | >= 2^16, falls back to the mapper's table         |            |

mod fast;
mod freelist;

pub use fast::FastSlot;
pub(crate) use fast::{select_slot, SlotState};
pub(crate) use freelist::{Maptrack, MaptrackEntry, MAPTRACK_TAIL};

use core::fmt::Debug;

/// Inline-slot policy of a design (see the module docs).
pub trait SlotPolicy: Send + Sync + Debug + 'static {
    /// Whether the active entries carry fast slots.
    const ENABLED: bool;
    /// Short name used in benchmark ids and reports.
    const NAME: &'static str;
    /// The per-active-entry extension.
    type Ext: Send + Sync + Default + Debug;
    /// The extension's slots.
    fn slots(ext: &Self::Ext) -> &[FastSlot];
}

/// No inline slots: every mapping lives in the mapper's maptrack table (the Xen design).
#[derive(Debug)]
pub enum NoSlots {}

impl SlotPolicy for NoSlots {
    const ENABLED: bool = false;
    const NAME: &'static str = "freelist";
    type Ext = ();
    #[inline(always)]
    fn slots(_: &()) -> &[FastSlot] {
        &[]
    }
}

/// Two inline slots per active entry with slow-table fallback (the Fast design).
#[derive(Debug)]
pub enum FastSlots {}

impl SlotPolicy for FastSlots {
    const ENABLED: bool = true;
    const NAME: &'static str = "fastslots";
    type Ext = [FastSlot; 2];
    #[inline(always)]
    fn slots(ext: &[FastSlot; 2]) -> &[FastSlot] {
        ext
    }
}
