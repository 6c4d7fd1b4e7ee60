//! # gnttab: Xen's grant tables, two locking designs, one ABI
//!
//! A model of a Xen-style hypervisor's grant table and maptrack subsystem over a simulated
//! machine (frames with real contents, P2Ms, host page tables with a TLB), faithful enough to
//! compare locking designs on real workloads and to be embedded by a Rust hypervisor.
//!
//! * The ABI ([`abi`]) mirrors Xen's public `grant_table.h` for v1: `GNTMAP_*`, `GTF_*`,
//!   `GNTST_*` with Xen's values, and op structs passed in arrays, one status each.
//! * Behaviour follows the project's specification (a paraphrase of Xen's `grant_table.c`):
//!   every check in order, every status, the two-phase unmap with one TLB flush per chunk of
//!   32, the bounded compare-exchange on guest-writable entries.
//! * A [`Design`](design::Design) composes strategies: table validity ([`table`]) and where a
//!   mapping is recorded ([`maptrack`]). [`Xen`](design::Xen) is upstream's current locking
//!   (per-CPU rwlock, per-vCPU maptrack free lists); [`Fast`](design::Fast) is the proposal of
//!   xen-devel's "Possible Xen grant table locking improvements" (grow-only tables checked
//!   lock-free, two inline maptrack slots per active entry).
//!
//! ## Trade-offs of the Fast design
//!
//! * Two maps of one grant by one mapper return the same (fast) handle; unmap tells them apart
//!   by address (see `docs/design.md`).
//! * A slow handle is allocated after the ref is validated, not before, so an exhausted maptrack
//!   table no longer masks a bad ref (Xen: `no_space`; Fast: `bad_gntref`).
//! * Grant frames cannot be released before the domain dies (they never could in v1 Xen either).
//!
//! ## Example
//!
//! ```
//! use gnttab::prelude::*;
//!
//! let hv = Hypervisor::<Xen>::new(HypervisorConfig::default());
//! let front = hv.create_domain(DomainConfig::new("front")).unwrap();
//! let back = hv.create_domain(DomainConfig::new("back")).unwrap();
//! let guest = hv.guest(front).unwrap();
//! guest.write_page(Gfn(1), 0, b"hello").unwrap();
//! guest.grant_access(GrantRef(8), back, Gfn(1), true).unwrap();
//!
//! let mut cx = hv.vcpu(back, 0).unwrap();
//! let mut m = [MapGrantRef::new(front, GrantRef(8), GntMap::HOST_MAP | GntMap::READONLY, 0x4000)];
//! cx.map_grant_ref(&mut m).unwrap();
//! assert_eq!(m[0].status, GntSt::Okay);
//!
//! let back_view = hv.guest(back).unwrap();
//! let mut buf = [0u8; 5];
//! back_view.read_mapped(HostAddr::Linear(0x4000), 0, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! // Read-only: writes through the mapping are refused.
//! assert_eq!(back_view.write_mapped(HostAddr::Linear(0x4000), 0, b"x"), Err(AccessFault::ReadOnly));
//!
//! // While mapped, the frontend cannot end access.
//! assert!(!guest.end_access(GrantRef(8)).unwrap());
//! let mut u = [UnmapGrantRef::new(m[0].handle, 0x4000, 0)];
//! cx.unmap_grant_ref(&mut u).unwrap();
//! assert!(guest.end_access(GrantRef(8)).unwrap());
//! assert!(hv.check().is_ok());
//! ```

#![warn(missing_docs)]

pub mod abi;
pub mod check;
pub mod design;
pub mod domain;
pub mod handle;
pub mod hooks;
pub mod hypervisor;
pub mod inspect;
pub mod iommu;
pub mod machine;
pub mod maptrack;
pub mod quota;
pub mod registry;
pub mod table;
pub mod teardown;

#[cfg(feature = "sim")]
pub mod sim;

pub mod grant;
mod ops;
mod reclaim;
mod rng;
mod segvec;
mod sync;

pub use design::{Design, Fast, Xen};
pub use hypervisor::{Guest, Hypervisor, HypervisorConfig, VcpuCtx};

/// Everything a typical user needs.
pub mod prelude {
    pub use crate::abi::{
        gntcopy, gtf, CopyPtr, DomId, Errno, Gfn, GntMap, GntSt, GnttabCopy, GnttabOp, GrantHandle,
        GrantRef, MapGrantRef, Mfn, QuerySize, SetupTable, UnmapGrantRef,
    };
    pub use crate::check::{CheckOptions, CheckReport, Violation};
    pub use crate::design::{
        Design, Fast, FastNoSlots, Xen, XenFastSlots, XenPerMapBfn, XenPlainRw,
    };
    pub use crate::domain::{Domain, DomainConfig, DomainKind, DomainState, DomainStats};
    pub use crate::grant::{pin, EntrySnapshot};
    pub use crate::hooks::{HookAction, HookCtx, HookPoint, Hooks};
    pub use crate::hypervisor::{
        DmaFault, EnterError, Guest, GuestError, Hypervisor, HypervisorConfig, KillError, VcpuCtx,
    };
    pub use crate::inspect::{
        ActiveInfo, DomainSnapshot, EntryInfo, FrameInfo, MaptrackInfo, SlotInfo, StateSnapshot,
    };
    pub use crate::iommu::IommuMode;
    pub use crate::machine::{AccessFault, HostAddr, MachineConfig, P2mEntry, Pte};
    pub use crate::quota::MapLimit;
    pub use crate::registry::CreateError;
    pub use crate::teardown::{Step, Teardown, TeardownStats};
}
