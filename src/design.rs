//! Designs: compositions of the strategies, behind one ABI.
//!
//! A design picks a table validity strategy ([`TableSync`]), an inline-slot policy
//! ([`SlotPolicy`]) and an IOMMU bookkeeping strategy ([`IommuPolicy`]). Every hypercall is
//! written once, generic over the design; the strategies are the only code that differs.
//! Besides the two designs the project compares, the same machinery gives ablations that show
//! which change buys what.
//!
//! | design            | table validity   | maptrack                      | strict IOMMU          |
//! |-------------------|------------------|-------------------------------|-----------------------|
//! | [`Xen`]           | per-CPU rwlock   | per-vCPU free lists           | per-MFN counts        |
//! | [`Fast`]          | lock-free        | two inline slots + slow table | per-map bus frames    |
//! | [`XenPlainRw`]    | plain rwlock     | per-vCPU free lists           | per-MFN counts        |
//! | [`XenFastSlots`]  | per-CPU rwlock   | two inline slots + slow table | per-MFN counts        |
//! | [`FastNoSlots`]   | lock-free        | per-vCPU free lists           | per-map bus frames    |
//! | [`XenPerMapBfn`]  | per-CPU rwlock   | per-vCPU free lists           | per-map bus frames    |

use crate::iommu::{IommuPolicy, MfnRefcount, PerMapBfn};
use crate::maptrack::{FastSlots, NoSlots, SlotPolicy};
use crate::table::{LockFree, PercpuRw, PlainRw, TableSync};
use core::fmt::Debug;

/// A composition of strategies (see the module docs).
pub trait Design: Send + Sync + Sized + Debug + 'static {
    /// Name used in reports and benchmark ids.
    const NAME: &'static str;
    /// Table validity strategy.
    type Table: TableSync;
    /// Inline maptrack slot policy.
    type Slots: SlotPolicy;
    /// IOMMU bookkeeping for strict-mode mappers.
    type Iommu: IommuPolicy;
}

/// The active-entry extension of design `D`.
pub(crate) type SlotExt<D> = <<D as Design>::Slots as SlotPolicy>::Ext;

/// Upstream Xen's current design (spec section 9): the anchor every figure is compared with.
#[derive(Debug)]
pub enum Xen {}
impl Design for Xen {
    const NAME: &'static str = "xen";
    type Table = PercpuRw;
    type Slots = NoSlots;
    type Iommu = MfnRefcount;
}

/// The proposal of seed 004: grow-only tables with lock-free validity checks and two inline
/// fast maptrack slots per active entry.
#[derive(Debug)]
pub enum Fast {}
impl Design for Fast {
    const NAME: &'static str = "fast";
    type Table = LockFree;
    type Slots = FastSlots;
    type Iommu = PerMapBfn;
}

/// Xen with a plain rwlock as the table lock (what Xen had before 2016): benchmark baseline.
#[derive(Debug)]
pub enum XenPlainRw {}
impl Design for XenPlainRw {
    const NAME: &'static str = "xen-plainrw";
    type Table = PlainRw;
    type Slots = NoSlots;
    type Iommu = MfnRefcount;
}

/// Ablation: Xen's table lock with the Fast design's inline slots.
#[derive(Debug)]
pub enum XenFastSlots {}
impl Design for XenFastSlots {
    const NAME: &'static str = "xen+fastslots";
    type Table = PercpuRw;
    type Slots = FastSlots;
    type Iommu = MfnRefcount;
}

/// Ablation: lock-free tables with Xen's free-list maptrack.
#[derive(Debug)]
pub enum FastNoSlots {}
impl Design for FastNoSlots {
    const NAME: &'static str = "fast-noslots";
    type Table = LockFree;
    type Slots = NoSlots;
    type Iommu = PerMapBfn;
}

/// Ablation: Xen's tables and maptrack with the Fast design's per-map bus frames.
#[derive(Debug)]
pub enum XenPerMapBfn {}
impl Design for XenPerMapBfn {
    const NAME: &'static str = "xen+permapbfn";
    type Table = PercpuRw;
    type Slots = NoSlots;
    type Iommu = PerMapBfn;
}

/// Names of every design, for command lines.
pub const DESIGN_NAMES: &[&str] = &[
    Fast::NAME,
    Xen::NAME,
    XenPlainRw::NAME,
    XenFastSlots::NAME,
    FastNoSlots::NAME,
    XenPerMapBfn::NAME,
];

/// Calls `$body` with the type alias `$D` bound to the design named `$name` (a `&str`);
/// evaluates to `Some(result)`, or `None` for an unknown name.
#[macro_export]
macro_rules! with_design {
    ($name:expr, $D:ident => $body:expr) => {{
        match $name {
            n if n == <$crate::design::Fast as $crate::design::Design>::NAME => {
                type $D = $crate::design::Fast;
                Some($body)
            }
            n if n == <$crate::design::Xen as $crate::design::Design>::NAME => {
                type $D = $crate::design::Xen;
                Some($body)
            }
            n if n == <$crate::design::XenPlainRw as $crate::design::Design>::NAME => {
                type $D = $crate::design::XenPlainRw;
                Some($body)
            }
            n if n == <$crate::design::XenFastSlots as $crate::design::Design>::NAME => {
                type $D = $crate::design::XenFastSlots;
                Some($body)
            }
            n if n == <$crate::design::FastNoSlots as $crate::design::Design>::NAME => {
                type $D = $crate::design::FastNoSlots;
                Some($body)
            }
            n if n == <$crate::design::XenPerMapBfn as $crate::design::Design>::NAME => {
                type $D = $crate::design::XenPerMapBfn;
                Some($body)
            }
            _ => None,
        }
    }};
}
