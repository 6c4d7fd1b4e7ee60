//! The guest ABI, mirroring Xen's public `xen/include/public/grant_table.h` for v1.
//!
//! Numeric values (flags, statuses, sizes) are Xen's, so a hypervisor embedding this crate can
//! hand them to guests unchanged. Newtypes keep domain ids, grant references, frame numbers and
//! handles from being mixed up. The op structs carry inputs and outputs in one value, as the C
//! structs do: the caller fills the inputs, the hypercall writes `status` and the outputs.

use bitflags::bitflags;
use core::fmt;

/// Bytes in a page (4 KiB pages only).
pub const PAGE_SIZE: usize = 4096;
/// log2(PAGE_SIZE).
pub const PAGE_SHIFT: u32 = 12;
/// v1 shared entries per grant frame (`SHGNT_PER_PAGE_V1`: 4096 / 8).
pub const SHGNT_PER_PAGE_V1: u32 = 512;
/// Maptrack entries per maptrack frame (`MAPTRACK_PER_PAGE`: 4096 / 16).
pub const MAPTRACK_PER_PAGE: u32 = 256;
/// Grant frames a domain gets at creation (`INITIAL_NR_GRANT_FRAMES`).
pub const INITIAL_NR_GRANT_FRAMES: u32 = 1;
/// System default for `max_grant_frames` (`gnttab_max_frames`).
pub const DEFAULT_MAX_GRANT_FRAMES: u32 = 64;
/// System default for `max_maptrack_frames` (`gnttab_max_maptrack_frames`).
pub const DEFAULT_MAX_MAPTRACK_FRAMES: u32 = 1024;
/// Refs 0..7 are reserved (console, xenstore, ...).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// Unmaps processed between two TLB flushes (`GNTTAB_UNMAP_BATCH_SIZE`).
pub const GNTTAB_UNMAP_BATCH_SIZE: usize = 32;
/// Compare-exchange attempts on a guest-writable word before giving up (XSA-295).
pub const GNTTAB_CMPXCHG_ATTEMPTS: u32 = 5;

/// A domain identifier (`domid_t`). Real domains are below [`DomId::FIRST_RESERVED`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct DomId(pub u16);

impl DomId {
    /// First reserved id; every real domain id is below it (so 15 bits suffice).
    pub const FIRST_RESERVED: DomId = DomId(0x7FF0);
    /// `DOMID_SELF`: "the calling domain" (only some lookups translate it).
    pub const SELF: DomId = DomId(0x7FF0);
    /// `DOMID_IO`: owner of I/O memory.
    pub const IO: DomId = DomId(0x7FF1);
    /// `DOMID_XEN`: owner of hypervisor pages.
    pub const XEN: DomId = DomId(0x7FF2);
    /// `DOMID_INVALID`.
    pub const INVALID: DomId = DomId(0x7FF4);

    /// Whether this names a real (non-reserved) domain.
    #[inline]
    pub const fn is_real(self) -> bool {
        self.0 < Self::FIRST_RESERVED.0
    }
}

impl fmt::Debug for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DomId::SELF => write!(f, "DOMID_SELF"),
            DomId::IO => write!(f, "DOMID_IO"),
            DomId::XEN => write!(f, "DOMID_XEN"),
            DomId::INVALID => write!(f, "DOMID_INVALID"),
            DomId(d) => write!(f, "d{d}"),
        }
    }
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A grant reference (`grant_ref_t`): an index into the granter's table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct GrantRef(pub u32);

impl fmt::Debug for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// A guest frame number: an index into a domain's P2M.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gfn(pub u64);

impl fmt::Debug for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gfn:{:#x}", self.0)
    }
}

/// A machine frame number: an index into the simulated machine's frame table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Mfn(pub u64);

impl Mfn {
    /// The byte address of the frame (`mfn << 12`), as returned in `dev_bus_addr` when the
    /// device address equals the machine address.
    #[inline]
    pub const fn addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl fmt::Debug for Mfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mfn:{:#x}", self.0)
    }
}

/// A grant handle (`grant_handle_t`) as returned by map and consumed by unmap. Its encoding
/// depends on the design; see [`crate::handle`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct GrantHandle(pub u32);

impl fmt::Debug for GrantHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "h{:#x}", self.0)
    }
}

bitflags! {
    /// `GNTMAP_*`: flags of a map operation. Bits 16..31 are the PTE "available" bits
    /// (`GNTMAP_guest_avail_mask`), which Xen passes through to PV PTEs but does not keep in
    /// the maptrack entry.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct GntMap: u32 {
        /// Map for device access (`GNTMAP_device_map`, bit 0).
        const DEVICE_MAP = 1 << 0;
        /// Map into the caller's address space (`GNTMAP_host_map`, bit 1).
        const HOST_MAP = 1 << 1;
        /// Read-only mapping (`GNTMAP_readonly`, bit 2).
        const READONLY = 1 << 2;
        /// User-accessible PV PTE (`GNTMAP_application_map`, bit 3).
        const APPLICATION_MAP = 1 << 3;
        /// `host_addr` is the machine address of the PTE (`GNTMAP_contains_pte`, bit 4).
        const CONTAINS_PTE = 1 << 4;
        /// PTE available bits (`GNTMAP_guest_avail_mask`).
        const GUEST_AVAIL_MASK = 0xFFFF_0000;
    }
}

/// `GTF_*` values of the 16-bit `flags` word of a shared entry.
pub mod gtf {
    /// Entry type mask (bits 0..1).
    pub const TYPE_MASK: u16 = 3;
    /// Free entry.
    pub const INVALID: u16 = 0;
    /// The named domain may map or copy the frame.
    pub const PERMIT_ACCESS: u16 = 1;
    /// The named domain may transfer a page into this slot.
    pub const ACCEPT_TRANSFER: u16 = 2;
    /// v2 only: transitive grant.
    pub const TRANSITIVE: u16 = 3;
    /// Grantee may only read.
    pub const READONLY: u16 = 1 << 2;
    /// Set by the hypervisor while the grant is in use (any pin).
    pub const READING: u16 = 1 << 3;
    /// Set by the hypervisor while the grant is in writable use.
    pub const WRITING: u16 = 1 << 4;
    /// Cache attribute bits (honoured only for MMIO).
    pub const PWT: u16 = 1 << 5;
    /// Cache attribute bit.
    pub const PCD: u16 = 1 << 6;
    /// Cache attribute bit.
    pub const PAT: u16 = 1 << 7;
    /// v2 only: sub-page grant.
    pub const SUB_PAGE: u16 = 1 << 8;
}

/// `GNTST_*`: per-element status of a grant-table operation. Values are Xen's (`int16_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(i16)]
pub enum GntSt {
    /// Normal return.
    #[default]
    Okay = 0,
    /// General undefined error.
    GeneralError = -1,
    /// Unrecognised domain id.
    BadDomain = -2,
    /// Unrecognised or inappropriate grant reference.
    BadGntref = -3,
    /// Unrecognised or inappropriate handle.
    BadHandle = -4,
    /// Inappropriate virtual address to map.
    BadVirtAddr = -5,
    /// Inappropriate device address to unmap.
    BadDevAddr = -6,
    /// Out of space in I/O MMU.
    NoDeviceSpace = -7,
    /// Not enough privilege for operation.
    PermissionDenied = -8,
    /// Specified page was invalid for op.
    BadPage = -9,
    /// Copy arguments cross page boundary.
    BadCopyArg = -10,
    /// Transfer page address too large.
    AddressTooBig = -11,
    /// Operation not done; try again.
    Eagain = -12,
    /// Out of space (handles).
    NoSpace = -13,
}

impl GntSt {
    /// Xen's numeric value.
    #[inline]
    pub const fn code(self) -> i16 {
        self as i16
    }

    /// The status with Xen's numeric value `v`, if there is one.
    pub const fn from_code(v: i16) -> Option<GntSt> {
        Some(match v {
            0 => GntSt::Okay,
            -1 => GntSt::GeneralError,
            -2 => GntSt::BadDomain,
            -3 => GntSt::BadGntref,
            -4 => GntSt::BadHandle,
            -5 => GntSt::BadVirtAddr,
            -6 => GntSt::BadDevAddr,
            -7 => GntSt::NoDeviceSpace,
            -8 => GntSt::PermissionDenied,
            -9 => GntSt::BadPage,
            -10 => GntSt::BadCopyArg,
            -11 => GntSt::AddressTooBig,
            -12 => GntSt::Eagain,
            -13 => GntSt::NoSpace,
            _ => return None,
        })
    }

    /// Xen's message for the status (`GNTTABOP_error_msgs`).
    pub const fn message(self) -> &'static str {
        match self {
            GntSt::Okay => "okay",
            GntSt::GeneralError => "undefined error",
            GntSt::BadDomain => "unrecognised domain id",
            GntSt::BadGntref => "invalid grant reference",
            GntSt::BadHandle => "invalid mapping handle",
            GntSt::BadVirtAddr => "invalid virtual address",
            GntSt::BadDevAddr => "invalid device address",
            GntSt::NoDeviceSpace => "no spare translation slot in the I/O MMU",
            GntSt::PermissionDenied => "permission denied",
            GntSt::BadPage => "bad page",
            GntSt::BadCopyArg => "copy arguments cross page boundary",
            GntSt::AddressTooBig => "page address size too large",
            GntSt::Eagain => "operation not done; try again",
            GntSt::NoSpace => "out of space",
        }
    }

    /// `self == GntSt::Okay`.
    #[inline]
    pub const fn is_ok(self) -> bool {
        matches!(self, GntSt::Okay)
    }
}

impl fmt::Display for GntSt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

/// Hypercall-level failure (the hypercall's return value, not a per-element status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Errno {
    /// `-EPERM`.
    Perm = -1,
    /// `-ESRCH`.
    Srch = -3,
    /// `-EAGAIN`.
    Again = -11,
    /// `-ENOMEM`.
    NoMem = -12,
    /// `-EFAULT`.
    Fault = -14,
    /// `-EBUSY`.
    Busy = -16,
    /// `-EINVAL`.
    Inval = -22,
    /// `-ENOSYS`.
    NoSys = -38,
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, *self as i32)
    }
}

impl std::error::Error for Errno {}

/// `GNTTABOP_*` opcodes (low 12 bits of `cmd`).
pub mod op {
    /// `GNTTABOP_map_grant_ref`.
    pub const MAP_GRANT_REF: u32 = 0;
    /// `GNTTABOP_unmap_grant_ref`.
    pub const UNMAP_GRANT_REF: u32 = 1;
    /// `GNTTABOP_setup_table`.
    pub const SETUP_TABLE: u32 = 2;
    /// `GNTTABOP_copy`.
    pub const COPY: u32 = 5;
    /// `GNTTABOP_query_size`.
    pub const QUERY_SIZE: u32 = 6;
    /// `GNTTABOP_get_version`.
    pub const GET_VERSION: u32 = 10;
}

/// `struct gnttab_map_grant_ref`: map the grant `ref` of domain `dom`.
///
/// Inputs: `host_addr`, `flags`, `ref_`, `dom`. Outputs: `status`, `handle`, `dev_bus_addr`
/// (only `status` is meaningful on failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MapGrantRef {
    /// IN: where to map (PV: linear address; HVM: guest-physical address; with
    /// `GNTMAP_contains_pte`: the machine address of the PTE).
    pub host_addr: u64,
    /// IN: `GNTMAP_*` bits, raw (unknown bits are kept, as in the C ABI).
    pub flags: u32,
    /// IN: the grant reference in the granter's table.
    pub ref_: GrantRef,
    /// IN: the granter.
    pub dom: DomId,
    /// OUT: result.
    pub status: GntSt,
    /// OUT: handle naming this mapping for unmap.
    pub handle: GrantHandle,
    /// OUT: bus address a device uses to reach the frame.
    pub dev_bus_addr: u64,
}

impl MapGrantRef {
    /// A map op with the given inputs and zeroed outputs.
    pub fn new(dom: DomId, ref_: GrantRef, flags: GntMap, host_addr: u64) -> Self {
        Self {
            host_addr,
            flags: flags.bits(),
            ref_,
            dom,
            ..Self::default()
        }
    }
}

/// `struct gnttab_unmap_grant_ref`: remove parts of a mapping.
///
/// `host_addr == 0` leaves the host part alone; `dev_bus_addr == 0` leaves the device part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnmapGrantRef {
    /// IN: the address the host part is mapped at (0 = keep the host part).
    pub host_addr: u64,
    /// IN: the device address of the device part (0 = keep the device part).
    pub dev_bus_addr: u64,
    /// IN: the handle map returned.
    pub handle: GrantHandle,
    /// OUT: result.
    pub status: GntSt,
}

impl UnmapGrantRef {
    /// An unmap op with the given inputs.
    pub fn new(handle: GrantHandle, host_addr: u64, dev_bus_addr: u64) -> Self {
        Self {
            host_addr,
            dev_bus_addr,
            handle,
            status: GntSt::Okay,
        }
    }
}

/// `struct gnttab_setup_table`: grow `dom`'s table to `nr_frames` frames and list them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SetupTable {
    /// IN: the domain (DOMID_SELF accepted).
    pub dom: DomId,
    /// IN: number of grant frames wanted.
    pub nr_frames: u32,
    /// OUT: result.
    pub status: GntSt,
    /// OUT: the frame numbers of the first `nr_frames` grant frames (machine frames, as a PV
    /// guest sees them).
    pub frame_list: Vec<Mfn>,
}

/// `struct gnttab_query_size`: current and maximum size of `dom`'s table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QuerySize {
    /// IN: the domain (DOMID_SELF accepted).
    pub dom: DomId,
    /// OUT: current number of grant frames.
    pub nr_frames: u32,
    /// OUT: the domain's `max_grant_frames`.
    pub max_nr_frames: u32,
    /// OUT: result.
    pub status: GntSt,
}

/// `GNTCOPY_*` flags of a copy element.
pub mod gntcopy {
    /// The source is a grant reference (else a frame of the caller).
    pub const SOURCE_GREF: u16 = 1 << 0;
    /// The destination is a grant reference (else a frame of the caller).
    pub const DEST_GREF: u16 = 1 << 1;
}

/// One side of a copy (`struct gnttab_copy_ptr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CopyPtr {
    /// A grant ref (low 32 bits) when the side's `_GREF` flag is set, else a gfn of the caller.
    pub u: u64,
    /// The domain owning the grant, or `DOMID_SELF` for a frame of the caller.
    pub domid: DomId,
    /// Byte offset in the page.
    pub offset: u16,
}

impl CopyPtr {
    /// A side naming grant `r` of domain `domid`.
    pub fn gref(domid: DomId, r: GrantRef, offset: u16) -> Self {
        Self {
            u: u64::from(r.0),
            domid,
            offset,
        }
    }
    /// A side naming the caller's own frame `gfn` (domid `DOMID_SELF`).
    pub fn gmfn(gfn: Gfn, offset: u16) -> Self {
        Self {
            u: gfn.0,
            domid: DomId::SELF,
            offset,
        }
    }
}

/// `struct gnttab_copy`: copy `len` bytes from `source` to `dest` inside the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GnttabCopy {
    /// IN: where to read.
    pub source: CopyPtr,
    /// IN: where to write.
    pub dest: CopyPtr,
    /// IN: bytes to copy (0 is a no-op that validates nothing).
    pub len: u16,
    /// IN: `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: result.
    pub status: GntSt,
}

impl GnttabCopy {
    /// A copy element with the given inputs; flags follow from the sides' kinds.
    pub fn new(
        source: CopyPtr,
        source_is_gref: bool,
        dest: CopyPtr,
        dest_is_gref: bool,
        len: u16,
    ) -> Self {
        Self {
            source,
            dest,
            len,
            flags: if source_is_gref {
                gntcopy::SOURCE_GREF
            } else {
                0
            } | if dest_is_gref { gntcopy::DEST_GREF } else { 0 },
            status: GntSt::Okay,
        }
    }
}

/// One grant-table hypercall: the opcode with its argument array, as `grant_table_op(cmd,
/// uop, count)` receives them (`count` is the slice length).
#[derive(Debug)]
pub enum GnttabOp<'a> {
    /// `GNTTABOP_map_grant_ref`.
    MapGrantRef(&'a mut [MapGrantRef]),
    /// `GNTTABOP_unmap_grant_ref`.
    UnmapGrantRef(&'a mut [UnmapGrantRef]),
    /// `GNTTABOP_setup_table` (count must be 1).
    SetupTable(&'a mut [SetupTable]),
    /// `GNTTABOP_query_size` (count must be 1).
    QuerySize(&'a mut [QuerySize]),
    /// `GNTTABOP_copy`.
    Copy(&'a mut [GnttabCopy]),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for v in -20i16..5 {
            if let Some(s) = GntSt::from_code(v) {
                assert_eq!(s.code(), v);
            }
        }
        assert_eq!(GntSt::NoSpace.code(), -13);
        assert_eq!(GntSt::BadCopyArg.code(), -10);
    }

    #[test]
    fn flag_values_match_xen() {
        assert_eq!(GntMap::DEVICE_MAP.bits(), 1);
        assert_eq!(GntMap::HOST_MAP.bits(), 2);
        assert_eq!(GntMap::READONLY.bits(), 4);
        assert_eq!(GntMap::APPLICATION_MAP.bits(), 8);
        assert_eq!(GntMap::CONTAINS_PTE.bits(), 16);
        assert_eq!(gtf::READING, 8);
        assert_eq!(gtf::WRITING, 16);
        assert_eq!(gtf::SUB_PAGE, 256);
    }
}
