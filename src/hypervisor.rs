//! The hypervisor: machine, domains, pCPU slots, and the vCPU contexts hypercalls run on.

use crate::abi::{
    DomId, Errno, Gfn, GnttabCopy, GnttabOp, GrantRef, MapGrantRef, QuerySize, SetupTable,
    UnmapGrantRef, INITIAL_NR_GRANT_FRAMES, MAPTRACK_PER_PAGE, SHGNT_PER_PAGE_V1,
};
use crate::design::Design;
use crate::domain::{Domain, DomainConfig};
use crate::grant::EntrySnapshot;
use crate::hooks::{HookAction, HookCtx, HookPoint, Hooks};
use crate::machine::{AccessFault, HostAddr, Machine, MachineConfig, P2mEntry, Pte};
use crate::ops;
use crate::registry::{CreateError, Registry};
use crate::sync::{Arc, Ordering};
use crate::table::PcpuSet;
use crate::table::TableSync;
use core::fmt;

/// Hypervisor-wide configuration.
#[derive(Clone, Debug)]
pub struct HypervisorConfig {
    /// The simulated machine.
    pub machine: MachineConfig,
    /// pCPU slots: the most vCPU contexts that can run at once.
    pub pcpus: usize,
    /// Domain ids available (at most `0x7FF0`).
    pub max_domains: u16,
    /// v1 entries per grant frame (512; smaller only for loom models).
    pub entries_per_frame: u32,
    /// Maptrack handles per maptrack frame (256; smaller only for loom models).
    pub maptrack_per_frame: u32,
    /// Seed of every random choice (maptrack steal victims).
    pub seed: u64,
    /// Test and scenario hooks.
    pub hooks: Option<Arc<dyn Hooks>>,
    /// Modelled cost of one IOTLB flush (0: free; a real shootdown is ~0.8 us).
    pub iotlb_flush_cost: std::time::Duration,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            machine: MachineConfig::default(),
            pcpus: 64,
            max_domains: DomId::FIRST_RESERVED.0,
            entries_per_frame: SHGNT_PER_PAGE_V1,
            maptrack_per_frame: MAPTRACK_PER_PAGE,
            seed: 0x5EED,
            hooks: None,
            iotlb_flush_cost: std::time::Duration::ZERO,
        }
    }
}

impl HypervisorConfig {
    /// A configuration small enough for loom models: a 16-frame machine, 4 domain ids,
    /// 3 pCPUs, 4 entries per grant frame and 4 handles per maptrack frame.
    pub fn tiny() -> Self {
        Self {
            machine: MachineConfig::tiny(),
            pcpus: 3,
            max_domains: 4,
            entries_per_frame: 4,
            maptrack_per_frame: 4,
            seed: 1,
            hooks: None,
            iotlb_flush_cost: std::time::Duration::ZERO,
        }
    }

    /// Installs hooks.
    pub fn hooks(mut self, h: Arc<dyn Hooks>) -> Self {
        self.hooks = Some(h);
        self
    }
}

/// Why a device access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaFault {
    /// No such domain.
    NoDomain,
    /// No translation for the bus address (IOMMU fault).
    NotMapped,
    /// Write through a read-only translation.
    ReadOnly,
    /// The access crosses the page.
    OutOfPage,
    /// The translation reached a freed frame: a use-after-free the hypervisor should have
    /// prevented. Tests assert this never happens.
    FreedFrame,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for DmaFault {}

/// Why a domain could not be killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillError {
    /// No such domain.
    NoDomain,
    /// It is already dying (another teardown owns it).
    AlreadyDying,
}

impl fmt::Display for KillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for KillError {}

/// Why a vCPU context could not be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnterError {
    /// No such domain.
    NoDomain,
    /// No such vCPU.
    NoVcpu,
    /// Another context is running on that vCPU.
    Busy,
    /// Every pCPU slot is in use.
    NoPcpu,
}

impl fmt::Display for EnterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for EnterError {}

/// A simulated hypervisor running design `D`.
pub struct Hypervisor<D: Design> {
    pub(crate) machine: Machine,
    pub(crate) registry: Registry<D>,
    pub(crate) pcpus: PcpuSet,
    pub(crate) cfg: HypervisorConfig,
}

impl<D: Design> fmt::Debug for Hypervisor<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hypervisor")
            .field("design", &D::NAME)
            .field("domains", &self.registry.ids())
            .finish_non_exhaustive()
    }
}

impl<D: Design> Hypervisor<D> {
    /// A hypervisor with no domains.
    pub fn new(cfg: HypervisorConfig) -> Self {
        assert!(
            cfg.entries_per_frame.is_power_of_two() && cfg.maptrack_per_frame.is_power_of_two()
        );
        Self {
            machine: Machine::new(cfg.machine, cfg.max_domains),
            registry: Registry::new(cfg.max_domains),
            pcpus: PcpuSet::new(cfg.pcpus),
            cfg,
        }
    }

    /// The design's name.
    pub fn design_name(&self) -> &'static str {
        D::NAME
    }

    /// The machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The configuration.
    pub fn config(&self) -> &HypervisorConfig {
        &self.cfg
    }

    /// Creates a domain: reserves its id and name, populates `memory_pages` frames in its P2M
    /// (gfn `i` for `i` in order), and gives it `INITIAL_NR_GRANT_FRAMES` grant frames.
    pub fn create_domain(&self, cfg: DomainConfig) -> Result<DomId, CreateError> {
        if cfg.vcpus == 0 {
            return Err(CreateError::BadConfig("vcpus must be at least 1"));
        }
        if cfg.max_grant_frames < INITIAL_NR_GRANT_FRAMES {
            return Err(CreateError::BadConfig(
                "max_grant_frames must be at least 1",
            ));
        }
        let r = self.registry.reserve(&cfg.name)?;
        let d = Domain::<D>::new(
            r.id,
            &cfg,
            (self.cfg.entries_per_frame, self.cfg.maptrack_per_frame),
            self.cfg.machine.max_frames,
            self.cfg.iotlb_flush_cost,
        );
        let mut ok = true;
        for gfn in 0..cfg.memory_pages {
            match self.machine.alloc_frame(r.id, false) {
                Some(mfn) => {
                    d.p2m.set(Gfn(gfn), P2mEntry::Present(mfn));
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            let w = D::Table::write(&d.gt.lock, &self.pcpus);
            ok =
                d.gt.grow(&w, &self.machine, r.id, INITIAL_NR_GRANT_FRAMES)
                    .is_ok();
        }
        if !ok {
            self.release_memory(&d);
            self.registry.cancel(r);
            return Err(CreateError::OutOfMemory);
        }
        let id = r.id;
        self.registry.install(r, Arc::new(d));
        Ok(id)
    }

    /// Drops the allocation reference of every populated frame and the grant frames.
    fn release_memory(&self, d: &Domain<D>) {
        for gfn in 0..d.p2m.len() {
            if let Some(P2mEntry::Present(m) | P2mEntry::PagedOut(m)) =
                d.p2m.set(Gfn(gfn), P2mEntry::Absent)
            {
                // The domain was never registered: nothing to finalise.
                let _ = self.machine.put_page(m);
            }
        }
        d.gt.release_frames(&self.machine);
    }

    /// The domain `id`, if registered.
    pub fn domain(&self, id: DomId) -> Option<Arc<Domain<D>>> {
        self.registry.get_arc(id)
    }

    /// The id of the domain called `name` (no domain lock is taken).
    pub fn domain_by_name(&self, name: &str) -> Option<DomId> {
        self.registry.by_name(name)
    }

    /// Every registered domain id.
    pub fn domain_ids(&self) -> Vec<DomId> {
        self.registry.ids()
    }

    /// Enters vCPU `vcpu` of domain `dom`: the returned context issues hypercalls as that vCPU
    /// until dropped. A vCPU runs at most one context at a time.
    pub fn vcpu(&self, dom: DomId, vcpu: u16) -> Result<VcpuCtx<'_, D>, EnterError> {
        let d = self.registry.get_arc(dom).ok_or(EnterError::NoDomain)?;
        let v = d.vcpus.get(vcpu as usize).ok_or(EnterError::NoVcpu)?;
        if v.running
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(EnterError::Busy);
        }
        let Some(cpu) = self.pcpus.acquire() else {
            v.running.store(false, Ordering::Release);
            return Err(EnterError::NoPcpu);
        };
        let rng = crate::rng::seed(self.cfg.seed, (dom.0 as u64) << 16 | vcpu as u64);
        Ok(VcpuCtx {
            hv: self,
            dom: d,
            vcpu,
            cpu,
            rng,
        })
    }

    /// Guest-side view of domain `dom`: its shared entries, memory and mappings, as the
    /// guest kernel sees them (no hypercall involved).
    pub fn guest(&self, dom: DomId) -> Option<Guest<'_, D>> {
        Some(Guest {
            hv: self,
            dom: self.registry.get_arc(dom)?,
        })
    }

    /// Replaces a P2M entry of `dom` (toolstack: page out, page in, or point a gfn at another
    /// frame). Returns the old entry. Frame references are the caller's business: this is a
    /// test and scenario tool for reaching `GNTST_eagain` and `GNTST_bad_page`.
    pub fn set_p2m(&self, dom: DomId, gfn: Gfn, e: P2mEntry) -> Option<P2mEntry> {
        self.registry.get_arc(dom)?.p2m.set(gfn, e)
    }

    /// `get_page` on the machine; finalises a zombie if the refused attempt freed its last
    /// frame.
    #[inline]
    pub(crate) fn get_page(&self, mfn: crate::abi::Mfn, owner: DomId) -> bool {
        let (got, freed) = self.machine.get_page(mfn, owner);
        if let Some(z) = freed {
            self.frames_gone(z);
        }
        got
    }

    /// `put_page` on the machine; finalises a zombie whose last frame this freed.
    #[inline]
    pub(crate) fn put_page(&self, mfn: crate::abi::Mfn) {
        if let Some(z) = self.machine.put_page(mfn) {
            self.frames_gone(z);
        }
    }

    /// Domain `id` owns no RAM frame any more: if its teardown is over, destroy it for good.
    pub(crate) fn frames_gone(&self, id: DomId) {
        // SeqCst fence: pairs with the one in the teardown's last step (store Dead, fence, load
        // the owned count): either it sees our count reach 0, or we see Dead; possibly both,
        // and `finalize` is idempotent.
        crate::sync::fence(Ordering::SeqCst);
        if let Some(d) = self.registry.get_arc(id) {
            if d.state() == crate::domain::DomainState::Dead {
                self.finalize(&d);
            }
        }
    }

    /// Final destruction (spec 11.1 `grant_table_destroy`): unregister the domain (its memory
    /// is reclaimed once no lookup can hold it) and free its grant frames. Idempotent.
    pub(crate) fn finalize(&self, d: &Domain<D>) {
        if d.finalized
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        self.registry.remove(d.id());
        d.gt.release_frames(&self.machine);
    }

    /// Starts the destruction of domain `id` (the toolstack's `domain_kill`): marks it dying,
    /// pauses it (waits until none of its vCPUs is inside a hypercall; later hypercalls of its
    /// vCPUs fail with `-ESRCH`), and returns the preemptible teardown job. Other domains keep
    /// running throughout; lookups and queries never wait for the job.
    ///
    /// ```
    /// use gnttab::prelude::*;
    ///
    /// let hv = Hypervisor::<Fast>::new(HypervisorConfig::default());
    /// let front = hv.create_domain(DomainConfig::new("front")).unwrap();
    /// let back = hv.create_domain(DomainConfig::new("back")).unwrap();
    /// hv.guest(front).unwrap().grant_access(GrantRef(1), back, Gfn(1), false).unwrap();
    /// let mut cx = hv.vcpu(back, 0).unwrap();
    /// let mut m = [MapGrantRef::new(front, GrantRef(1), GntMap::HOST_MAP, 0x7000)];
    /// cx.map_grant_ref(&mut m).unwrap();
    /// drop(cx);
    ///
    /// // The backend dies holding the mapping: teardown releases it.
    /// let stats = hv.kill_domain(back).unwrap().run();
    /// assert_eq!(stats.mappings_released, 1);
    /// assert!(hv.domain(back).is_none()); // nothing referenced its pages: destroyed for good
    /// assert!(hv.guest(front).unwrap().end_access(GrantRef(1)).unwrap());
    /// hv.check().assert_ok();
    /// ```
    pub fn kill_domain(&self, id: DomId) -> Result<crate::teardown::Teardown<'_, D>, KillError> {
        let d = self.registry.get_arc(id).ok_or(KillError::NoDomain)?;
        d.state
            .compare_exchange(
                crate::domain::DomainState::Alive as u8,
                crate::domain::DomainState::Dying as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|_| KillError::AlreadyDying)?;
        // SeqCst fence: pairs with the fence in `VcpuCtx::enter_hypercall` (store-buffering
        // pair): either the hypercall sees the domain dying, or we see it in flight and wait.
        crate::sync::fence(Ordering::SeqCst);
        for v in d.vcpus.iter() {
            // Acquire: pairs with the Release clear at hypercall exit, so teardown sees
            // everything the hypercall did.
            while v.in_hypercall.load(Ordering::Acquire) {
                crate::sync::yield_now();
            }
        }
        Ok(crate::teardown::Teardown::new(self, d))
    }

    fn dma_frame(
        &self,
        dom: DomId,
        bus_addr: u64,
        len: usize,
        write: bool,
    ) -> Result<&crate::machine::Frame, DmaFault> {
        let d = self.registry.get_arc(dom).ok_or(DmaFault::NoDomain)?;
        let off = (bus_addr & (crate::abi::PAGE_SIZE as u64 - 1)) as usize;
        if off + len > crate::abi::PAGE_SIZE {
            return Err(DmaFault::OutOfPage);
        }
        let bfn = bus_addr >> crate::abi::PAGE_SHIFT;
        let mfn = match &d.iommu {
            Some(io) => match io.translate(bfn) {
                Some(p) => {
                    if write && !p.writable() {
                        return Err(DmaFault::ReadOnly);
                    }
                    p.mfn()
                }
                // The domain's own memory is identity-mapped in its IOMMU context.
                None if self
                    .machine
                    .frame(crate::abi::Mfn(bfn))
                    .and_then(|f| f.owner())
                    == Some(dom) =>
                {
                    crate::abi::Mfn(bfn)
                }
                None => return Err(DmaFault::NotMapped),
            },
            // No IOMMU: device addresses are machine addresses (and nothing is protected).
            None => crate::abi::Mfn(bfn),
        };
        let f = self.machine.frame(mfn).ok_or(DmaFault::NotMapped)?;
        if f.refcount() == 0 {
            return Err(DmaFault::FreedFrame);
        }
        Ok(f)
    }

    /// A device of domain `dom` reads `buf.len()` bytes at bus address `bus_addr`, through the
    /// domain's IOMMU (live translations, or stale ones until the IOTLB flush) if it has one.
    pub fn dma_read(&self, dom: DomId, bus_addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let f = self.dma_frame(dom, bus_addr, buf.len(), false)?;
        f.read((bus_addr & 0xFFF) as usize, buf);
        Ok(())
    }

    /// A device of domain `dom` writes `data` at bus address `bus_addr`; refused through a
    /// read-only translation.
    pub fn dma_write(&self, dom: DomId, bus_addr: u64, data: &[u8]) -> Result<(), DmaFault> {
        let f = self.dma_frame(dom, bus_addr, data.len(), true)?;
        f.write((bus_addr & 0xFFF) as usize, data);
        Ok(())
    }

    #[inline]
    pub(crate) fn hook(&self, point: HookPoint, domain: DomId, vcpu: u16) -> HookAction {
        match &self.cfg.hooks {
            None => HookAction::Continue,
            Some(h) => h.at(&HookCtx {
                point,
                domain,
                vcpu,
            }),
        }
    }
}

/// A running vCPU: the context every hypercall is issued on. Not `Sync`: one thread drives a
/// vCPU at a time, as on real hardware.
pub struct VcpuCtx<'h, D: Design> {
    pub(crate) hv: &'h Hypervisor<D>,
    pub(crate) dom: Arc<Domain<D>>,
    pub(crate) vcpu: u16,
    pub(crate) cpu: usize,
    pub(crate) rng: u64,
}

impl<D: Design> fmt::Debug for VcpuCtx<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcpuCtx")
            .field("domain", &self.dom.id())
            .field("vcpu", &self.vcpu)
            .field("pcpu", &self.cpu)
            .finish()
    }
}

impl<D: Design> Drop for VcpuCtx<'_, D> {
    fn drop(&mut self) {
        self.hv.pcpus.release(self.cpu);
        self.dom.vcpus[self.vcpu as usize]
            .running
            .store(false, Ordering::Release);
    }
}

/// Marks a vCPU as inside a hypercall for as long as it lives.
pub(crate) struct InHypercall<'a>(&'a crate::sync::AtomicBool);

impl Drop for InHypercall<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: the hypercall's effects happen-before a pausing killer's Acquire wait.
        self.0.store(false, Ordering::Release);
    }
}

impl<'h, D: Design> VcpuCtx<'h, D> {
    /// Enters a hypercall: fails with `-ESRCH` once the domain is dying (it is paused).
    #[inline]
    pub(crate) fn enter_hypercall(&self) -> Result<InHypercall<'_>, Errno> {
        let flag = &self.dom.vcpus[self.vcpu as usize].in_hypercall;
        flag.store(true, Ordering::Relaxed);
        // SeqCst fence: pairs with the killer's fence (see `Hypervisor::kill_domain`).
        crate::sync::fence(Ordering::SeqCst);
        let g = InHypercall(flag);
        if self.dom.state.load(Ordering::Relaxed) != crate::domain::DomainState::Alive as u8 {
            return Err(Errno::Srch);
        }
        Ok(g)
    }

    /// The calling domain's id.
    pub fn domain_id(&self) -> DomId {
        self.dom.id()
    }

    /// The calling vCPU.
    pub fn vcpu_id(&self) -> u16 {
        self.vcpu
    }

    /// The hypervisor.
    pub fn hypervisor(&self) -> &'h Hypervisor<D> {
        self.hv
    }

    /// `grant_table_op(cmd, uop, count)`: dispatches one grant-table hypercall. Per-element
    /// results are in the ops' `status` fields; `Err` is the hypercall's own failure (e.g.
    /// `-EINVAL` for `count != 1` on setup_table and query_size).
    pub fn grant_table_op(&mut self, op: GnttabOp<'_>) -> Result<(), Errno> {
        match op {
            GnttabOp::MapGrantRef(ops) => self.map_grant_ref(ops),
            GnttabOp::UnmapGrantRef(ops) => self.unmap_grant_ref(ops),
            GnttabOp::SetupTable(ops) => self.setup_table(ops),
            GnttabOp::QuerySize(ops) => self.query_size(ops),
            GnttabOp::Copy(ops) => self.copy(ops),
        }
    }

    /// `GNTTABOP_map_grant_ref` (spec 6): maps each element in order; a failed element does
    /// not stop the batch.
    ///
    /// ```
    /// use gnttab::prelude::*;
    ///
    /// let hv = Hypervisor::<Fast>::new(HypervisorConfig::default());
    /// let front = hv.create_domain(DomainConfig::new("front")).unwrap();
    /// let back = hv.create_domain(DomainConfig::new("back")).unwrap();
    ///
    /// // The frontend grants its gfn 7 to the backend as ref 3.
    /// hv.guest(front).unwrap().grant_access(GrantRef(3), back, Gfn(7), false).unwrap();
    ///
    /// // The backend maps it at linear address 0x1000_0000.
    /// let mut cx = hv.vcpu(back, 0).unwrap();
    /// let mut ops = [MapGrantRef::new(front, GrantRef(3), GntMap::HOST_MAP, 0x1000_0000)];
    /// cx.map_grant_ref(&mut ops).unwrap();
    /// assert_eq!(ops[0].status, GntSt::Okay);
    ///
    /// // ... and unmaps it: afterwards the frontend can end access.
    /// let mut un = [UnmapGrantRef::new(ops[0].handle, 0x1000_0000, 0)];
    /// cx.unmap_grant_ref(&mut un).unwrap();
    /// assert_eq!(un[0].status, GntSt::Okay);
    /// assert!(hv.guest(front).unwrap().end_access(GrantRef(3)).unwrap());
    /// ```
    pub fn map_grant_ref(&mut self, ops: &mut [MapGrantRef]) -> Result<(), Errno> {
        let mut rng = self.rng;
        {
            let _in = self.enter_hypercall()?;
            ops::map::map_grant_ref(self, &mut rng, ops);
        }
        self.rng = rng;
        Ok(())
    }

    /// `GNTTABOP_unmap_grant_ref` (spec 7): phase 1 for each element of a chunk of 32, one
    /// TLB flush, then phase 2 (pins, page references, status bits) for the chunk.
    pub fn unmap_grant_ref(&mut self, ops: &mut [UnmapGrantRef]) -> Result<(), Errno> {
        let _in = self.enter_hypercall()?;
        ops::unmap::unmap_grant_ref(self, ops);
        Ok(())
    }

    /// `GNTTABOP_copy` (spec 8.1): copies bytes between grants and the caller's own frames
    /// without mapping anything; each element gets its own status.
    ///
    /// ```
    /// use gnttab::prelude::*;
    ///
    /// let hv = Hypervisor::<Fast>::new(HypervisorConfig::default());
    /// let front = hv.create_domain(DomainConfig::new("front")).unwrap();
    /// let back = hv.create_domain(DomainConfig::new("back")).unwrap();
    /// let g = hv.guest(front).unwrap();
    /// g.write_page(Gfn(4), 100, b"packet").unwrap();
    /// g.grant_access(GrantRef(9), back, Gfn(4), true).unwrap();
    ///
    /// // The backend copies 6 bytes from the grant into its own gfn 2.
    /// let mut cx = hv.vcpu(back, 0).unwrap();
    /// let mut op = [GnttabCopy::new(
    ///     CopyPtr::gref(front, GrantRef(9), 100), true,
    ///     CopyPtr::gmfn(Gfn(2), 0), false,
    ///     6,
    /// )];
    /// cx.copy(&mut op).unwrap();
    /// assert_eq!(op[0].status, GntSt::Okay);
    /// let mut buf = [0u8; 6];
    /// hv.guest(back).unwrap().read_page(Gfn(2), 0, &mut buf).unwrap();
    /// assert_eq!(&buf, b"packet");
    /// assert!(g.end_access(GrantRef(9)).unwrap()); // nothing stays pinned
    /// ```
    pub fn copy(&mut self, ops: &mut [GnttabCopy]) -> Result<(), Errno> {
        let _in = self.enter_hypercall()?;
        ops::copy::copy(self, ops);
        Ok(())
    }

    /// `GNTTABOP_setup_table` (spec 8.2): `ops` must hold exactly one element.
    ///
    /// ```
    /// use gnttab::prelude::*;
    ///
    /// let hv = Hypervisor::<Xen>::new(HypervisorConfig::default());
    /// let d = hv.create_domain(DomainConfig::new("guest").max_grant_frames(4)).unwrap();
    /// let mut cx = hv.vcpu(d, 0).unwrap();
    /// let mut op = [SetupTable { dom: DomId::SELF, nr_frames: 3, ..Default::default() }];
    /// cx.setup_table(&mut op).unwrap();
    /// assert_eq!(op[0].status, GntSt::Okay);
    /// assert_eq!(op[0].frame_list.len(), 3);
    ///
    /// let mut q = [QuerySize { dom: DomId::SELF, ..Default::default() }];
    /// cx.query_size(&mut q).unwrap();
    /// assert_eq!((q[0].nr_frames, q[0].max_nr_frames), (3, 4));
    ///
    /// // Asking for more than max_grant_frames fails and changes nothing.
    /// op[0].nr_frames = 5;
    /// cx.setup_table(&mut op).unwrap();
    /// assert_eq!(op[0].status, GntSt::GeneralError);
    /// assert_eq!(hv.domain(d).unwrap().nr_grant_frames(), 3);
    /// ```
    pub fn setup_table(&mut self, ops: &mut [SetupTable]) -> Result<(), Errno> {
        let _in = self.enter_hypercall()?;
        ops::table::setup_table(self, ops)
    }

    /// `GNTTABOP_query_size` (spec 8.4): `ops` must hold exactly one element.
    pub fn query_size(&mut self, ops: &mut [QuerySize]) -> Result<(), Errno> {
        let _in = self.enter_hypercall()?;
        ops::table::query_size(self, ops)
    }
}

/// Why a guest-side helper could not act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestError {
    /// The ref is beyond the domain's grant table.
    BadRef,
    /// The gfn is not populated.
    BadGfn,
    /// The access crosses the page.
    OutOfPage,
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for GuestError {}

/// Guest-side view of a domain: what its kernel does with its own grant entries, memory and
/// page tables, without hypercalls.
pub struct Guest<'h, D: Design> {
    hv: &'h Hypervisor<D>,
    dom: Arc<Domain<D>>,
}

impl<D: Design> fmt::Debug for Guest<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("domain", &self.dom.id())
            .finish()
    }
}

impl<D: Design> Guest<'_, D> {
    /// The domain.
    pub fn domain(&self) -> &Domain<D> {
        &self.dom
    }

    fn entry(&self, gref: GrantRef) -> Result<&crate::grant::SharedEntry, GuestError> {
        self.dom
            .gt
            .entry(gref)
            .map(|e| e.shared)
            .ok_or(GuestError::BadRef)
    }

    /// Grants `gfn` to `grantee` through ref `gref` (Linux's v1 protocol: domid and frame,
    /// write barrier, then flags).
    pub fn grant_access(
        &self,
        gref: GrantRef,
        grantee: DomId,
        gfn: Gfn,
        readonly: bool,
    ) -> Result<(), GuestError> {
        let gfn32 = u32::try_from(gfn.0).map_err(|_| GuestError::BadGfn)?;
        self.entry(gref)?.guest_grant(grantee, gfn32, readonly);
        Ok(())
    }

    /// Ends foreign access to `gref` with the compare-exchange loop; `Ok(false)` while the
    /// hypervisor still has the grant in use (the page must then not be reused).
    pub fn end_access(&self, gref: GrantRef) -> Result<bool, GuestError> {
        Ok(self.entry(gref)?.guest_end_access())
    }

    /// The shared entry's current contents.
    pub fn entry_snapshot(&self, gref: GrantRef) -> Result<EntrySnapshot, GuestError> {
        Ok(self.entry(gref)?.snapshot())
    }

    /// Writes raw values into a shared entry (what a misbehaving guest may do at any time).
    pub fn write_entry_raw(
        &self,
        gref: GrantRef,
        flags: u16,
        domid: DomId,
        frame: u32,
    ) -> Result<(), GuestError> {
        self.entry(gref)?.guest_write_raw(flags, domid, frame);
        Ok(())
    }

    /// Overwrites only the flags of a shared entry, keeping the domid.
    pub fn write_entry_flags(&self, gref: GrantRef, flags: u16) -> Result<(), GuestError> {
        self.entry(gref)?.guest_write_flags(flags);
        Ok(())
    }

    /// Overwrites only the frame of a shared entry.
    pub fn write_entry_frame(&self, gref: GrantRef, frame: u32) -> Result<(), GuestError> {
        self.entry(gref)?.guest_write_frame(frame);
        Ok(())
    }

    fn own_frame(&self, gfn: Gfn) -> Result<&crate::machine::Frame, GuestError> {
        match self.dom.p2m.lookup(gfn) {
            P2mEntry::Present(m) => self.hv.machine.frame(m).ok_or(GuestError::BadGfn),
            _ => Err(GuestError::BadGfn),
        }
    }

    /// Writes into the domain's own memory.
    pub fn write_page(&self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), GuestError> {
        if offset + data.len() > crate::abi::PAGE_SIZE {
            return Err(GuestError::OutOfPage);
        }
        self.own_frame(gfn)?.write(offset, data);
        Ok(())
    }

    /// Reads the domain's own memory.
    pub fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), GuestError> {
        if offset + buf.len() > crate::abi::PAGE_SIZE {
            return Err(GuestError::OutOfPage);
        }
        self.own_frame(gfn)?.read(offset, buf);
        Ok(())
    }

    /// The translation for `addr`: the live entry, else the most recent stale TLB entry of any
    /// of the domain's vCPUs (removed but not yet flushed).
    fn translate(&self, addr: HostAddr) -> Result<Pte, AccessFault> {
        let slot = self
            .dom
            .aspace
            .slot_of(addr)
            .ok_or(AccessFault::NotMapped)?;
        let pte = self.dom.aspace.get(slot);
        if pte.present() {
            return Ok(pte);
        }
        self.dom
            .vcpus
            .iter()
            .find_map(|v| v.tlb.lookup(slot))
            .ok_or(AccessFault::NotMapped)
    }

    fn mapped_frame(
        &self,
        addr: HostAddr,
        write: bool,
    ) -> Result<&crate::machine::Frame, AccessFault> {
        let pte = self.translate(addr)?;
        if write && !pte.writable() {
            return Err(AccessFault::ReadOnly);
        }
        let f = self
            .hv
            .machine
            .frame(pte.mfn())
            .ok_or(AccessFault::FreedFrame)?;
        if f.refcount() == 0 {
            return Err(AccessFault::FreedFrame);
        }
        Ok(f)
    }

    /// Reads through a host mapping (live, or stale until the TLB flush).
    pub fn read_mapped(
        &self,
        addr: HostAddr,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), AccessFault> {
        if offset + buf.len() > crate::abi::PAGE_SIZE {
            return Err(AccessFault::OutOfPage);
        }
        self.mapped_frame(addr, false)?.read(offset, buf);
        Ok(())
    }

    /// Writes through a host mapping; refused through a read-only one.
    pub fn write_mapped(
        &self,
        addr: HostAddr,
        offset: usize,
        data: &[u8],
    ) -> Result<(), AccessFault> {
        if offset + data.len() > crate::abi::PAGE_SIZE {
            return Err(AccessFault::OutOfPage);
        }
        self.mapped_frame(addr, true)?.write(offset, data);
        Ok(())
    }

    /// The live page-table entry at `addr` (zero if none).
    pub fn pte(&self, addr: HostAddr) -> Option<Pte> {
        let slot = self.dom.aspace.slot_of(addr)?;
        Some(self.dom.aspace.get(slot))
    }

    /// Rewrites the page-table entry at `addr` by a non-grant path (a PV guest's own page-table
    /// update), returning the old entry. Used by the XSA-234 scenario.
    pub fn set_pte_raw(&self, addr: HostAddr, pte: Pte) -> Option<Pte> {
        let slot = self.dom.aspace.slot_of(addr)?;
        Some(self.dom.aspace.set_raw(slot, pte))
    }
}
