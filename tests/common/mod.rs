//! Shared fixtures for the conformance suites (`tests/api.rs`, `tests/xsa.rs`, and any later
//! suite that wants them).
//!
//! Use it from a test file with
//!
//! ```ignore
//! #[macro_use]
//! mod common;
//! use common::*;
//!
//! fn my_test<D: Design>() {
//!     let r = Rig::<D>::new();
//!     r.grant(GrantRef(8), Gfn(3), false);
//!     let m = r.map(GrantRef(8), GntMap::HOST_MAP, va(0));
//!     assert_eq!(m.status, GntSt::Okay);
//!     r.check();
//! }
//!
//! design_tests!(my_test);
//! ```
//!
//! What is here:
//!
//! * [`design_tests!`]: instantiates generic test functions `fn name<D: Design>()` once per
//!   design, as `fast::name`, `xen::name`, `xen_plainrw::name`, `xen_fastslots::name` and
//!   `fast_noslots::name`, plus `xen_permapbfn::name` for the IOMMU ablation (invoke it once
//!   per test file, listing every generic test).
//! * [`Rig`]: a hypervisor with a granter `a` and a mapper `b` (both PV, default limits, `b`
//!   with 2 vCPUs), a [`TestHooks`] installed, and one-line helpers to grant, map, unmap and
//!   inspect. [`Rig::build`] edits the configuration first.
//! * [`map1`] / [`unmap1`]: one-element map and unmap on any vCPU context.
//! * [`normalize`] and [`Rig::snap`] / [`Rig::assert_unchanged`]: "nothing changed" checks.
//! * [`TestHooks`]: pause a thread at a hook point until the test releases it, or inject a
//!   failure, matched by point, domain and vCPU.
//! * Small predicates: [`slots`] (does the design have inline fast slots), [`is_fast`].

#![allow(dead_code, unused_macros, unused_imports)]

pub use gnttab::handle;
pub use gnttab::maptrack::SlotPolicy;
pub use gnttab::prelude::*;
pub use std::sync::Arc;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Instantiates generic test functions once per design.
///
/// `design_tests!(a, b, #[ignore] c)` expects `fn a<D: Design>()` etc. in the invoking module
/// and produces `mod fast { #[test] fn a() { super::a::<Fast>() } ... }` and the same for
/// `xen`, `xen_plainrw`, `xen_fastslots`, `fast_noslots` and `xen_permapbfn`. Attributes
/// written before a name (`#[ignore]`, `#[should_panic]`, ...) are copied onto each instance.
/// Invoke it once per file (it defines the six modules).
macro_rules! design_tests {
    ($($(#[$meta:meta])* $name:ident),+ $(,)?) => {
        design_tests!(@mod fast, gnttab::design::Fast; $($(#[$meta])* $name),+);
        design_tests!(@mod xen, gnttab::design::Xen; $($(#[$meta])* $name),+);
        design_tests!(@mod xen_plainrw, gnttab::design::XenPlainRw; $($(#[$meta])* $name),+);
        design_tests!(@mod xen_fastslots, gnttab::design::XenFastSlots; $($(#[$meta])* $name),+);
        design_tests!(@mod fast_noslots, gnttab::design::FastNoSlots; $($(#[$meta])* $name),+);
        design_tests!(@mod xen_permapbfn, gnttab::design::XenPerMapBfn; $($(#[$meta])* $name),+);
    };
    (@mod $m:ident, $d:ty; $($(#[$meta:meta])* $name:ident),+) => {
        mod $m {
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    super::$name::<$d>()
                }
            )+
        }
    };
}

/// Whether design `D` has inline fast maptrack slots (Fast, XenFastSlots).
pub fn slots<D: Design>() -> bool {
    <D::Slots as SlotPolicy>::ENABLED
}

/// Whether `h` is a fast handle (bit 31 set). Only meaningful for slot designs; Xen handles
/// are maptrack indices and never have bit 31 set.
pub fn is_fast(h: GrantHandle) -> bool {
    h.0 & handle::FAST_BIT != 0
}

/// The statuses `GNTTABOP_map_grant_ref` may return (spec 6.2).
pub const MAP_STATUSES: &[GntSt] = &[
    GntSt::Okay,
    GntSt::GeneralError,
    GntSt::BadDomain,
    GntSt::BadGntref,
    GntSt::PermissionDenied,
    GntSt::BadPage,
    GntSt::Eagain,
    GntSt::NoSpace,
];

/// The first address [`Rig::warm_up`] maps at (pages 1-3; tests map at [`va`] addresses).
pub const WARM_ADDR: u64 = 0x1000;

/// Base of the linear addresses tests map at.
pub const VA_BASE: u64 = 0x1000_0000;

/// The `i`-th page-aligned linear address above [`VA_BASE`].
pub fn va(i: u64) -> u64 {
    VA_BASE + i * 0x1000
}

/// `GNTMAP_host_map` (writable).
pub const HOST: GntMap = GntMap::HOST_MAP;
/// `GNTMAP_host_map | GNTMAP_readonly`.
pub const HOST_RO: GntMap = GntMap::HOST_MAP.union(GntMap::READONLY);
/// `GNTMAP_device_map` (writable).
pub const DEV: GntMap = GntMap::DEVICE_MAP;
/// `GNTMAP_device_map | GNTMAP_readonly`.
pub const DEV_RO: GntMap = GntMap::DEVICE_MAP.union(GntMap::READONLY);
/// `GNTMAP_host_map | GNTMAP_device_map` (writable).
pub const HOST_DEV: GntMap = GntMap::HOST_MAP.union(GntMap::DEVICE_MAP);
/// `GNTMAP_host_map | GNTMAP_device_map | GNTMAP_readonly`.
pub const HOST_DEV_RO: GntMap = HOST_DEV.union(GntMap::READONLY);

/// `GTF_reading | GTF_writing`.
pub const RW_BITS: u16 = gtf::READING | gtf::WRITING;

/// Maps one element on `cx`: `dom`'s `gref` with `flags` at `addr`. Returns the op with its
/// outputs.
pub fn map1<D: Design>(
    cx: &mut VcpuCtx<'_, D>,
    dom: DomId,
    gref: GrantRef,
    flags: GntMap,
    addr: u64,
) -> MapGrantRef {
    map1_raw(cx, dom, gref, flags.bits(), addr)
}

/// [`map1`] with raw flag bits (to pass bits the `GntMap` constants do not name).
pub fn map1_raw<D: Design>(
    cx: &mut VcpuCtx<'_, D>,
    dom: DomId,
    gref: GrantRef,
    flags: u32,
    addr: u64,
) -> MapGrantRef {
    let mut op = [MapGrantRef {
        host_addr: addr,
        flags,
        ref_: gref,
        dom,
        ..MapGrantRef::default()
    }];
    cx.map_grant_ref(&mut op)
        .expect("map_grant_ref never fails as a hypercall");
    op[0]
}

/// Unmaps one element on `cx`; returns its status.
pub fn unmap1<D: Design>(cx: &mut VcpuCtx<'_, D>, h: GrantHandle, host: u64, dev: u64) -> GntSt {
    let mut op = [UnmapGrantRef::new(h, host, dev)];
    cx.unmap_grant_ref(&mut op)
        .expect("unmap_grant_ref never fails as a hypercall");
    op[0].status
}

/// A snapshot made comparable across operations that legitimately reorder state without
/// changing it:
///
/// * each vCPU's maptrack free list becomes its sorted set of members (a failed map under the
///   Xen design pops a handle from the head and frees it to the tail: spec 5.3, FIFO frees;
///   the set of free handles and their owners is what "nothing changed" means);
/// * an unpinned active entry's `domid` and `mfn` are reset: spec 1.2, they are only
///   (re)written when the pin goes from 0 to non-zero and mean nothing while it is 0 (a map
///   that pinned an entry and was undone leaves them behind, in Xen too);
/// * trailing frames that are not allocated are dropped (a failed table growth creates frames
///   in the machine's frame table and frees them again; a freed frame and a frame never
///   created have the same accounting).
pub fn normalize(mut s: StateSnapshot) -> StateSnapshot {
    for d in s.domains.values_mut() {
        d.entries.retain(|_, e| {
            if e.active.pin == 0 {
                e.active.domid = DomId::INVALID;
                e.active.mfn = Mfn(u64::MAX);
            }
            e.active.pin != 0
                || e.shared != EntrySnapshot::default()
                || e.slots.iter().any(|s| *s != SlotInfo::Free)
        });
        for l in &mut d.free_lists {
            let initialised = l.0 != u32::MAX;
            l.2.sort_unstable();
            *l = (
                initialised as u32,
                initialised as u32,
                std::mem::take(&mut l.2),
            );
        }
    }
    while s
        .frames
        .last()
        .is_some_and(|f| f.owner.is_none() && f.refcount == 0 && f.writable_types == 0)
    {
        s.frames.pop();
    }
    s
}

/// Configuration of a [`Rig`], edited by the closure given to [`Rig::build`].
#[derive(Debug, Clone)]
pub struct RigCfg {
    /// Hypervisor configuration (the rig's [`TestHooks`] are installed after the closure).
    pub hv: HypervisorConfig,
    /// The granter ("a", PV, default limits).
    pub a: DomainConfig,
    /// The mapper ("b", PV, default limits, 2 vCPUs).
    pub b: DomainConfig,
    /// Warm the mapper's vCPU 0 maptrack up (one self-grant map and unmap) so that its first
    /// maptrack page exists before the test starts; skipped if `max_maptrack_frames` is 0.
    pub warm: bool,
}

/// A hypervisor with a granter `a` and a mapper `b`, plus helpers. Single-threaded helpers
/// issue hypercalls on the mapper's vCPU 0 (entered per call).
#[derive(Debug)]
pub struct Rig<D: Design> {
    /// The hypervisor.
    pub hv: Hypervisor<D>,
    /// The granter.
    pub a: DomId,
    /// The mapper.
    pub b: DomId,
    /// The installed hooks.
    pub hooks: Arc<TestHooks>,
}

impl<D: Design> Default for Rig<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Design> Rig<D> {
    /// Default rig.
    pub fn new() -> Self {
        Self::build(|_| {})
    }

    /// A rig whose configuration `f` edits first.
    pub fn build(f: impl FnOnce(&mut RigCfg)) -> Self {
        let mut c = RigCfg {
            hv: HypervisorConfig::default(),
            a: DomainConfig::new("granter"),
            b: DomainConfig::new("mapper").vcpus(2),
            warm: true,
        };
        f(&mut c);
        let hooks = Arc::new(TestHooks::default());
        let hv = Hypervisor::<D>::new(c.hv.hooks(hooks.clone()));
        let a = hv.create_domain(c.a).expect("create granter");
        let warm = c.warm && c.b.max_maptrack_frames > 0;
        let b = hv.create_domain(c.b).expect("create mapper");
        let r = Self { hv, a, b, hooks };
        if warm {
            r.warm_up(b);
        }
        r
    }

    /// Maps and unmaps a self-grant (ref 0 of `dom`'s own table, host-mapped three times at
    /// [`WARM_ADDR`] and the two pages after it, then ended) on `dom`'s vCPU 0, so that its
    /// maptrack has a page and vCPU 0 an initialised free list. (Three maps so that designs
    /// with two inline slots per entry take a slow handle too.)
    pub fn warm_up(&self, dom: DomId) {
        let g = self.hv.guest(dom).expect("domain");
        g.grant_access(GrantRef(0), dom, Gfn(0), false)
            .expect("grant");
        let mut cx = self.hv.vcpu(dom, 0).expect("vcpu 0");
        let addrs = [WARM_ADDR, WARM_ADDR + 0x1000, WARM_ADDR + 0x2000];
        let maps: Vec<_> = addrs
            .iter()
            .map(|&a| map1(&mut cx, dom, GrantRef(0), HOST, a))
            .collect();
        for (m, &a) in maps.iter().zip(&addrs) {
            assert_eq!(m.status, GntSt::Okay, "warm-up map");
            assert_eq!(
                unmap1(&mut cx, m.handle, a, 0),
                GntSt::Okay,
                "warm-up unmap"
            );
        }
        drop(cx);
        assert!(
            g.end_access(GrantRef(0)).expect("ref 0"),
            "warm-up end_access"
        );
    }

    /// Creates another domain.
    pub fn add_domain(&self, cfg: DomainConfig) -> DomId {
        self.hv.create_domain(cfg).expect("create domain")
    }

    /// Guest view of the granter.
    pub fn ga(&self) -> Guest<'_, D> {
        self.hv.guest(self.a).expect("granter")
    }

    /// Guest view of the mapper.
    pub fn gb(&self) -> Guest<'_, D> {
        self.hv.guest(self.b).expect("mapper")
    }

    /// Guest view of `dom`.
    pub fn guest(&self, dom: DomId) -> Guest<'_, D> {
        self.hv.guest(dom).expect("domain")
    }

    /// Enters the mapper's vCPU 0.
    pub fn cx(&self) -> VcpuCtx<'_, D> {
        self.hv.vcpu(self.b, 0).expect("mapper vcpu 0")
    }

    /// Enters vCPU `v` of `dom`.
    pub fn vcpu(&self, dom: DomId, v: u16) -> VcpuCtx<'_, D> {
        self.hv.vcpu(dom, v).expect("vcpu")
    }

    /// The granter grants its `gfn` to the mapper through `gref`.
    pub fn grant(&self, gref: GrantRef, gfn: Gfn, readonly: bool) {
        self.ga()
            .grant_access(gref, self.b, gfn, readonly)
            .expect("grant_access");
    }

    /// The granter grants its `gfn` to `grantee` through `gref`.
    pub fn grant_to(&self, gref: GrantRef, grantee: DomId, gfn: Gfn, readonly: bool) {
        self.ga()
            .grant_access(gref, grantee, gfn, readonly)
            .expect("grant_access");
    }

    /// The mapper (vCPU 0) maps the granter's `gref`.
    pub fn map(&self, gref: GrantRef, flags: GntMap, addr: u64) -> MapGrantRef {
        map1(&mut self.cx(), self.a, gref, flags, addr)
    }

    /// [`map`](Self::map) that must succeed; returns the op.
    #[track_caller]
    pub fn map_ok(&self, gref: GrantRef, flags: GntMap, addr: u64) -> MapGrantRef {
        let m = self.map(gref, flags, addr);
        assert_eq!(m.status, GntSt::Okay, "map {gref:?} {flags:?} at {addr:#x}");
        m
    }

    /// The mapper (vCPU 0) unmaps.
    pub fn unmap(&self, h: GrantHandle, host: u64, dev: u64) -> GntSt {
        unmap1(&mut self.cx(), h, host, dev)
    }

    /// [`unmap`](Self::unmap) that must succeed.
    #[track_caller]
    pub fn unmap_ok(&self, h: GrantHandle, host: u64, dev: u64) {
        assert_eq!(
            self.unmap(h, host, dev),
            GntSt::Okay,
            "unmap {h:?} host {host:#x} dev {dev:#x}"
        );
    }

    /// The frame behind `dom`'s `gfn` (must be present).
    #[track_caller]
    pub fn mfn(&self, dom: DomId, gfn: Gfn) -> Mfn {
        match self.hv.domain(dom).expect("domain").p2m(gfn) {
            P2mEntry::Present(m) => m,
            e => panic!("{dom:?} {gfn:?} is {e:?}"),
        }
    }

    /// Accounting of `mfn`.
    pub fn frame(&self, mfn: Mfn) -> FrameInfo {
        self.hv.frame_info(mfn).expect("frame exists")
    }

    /// `(refcount, writable_types)` of `mfn`.
    pub fn counts(&self, mfn: Mfn) -> (u32, u32) {
        let f = self.frame(mfn);
        (f.refcount, f.writable_types)
    }

    /// [`counts`](Self::counts) of `dom`'s frames at `gfns`.
    pub fn counts_of(&self, dom: DomId, gfns: impl IntoIterator<Item = u64>) -> Vec<(u32, u32)> {
        gfns.into_iter()
            .map(|g| self.counts(self.mfn(dom, Gfn(g))))
            .collect()
    }

    /// Pin counters `[hstw, hstr, devw, devr]` of the granter's `gref`.
    pub fn pins(&self, gref: GrantRef) -> [u32; 4] {
        self.hv
            .active_entry(self.a, gref)
            .expect("entry")
            .counters()
    }

    /// Pin counters of `dom`'s `gref`.
    pub fn pins_of(&self, dom: DomId, gref: GrantRef) -> [u32; 4] {
        self.hv.active_entry(dom, gref).expect("entry").counters()
    }

    /// `GTF_reading | GTF_writing` bits of the granter's `gref`.
    pub fn status_bits(&self, gref: GrantRef) -> u16 {
        self.ga().entry_snapshot(gref).expect("entry").flags & RW_BITS
    }

    /// TLB flushes issued so far by `dom`'s vCPUs.
    pub fn flushes(&self, dom: DomId) -> u64 {
        self.hv.domain(dom).expect("domain").stats().tlb_flushes
    }

    /// Grows `dom`'s grant table to `frames` frames (setup_table on its own vCPU 0).
    #[track_caller]
    pub fn grow(&self, dom: DomId, frames: u32) {
        let mut cx = self.vcpu(dom, 0);
        let mut op = [SetupTable {
            dom: DomId::SELF,
            nr_frames: frames,
            ..SetupTable::default()
        }];
        cx.setup_table(&mut op).expect("count 1");
        assert_eq!(op[0].status, GntSt::Okay, "grow {dom:?} to {frames} frames");
    }

    /// A normalized snapshot (see [`normalize`]).
    pub fn snap(&self) -> StateSnapshot {
        normalize(self.hv.snapshot())
    }

    /// Asserts that nothing changed since `before` (a [`snap`](Self::snap)) and that every
    /// invariant holds.
    #[track_caller]
    pub fn assert_unchanged(&self, before: &StateSnapshot) {
        let after = self.snap();
        if after != *before {
            panic!("state changed:\n{}", diff(before, &after));
        }
        self.check();
    }

    /// `hv.check().assert_ok()`.
    #[track_caller]
    pub fn check(&self) {
        self.hv.check().assert_ok();
    }
}

/// A readable description of how two snapshots differ.
pub fn diff(a: &StateSnapshot, b: &StateSnapshot) -> String {
    let mut out = String::new();
    let ids: std::collections::BTreeSet<_> = a.domains.keys().chain(b.domains.keys()).collect();
    for id in ids {
        match (a.domains.get(id), b.domains.get(id)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                if x.nr_grant_frames != y.nr_grant_frames {
                    out += &format!(
                        "{id:?} nr_grant_frames {} -> {}\n",
                        x.nr_grant_frames, y.nr_grant_frames
                    );
                }
                diff_maps(&mut out, &format!("{id:?} entry"), &x.entries, &y.entries);
                if x.maptrack_limit != y.maptrack_limit {
                    out += &format!(
                        "{id:?} maptrack_limit {} -> {}\n",
                        x.maptrack_limit, y.maptrack_limit
                    );
                }
                diff_maps(
                    &mut out,
                    &format!("{id:?} maptrack"),
                    &x.maptrack,
                    &y.maptrack,
                );
                if x.free_lists != y.free_lists {
                    out += &format!(
                        "{id:?} free lists {:?}\n   -> {:?}\n",
                        x.free_lists, y.free_lists
                    );
                }
                diff_maps(&mut out, &format!("{id:?} pte"), &x.ptes, &y.ptes);
                if x.stale != y.stale || x.crashed != y.crashed {
                    out += &format!(
                        "{id:?} stale/crashed {:?}/{} -> {:?}/{}\n",
                        x.stale, x.crashed, y.stale, y.crashed
                    );
                }
            }
            (x, y) => out += &format!("{id:?} present {} -> {}\n", x.is_some(), y.is_some()),
        }
    }
    for i in 0..a.frames.len().max(b.frames.len()) {
        let (x, y) = (a.frames.get(i), b.frames.get(i));
        if x != y {
            out += &format!("mfn {i:#x}: {x:?} -> {y:?}\n");
        }
    }
    out
}

fn diff_maps<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    out: &mut String,
    what: &str,
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
) {
    for (k, v) in a {
        match b.get(k) {
            Some(w) if w == v => {}
            w => *out += &format!("{what} {k:?}: {v:?} -> {w:?}\n"),
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            *out += &format!("{what} {k:?}: None -> {w:?}\n");
        }
    }
}

/// Which hook calls an [`Arm`] matches: a point, optionally restricted to a domain and vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm {
    /// The hook point.
    pub point: HookPoint,
    /// Only calls from this domain (any if `None`).
    pub domain: Option<DomId>,
    /// Only calls from this vCPU (any if `None`).
    pub vcpu: Option<u16>,
}

impl Arm {
    /// Matches every call at `point`.
    pub fn at(point: HookPoint) -> Self {
        Self {
            point,
            domain: None,
            vcpu: None,
        }
    }
    /// Restricts to calls from `d`.
    pub fn dom(mut self, d: DomId) -> Self {
        self.domain = Some(d);
        self
    }
    /// Restricts to calls from vCPU `v`.
    pub fn vcpu(mut self, v: u16) -> Self {
        self.vcpu = Some(v);
        self
    }
    fn matches(&self, c: &HookCtx) -> bool {
        self.point == c.point
            && self.domain.is_none_or(|d| d == c.domain)
            && self.vcpu.is_none_or(|v| v == c.vcpu)
    }
}

#[derive(Debug, Default)]
struct HookState {
    /// One-shot pauses.
    pauses: Vec<Arm>,
    /// Failure injections with their remaining count.
    fails: Vec<(Arm, u32)>,
    /// Threads parked in a hook: (ticket, context).
    parked: Vec<(u64, HookCtx)>,
    next_ticket: u64,
    hits: HashMap<(HookPoint, DomId), u64>,
}

/// Test hooks: pause a hypercall at a hook point until released, inject failures, count hits.
///
/// Pausing: [`pause_once`](Self::pause_once) arms a one-shot pause; the first matching hook
/// call parks its thread; the test waits for it with [`wait_parked`](Self::wait_parked),
/// inspects the state (the parked hypercall holds no grant lock at any hook point), then
/// [`release`](Self::release)s it. Waits give up after [`TestHooks::TIMEOUT`] so that a broken
/// test fails instead of hanging (a parked thread that is never released continues after the
/// timeout).
#[derive(Debug, Default)]
pub struct TestHooks {
    st: Mutex<HookState>,
    cv: Condvar,
}

impl TestHooks {
    /// Safety net for waits (not a timing assertion).
    pub const TIMEOUT: Duration = Duration::from_secs(30);

    fn lock(&self) -> MutexGuard<'_, HookState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next call matching `arm` parks until released.
    pub fn pause_once(&self, arm: Arm) {
        self.lock().pauses.push(arm);
    }

    /// The next `n` calls matching `arm` return [`HookAction::Fail`].
    pub fn fail(&self, arm: Arm, n: u32) {
        self.lock().fails.push((arm, n));
    }

    /// Removes every armed pause and failure.
    pub fn disarm(&self) {
        let mut s = self.lock();
        s.pauses.clear();
        s.fails.clear();
    }

    /// Blocks until a thread is parked at `point`; returns its context.
    #[track_caller]
    pub fn wait_parked(&self, point: HookPoint) -> HookCtx {
        let deadline = Instant::now() + Self::TIMEOUT;
        let mut s = self.lock();
        loop {
            if let Some((_, c)) = s.parked.iter().find(|(_, c)| c.point == point) {
                return *c;
            }
            let now = Instant::now();
            assert!(now < deadline, "no thread reached {point:?}");
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Releases the (first) thread parked at `point`.
    #[track_caller]
    pub fn release(&self, point: HookPoint) {
        let mut s = self.lock();
        let i = s
            .parked
            .iter()
            .position(|(_, c)| c.point == point)
            .unwrap_or_else(|| panic!("nothing parked at {point:?}"));
        s.parked.remove(i);
        self.cv.notify_all();
    }

    /// How many times `dom` reached `point`.
    pub fn hits(&self, point: HookPoint, dom: DomId) -> u64 {
        self.lock().hits.get(&(point, dom)).copied().unwrap_or(0)
    }
}

impl Hooks for TestHooks {
    fn at(&self, ctx: &HookCtx) -> HookAction {
        let mut s = self.lock();
        *s.hits.entry((ctx.point, ctx.domain)).or_default() += 1;
        if let Some(i) = s.fails.iter().position(|(a, n)| *n > 0 && a.matches(ctx)) {
            s.fails[i].1 -= 1;
            if s.fails[i].1 == 0 {
                s.fails.remove(i);
            }
            return HookAction::Fail;
        }
        if let Some(i) = s.pauses.iter().position(|a| a.matches(ctx)) {
            s.pauses.remove(i);
            let t = s.next_ticket;
            s.next_ticket += 1;
            s.parked.push((t, *ctx));
            self.cv.notify_all();
            let deadline = Instant::now() + Self::TIMEOUT;
            while s.parked.iter().any(|(k, _)| *k == t) {
                let now = Instant::now();
                if now >= deadline {
                    s.parked.retain(|(k, _)| *k != t);
                    break;
                }
                s = self
                    .cv
                    .wait_timeout(s, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        HookAction::Continue
    }
}

// ---------------------------------------------------------------------------------------
// Helpers for the IOMMU, copy, quota and teardown suites (tests/iommu.rs, copy.rs,
// xsa_copy.rs, quota.rs, teardown.rs).
// ---------------------------------------------------------------------------------------

/// Whether design `D` gives every strict-IOMMU map its own bus frame from a region above RAM
/// (`PerMapBfn`: Fast, FastNoSlots, XenPerMapBfn) rather than `BFN == MFN` with per-frame
/// counts (`MfnRefcount`: Xen, XenPlainRw, XenFastSlots).
pub fn per_map_bfn<D: Design>() -> bool {
    use gnttab::iommu::{IommuPolicy, PerMapBfn};
    <D::Iommu as IommuPolicy>::NAME == <PerMapBfn as IommuPolicy>::NAME
}

/// Runs one `GNTTABOP_copy` batch on `cx`; returns the statuses.
pub fn copy_on<D: Design>(cx: &mut VcpuCtx<'_, D>, ops: &mut [GnttabCopy]) -> Vec<GntSt> {
    cx.copy(ops).expect("copy never fails as a hypercall");
    ops.iter().map(|o| o.status).collect()
}

/// A copy element from grant `(sd, sr, so)` to grant `(dd, dr, doff)`.
pub fn cp_gg(
    sd: DomId,
    sr: GrantRef,
    so: u16,
    dd: DomId,
    dr: GrantRef,
    doff: u16,
    len: u16,
) -> GnttabCopy {
    GnttabCopy::new(
        CopyPtr::gref(sd, sr, so),
        true,
        CopyPtr::gref(dd, dr, doff),
        true,
        len,
    )
}

/// A copy element from grant `(sd, sr, so)` to the caller's frame `(dg, doff)`.
pub fn cp_gf(sd: DomId, sr: GrantRef, so: u16, dg: Gfn, doff: u16, len: u16) -> GnttabCopy {
    GnttabCopy::new(
        CopyPtr::gref(sd, sr, so),
        true,
        CopyPtr::gmfn(dg, doff),
        false,
        len,
    )
}

/// A copy element from the caller's frame `(sg, so)` to grant `(dd, dr, doff)`.
pub fn cp_fg(sg: Gfn, so: u16, dd: DomId, dr: GrantRef, doff: u16, len: u16) -> GnttabCopy {
    GnttabCopy::new(
        CopyPtr::gmfn(sg, so),
        false,
        CopyPtr::gref(dd, dr, doff),
        true,
        len,
    )
}

/// A copy element between two of the caller's frames.
pub fn cp_ff(sg: Gfn, so: u16, dg: Gfn, doff: u16, len: u16) -> GnttabCopy {
    GnttabCopy::new(
        CopyPtr::gmfn(sg, so),
        false,
        CopyPtr::gmfn(dg, doff),
        false,
        len,
    )
}

/// `len` bytes of a recognisable pattern derived from `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8).wrapping_add(1))
        .collect()
}

/// Runs `ops` as one copy batch on the mapper's vCPU 0 in a helper thread, parked at every
/// element boundary (hook `CopyPreempt`, reached before elements `1..n`): `at(i)` is called
/// while the batch waits before element `i` (it holds its cached buffers, no grant lock).
/// Returns the ops with their statuses. Do not arm failures at `CopyPreempt` for the same vCPU
/// meanwhile (a failure takes precedence over a pause, and the walk expects `n - 1` pauses).
pub fn copy_observed<D: Design>(
    r: &Rig<D>,
    mut ops: Vec<GnttabCopy>,
    mut at: impl FnMut(usize),
) -> Vec<GnttabCopy> {
    let n = ops.len();
    let arm = Arm::at(HookPoint::CopyPreempt).dom(r.b).vcpu(0);
    for _ in 1..n {
        r.hooks.pause_once(arm);
    }
    std::thread::scope(|s| {
        let t = s.spawn(move || {
            let mut cx = r.vcpu(r.b, 0);
            cx.copy(&mut ops).expect("copy never fails as a hypercall");
            ops
        });
        for i in 1..n {
            r.hooks.wait_parked(HookPoint::CopyPreempt);
            at(i);
            r.hooks.release(HookPoint::CopyPreempt);
        }
        t.join().expect("copy thread")
    })
}

impl<D: Design> Rig<D> {
    /// The mapper (vCPU 0) issues one copy batch; returns the statuses.
    pub fn copy(&self, ops: &mut [GnttabCopy]) -> Vec<GntSt> {
        copy_on(&mut self.cx(), ops)
    }

    /// `len` bytes of `dom`'s own memory at `gfn` + `off`.
    pub fn read_gfn(&self, dom: DomId, gfn: Gfn, off: usize, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.guest(dom)
            .read_page(gfn, off, &mut buf)
            .expect("read own page");
        buf
    }

    /// IOTLB flushes issued so far for `dom`'s IOMMU.
    pub fn iotlb_flushes(&self, dom: DomId) -> u64 {
        self.hv.domain(dom).expect("domain").stats().iotlb_flushes
    }

    /// Maps and unmaps a self-grant of `dom` (ref 1, gfn 1, host map at [`WARM_ADDR`]) on vCPU
    /// `v`, so that `v`'s maptrack free list is initialised (a first map on a vCPU may grow
    /// the maptrack table, which a failed map does not undo) before a test takes snapshots.
    pub fn warm_vcpu(&self, dom: DomId, v: u16) {
        let g = self.guest(dom);
        g.grant_access(GrantRef(1), dom, Gfn(1), false)
            .expect("grant");
        let mut cx = self.vcpu(dom, v);
        let m = map1(&mut cx, dom, GrantRef(1), HOST, WARM_ADDR);
        assert_eq!(m.status, GntSt::Okay, "warm-up map on vCPU {v}");
        assert_eq!(unmap1(&mut cx, m.handle, WARM_ADDR, 0), GntSt::Okay);
        drop(cx);
        assert!(
            g.end_access(GrantRef(1)).expect("ref 1"),
            "warm-up end_access"
        );
    }

    /// The mapper's map quota: `(limit, idle)` (`None` if it has none).
    pub fn quota_of(&self, dom: DomId) -> Option<(u32, u32)> {
        let d = self.hv.domain(dom).expect("domain");
        d.quota().map(|q| (q.limit(), q.idle()))
    }
}

/// The source grant of [`copy_rig`] (read-only).
pub const COPY_SRC: GrantRef = GrantRef(1);
/// The destination grant of [`copy_rig`] (writable).
pub const COPY_DST: GrantRef = GrantRef(2);

/// Rig for copy tests: `a`'s gfn 1 (pattern 1) granted read-only as [`COPY_SRC`], gfn 2
/// (pattern 2) writable as [`COPY_DST`], and the mapper's gfns 5..=9 filled with patterns
/// 5..=9.
pub fn copy_rig<D: Design>() -> Rig<D> {
    let r = Rig::<D>::new();
    r.ga().write_page(Gfn(1), 0, &pattern(1, 4096)).unwrap();
    r.ga().write_page(Gfn(2), 0, &pattern(2, 4096)).unwrap();
    for g in 5..=9u8 {
        r.gb()
            .write_page(Gfn(g.into()), 0, &pattern(g, 4096))
            .unwrap();
    }
    r.grant(COPY_SRC, Gfn(1), true);
    r.grant(COPY_DST, Gfn(2), false);
    r
}
