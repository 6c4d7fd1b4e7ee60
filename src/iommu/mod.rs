//! IOMMU bookkeeping for mappers that need IOMMU mappings (strict mode, spec section 10).
//!
//! A PV domain in strict IOMMU mode (a backend with passthrough devices) must have every page
//! it can map reachable by its devices, and nothing else: each grant map adds an IOMMU
//! translation and each unmap removes it. The model keeps, per such domain, an I/O page table
//! (bus frame -> frame, permission) and an IOTLB modelled like the CPU TLB: a removed or
//! downgraded translation stays usable by the device until the IOTLB is flushed. Flushes are
//! counted and may be charged a configurable cost (a real shootdown takes ~0.8 us).
//!
//! Two strategies ([`IommuPolicy`]):
//!
//! | strategy        | device address       | bookkeeping                                  | flush           |
//! |-----------------|----------------------|----------------------------------------------|-----------------|
//! | [`MfnRefcount`] | BFN == MFN           | per-MFN (read, write) counts under the       | immediate, per  |
//! |                 |                      | mapper's table **write** lock (Xen, XSA-380) | unmap/downgrade |
//! | [`PerMapBfn`]   | a fresh BFN per map, | none shared: a per-vCPU BFN cache in front   | once per unmap  |
//! |                 | from a region above  | of a pool whose lock covers only the pool    | chunk, before   |
//! |                 | RAM                  | (Linux IOVA rcache, 127-entry magazines)     | phase 2         |
//!
//! **Flush rule (PerMapBfn).** A BFN is returned to the allocator only after the IOTLB flush
//! that invalidated its old translation: unmap phase 1 removes the entry and records the BFN
//! as pending; after the chunk's phase 1 the vCPU flushes its IOTLB once, then frees the
//! pending BFNs, then phase 2 drops page references. So a device can never reach a page
//! through a stale translation of a BFN that was handed out again, nor a frame whose last
//! reference phase 2 dropped.

mod bfn;

pub use bfn::BfnAllocator;

use crate::abi::{GntSt, Mfn, GNTTAB_UNMAP_BATCH_SIZE};
use crate::design::Design;
use crate::hooks::{HookAction, HookPoint};
use crate::machine::{AddressSpace, Pte, Tlb};
use crate::ops::Env;
use crate::sync::{CachePadded, Mutex};
use crate::table::TableSync;
use arrayvec::ArrayVec;
use core::fmt::Debug;
use std::collections::BTreeMap;
use std::time::Duration;

/// A domain's IOMMU mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum IommuMode {
    /// No IOMMU context (or a shared one): grant maps do no IOMMU work and device addresses
    /// are machine addresses.
    #[default]
    Off,
    /// Strict: every grant map and unmap of a PV domain updates its IOMMU.
    Strict,
}

/// Per-domain IOMMU state.
#[derive(Debug)]
pub struct IommuCtx<P: IommuPolicy> {
    /// Bus frame -> entry (the PTE layout: present, writable, frame).
    pub(crate) table: AddressSpace,
    /// Per-vCPU stale translations, cleared by that vCPU's IOTLB flush.
    pub(crate) iotlb: Box<[CachePadded<Tlb>]>,
    pub(crate) state: P::State,
    flush_cost: Duration,
    /// First bus frame of the per-map region (above all RAM).
    pub(crate) region_base: u64,
}

impl<P: IommuPolicy> IommuCtx<P> {
    pub(crate) fn new(
        vcpus: usize,
        ram_frames: u64,
        region_frames: u64,
        flush_cost: Duration,
    ) -> Self {
        Self {
            table: AddressSpace::new(ram_frames + region_frames),
            iotlb: (0..vcpus)
                .map(|_| CachePadded::new(Tlb::default()))
                .collect(),
            state: P::new_state(vcpus, ram_frames, region_frames),
            flush_cost,
            region_base: ram_frames,
        }
    }

    /// Flushes vCPU `v`'s IOTLB view (and charges the configured cost).
    pub(crate) fn flush(&self, v: usize) {
        self.iotlb[v].flush();
        if !self.flush_cost.is_zero() {
            crate::sync::busy_wait(self.flush_cost);
        }
    }

    /// Clears every translation and flushes every vCPU's IOTLB view (context destroyed).
    pub(crate) fn wipe(&self) {
        self.table.for_each(|bfn, _| {
            self.table.set_raw(bfn, Pte(0));
        });
        for v in 0..self.iotlb.len() {
            self.flush(v);
        }
    }

    /// IOTLB flushes so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.iotlb.iter().map(|t| t.flushes()).sum()
    }

    /// The translation for bus frame `bfn`: the live entry, else the newest stale one.
    pub(crate) fn translate(&self, bfn: u64) -> Option<Pte> {
        if bfn >= self.table.slots() {
            return None;
        }
        let e = self.table.get(bfn);
        if e.present() {
            return Some(e);
        }
        self.iotlb.iter().find_map(|t| t.lookup(bfn))
    }
}

/// BFNs whose translations phase 1 removed, waiting for the chunk's IOTLB flush.
#[derive(Debug, Default)]
pub struct Deferred {
    bfns: ArrayVec<u64, GNTTAB_UNMAP_BATCH_SIZE>,
}

impl Deferred {
    fn push(&mut self, bfn: u64) {
        self.bfns.push(bfn);
    }
    fn drain(&mut self) -> impl Iterator<Item = u64> + '_ {
        self.bfns.drain(..)
    }
}

/// An IOMMU bookkeeping strategy (see the module docs).
pub trait IommuPolicy: Send + Sync + Debug + Sized + 'static {
    /// Name used in reports.
    const NAME: &'static str;
    /// Per-domain state.
    type State: Send + Sync + Debug;

    #[doc(hidden)]
    fn new_state(vcpus: usize, ram_frames: u64, region_frames: u64) -> Self::State;

    /// Map step 12: makes `mfn` reachable by the mapper's devices; returns `dev_bus_addr`.
    #[doc(hidden)]
    fn map<D: Design<Iommu = Self>>(
        env: &Env<'_, D>,
        io: &IommuCtx<Self>,
        mfn: Mfn,
        writable: bool,
    ) -> Result<u64, GntSt>;

    /// Unmap phase 1 step 14 (the mapping's record was released): removes the translation.
    #[doc(hidden)]
    fn unmap<D: Design<Iommu = Self>>(
        env: &Env<'_, D>,
        io: &IommuCtx<Self>,
        mfn: Mfn,
        bus: u64,
        writable: bool,
        pending: &mut Deferred,
    );

    /// After a chunk's phase 1 and before its phase 2.
    #[doc(hidden)]
    fn after_phase1<D: Design<Iommu = Self>>(
        env: &Env<'_, D>,
        io: &IommuCtx<Self>,
        pending: &mut Deferred,
    );

    /// Destroys a dying domain's IOMMU context (its devices are gone): every translation and
    /// all bookkeeping, with no per-entry work on other domains.
    #[doc(hidden)]
    fn teardown(io: &IommuCtx<Self>);

    /// Checks the strategy's own invariants against the live mappings `(mfn, writable, bus)`
    /// of the domain; returns violations as text.
    #[doc(hidden)]
    fn check(io: &IommuCtx<Self>, live: &[(Mfn, bool, u64)]) -> Vec<String>;
}

/// Xen's scheme since XSA-380: BFN == MFN, per-MFN counts under the table write lock.
#[derive(Debug)]
pub enum MfnRefcount {}

/// Read and write mapping counts of one frame (spec 10.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    rd: u32,
    wr: u32,
}

/// Counts are 31 bits wide on 64-bit Xen.
const COUNT_MAX: u32 = (1 << 31) - 1;

impl IommuPolicy for MfnRefcount {
    const NAME: &'static str = "mfn-refcount";
    /// The `maptrack_tree`. Only ever touched while the owner's table write lock is held; the
    /// mutex is therefore never contended and exists so the map is shareable without `unsafe`.
    type State = Mutex<BTreeMap<u64, Counts>>;

    fn new_state(_: usize, _: u64, _: u64) -> Self::State {
        Mutex::new(BTreeMap::new())
    }

    fn map<D: Design<Iommu = Self>>(
        env: &Env<'_, D>,
        io: &IommuCtx<Self>,
        mfn: Mfn,
        writable: bool,
    ) -> Result<u64, GntSt> {
        let _w = D::Table::write(&env.ld.gt.lock, &env.hv.pcpus);
        let mut tree = io.state.lock();
        let old = tree.get(&mfn.0).copied().unwrap_or_default();
        let mut c = old;
        let counter = if writable { &mut c.wr } else { &mut c.rd };
        if *counter == COUNT_MAX {
            return Err(GntSt::GeneralError);
        }
        *counter += 1;
        // Map read-write when the first writer appears; read-only when the first reader
        // appears and there is no writer; otherwise the translation is already right.
        let want = if writable && c.wr == 1 {
            Some(Pte::io(mfn, true))
        } else if !writable && c.rd == 1 && c.wr == 0 {
            Some(Pte::io(mfn, false))
        } else {
            None
        };
        if want.is_some()
            && env.hv.hook(HookPoint::IommuMap, env.ld.id(), env.vcpu) == HookAction::Fail
        {
            return Err(GntSt::GeneralError);
        }
        if let Some(p) = want {
            // Upgrading read-only to read-write needs no flush (permissions only grow).
            io.table.set_raw(mfn.0, p);
        }
        tree.insert(mfn.0, c);
        Ok(mfn.addr())
    }

    fn unmap<D: Design<Iommu = Self>>(
        env: &Env<'_, D>,
        io: &IommuCtx<Self>,
        mfn: Mfn,
        _bus: u64,
        writable: bool,
        _pending: &mut Deferred,
    ) {
        let _w = D::Table::write(&env.ld.gt.lock, &env.hv.pcpus);
        let mut tree = io.state.lock();
        let Some(mut c) = tree.get(&mfn.0).copied() else {
            panic!("IOMMU count underflow for {mfn:?}: no node");
        };
        let counter = if writable { &mut c.wr } else { &mut c.rd };
        assert!(*counter > 0, "IOMMU count underflow for {mfn:?}");
        *counter -= 1;
        let v = env.vcpu as usize;
        if c.rd == 0 && c.wr == 0 {
            let old = io.table.set_raw(mfn.0, Pte(0));
            io.iotlb[v].retain_stale(mfn.0, old);
            io.flush(v);
            tree.remove(&mfn.0);
        } else {
            if writable && c.wr == 0 {
                let old = io.table.set_raw(mfn.0, Pte::io(mfn, false));
                io.iotlb[v].retain_stale(mfn.0, old);
                io.flush(v);
            }
            tree.insert(mfn.0, c);
        }
    }

    fn after_phase1<D: Design<Iommu = Self>>(_: &Env<'_, D>, _: &IommuCtx<Self>, _: &mut Deferred) {
    }

    fn teardown(io: &IommuCtx<Self>) {
        io.state.lock().clear();
        io.wipe();
    }

    fn check(io: &IommuCtx<Self>, live: &[(Mfn, bool, u64)]) -> Vec<String> {
        let mut want: BTreeMap<u64, Counts> = BTreeMap::new();
        for &(m, w, bus) in live {
            let c = want.entry(m.0).or_default();
            if w {
                c.wr += 1;
            } else {
                c.rd += 1;
            }
            if bus != m.addr() {
                return vec![format!(
                    "{m:?}: dev_bus_addr {bus:#x} is not the machine address"
                )];
            }
        }
        let mut out = Vec::new();
        let tree = io.state.lock();
        if *tree != want {
            out.push(format!(
                "maptrack_tree {:?} but live handles give {want:?}",
                *tree
            ));
        }
        let mut present = BTreeMap::new();
        io.table.for_each(|bfn, p| {
            present.insert(bfn, p);
        });
        for (&m, c) in &want {
            match present.remove(&m) {
                Some(p) if p.present() && p.mfn() == Mfn(m) && p.writable() == (c.wr > 0) => {}
                other => out.push(format!("mfn {m:#x}: IOMMU entry {other:?}, counts {c:?}")),
            }
        }
        for (b, p) in present {
            out.push(format!(
                "IOMMU entry at {b:#x} ({p:?}) without a live handle"
            ));
        }
        out
    }
}

/// The proposal's scheme: every map gets its own bus frame.
#[derive(Debug)]
pub enum PerMapBfn {}

impl IommuPolicy for PerMapBfn {
    const NAME: &'static str = "per-map-bfn";
    type State = BfnAllocator;

    fn new_state(vcpus: usize, ram_frames: u64, region_frames: u64) -> Self::State {
        BfnAllocator::new(vcpus, ram_frames, region_frames)
    }

    fn map<D: Design<Iommu = Self>>(
        env: &Env<'_, D>,
        io: &IommuCtx<Self>,
        mfn: Mfn,
        writable: bool,
    ) -> Result<u64, GntSt> {
        let v = env.vcpu as usize;
        let bfn = io.state.alloc(v).ok_or(GntSt::NoDeviceSpace)?;
        if env.hv.hook(HookPoint::IommuMap, env.ld.id(), env.vcpu) == HookAction::Fail {
            // Never mapped, so no flush is owed: straight back to the cache.
            io.state.free(v, bfn);
            return Err(GntSt::GeneralError);
        }
        let installed = io.table.install(bfn, Pte::io(mfn, writable));
        assert!(installed, "freshly allocated BFN {bfn:#x} already mapped");
        Ok(bfn << crate::abi::PAGE_SHIFT)
    }

    fn unmap<D: Design<Iommu = Self>>(
        env: &Env<'_, D>,
        io: &IommuCtx<Self>,
        mfn: Mfn,
        bus: u64,
        _writable: bool,
        pending: &mut Deferred,
    ) {
        let bfn = bus >> crate::abi::PAGE_SHIFT;
        let old = io.table.get(bfn);
        assert!(
            old.present() && old.mfn() == mfn,
            "BFN {bfn:#x} does not map {mfn:?}"
        );
        let removed = io.table.remove(bfn, old);
        assert!(removed, "BFN {bfn:#x} changed under its only owner");
        io.iotlb[env.vcpu as usize].retain_stale(bfn, old);
        pending.push(bfn);
    }

    fn after_phase1<D: Design<Iommu = Self>>(
        env: &Env<'_, D>,
        io: &IommuCtx<Self>,
        pending: &mut Deferred,
    ) {
        if pending.bfns.is_empty() {
            return;
        }
        let v = env.vcpu as usize;
        io.flush(v);
        for bfn in pending.drain() {
            io.state.free(v, bfn);
        }
    }

    fn teardown(io: &IommuCtx<Self>) {
        io.wipe();
        io.state.reset();
    }

    fn check(io: &IommuCtx<Self>, live: &[(Mfn, bool, u64)]) -> Vec<String> {
        let mut out = Vec::new();
        let mut present = BTreeMap::new();
        io.table.for_each(|bfn, p| {
            present.insert(bfn, p);
        });
        for &(m, w, bus) in live {
            let bfn = bus >> crate::abi::PAGE_SHIFT;
            if bfn < io.region_base {
                out.push(format!("{m:?}: bus frame {bfn:#x} overlaps RAM"));
            }
            match present.remove(&bfn) {
                Some(p) if p.mfn() == m && p.writable() == w => {}
                other => out.push(format!("{m:?} via BFN {bfn:#x}: IOMMU entry {other:?}")),
            }
        }
        for (b, p) in &present {
            out.push(format!(
                "IOMMU entry at BFN {b:#x} ({p:?}) without a live mapping"
            ));
        }
        let free = io.state.free_bfns();
        for &(_, _, bus) in live {
            if free.contains(&(bus >> crate::abi::PAGE_SHIFT)) {
                out.push(format!(
                    "BFN {:#x} is live and free",
                    bus >> crate::abi::PAGE_SHIFT
                ));
            }
        }
        let handed_out = io.state.handed_out();
        if handed_out != live.len() as u64 {
            out.push(format!(
                "{handed_out} BFNs handed out but {} live mappings (leak)",
                live.len()
            ));
        }
        out
    }
}
