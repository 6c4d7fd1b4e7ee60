//! The simulated machine: frames, the frame allocator, per-domain P2Ms, host mappings with a
//! TLB model, and (with the IOMMU issue) device address spaces.
//!
//! Only what the grant-table checks depend on is modelled (design.md section 3): frame owner,
//! page references, writable type references and real contents; P2M entries that are present,
//! paged out or absent; host page-table entries that can be created, validated and removed,
//! with a removed translation staying reachable until the batch's TLB flush.

pub(crate) mod frame;
mod host;
mod p2m;

pub use frame::Frame;
pub(crate) use frame::GetResult;
pub use host::{AccessFault, HostAddr, Pte};
pub(crate) use host::{AddressSpace, Tlb};
pub(crate) use p2m::P2m;
pub use p2m::P2mEntry;

use crate::abi::{DomId, Mfn};
use crate::segvec::SegDir;
use crate::sync::{AtomicU64, Mutex, Ordering};

/// Frames per segment of the frame table.
const FRAME_SEG: usize = 4096;

/// Configuration of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// Maximum number of frames (simulated RAM = 4 KiB times this).
    pub max_frames: u64,
}

impl Default for MachineConfig {
    fn default() -> Self {
        // 16 GiB of simulated RAM; frames are created on demand, contents on first touch.
        Self {
            max_frames: 1 << 22,
        }
    }
}

impl MachineConfig {
    /// A machine small enough for loom models.
    pub fn tiny() -> Self {
        Self { max_frames: 16 }
    }
}

#[derive(Debug, Default)]
struct AllocState {
    /// Frames returned by their last `put`, reused first.
    free: Vec<u64>,
    /// Frames ever created (the frame table's published length).
    created: u64,
}

/// Machine frames and their allocator.
#[derive(Debug)]
pub struct Machine {
    frames: SegDir<Frame>,
    /// Number of frames created, published with Release after their segment is installed.
    created: AtomicU64,
    alloc: Mutex<AllocState>,
    max_frames: u64,
    allocated: AtomicU64,
    /// RAM frames (not hypervisor pages) owned per domain id: a dying domain is destroyed
    /// for good when its count reaches 0 (spec 11.3: a zombie lives while foreign mappings
    /// hold its pages). Written only at allocation and free, never on map/unmap paths.
    owned: Box<[AtomicU64]>,
}

impl Machine {
    /// A machine with the given configuration, for domain ids below `max_domains`. Frame 0
    /// belongs to the hypervisor (`DOMID_XEN`) and is never given to a guest: an address of 0
    /// means "none" in the ABI (unmap's `dev_bus_addr == 0` keeps the device part).
    pub fn new(cfg: MachineConfig, max_domains: u16) -> Self {
        let segs = cfg.max_frames.div_ceil(FRAME_SEG as u64) as usize;
        let seg_len = (cfg.max_frames as usize)
            .clamp(1, FRAME_SEG)
            .next_power_of_two();
        let m = Self {
            frames: SegDir::new(seg_len, segs.max(1)),
            created: AtomicU64::new(0),
            alloc: Mutex::new(AllocState::default()),
            max_frames: cfg.max_frames,
            allocated: AtomicU64::new(0),
            owned: (0..max_domains).map(|_| AtomicU64::new(0)).collect(),
        };
        let zero = m.alloc_frame(DomId::XEN, true);
        debug_assert_eq!(zero, Some(Mfn(0)));
        m
    }

    /// The frame `mfn`, if it exists.
    #[inline]
    pub fn frame(&self, mfn: Mfn) -> Option<&Frame> {
        // Acquire: pairs with the Release store in `alloc_frame` after the segment install.
        if mfn.0 < self.created.load(Ordering::Acquire) {
            // SAFETY: mfn is below the published count of created frames.
            Some(unsafe { self.frames.get(mfn.0 as usize) })
        } else {
            None
        }
    }

    /// Frames currently allocated (frame 0, the hypervisor's, included).
    pub fn allocated_frames(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Frames ever created (an upper bound for walks).
    pub fn created_frames(&self) -> u64 {
        self.created.load(Ordering::Acquire)
    }

    /// Allocates a frame to `owner` with one (allocation) reference.
    pub(crate) fn alloc_frame(&self, owner: DomId, xenheap: bool) -> Option<Mfn> {
        let mut st = self.alloc.lock();
        let mfn = if let Some(m) = st.free.pop() {
            m
        } else {
            if st.created >= self.max_frames {
                return None;
            }
            let m = st.created;
            if m as usize >= self.frames.segments() * self.frames.seg_len() {
                self.frames.push_segment(|_| Frame::default()).ok()?;
            }
            st.created += 1;
            // Release: the segment (and its frames) happen-before any reader that sees the
            // new count.
            self.created.store(st.created, Ordering::Release);
            m
        };
        drop(st);
        let f = self.frame(Mfn(mfn)).expect("allocated frame exists");
        f.assign(owner, xenheap);
        self.allocated.fetch_add(1, Ordering::Relaxed);
        if !xenheap {
            if let Some(c) = self.owned.get(owner.0 as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(Mfn(mfn))
    }

    /// RAM frames domain `id` owns.
    pub fn owned_frames(&self, id: DomId) -> u64 {
        self.owned
            .get(id.0 as usize)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// `get_page`: takes a page reference on `mfn` if `owner` owns it. A `Some` return means
    /// the attempt freed the frame of that (dying) owner; see [`Machine::put_page`].
    #[inline]
    pub(crate) fn get_page(&self, mfn: Mfn, owner: DomId) -> (bool, Option<DomId>) {
        let Some(f) = self.frame(mfn) else {
            return (false, None);
        };
        match f.try_get(owner) {
            GetResult::Got => (true, None),
            GetResult::Refused => (false, None),
            GetResult::RefusedAndFreed(o) => (false, self.release_frame(mfn, o)),
        }
    }

    /// `put_page`: drops a page reference; the last one frees the frame. Returns the owner of
    /// a freed RAM frame whose owned count reached 0 (a zombie the caller must finalise).
    #[inline]
    #[must_use]
    pub(crate) fn put_page(&self, mfn: Mfn) -> Option<DomId> {
        let f = self
            .frame(mfn)
            .expect("put_page on a frame that does not exist");
        match f.put() {
            Some(owner) => self.release_frame(mfn, owner),
            None => None,
        }
    }

    fn release_frame(&self, mfn: Mfn, owner: u32) -> Option<DomId> {
        self.allocated.fetch_sub(1, Ordering::Relaxed);
        self.alloc.lock().free.push(mfn.0);
        if owner & frame::OWNER_XENHEAP != 0 {
            return None;
        }
        let id = DomId(owner as u16);
        let c = self.owned.get(id.0 as usize)?;
        // AcqRel: the last free of a domain's frames is ordered after every earlier one.
        (c.fetch_sub(1, Ordering::AcqRel) == 1).then_some(id)
    }

    /// `get_page_type(PGT_writable_page)`.
    #[inline]
    pub(crate) fn get_writable_type(&self, mfn: Mfn) -> bool {
        self.frame(mfn).is_some_and(Frame::get_writable_type)
    }

    /// `put_page_type`.
    #[inline]
    pub(crate) fn put_writable_type(&self, mfn: Mfn) {
        self.frame(mfn)
            .expect("put_page_type on a frame that does not exist")
            .put_writable_type();
    }
}
