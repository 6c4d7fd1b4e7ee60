//! A small sequential reference model of the grant-table ABI, written from the specification
//! (`shared/spec/xen-grant-tables.md` sections 2-7 and 8.1/8.2/8.4), not from the crate's code.
//!
//! The model is plain data and straight-line code: no concurrency, no locks, one operation at a
//! time. It knows only the ABI types of the crate (`DomId`, `GntSt`, `GNTMAP_*`, `GTF_*`,
//! `GnttabCopy`, ...) and the frame numbers the harness tells it at domain creation (learned
//! through the public P2M lookup), and predicts, for every operation, the status the hypervisor
//! must return and the state the guest and the inspection API must see afterwards.
//!
//! What it tracks:
//!
//! | state                         | where                                                       |
//! |-------------------------------|-------------------------------------------------------------|
//! | domains                       | [`Domain`]: id, PV/HVM, P2M, grant frames, max              |
//! | shared entries (guest view)   | [`Entry::shared`]: flags incl. `GTF_reading/writing`, domid, frame |
//! | active state                  | [`Entry`]: four pin counters, grantee, frame                 |
//! | fast slots                    | [`Entry::slots`]: which mapping occupies each inline slot   |
//! | live mappings                 | [`Mapping`]: mapper, granter, gref, flags, addresses, handle |
//! | host page-table occupancy     | [`Domain::ptes`]: slot -> (frame, writable)                 |
//! | page / writable-type references, owner, non-writable type | [`Model::frames`]               |
//! | page contents (every byte)    | [`Model::pages`]                                            |
//!
//! Handles: the model never invents a slow (maptrack index) handle; the harness records the
//! value the hypervisor returned ([`Model::record_slow_handle`]). Fast handles (designs with
//! inline slots) are predicted from the documented encoding
//! `bit31 | granter << 16 | gref`.
//!
//! `GNTST_no_space` is modelled through the per-domain live-map limit (`MapLimit::Limit(n)`):
//! a map finding `n` live maps of its caller fails after pinning (every design takes the
//! quota unit there). Maptrack exhaustion itself is not modelled (domains get a large
//! `max_maptrack_frames`, and the default quota is as large).
//!
//! Grant copy ([`Model::copy`], spec 8.1) is modelled per batch: the domains and buffers a
//! batch caches across consecutive elements, `acquire_grant_for_copy` for v1 entries
//! (including the XSA-500 re-check of an upgraded entry's frame), the release order, and the
//! bytes. P2M changes (paged-out frames: `GNTST_eagain`; gfns pointing at another domain's
//! frame: `GNTST_bad_page`) and frames holding a non-writable type (refused writable type
//! references) are modelled for map and copy alike.
//!
//! Domain teardown ([`Model::kill`], spec 11) is modelled as one uninterrupted run: the
//! dying domain's mappings are released, its memory relinquished, and it stays a zombie
//! (still found by lookups; maps of it refused, copies of its pinned entries `bad_domain`)
//! until the last foreign reference to one of its frames goes.
//!
//! A copy batch can be run element by element ([`Model::copy_element`]); between elements
//! the model's state includes the cached buffers, so the harness compares it with the
//! hypervisor parked at the `CopyPreempt` hook, and models a preemption there
//! ([`Model::copy_preempt`]).
//!
//! Deliberately not modelled (the generators never reach them): machine out-of-memory, v2
//! (sub-page and transitive grants, so a copy window is always the whole page), transfer,
//! hook-injected map failures, a teardown interleaved with other operations, PTEs rewritten
//! behind the hypervisor's back.

#![allow(dead_code)]

use gnttab::abi::{gntcopy, gtf, DomId, GntMap, GntSt, GnttabCopy, Mfn, PAGE_SIZE};
use std::collections::BTreeMap;

/// v1 entries per grant frame.
pub const ENTRIES_PER_FRAME: u32 = 512;
/// Bit 31 of a handle: a fast handle (designs with inline slots).
pub const FAST_BIT: u32 = 1 << 31;

/// Index of each pin counter in [`Entry::pins`] (the order of `ActiveInfo::counters`).
pub const HSTW: usize = 0;
/// Host read-only.
pub const HSTR: usize = 1;
/// Device writable.
pub const DEVW: usize = 2;
/// Device read-only.
pub const DEVR: usize = 3;

/// Paging mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Paravirtualised: linear addresses, PTE RW bit checked on unmap.
    Pv,
    /// Translated: guest-physical addresses, no device/application/PTE maps.
    Hvm,
}

/// A guest-side helper failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestErr {
    /// The ref is beyond the table.
    BadRef,
    /// The gfn is not backed by a present frame.
    BadGfn,
    /// The access crosses the page.
    OutOfPage,
}

/// A P2M entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2m {
    /// Backed by this frame (not necessarily one the domain owns).
    Present(Mfn),
    /// Paged out (grant lookups say "try again").
    PagedOut(Mfn),
    /// No frame.
    Absent,
}

/// A shared v1 entry as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Shared {
    /// `GTF_*`.
    pub flags: u16,
    /// Grantee.
    pub domid: DomId,
    /// Granted gfn.
    pub frame: u32,
}

/// Identifier of a mapping inside the model.
pub type MapId = u64;

/// One grant entry: shared half, active half, fast slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Guest-visible.
    pub shared: Shared,
    /// `[hstw, hstr, devw, devr]`.
    pub pins: [u32; 4],
    /// The grantee holding the pins (meaningful while pinned).
    pub act_domid: DomId,
    /// The frame captured when the pin went non-zero (meaningful while pinned).
    pub act_mfn: Mfn,
    /// Inline slots (designs with fast slots): the mapping in each.
    pub slots: [Option<MapId>; 2],
}

impl Entry {
    /// Any pin.
    pub fn pinned(&self) -> bool {
        self.pins.iter().any(|&c| c != 0)
    }
    /// A writable pin (`hstw + devw > 0`).
    pub fn writable_pinned(&self) -> bool {
        self.pins[HSTW] + self.pins[DEVW] != 0
    }
}

/// A host page-table entry (every one the model knows is a grant mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pte {
    /// Frame mapped.
    pub mfn: Mfn,
    /// RW bit.
    pub writable: bool,
    /// User bit (PV `GNTMAP_application_map`).
    pub user: bool,
}

/// A domain.
#[derive(Clone, Debug)]
pub struct Domain {
    /// Id.
    pub id: DomId,
    /// PV or HVM.
    pub kind: Kind,
    /// Control domain.
    pub privileged: bool,
    /// The frames allocated at creation (index: the gfn they were populated at).
    pub frames: Vec<Mfn>,
    /// gfn -> entry (gfns beyond are absent); starts as `Present(frames[gfn])`.
    pub p2m: Vec<P2m>,
    /// Current grant frames.
    pub nr_frames: u32,
    /// `max_grant_frames`.
    pub max_frames: u32,
    /// Slots of the host address space.
    pub host_slots: u64,
    /// Most live maps this domain may hold (`None`: no limit reached in practice).
    pub map_limit: Option<u32>,
    /// Entries ever touched (others are all-zero).
    pub entries: BTreeMap<u32, Entry>,
    /// Host PTEs by slot.
    pub ptes: BTreeMap<u64, Pte>,
    /// Killed (a zombie while it still owns frames; removed from the model once destroyed).
    pub dying: bool,
}

impl Domain {
    /// Number of usable refs.
    pub fn nr_entries(&self) -> u32 {
        self.nr_frames * ENTRIES_PER_FRAME
    }

    fn entry_mut(&mut self, gref: u32) -> &mut Entry {
        self.entries.entry(gref).or_default()
    }

    /// The entry (all-zero if never touched).
    pub fn entry(&self, gref: u32) -> Entry {
        self.entries.get(&gref).cloned().unwrap_or_default()
    }

    /// The page-table slot `host_addr` names for a mapping with `flags` (spec 6.1: PV
    /// `contains_pte` names the PTE's machine address, 8-byte aligned; otherwise a page
    /// address whose offset is ignored).
    pub fn slot_of(&self, host_addr: u64, flags: u32) -> Option<u64> {
        let s = if self.kind == Kind::Pv && flags & GntMap::CONTAINS_PTE.bits() != 0 {
            if host_addr % 8 != 0 {
                return None;
            }
            host_addr / 8
        } else {
            host_addr >> 12
        };
        (s < self.host_slots).then_some(s)
    }
}

/// How a live mapping is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handle {
    /// Inline slot `slot` of the granter's active entry; handle value `value`.
    Fast {
        /// Slot index.
        slot: usize,
        /// The fast handle.
        value: u32,
    },
    /// A maptrack handle; `None` until the harness records the value map returned.
    Slow(Option<u32>),
}

/// A live mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Mapper.
    pub mapper: DomId,
    /// Granter.
    pub granter: DomId,
    /// Grant ref.
    pub gref: u32,
    /// Remaining `GNTMAP_*` bits (low 16 bits of the map flags, parts removed by unmaps).
    pub flags: u32,
    /// `host_addr` given to map.
    pub host_addr: u64,
    /// `dev_bus_addr` map returned.
    pub bus: u64,
    /// The frame.
    pub mfn: Mfn,
    /// How it is named.
    pub handle: Handle,
}

impl Mapping {
    fn has(&self, f: GntMap) -> bool {
        self.flags & f.bits() != 0
    }
    /// Read-only mapping.
    pub fn readonly(&self) -> bool {
        self.has(GntMap::READONLY)
    }
}

/// Page and writable-type references of a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCount {
    /// Page references (the allocation holds one).
    pub refs: u32,
    /// Writable type references.
    pub types: u32,
    /// Owner.
    pub owner: DomId,
    /// The frame holds a non-writable type (writable type references are refused).
    pub other: bool,
}

/// The prediction for one map element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapResult {
    /// Status.
    pub status: GntSt,
    /// On success: the new mapping.
    pub mapping: Option<MapId>,
    /// On success: `dev_bus_addr` (`mfn << 12`).
    pub dev_bus_addr: u64,
    /// On success with a fast slot: the handle value.
    pub fast_handle: Option<u32>,
}

impl MapResult {
    fn fail(status: GntSt) -> Self {
        Self {
            status,
            mapping: None,
            dev_bus_addr: 0,
            fast_handle: None,
        }
    }
}

/// Inputs of a map element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapIn {
    /// Granter.
    pub dom: DomId,
    /// Ref.
    pub gref: u32,
    /// Raw `GNTMAP_*` bits.
    pub flags: u32,
    /// Host address.
    pub host_addr: u64,
}

/// The whole model.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// The design records mappings in inline fast slots first.
    pub fast_slots: bool,
    /// Domains by id.
    pub domains: BTreeMap<DomId, Domain>,
    /// Live mappings.
    pub mappings: BTreeMap<MapId, Mapping>,
    /// Frame accounting of every domain frame.
    pub frames: BTreeMap<Mfn, FrameCount>,
    /// Contents of every domain frame (all zero at creation).
    pub pages: BTreeMap<Mfn, Vec<u8>>,
    /// How often each copy path was taken (generator coverage, see `tests/properties.rs`).
    pub hits: BTreeMap<&'static str, u64>,
    /// Domains destroyed for good (no longer found by any lookup).
    pub gone: Vec<DomId>,
    next_map: MapId,
}

/// The pin increments of a map with `flags` (spec 1.3), as `[hstw, hstr, devw, devr]`.
pub fn incr_for(flags: u32) -> [u32; 4] {
    let ro = flags & GntMap::READONLY.bits() != 0;
    let mut inc = [0; 4];
    if flags & GntMap::HOST_MAP.bits() != 0 {
        inc[if ro { HSTR } else { HSTW }] = 1;
    }
    if flags & GntMap::DEVICE_MAP.bits() != 0 {
        inc[if ro { DEVR } else { DEVW }] = 1;
    }
    inc
}

/// The fast handle naming `gref` of `granter` (documented layout), if encodable.
pub fn fast_handle(granter: DomId, gref: u32) -> Option<u32> {
    (gref < (1 << 16) && u32::from(granter.0) < (1 << 15))
        .then(|| FAST_BIT | u32::from(granter.0) << 16 | gref)
}

impl Model {
    /// An empty model; `fast_slots` for designs with inline slots.
    pub fn new(fast_slots: bool) -> Self {
        Self {
            fast_slots,
            ..Self::default()
        }
    }

    /// Registers a domain created with one grant frame and the given frames at gfn 0...
    #[allow(clippy::too_many_arguments)]
    pub fn add_domain(
        &mut self,
        id: DomId,
        kind: Kind,
        privileged: bool,
        frames: Vec<Mfn>,
        max_frames: u32,
        host_slots: u64,
        map_limit: Option<u32>,
    ) {
        for &m in &frames {
            self.frames.insert(
                m,
                FrameCount {
                    refs: 1,
                    types: 0,
                    owner: id,
                    other: false,
                },
            );
            self.pages.insert(m, vec![0; PAGE_SIZE]);
        }
        let p2m = frames.iter().map(|&m| P2m::Present(m)).collect();
        self.domains.insert(
            id,
            Domain {
                id,
                kind,
                privileged,
                frames,
                p2m,
                nr_frames: 1,
                max_frames,
                host_slots,
                map_limit,
                entries: BTreeMap::new(),
                ptes: BTreeMap::new(),
                dying: false,
            },
        );
    }

    /// The domain `id` (panics if unknown: harness bug).
    pub fn dom(&self, id: DomId) -> &Domain {
        &self.domains[&id]
    }

    fn dom_mut(&mut self, id: DomId) -> &mut Domain {
        self.domains.get_mut(&id).expect("known domain")
    }

    /// Live mappings of `mapper`, in creation order.
    pub fn mappings_of(&self, mapper: DomId) -> Vec<(MapId, Mapping)> {
        self.mappings
            .iter()
            .filter(|(_, m)| m.mapper == mapper)
            .map(|(&k, m)| (k, m.clone()))
            .collect()
    }

    /// The handle value naming mapping `id` (slow handles must have been recorded).
    pub fn handle_value(&self, id: MapId) -> u32 {
        match self.mappings[&id].handle {
            Handle::Fast { value, .. } => value,
            Handle::Slow(Some(h)) => h,
            Handle::Slow(None) => panic!("slow handle of mapping {id} not recorded"),
        }
    }

    /// Records the slow handle map returned for mapping `id`.
    pub fn record_slow_handle(&mut self, id: MapId, h: u32) {
        let m = self.mappings.get_mut(&id).expect("live mapping");
        assert!(
            matches!(m.handle, Handle::Slow(None)),
            "handle recorded twice"
        );
        m.handle = Handle::Slow(Some(h));
    }

    fn guest_entry(&mut self, dom: DomId, gref: u32) -> Result<&mut Entry, GuestErr> {
        let d = self.dom_mut(dom);
        if gref >= d.nr_entries() {
            return Err(GuestErr::BadRef);
        }
        Ok(d.entry_mut(gref))
    }

    // ---------------------------------------------------------------- guest side (spec 2)

    /// Guest grants `gfn` to `grantee` (spec 2.2: domid, frame, then flags = permit_access
    /// [| readonly]). Overwrites the status bits too (a guest re-granting an in-use entry
    /// breaks the protocol; the harness decides whether that is allowed).
    pub fn grant_access(
        &mut self,
        dom: DomId,
        gref: u32,
        grantee: DomId,
        gfn: u32,
        readonly: bool,
    ) -> Result<(), GuestErr> {
        let e = self.guest_entry(dom, gref)?;
        e.shared = Shared {
            flags: gtf::PERMIT_ACCESS | if readonly { gtf::READONLY } else { 0 },
            domid: grantee,
            frame: gfn,
        };
        Ok(())
    }

    /// Guest ends access (spec 2.3): fails while reading or writing is set, else flags -> 0
    /// (domid and frame stay).
    pub fn end_access(&mut self, dom: DomId, gref: u32) -> Result<bool, GuestErr> {
        let e = self.guest_entry(dom, gref)?;
        if e.shared.flags & (gtf::READING | gtf::WRITING) != 0 {
            return Ok(false);
        }
        e.shared.flags = 0;
        Ok(true)
    }

    /// Raw guest store of the whole entry.
    pub fn write_raw(
        &mut self,
        dom: DomId,
        gref: u32,
        flags: u16,
        domid: DomId,
        frame: u32,
    ) -> Result<(), GuestErr> {
        self.guest_entry(dom, gref)?.shared = Shared {
            flags,
            domid,
            frame,
        };
        Ok(())
    }

    /// Raw guest store of the flags only.
    pub fn write_flags(&mut self, dom: DomId, gref: u32, flags: u16) -> Result<(), GuestErr> {
        self.guest_entry(dom, gref)?.shared.flags = flags;
        Ok(())
    }

    /// Raw guest store of the frame only.
    pub fn write_frame(&mut self, dom: DomId, gref: u32, frame: u32) -> Result<(), GuestErr> {
        self.guest_entry(dom, gref)?.shared.frame = frame;
        Ok(())
    }

    // ---------------------------------------------------------------- memory

    /// The P2M entry of `dom`'s `gfn` (absent beyond the P2M).
    pub fn p2m(&self, dom: DomId, gfn: u64) -> P2m {
        usize::try_from(gfn)
            .ok()
            .and_then(|g| self.dom(dom).p2m.get(g).copied())
            .unwrap_or(P2m::Absent)
    }

    /// Toolstack P2M update (page out, page in, point at another frame); returns the old
    /// entry, `None` beyond the P2M. References are not touched (the harness keeps every
    /// allocated frame reachable from its owner's P2M whenever it compares).
    pub fn set_p2m(&mut self, dom: DomId, gfn: u64, e: P2m) -> Option<P2m> {
        let slot = self.dom_mut(dom).p2m.get_mut(usize::try_from(gfn).ok()?)?;
        Some(std::mem::replace(slot, e))
    }

    /// `get_paged_frame` (spec 8.1 step 3, 6.2 step 9): the frame behind `dom`'s `gfn`, with
    /// a page reference; paged out -> `eagain`, absent or not owned by `dom` -> `bad_page`.
    fn get_paged_frame(&mut self, dom: DomId, gfn: u64) -> Result<Mfn, GntSt> {
        match self.p2m(dom, gfn) {
            P2m::Present(m) if self.frames[&m].owner == dom => {
                self.frames.get_mut(&m).expect("known frame").refs += 1;
                Ok(m)
            }
            P2m::PagedOut(_) => Err(GntSt::Eagain),
            P2m::Present(_) => {
                self.hit("p2m: another domain's frame");
                Err(GntSt::BadPage)
            }
            P2m::Absent => Err(GntSt::BadPage),
        }
    }

    fn hit(&mut self, path: &'static str) {
        *self.hits.entry(path).or_default() += 1;
    }

    /// Drops a page reference. The last one frees the frame; a dying owner that owns no
    /// frame any more is destroyed for good.
    fn put_page(&mut self, m: Mfn) {
        let fc = self.frames.get_mut(&m).expect("known frame");
        fc.refs = fc.refs.checked_sub(1).expect("page reference underflow");
        if fc.refs != 0 {
            return;
        }
        let owner = std::mem::replace(&mut fc.owner, DomId::INVALID);
        let dying = self.domains.get(&owner).is_some_and(|d| d.dying);
        if dying && !self.frames.values().any(|f| f.owner == owner) {
            self.hit("teardown: domain destroyed");
            self.domains.remove(&owner);
            self.gone.push(owner);
        }
    }

    /// `get_page_type(PGT_writable_page)`: refused while the frame holds another type.
    fn get_writable_type(&mut self, m: Mfn) -> bool {
        let fc = self.frames.get_mut(&m).expect("known frame");
        if fc.other {
            return false;
        }
        fc.types += 1;
        true
    }

    fn put_writable_type(&mut self, m: Mfn) {
        let fc = self.frames.get_mut(&m).expect("known frame");
        fc.types = fc.types.checked_sub(1).expect("type reference underflow");
    }

    /// Gives frame `m` a non-writable type (`on`) or takes it away: only while no writable
    /// type reference exists (and, to take it away, while it has one). Returns success.
    pub fn set_other_type(&mut self, m: Mfn, on: bool) -> bool {
        let fc = self.frames.get_mut(&m).expect("known frame");
        if fc.types != 0 || fc.other == on {
            return false;
        }
        fc.other = on;
        true
    }

    /// The frame a guest access to its own `gfn` reaches (a present P2M entry).
    fn guest_frame(&self, dom: DomId, gfn: u64) -> Result<Mfn, GuestErr> {
        match self.p2m(dom, gfn) {
            P2m::Present(m) => Ok(m),
            _ => Err(GuestErr::BadGfn),
        }
    }

    /// Guest store into its own memory.
    pub fn write_page(
        &mut self,
        dom: DomId,
        gfn: u64,
        offset: usize,
        data: &[u8],
    ) -> Result<(), GuestErr> {
        if offset + data.len() > PAGE_SIZE {
            return Err(GuestErr::OutOfPage);
        }
        let m = self.guest_frame(dom, gfn)?;
        self.pages.get_mut(&m).expect("known frame")[offset..offset + data.len()]
            .copy_from_slice(data);
        Ok(())
    }

    /// What a guest reading its whole `gfn` sees.
    pub fn read_page(&self, dom: DomId, gfn: u64) -> Result<&[u8], GuestErr> {
        let m = self.guest_frame(dom, gfn)?;
        Ok(&self.pages[&m])
    }

    // ---------------------------------------------------------------- map (spec 6.2)

    /// One map element issued by `mapper` (elements of a batch are independent and run in
    /// order, spec 4).
    pub fn map(&mut self, mapper: DomId, op: MapIn) -> MapResult {
        let flags = op.flags;
        let host = flags & GntMap::HOST_MAP.bits() != 0;
        let dev = flags & GntMap::DEVICE_MAP.bits() != 0;
        let ro = flags & GntMap::READONLY.bits() != 0;
        let ld_kind = self.dom(mapper).kind;

        // 1. Neither part: bad_gntref.
        if !host && !dev {
            return MapResult::fail(GntSt::BadGntref);
        }
        // 2. Translated caller with device, application or PTE flags.
        let pv_only = (GntMap::DEVICE_MAP | GntMap::APPLICATION_MAP | GntMap::CONTAINS_PTE).bits();
        if ld_kind == Kind::Hvm && flags & pv_only != 0 {
            return MapResult::fail(GntSt::GeneralError);
        }
        // 3. Lookup by id (DOMID_SELF is not translated).
        let Some(rd) = self.domains.get(&op.dom) else {
            return MapResult::fail(GntSt::BadDomain);
        };
        // A dying granter: refused outright (spec 6.2 note; the simulator's choice).
        if rd.dying {
            return MapResult::fail(GntSt::GeneralError);
        }
        let rd_kind = rd.kind;
        // 5. Handle allocation: never exhausted in the model.
        // 6. Ref range.
        if op.gref >= rd.nr_entries() {
            return MapResult::fail(GntSt::BadGntref);
        }
        let incr = incr_for(flags);
        let mut e = rd.entry(op.gref);
        let was_pinned = e.pinned();
        // 7. Pinned by another grantee, or a counter about to overflow (>= 128).
        if was_pinned
            && (e.act_domid != mapper
                || incr
                    .iter()
                    .zip(e.pins)
                    .any(|(&inc, pin)| inc != 0 && pin >= 128))
        {
            return MapResult::fail(GntSt::GeneralError);
        }
        // 8. First use or first writable use: _set_status (spec 3.1).
        if !was_pinned || (!ro && !e.writable_pinned()) {
            let f = e.shared.flags;
            if !was_pinned
                && ((f & (gtf::TYPE_MASK | gtf::SUB_PAGE)) != gtf::PERMIT_ACCESS
                    || e.shared.domid != mapper)
            {
                return MapResult::fail(GntSt::GeneralError);
            }
            if !ro && f & gtf::READONLY != 0 {
                return MapResult::fail(GntSt::GeneralError);
            }
            e.shared.flags |= gtf::READING | if ro { 0 } else { gtf::WRITING };
        }
        // 9. First use: translate the gfn (paged out -> eagain, absent or foreign ->
        //    bad_page; status bits rolled back). The page reference taken here is the first
        //    part's, counted with the others on success below.
        if !was_pinned {
            match self.get_paged_frame(op.dom, u64::from(e.shared.frame)) {
                Ok(m) => {
                    self.put_page(m);
                    e.act_domid = mapper;
                    e.act_mfn = m;
                }
                Err(st) => {
                    e.shared.flags &= !(gtf::READING | if ro { 0 } else { gtf::WRITING });
                    self.dom_mut(op.dom).entries.insert(op.gref, e);
                    return MapResult::fail(st);
                }
            }
        }
        // 10. Pin; a free inline slot (first free one) if the design has them.
        add_pins(&mut e.pins, incr, 1);
        let mfn = e.act_mfn;
        let fast = if self.fast_slots {
            fast_handle(op.dom, op.gref)
                .and_then(|v| e.slots.iter().position(Option::is_none).map(|s| (s, v)))
        } else {
            None
        };
        // The live-map quota: one unit per live map, taken after the pin.
        let live = self
            .mappings
            .values()
            .filter(|m| m.mapper == mapper)
            .count();
        let over_quota = self
            .dom(mapper)
            .map_limit
            .is_some_and(|n| live >= n as usize);
        // 11. Writable type references (device part; host part of a PV granter or a self
        //     map), then the host mapping (references are only counted on success below).
        let types = u32::from(dev && !ro)
            + u32::from(host && !ro && (mapper == op.dom || rd_kind == Kind::Pv));
        let mut pte_slot = None;
        let mut failed = over_quota || (types != 0 && self.frames[&mfn].other);
        if host && !failed {
            let ld = self.dom(mapper);
            let hvm_ok =
                ld_kind == Kind::Pv || flags & !(GntMap::HOST_MAP | GntMap::READONLY).bits() == 0;
            match ld.slot_of(op.host_addr, flags) {
                Some(s) if hvm_ok && !ld.ptes.contains_key(&s) => pte_slot = Some(s),
                _ => failed = true,
            }
        }
        if failed {
            // undo_out: drop the pin, then reduce_status_for_pin (spec 3.2).
            add_pins(&mut e.pins, incr, -1);
            clear_status(&mut e, ro);
            self.dom_mut(op.dom).entries.insert(op.gref, e);
            return MapResult::fail(if over_quota {
                GntSt::NoSpace
            } else {
                GntSt::GeneralError
            });
        }
        // 13-14. Publish.
        let id = self.next_map;
        self.next_map += 1;
        if let Some((s, _)) = fast {
            e.slots[s] = Some(id);
        }
        self.dom_mut(op.dom).entries.insert(op.gref, e);
        if let Some(s) = pte_slot {
            let user = flags & GntMap::APPLICATION_MAP.bits() != 0;
            self.dom_mut(mapper).ptes.insert(
                s,
                Pte {
                    mfn,
                    writable: !ro,
                    user,
                },
            );
        }
        let fc = self.frames.get_mut(&mfn).expect("granted frame");
        fc.refs += u32::from(host) + u32::from(dev);
        fc.types += types;
        let bus = mfn.0 << 12;
        self.mappings.insert(
            id,
            Mapping {
                mapper,
                granter: op.dom,
                gref: op.gref,
                flags: flags & 0xFFFF,
                host_addr: op.host_addr,
                bus,
                mfn,
                handle: match fast {
                    Some((slot, value)) => Handle::Fast { slot, value },
                    None => Handle::Slow(None),
                },
            },
        );
        MapResult {
            status: GntSt::Okay,
            mapping: Some(id),
            dev_bus_addr: bus,
            fast_handle: fast.map(|(_, v)| v),
        }
    }

    // ---------------------------------------------------------------- unmap (spec 7)

    /// The mapping an unmap of `handle` by `mapper` names, or `bad_handle`.
    fn resolve(
        &self,
        mapper: DomId,
        handle: u32,
        host_addr: u64,
        dev_bus_addr: u64,
    ) -> Result<MapId, GntSt> {
        if self.fast_slots && handle & FAST_BIT != 0 {
            // Fast handle: granter and ref are in the handle; the entry must be pinned by the
            // caller and hold a live slot (src/maptrack/fast.rs `select_slot`).
            let granter = DomId(((handle & !FAST_BIT) >> 16) as u16);
            let gref = handle & 0xFFFF;
            let rd = self.domains.get(&granter).ok_or(GntSt::BadHandle)?;
            if gref >= rd.nr_entries() {
                return Err(GntSt::BadHandle);
            }
            let e = rd.entry(gref);
            if !e.pinned() || e.act_domid != mapper {
                return Err(GntSt::BadHandle);
            }
            let live: Vec<(usize, &Mapping, MapId)> = e
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|id| (i, &self.mappings[&id], id)))
                .collect();
            select_slot(&live, host_addr, dev_bus_addr).ok_or(GntSt::BadHandle)
        } else {
            // Maptrack handle: names one of the caller's own live slow mappings, or nothing.
            self.mappings
                .iter()
                .find(|(_, m)| m.mapper == mapper && m.handle == Handle::Slow(Some(handle)))
                .map(|(&id, _)| id)
                .ok_or(GntSt::BadHandle)
        }
    }

    /// One unmap element issued by `mapper` (a batch behaves as the elements in order: spec
    /// 7.3's chunking changes when references drop, not what any element observes).
    pub fn unmap(
        &mut self,
        mapper: DomId,
        handle: u32,
        host_addr: u64,
        dev_bus_addr: u64,
    ) -> GntSt {
        let id = match self.resolve(mapper, handle, host_addr, dev_bus_addr) {
            Ok(id) => id,
            Err(st) => return st,
        };
        let m = self.mappings[&id].clone();
        let ro = m.readonly();
        // 8. A named device part must be named by its exact address.
        if dev_bus_addr != 0 && m.has(GntMap::DEVICE_MAP) && dev_bus_addr != m.bus {
            return GntSt::BadDevAddr;
        }
        let mut done = 0u32;
        // 9-10. The PTE at host_addr must map the frame; PV: with the present, RW and user
        //       bits the mapping implies (Xen compares every PTE flag but the available and
        //       cache bits since XSA-234; the spec's table names present and RW).
        if host_addr != 0 && m.has(GntMap::HOST_MAP) {
            let ld = self.dom(mapper);
            let Some(slot) = ld.slot_of(host_addr, m.flags) else {
                return GntSt::GeneralError;
            };
            let ok = match ld.ptes.get(&slot) {
                Some(p) => {
                    p.mfn == m.mfn
                        && (ld.kind == Kind::Hvm
                            || (p.writable != ro && p.user == m.has(GntMap::APPLICATION_MAP)))
                }
                None => false,
            };
            if !ok {
                return GntSt::GeneralError;
            }
            self.dom_mut(mapper).ptes.remove(&slot);
            done |= GntMap::HOST_MAP.bits();
        }
        // 11.
        if dev_bus_addr != 0 && m.has(GntMap::DEVICE_MAP) {
            done |= GntMap::DEVICE_MAP.bits();
        }
        if done == 0 {
            // Names no part the mapping has: a successful no-op.
            return GntSt::Okay;
        }
        // 12. Remaining parts; none left frees the handle (or slot).
        let rest = m.flags & !done;
        let parts = (GntMap::HOST_MAP | GntMap::DEVICE_MAP).bits();
        let freed = rest & parts == 0;
        if freed {
            self.mappings.remove(&id);
        } else {
            self.mappings.get_mut(&id).expect("live").flags = rest;
        }
        self.release_parts(&m, done, freed);
        GntSt::Okay
    }

    /// Unmap phase 2 (and teardown, spec 11.2) for the parts `done` of mapping `m`: pins and
    /// status bits (spec 3.2), then type and page references; `freed`: the mapping is gone
    /// (its inline slot too).
    fn release_parts(&mut self, m: &Mapping, done: u32, freed: bool) {
        let ro = m.readonly();
        let host = done & GntMap::HOST_MAP.bits() != 0;
        let dev = done & GntMap::DEVICE_MAP.bits() != 0;
        let self_map = m.mapper == m.granter;
        let rd_pv = self.dom(m.granter).kind == Kind::Pv;
        let dec = incr_for(done | if ro { GntMap::READONLY.bits() } else { 0 });
        let e = self.dom_mut(m.granter).entry_mut(m.gref);
        add_pins(&mut e.pins, dec, -1);
        if freed {
            if let Handle::Fast { slot, .. } = m.handle {
                e.slots[slot] = None;
            }
        }
        clear_status(e, ro);
        let types = u32::from(dev && !ro) + u32::from(host && !ro && (self_map || rd_pv));
        for _ in 0..types {
            self.put_writable_type(m.mfn);
        }
        for _ in 0..u32::from(host) + u32::from(dev) {
            self.put_page(m.mfn);
        }
    }

    // ---------------------------------------------------------------- teardown (spec 11)

    /// `domain_kill` of `id` run to completion: as mapper, every mapping is released (spec
    /// 11.2) and its host page tables go; its memory is relinquished (P2M emptied, allocation
    /// references dropped). Returns (mappings released, destroyed for good now). A granted
    /// frame still referenced by a foreign mapping keeps the domain a zombie (spec 11.3).
    pub fn kill(&mut self, id: DomId) -> (u64, bool) {
        self.dom_mut(id).dying = true;
        let mine: Vec<MapId> = self
            .mappings
            .iter()
            .filter(|(_, m)| m.mapper == id)
            .map(|(&k, _)| k)
            .collect();
        for k in &mine {
            let m = self.mappings.remove(k).expect("live mapping");
            let parts = m.flags & (GntMap::HOST_MAP | GntMap::DEVICE_MAP).bits();
            self.release_parts(&m, parts, true);
        }
        let d = self.dom_mut(id);
        d.ptes.clear();
        let populated: Vec<Mfn> = d
            .p2m
            .iter_mut()
            .filter_map(|e| match std::mem::replace(e, P2m::Absent) {
                P2m::Present(m) | P2m::PagedOut(m) => Some(m),
                P2m::Absent => None,
            })
            .collect();
        for m in populated {
            self.put_page(m);
        }
        if self.domains.contains_key(&id) {
            self.hit("teardown: zombie");
        }
        (mine.len() as u64, !self.domains.contains_key(&id))
    }

    // ---------------------------------------------------------------- copy (spec 8.1)

    /// One `GNTTABOP_copy` hypercall by `caller`, run to completion: the status of every
    /// element, in order.
    pub fn copy(&mut self, caller: DomId, ops: &[GnttabCopy]) -> Vec<GntSt> {
        let mut run = CopyRun::default();
        let out = ops
            .iter()
            .map(|op| self.copy_element(caller, &mut run, op))
            .collect();
        self.copy_end(run);
        out
    }

    /// The next element of a copy hypercall. Between elements the model's state includes
    /// what the batch caches: the pins, status bits and references of the held buffers.
    pub fn copy_element(&mut self, caller: DomId, run: &mut CopyRun, op: &GnttabCopy) -> GntSt {
        let st = &mut run.0;
        match self.copy_one(caller, st, op) {
            Ok(()) => {
                self.hit(if op.len == 0 { "okay len 0" } else { "okay" });
                GntSt::Okay
            }
            Err(s) => {
                self.hit(status_name(s));
                // A failed element releases both buffers (the domains stay cached).
                self.release_buf(st.src.take());
                self.release_buf(st.dst.take());
                s
            }
        }
    }

    /// A preemption between elements (the continuation re-issues the rest): every buffer is
    /// released and the domains are forgotten, as at the end of a hypercall.
    pub fn copy_preempt(&mut self, run: &mut CopyRun) {
        self.hit("preempted between elements");
        self.copy_release_all(&mut run.0);
    }

    /// The end of a copy hypercall: everything cached is released.
    pub fn copy_end(&mut self, mut run: CopyRun) {
        self.copy_release_all(&mut run.0);
    }

    fn copy_release_all(&mut self, st: &mut CopyState) {
        self.release_buf(st.src.take());
        self.release_buf(st.dst.take());
        st.doms = None;
    }

    fn copy_one(
        &mut self,
        caller: DomId,
        st: &mut CopyState,
        op: &GnttabCopy,
    ) -> Result<(), GntSt> {
        // 1. Zero length: okay, nothing validated, nothing released.
        if op.len == 0 {
            return Ok(());
        }
        let src_gref = op.flags & gntcopy::SOURCE_GREF != 0;
        let dst_gref = op.flags & gntcopy::DEST_GREF != 0;
        // 2. Other raw domids than the cached ones: release both buffers, forget the domains,
        //    look up source then dest.
        let raw = (op.source.domid, op.dest.domid);
        let (sd, dd) = match st.doms {
            Some((r, ds)) if r == raw => {
                let frame_foreign = |g: bool, d: DomId| !g && d != DomId::SELF;
                if frame_foreign(src_gref, op.source.domid)
                    || frame_foreign(dst_gref, op.dest.domid)
                {
                    self.hit("cached domid on a frame side");
                }
                ds
            }
            _ => {
                self.release_buf(st.src.take());
                self.release_buf(st.dst.take());
                st.doms = None;
                let sd = self.copy_lookup(caller, op.source.domid, src_gref)?;
                let dd = self.copy_lookup(caller, op.dest.domid, dst_gref)?;
                st.doms = Some((raw, (sd, dd)));
                (sd, dd)
            }
        };
        // 3. The source buffer, unless the cached one is for the same kind and ref / gmfn.
        let sk = BufKey::of(src_gref, op.source.u);
        let dk = BufKey::of(dst_gref, op.dest.u);
        if st.src.map(|b| b.key) == Some(sk) || st.dst.map(|b| b.key) == Some(dk) {
            self.hit("cached buffer reused");
        }
        if st.src.map(|b| b.key) != Some(sk) {
            self.release_buf(st.src.take());
            st.src = Some(self.claim_buf(caller, sd, sk, true)?);
        }
        // 4. The destination buffer likewise.
        if st.dst.map(|b| b.key) != Some(dk) {
            self.release_buf(st.dst.take());
            st.dst = Some(self.claim_buf(caller, dd, dk, false)?);
        }
        // 5. Ranges: inside the page (v1 windows are the whole page, so the window check
        //    never fires).
        let (so, dof, len) = (
            usize::from(op.source.offset),
            usize::from(op.dest.offset),
            usize::from(op.len),
        );
        if so + len > PAGE_SIZE || dof + len > PAGE_SIZE {
            return Err(GntSt::BadCopyArg);
        }
        // 6. The bytes (read first: source and destination may be the same frame).
        let (sm, dm) = (st.src.expect("claimed").mfn, st.dst.expect("claimed").mfn);
        let bytes = self.pages[&sm][so..so + len].to_vec();
        self.pages.get_mut(&dm).expect("known frame")[dof..dof + len].copy_from_slice(&bytes);
        Ok(())
    }

    /// `gnttab_copy_lock_domain`: a side addressed by frame must say `DOMID_SELF`; lookup by
    /// any id (`DOMID_SELF` is the caller).
    fn copy_lookup(&self, caller: DomId, domid: DomId, is_gref: bool) -> Result<DomId, GntSt> {
        if !is_gref && domid != DomId::SELF {
            return Err(GntSt::PermissionDenied);
        }
        let id = if domid == DomId::SELF { caller } else { domid };
        if self.domains.contains_key(&id) {
            Ok(id)
        } else {
            Err(GntSt::BadDomain)
        }
    }

    /// `gnttab_copy_claim_buf`: a grant of `dom` (acquired for copy), or the caller's own
    /// frame (a page reference); a destination also takes a writable type reference.
    fn claim_buf(
        &mut self,
        caller: DomId,
        dom: DomId,
        key: BufKey,
        readonly: bool,
    ) -> Result<CopyBuf, GntSt> {
        let mut b = match key {
            BufKey::Gref(r) => CopyBuf {
                key,
                grant: Some((dom, r)),
                mfn: self.acquire_for_copy(dom, r, caller, readonly)?,
                readonly,
                typed: false,
            },
            BufKey::Frame(gfn) => CopyBuf {
                key,
                grant: None,
                // Spec 8.1 step 3: "translate the caller's own GFN".
                mfn: self.get_paged_frame(caller, gfn)?,
                readonly,
                typed: false,
            },
        };
        if !readonly {
            if !self.get_writable_type(b.mfn) {
                self.hit("general_error: non-writable type");
                self.release_buf(Some(b));
                return Err(GntSt::GeneralError);
            }
            b.typed = true;
        }
        Ok(b)
    }

    /// `acquire_grant_for_copy` for a v1 entry: a host read (source) or write (destination)
    /// pin and a page reference on the frame.
    fn acquire_for_copy(
        &mut self,
        rd: DomId,
        gref: u32,
        caller: DomId,
        readonly: bool,
    ) -> Result<Mfn, GntSt> {
        if gref >= self.dom(rd).nr_entries() {
            return Err(GntSt::BadGntref);
        }
        let k = if readonly { HSTR } else { HSTW };
        let mut e = self.dom(rd).entry(gref);
        let was_pinned = e.pinned();
        // Pinned by another domain, or the counter to raise is at 128.
        if was_pinned && (e.act_domid != caller || e.pins[k] >= 128) {
            self.hit(if e.act_domid != caller {
                "general_error: pinned by another domain"
            } else {
                "general_error: pin overflow"
            });
            return Err(GntSt::GeneralError);
        }
        let mfn = if !was_pinned || (!readonly && !e.writable_pinned()) {
            // _set_status (spec 3.1; copy accepts sub-page entries).
            let f = e.shared.flags;
            if !was_pinned && (f & gtf::TYPE_MASK != gtf::PERMIT_ACCESS || e.shared.domid != caller)
            {
                self.hit("general_error: not granted to the caller");
                return Err(GntSt::GeneralError);
            }
            if !readonly && f & gtf::READONLY != 0 {
                self.hit("general_error: read-only grant as destination");
                return Err(GntSt::GeneralError);
            }
            e.shared.flags |= gtf::READING | if readonly { 0 } else { gtf::WRITING };
            // The frame named by the entry now.
            let m = match self.get_paged_frame(rd, u64::from(e.shared.frame)) {
                Ok(m) => m,
                Err(st) => {
                    clear_status(&mut e, readonly);
                    self.dom_mut(rd).entries.insert(gref, e);
                    return Err(st);
                }
            };
            if !was_pinned {
                e.act_domid = caller;
                e.act_mfn = m;
            } else if m == e.act_mfn {
                self.hit("upgrade of a read-only pin");
            } else {
                // XSA-500: the upgrade found another frame than the one the pins use.
                self.hit("general_error: XSA-500 frame changed on upgrade");
                self.put_page(m);
                clear_status(&mut e, readonly);
                self.dom_mut(rd).entries.insert(gref, e);
                return Err(GntSt::GeneralError);
            }
            m
        } else {
            // Already pinned and compatible: a reference on the pinned frame, which must
            // still belong to the granter, and the granter must not be dying.
            self.hit("pinned compatible");
            let m = e.act_mfn;
            if self.dom(rd).dying || self.frames[&m].owner != rd {
                self.hit("bad_domain: dying granter");
                return Err(GntSt::BadDomain);
            }
            self.frames.get_mut(&m).expect("known frame").refs += 1;
            m
        };
        e.pins[k] += 1;
        self.dom_mut(rd).entries.insert(gref, e);
        Ok(mfn)
    }

    /// `gnttab_copy_release_buf`: the pin with its status bits (spec 3.2), then the type and
    /// page references.
    fn release_buf(&mut self, b: Option<CopyBuf>) {
        let Some(b) = b else { return };
        if let Some((rd, gref)) = b.grant {
            let e = self.dom_mut(rd).entry_mut(gref);
            e.pins[if b.readonly { HSTR } else { HSTW }] -= 1;
            clear_status(e, b.readonly);
        }
        if b.typed {
            self.put_writable_type(b.mfn);
        }
        self.put_page(b.mfn);
    }

    // ---------------------------------------------------------------- table ops (spec 8)

    /// `setup_table` by `caller` on `dom` with `count` elements: `Err(())` for `-EINVAL`
    /// (count != 1), else the status and the number of frames listed.
    pub fn setup_table(
        &mut self,
        caller: DomId,
        count: usize,
        dom: DomId,
        nr_frames: u32,
    ) -> Result<(GntSt, u32), ()> {
        if count != 1 {
            return Err(());
        }
        let target = if dom == DomId::SELF { caller } else { dom };
        let privileged = self.dom(caller).privileged;
        let Some(d) = self.domains.get_mut(&target) else {
            return Ok((GntSt::BadDomain, 0));
        };
        if target != caller && !privileged {
            return Ok((GntSt::PermissionDenied, 0));
        }
        if nr_frames > d.max_frames {
            return Ok((GntSt::GeneralError, 0));
        }
        d.nr_frames = d.nr_frames.max(nr_frames);
        Ok((GntSt::Okay, nr_frames))
    }

    /// `query_size`: `Err(())` for `-EINVAL`, else (status, nr_frames, max_nr_frames).
    pub fn query_size(
        &self,
        caller: DomId,
        count: usize,
        dom: DomId,
    ) -> Result<(GntSt, u32, u32), ()> {
        if count != 1 {
            return Err(());
        }
        let target = if dom == DomId::SELF { caller } else { dom };
        let Some(d) = self.domains.get(&target) else {
            return Ok((GntSt::BadDomain, 0, 0));
        };
        if target != caller && !self.dom(caller).privileged {
            return Ok((GntSt::PermissionDenied, 0, 0));
        }
        Ok((GntSt::Okay, d.nr_frames, d.max_frames))
    }
}

/// What a cached copy buffer is for: the kind and the ref (low 32 bits) or gmfn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufKey {
    Gref(u32),
    Frame(u64),
}

impl BufKey {
    fn of(is_gref: bool, u: u64) -> Self {
        if is_gref {
            BufKey::Gref(u as u32)
        } else {
            BufKey::Frame(u)
        }
    }
}

/// An acquired copy buffer.
#[derive(Clone, Copy, Debug)]
struct CopyBuf {
    key: BufKey,
    /// The pinned grant (granter, ref) of a grant buffer.
    grant: Option<(DomId, u32)>,
    mfn: Mfn,
    /// Source (read pin) or destination (write pin and writable type reference).
    readonly: bool,
    typed: bool,
}

/// A copy hypercall in progress (see [`Model::copy_element`]).
#[derive(Debug, Default)]
pub struct CopyRun(CopyState);

/// What one copy hypercall caches between elements.
#[derive(Clone, Copy, Debug, Default)]
struct CopyState {
    /// The raw (source, dest) domids of the last lookup and the domains they named.
    doms: Option<((DomId, DomId), (DomId, DomId))>,
    src: Option<CopyBuf>,
    dst: Option<CopyBuf>,
}

/// `pins += sign * delta`, counter by counter.
fn add_pins(pins: &mut [u32; 4], delta: [u32; 4], sign: i32) {
    for (p, d) in pins.iter_mut().zip(delta) {
        *p = if sign > 0 { *p + d } else { *p - d };
    }
}

/// A short name of a status (for the coverage tally).
fn status_name(s: GntSt) -> &'static str {
    match s {
        GntSt::Okay => "okay",
        GntSt::GeneralError => "general_error",
        GntSt::BadDomain => "bad_domain",
        GntSt::BadGntref => "bad_gntref",
        GntSt::PermissionDenied => "permission_denied",
        GntSt::BadPage => "bad_page",
        GntSt::BadCopyArg => "bad_copy_arg",
        GntSt::Eagain => "eagain",
        _ => "other status",
    }
}

/// `reduce_status_for_pin` (spec 3.2) after a use of kind `readonly` was dropped.
fn clear_status(e: &mut Entry, readonly: bool) {
    if !e.pinned() {
        e.shared.flags &= !gtf::READING;
    }
    if !readonly && !e.writable_pinned() {
        e.shared.flags &= !gtf::WRITING;
    }
}

/// The slot an unmap of a fast handle means when the mapper holds several (the rule
/// documented at `select_slot` in src/maptrack/fast.rs): the best by, in order, a host part
/// recorded at exactly `host_addr`; a device part at exactly `dev_bus_addr`; exactly the parts
/// the op names; every part it names; some part it names; ties go to the lower slot.
fn select_slot(
    live: &[(usize, &Mapping, MapId)],
    host_addr: u64,
    dev_bus_addr: u64,
) -> Option<MapId> {
    let score = |m: &Mapping| {
        let (h, d) = (m.has(GntMap::HOST_MAP), m.has(GntMap::DEVICE_MAP));
        let (wh, wd) = (host_addr != 0, dev_bus_addr != 0);
        let covers = (!wh || h) && (!wd || d);
        [
            wh && h && m.host_addr == host_addr,
            wd && d && m.bus == dev_bus_addr,
            covers && h == wh && d == wd,
            covers,
            (wh && h) || (wd && d),
        ]
    };
    // `live` is in slot order; keep the first of equal scores.
    let mut best: Option<([bool; 5], MapId)> = None;
    for (_, m, id) in live {
        let s = score(m);
        if best.as_ref().is_none_or(|(b, _)| s > *b) {
            best = Some((s, *id));
        }
    }
    best.map(|(_, id)| id)
}
