//! Deterministic pause and fault-injection points for tests and scenarios.
//!
//! A [`Hooks`] implementation installed in the hypervisor is called at fixed points inside
//! hypercalls. It can block (to hold a thread inside a window, as the XSA scenarios need: "pause
//! T1 after phase 1, before its flush") or ask the hypercall to fail at that point (a host
//! mapping that cannot be created). With no hooks installed each point costs one branch.

use crate::abi::DomId;
use core::fmt::Debug;

/// Where a hook is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// Map, spec 6.2 step 11: the pin is raised and every grant lock dropped; page references
    /// are about to be taken and the host mapping created. `Fail` makes the host mapping
    /// creation fail (the map is undone and returns `GNTST_general_error`).
    MapBeforeHostMapping,
    /// Map, spec 6.2 step 12: an IOMMU translation is about to be created for a mapper in
    /// strict mode. `Fail` makes the IOMMU operation fail (`GNTST_general_error`, map undone).
    IommuMap,
    /// Copy: before every element but the first. `Fail` preempts the hypercall there: cached
    /// buffers are released and the remaining elements run as a continuation (XSA-318).
    CopyPreempt,
    /// Unmap: phase 1 of a chunk is done (statuses written, host entries removed), the TLB
    /// flush has not happened yet: removed translations are still reachable.
    UnmapBeforeFlush,
    /// Unmap: the chunk's TLB flush is done, phase 2 (pins, references, status bits) has not
    /// started.
    UnmapAfterFlush,
}

/// Context passed to a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookCtx {
    /// The point reached.
    pub point: HookPoint,
    /// The calling domain.
    pub domain: DomId,
    /// The calling vCPU.
    pub vcpu: u16,
}

/// What the hypercall should do after the hook returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HookAction {
    /// Carry on.
    #[default]
    Continue,
    /// Fail the step at this point (only meaningful where the point's docs say so).
    Fail,
}

/// Test and scenario hooks.
pub trait Hooks: Send + Sync + Debug {
    /// Called at every hook point.
    fn at(&self, ctx: &HookCtx) -> HookAction;
}
