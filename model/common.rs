//! Shared set-up for the models: a tiny hypervisor, two small domains, one-element hypercalls.
//!
//! Everything here runs on the main thread before the racing threads are spawned, or after
//! they are joined; it only builds and inspects state.

use crate::harness::Arc;
use gnttab::handle::{decode, Decoded};
use gnttab::prelude::*;

/// Host addresses used by the models (one page each, inside `host_pages(16)`).
pub(crate) const ADDR: [u64; 8] = [
    0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000, 0x8000,
];

/// The granted gfn.
pub(crate) const GFN: Gfn = Gfn(1);

/// A hypervisor with the loom-sized configuration (16 frames, 3 pCPU slots, 4 entries per
/// grant frame, 4 handles per maptrack frame).
pub(crate) fn hypervisor<D: Design>() -> Arc<Hypervisor<D>> {
    Arc::new(Hypervisor::new(HypervisorConfig::tiny()))
}

/// A PV domain small enough for a model: `memory` populated pages, a 16-page host address
/// space, one grant frame allowed.
pub(crate) fn small(name: &str, memory: u64) -> DomainConfig {
    DomainConfig::new(name)
        .memory_pages(memory)
        .host_pages(16)
        .max_grant_frames(1)
}

/// The granter ("front", 2 pages) and the mapper ("back", `vcpus` vCPUs, `maptrack_frames`
/// maptrack frames of 4 handles).
pub(crate) fn pair<D: Design>(
    hv: &Hypervisor<D>,
    vcpus: u16,
    maptrack_frames: u32,
) -> (DomId, DomId) {
    pair_with(
        hv,
        small("back", 0)
            .vcpus(vcpus)
            .max_maptrack_frames(maptrack_frames),
    )
}

/// The granter ("front", 2 pages) and a mapper created from `back`.
fn pair_with<D: Design>(hv: &Hypervisor<D>, back: DomainConfig) -> (DomId, DomId) {
    let front = hv.create_domain(small("front", 2)).expect("create front");
    let back = hv.create_domain(back).expect("create back");
    (front, back)
}

/// The machine frame behind the granter's [`GFN`].
pub(crate) fn granted_mfn<D: Design>(hv: &Hypervisor<D>, front: DomId) -> Mfn {
    match hv.domain(front).expect("front exists").p2m(GFN) {
        P2mEntry::Present(m) => m,
        e => panic!("granted gfn not present: {e:?}"),
    }
}

/// One `GNTTABOP_map_grant_ref` element on `cx`.
pub(crate) fn map<D: Design>(
    cx: &mut VcpuCtx<'_, D>,
    granter: DomId,
    gref: u32,
    flags: GntMap,
    host_addr: u64,
) -> MapGrantRef {
    let mut op = [MapGrantRef::new(granter, GrantRef(gref), flags, host_addr)];
    cx.map_grant_ref(&mut op).expect("map_grant_ref hypercall");
    op[0]
}

/// One `GNTTABOP_unmap_grant_ref` element on `cx`; its status.
pub(crate) fn unmap<D: Design>(
    cx: &mut VcpuCtx<'_, D>,
    handle: GrantHandle,
    host_addr: u64,
    dev_bus_addr: u64,
) -> GntSt {
    let mut op = [UnmapGrantRef::new(handle, host_addr, dev_bus_addr)];
    cx.unmap_grant_ref(&mut op)
        .expect("unmap_grant_ref hypercall");
    op[0].status
}

/// Maps on vCPU `vcpu` of `mapper` (entering and leaving the vCPU), asserting success.
pub(crate) fn map_ok<D: Design>(
    hv: &Hypervisor<D>,
    mapper: DomId,
    vcpu: u16,
    granter: DomId,
    gref: u32,
    flags: GntMap,
    host_addr: u64,
) -> MapGrantRef {
    let mut cx = hv.vcpu(mapper, vcpu).expect("enter vCPU");
    let m = map(&mut cx, granter, gref, flags, host_addr);
    assert_eq!(m.status, GntSt::Okay, "set-up map failed: {m:?}");
    m
}

/// Unmaps on vCPU `vcpu` of `mapper`, asserting success.
pub(crate) fn unmap_ok<D: Design>(
    hv: &Hypervisor<D>,
    mapper: DomId,
    vcpu: u16,
    handle: GrantHandle,
    host_addr: u64,
    dev_bus_addr: u64,
) {
    let mut cx = hv.vcpu(mapper, vcpu).expect("enter vCPU");
    let st = unmap(&mut cx, handle, host_addr, dev_bus_addr);
    assert_eq!(
        st,
        GntSt::Okay,
        "clean-up unmap of {handle:?} at {host_addr:#x}/{dev_bus_addr:#x} failed"
    );
}

/// Whether `h` is a fast (inline slot) handle.
pub(crate) fn is_fast(h: GrantHandle) -> bool {
    matches!(decode(h), Decoded::Fast { .. })
}

/// The pin word of the granter's entry `gref`.
pub(crate) fn pin_of<D: Design>(hv: &Hypervisor<D>, front: DomId, gref: u32) -> u32 {
    hv.active_entry(front, GrantRef(gref))
        .expect("entry exists")
        .pin
}

/// The live host PTE of `mapper` at `addr`, if any.
pub(crate) fn live_pte<D: Design>(hv: &Hypervisor<D>, mapper: DomId, addr: u64) -> Option<Pte> {
    hv.guest(mapper)
        .expect("mapper exists")
        .pte(HostAddr::Linear(addr))
        .filter(|p| p.present())
}

/// Asserts that `mapper` has a live grant mapping of `mfn` at `addr`.
pub(crate) fn assert_mapped<D: Design>(hv: &Hypervisor<D>, mapper: DomId, addr: u64, mfn: Mfn) {
    let pte = live_pte(hv, mapper, addr);
    assert!(
        pte.is_some_and(|p| p.is_grant() && p.mfn() == mfn),
        "expected a grant mapping of {mfn:?} at {addr:#x}, found {pte:?}"
    );
}

/// Final state after every mapping is gone: invariants hold, the entry is unpinned and the
/// granter can end access.
pub(crate) fn assert_quiescent_and_end<D: Design>(hv: &Hypervisor<D>, front: DomId, gref: u32) {
    hv.check().assert_ok();
    assert_eq!(
        pin_of(hv, front, gref),
        0,
        "entry still pinned after every unmap"
    );
    assert!(
        hv.guest(front)
            .expect("front exists")
            .end_access(GrantRef(gref))
            .expect("gref in table"),
        "granter cannot end access after every unmap"
    );
}

/// A hypervisor with the loom-sized configuration and `hooks` installed.
pub(crate) fn hypervisor_with_hooks<D: Design>(hooks: Arc<dyn Hooks>) -> Arc<Hypervisor<D>> {
    Arc::new(Hypervisor::new(HypervisorConfig::tiny().hooks(hooks)))
}

/// The granter ("front", 2 pages) and a strict-IOMMU mapper ("back", `vcpus` vCPUs, one
/// maptrack frame, a bus-frame region of `bus_frames` frames).
pub(crate) fn strict_pair<D: Design>(
    hv: &Hypervisor<D>,
    vcpus: u16,
    bus_frames: u64,
) -> (DomId, DomId) {
    pair_with(
        hv,
        small("back", 0)
            .vcpus(vcpus)
            .max_maptrack_frames(1)
            .iommu(IommuMode::Strict)
            .bus_frames(bus_frames),
    )
}

/// The granter grants its `gfn` to `grantee` through `gref`.
pub(crate) fn grant<D: Design>(
    hv: &Hypervisor<D>,
    front: DomId,
    gref: u32,
    grantee: DomId,
    gfn: Gfn,
    readonly: bool,
) {
    hv.guest(front)
        .expect("granter exists")
        .grant_access(GrantRef(gref), grantee, gfn, readonly)
        .expect("gref in table");
}

/// Enters vCPU `vcpu` of `dom` and issues one map; `None` if the vCPU cannot be entered
/// because the domain is gone, `Some(Err(..))` if the hypercall itself failed (`-ESRCH`: the
/// domain is dying and paused).
pub(crate) fn try_map<D: Design>(
    hv: &Hypervisor<D>,
    dom: DomId,
    vcpu: u16,
    granter: DomId,
    gref: u32,
    flags: GntMap,
    host_addr: u64,
) -> Option<Result<MapGrantRef, Errno>> {
    let mut cx = match hv.vcpu(dom, vcpu) {
        Ok(cx) => cx,
        Err(EnterError::NoDomain) => return None,
        Err(e) => panic!("cannot enter {dom:?} v{vcpu}: {e:?}"),
    };
    let mut op = [MapGrantRef::new(granter, GrantRef(gref), flags, host_addr)];
    Some(cx.map_grant_ref(&mut op).map(|()| op[0]))
}

/// As [`try_map`], for one unmap; the element's status.
pub(crate) fn try_unmap<D: Design>(
    hv: &Hypervisor<D>,
    dom: DomId,
    vcpu: u16,
    handle: GrantHandle,
    host_addr: u64,
    dev_bus_addr: u64,
) -> Option<Result<GntSt, Errno>> {
    let mut cx = match hv.vcpu(dom, vcpu) {
        Ok(cx) => cx,
        Err(EnterError::NoDomain) => return None,
        Err(e) => panic!("cannot enter {dom:?} v{vcpu}: {e:?}"),
    };
    let mut op = [UnmapGrantRef::new(handle, host_addr, dev_bus_addr)];
    Some(cx.unmap_grant_ref(&mut op).map(|()| op[0].status))
}

/// The order in which racing roles reached a point, as a schedule-dependent outcome. Plain std
/// atomics, invisible to loom: loom runs one thread at a time, so the counter follows the
/// explored schedule without adding interleavings.
#[derive(Debug, Default)]
pub(crate) struct Arrival(std::sync::atomic::AtomicUsize);

impl Arrival {
    /// Returns this caller's rank (0 = first).
    pub(crate) fn arrive(&self) -> usize {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A hook that records, at every `IommuMap` point (a per-map bus frame has just been
/// allocated), the mapper's IOTLB flush count: a bus frame freed by an unmap may only be
/// handed out again after that unmap's flush, so a map that reuses it must see the flush.
#[derive(Debug, Default)]
pub(crate) struct FlushProbe {
    mapper: std::sync::OnceLock<Arc<Domain<Fast>>>,
    seen: std::sync::Mutex<Vec<(u16, u64)>>,
}

impl FlushProbe {
    /// Starts recording the maps of `d` (earlier set-up maps are not recorded).
    pub(crate) fn watch(&self, d: Arc<Domain<Fast>>) {
        self.mapper.set(d).expect("watch once");
    }

    /// `(vcpu, IOTLB flushes seen)` for every recorded allocation, in order.
    pub(crate) fn seen(&self) -> Vec<(u16, u64)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Hooks for FlushProbe {
    fn at(&self, ctx: &HookCtx) -> HookAction {
        if ctx.point == HookPoint::IommuMap {
            if let Some(d) = self.mapper.get() {
                let f = d.stats().iotlb_flushes;
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((ctx.vcpu, f));
            }
        }
        HookAction::Continue
    }
}

/// Spawns a racing role: vCPU `vcpu` of `dom` maps `(granter, gref)` once (the returned op).
pub(crate) fn spawn_map<D: Design + 'static>(
    hv: &Arc<Hypervisor<D>>,
    dom: DomId,
    vcpu: u16,
    granter: DomId,
    gref: u32,
    flags: GntMap,
    host_addr: u64,
) -> crate::harness::thread::JoinHandle<MapGrantRef> {
    let hv = hv.clone();
    crate::harness::thread::spawn(move || {
        let mut cx = hv.vcpu(dom, vcpu).unwrap();
        map(&mut cx, granter, gref, flags, host_addr)
    })
}

/// Spawns a racing role: vCPU `vcpu` of `dom` unmaps `handle` once (the element's status).
pub(crate) fn spawn_unmap<D: Design + 'static>(
    hv: &Arc<Hypervisor<D>>,
    dom: DomId,
    vcpu: u16,
    handle: GrantHandle,
    host_addr: u64,
    dev_bus_addr: u64,
) -> crate::harness::thread::JoinHandle<GntSt> {
    let hv = hv.clone();
    crate::harness::thread::spawn(move || {
        let mut cx = hv.vcpu(dom, vcpu).unwrap();
        unmap(&mut cx, handle, host_addr, dev_bus_addr)
    })
}
