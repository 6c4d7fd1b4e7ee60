//! Property tests: random multi-domain op sequences run through the real hypervisor, on every
//! design, and through the sequential reference model (`tests/reference`), comparing after
//! every step:
//!
//! * each op's status (per element for batches), `dev_bus_addr`, fast handle values, and that
//!   slow handles are unique among the mapper's live mappings;
//! * every shared entry the model knows (flags with the status bits, domid, frame), its pin
//!   counters (`active_entry().counters()`) and, while pinned, grantee and frame;
//! * page and writable-type references of every domain frame (`frame_info`);
//! * the whole-state snapshot: which entries are non-trivial, fast slots, live maptrack
//!   records, host PTEs, grant-table sizes, no crash, no stale TLB entry;
//! * `check_with` (spec 13 invariants), with the domains that wrote their entries raw marked
//!   adversarial.
//!
//! Default: a modest number of cases per design (see `DEFAULT_CASES`); `PROPTEST_CASES=N`
//! raises it. Run with `cargo test --test properties`.

mod reference;

use gnttab::maptrack::SlotPolicy;
use gnttab::prelude::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestCaseError;
use reference::{fast_handle, GuestErr, Kind, MapIn, Model, P2m, FAST_BIT};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Cases per design when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 96;
/// Guest frames per domain (gfn 0..MEM_PAGES).
const MEM_PAGES: u64 = 6;
/// Host address-space slots per domain (a multiple of 512).
const HOST_PAGES: u64 = 4096;
/// vCPUs per domain.
const VCPUS: u16 = 2;

// ------------------------------------------------------------------------------ inputs

/// A domain named by an op.
#[derive(Clone, Copy, Debug)]
enum Dom {
    /// The scenario's domain `i % n`.
    Idx(u8),
    /// An id no domain has.
    Missing(u16),
    /// `DOMID_SELF`.
    SelfId,
}

/// A host address.
#[derive(Clone, Copy, Debug)]
enum Addr {
    /// Page-table slot `s` (linear `s << 12`, or PTE address `s * 8` with `contains_pte`).
    Slot(u8),
    /// Slot plus an offset (ignored for linear addresses; misaligns a PTE address).
    Off(u8, u16),
    /// 0.
    Zero,
    /// Just beyond the address space.
    Beyond,
}

#[derive(Clone, Copy, Debug)]
enum Parts {
    Host,
    Dev,
    Both,
    Neither,
}

/// Extra map flags.
#[derive(Clone, Copy, Debug)]
enum Extra {
    None,
    App,
    Pte,
    /// A PTE "available" bit (bit 16).
    Avail,
}

/// The entry a map names.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// An explicit granter and ref.
    Ref(Dom, u32),
    /// The `k`-th entry (of any domain) currently granted to the mapper (permit_access,
    /// domid = mapper), resolved from the model's state; `Ref(Idx(0), 0)` if none.
    Granted(u8),
    /// The `k`-th entry (of any domain) the mapper has pinned; `Granted(k)` if none.
    Pinned(u8),
}

#[derive(Clone, Copy, Debug)]
struct MapSpec {
    target: Target,
    parts: Parts,
    ro: bool,
    extra: Extra,
    addr: Addr,
}

/// The handle an unmap presents.
#[derive(Clone, Copy, Debug)]
enum HandleSel {
    /// The target mapping's handle.
    Own,
    /// Another live mapping's handle.
    Other(u8),
    /// A handle of a mapping this mapper already removed.
    Stale(u8),
    /// A raw value.
    Forged(u32),
    /// A fast-handle bit pattern for any granter/ref.
    ForgedFast(Dom, u32),
}

#[derive(Clone, Copy, Debug)]
enum HostSel {
    Own,
    Zero,
    Other(u8),
    /// The address of another live mapping of the same frame by the same mapper.
    Sibling(u8),
    At(Addr),
}

#[derive(Clone, Copy, Debug)]
enum DevSel {
    Own,
    Zero,
    /// The target's device address plus one page.
    Wrong,
    Other(u8),
}

#[derive(Clone, Copy, Debug)]
struct UnmapSpec {
    target: u8,
    handle: HandleSel,
    host: HostSel,
    dev: DevSel,
}

/// Which of the adversary's entries a raw store hits.
#[derive(Clone, Copy, Debug)]
enum RawTarget {
    Ref(u32),
    /// The `k`-th pinned entry (model state); ref 0 if none.
    Pinned(u8),
}

/// An adversarial store into one of the adversary's entries.
#[derive(Clone, Copy, Debug)]
enum RawWrite {
    FlipReadonly,
    Domid(Dom),
    Frame(u32),
    Type(u16),
    ClearStatus,
    SetStatus,
    SubPage,
    Whole { flags: u16, domid: Dom, frame: u32 },
}

/// One side of a copy element.
#[derive(Clone, Copy, Debug)]
enum SideSel {
    /// Grant `ref` of a domain (a granter, the caller itself, a missing id, `DOMID_SELF`).
    Gref(Dom, u32),
    /// The `k`-th entry (of any domain) granted to the caller, resolved from the model; the
    /// caller's own entries are named by `DOMID_SELF` if the flag says so. The caller's own
    /// gfn `k % MEM_PAGES` if none.
    Granted(u8, bool),
    /// The `k`-th entry the caller has pinned (through maps); `Granted` if none.
    Pinned(u8),
    /// The `k`-th pinned entry of any grantee; `Granted` if none.
    PinnedAny(u8),
    /// The caller's own gfn, `DOMID_SELF`.
    Frame(u32),
    /// A frame side with an explicit domid (the caller's numeric id, another domain, a
    /// missing one): `permission_denied` when looked up.
    FrameAs(Dom, u32),
    /// A frame side with the previous element's domid for this side (not looked up again
    /// when the other side's domid repeats too).
    FramePrevDom(u32),
    /// A grant side with the previous element's domid for this side.
    GrefPrevDom(u32),
    /// Exactly the previous element's side (domid, kind and ref / gfn: the cached buffer).
    Prev,
}

/// A copy offset.
#[derive(Clone, Copy, Debug)]
enum OffSel {
    Small(u16),
    Any(u16),
    Edge(u16),
}

/// A copy length.
#[derive(Clone, Copy, Debug)]
enum LenSel {
    Zero,
    Small(u16),
    /// Up to the end of the source (`dest == false`) or destination page, one byte beyond
    /// if `over`.
    Fit {
        dest: bool,
        over: bool,
    },
    Any(u16),
}

#[derive(Clone, Copy, Debug)]
struct CopySpec {
    src: SideSel,
    dst: SideSel,
    src_off: OffSel,
    dst_off: OffSel,
    len: LenSel,
}

/// A P2M change that lasts for one copy hypercall (undone right after it, so every
/// allocated frame is reachable from its owner's P2M whenever the states are compared).
#[derive(Clone, Copy, Debug)]
enum Poke {
    PagedOut,
    Absent,
    /// The gfn points at frame `gfn` of domain `dom` (another domain's: not the owner's).
    Foreign(u8, u32),
}

/// Which frame a [`Poke`] hits: the one element `elem`'s source or destination names.
#[derive(Clone, Copy, Debug)]
struct PokeSpec {
    elem: u8,
    dest: bool,
    to: Poke,
}

#[derive(Clone, Debug)]
enum Op {
    Grant {
        granter: u8,
        gref: u32,
        grantee: Dom,
        gfn: u32,
        ro: bool,
    },
    End {
        granter: u8,
        gref: u32,
    },
    Map {
        mapper: u8,
        vcpu: u8,
        batch: Vec<MapSpec>,
    },
    /// `busy`: `mapper` indexes the domains that have live mappings (if any) instead.
    Unmap {
        mapper: u8,
        busy: bool,
        vcpu: u8,
        batch: Vec<UnmapSpec>,
    },
    /// Unmap every live mapping of `mapper` (own addresses) in one batch (may exceed 32).
    UnmapAll {
        mapper: u8,
    },
    /// `n` maps of one gref in one batch (pin-counter overflow at 128).
    Flood {
        mapper: u8,
        granter: Dom,
        gref: u32,
        n: u8,
        host: bool,
        ro: bool,
    },
    /// Raw store by the adversary (skipped when the scenario has none).
    Raw {
        target: RawTarget,
        write: RawWrite,
    },
    Setup {
        caller: u8,
        target: Dom,
        nr_frames: u32,
        count: u8,
    },
    Query {
        caller: u8,
        target: Dom,
        count: u8,
    },
    /// One `GNTTABOP_copy` hypercall. Bit `i` of `preempt`: the hypercall is preempted before
    /// element `i` (`CopyPreempt` answers `Fail`: a continuation with nothing cached).
    Copy {
        caller: u8,
        vcpu: u8,
        batch: Vec<CopySpec>,
        poke: Option<PokeSpec>,
        preempt: u8,
    },
    /// A guest writes a pattern into its own memory.
    Write {
        dom: u8,
        gfn: u32,
        offset: u16,
        len: u16,
        seed: u8,
    },
    /// Toolstack pages a frame out (or back in).
    Page {
        dom: u8,
        gfn: u32,
        out: bool,
    },
    /// A guest gives one of its frames a non-writable type (or takes it away).
    FrameType {
        dom: u8,
        gfn: u32,
        on: bool,
    },
    /// Pin-counter overflow through copies: `granter` grants `gref` -> `gfn` to `mapper`
    /// (read-only if `ro`), `mapper` maps it `n` times (host, read-only if `ro`), copies from
    /// it (and, writable, into it) in one batch, then unmaps everything.
    FloodCopy {
        mapper: u8,
        granter: u8,
        gref: u32,
        gfn: u32,
        n: u8,
        ro: bool,
    },
    /// Toolstack kills domain `dom` and runs the teardown to completion (skipped unless two
    /// other domains stay alive, so the rest of the scenario keeps a mapper and a granter).
    Kill {
        dom: u8,
    },
    /// A dying granter: `granter` grants `gref` -> `gfn` to `mapper` (another domain), which
    /// maps it (read-only if `ro`); the granter is killed (a zombie: its page is mapped); the
    /// mapper copies from and into the grant and from another of the zombie's refs, then
    /// unmaps everything (destroying the zombie).
    ZombieCopy {
        granter: u8,
        mapper: u8,
        gref: u32,
        gfn: u32,
        ro: bool,
    },
    /// The XSA-500 shape: the adversary (else domain `mapper + 1`) grants `gref` -> `gfn`
    /// writable to `mapper`, which maps it read-only; the adversary points the entry at
    /// `gfn2`; the mapper copies into the grant (an upgrade of the read-only pin), then from
    /// it. Every sub-step is compared.
    Xsa500 {
        mapper: u8,
        gref: u32,
        gfn: u32,
        gfn2: u32,
        slot: u8,
        off: u16,
        len: u16,
    },
}

#[derive(Clone, Copy, Debug)]
struct DomSpec {
    hvm: bool,
    max_grant_frames: u32,
    privileged: bool,
    /// `MapLimit::Limit(n)` (live maps); `None`: the default (never reached here).
    map_limit: Option<u32>,
}

#[derive(Clone, Debug)]
struct Scenario {
    doms: Vec<DomSpec>,
    /// Index of the domain that may write its entries raw.
    adversary: Option<u8>,
    ops: Vec<Op>,
}

// ------------------------------------------------------------------------------ generators

fn gref() -> impl Strategy<Value = u32> {
    prop_oneof![
        12 => 0u32..16,
        1 => prop::sample::select(vec![511u32, 512, 513, 1023, 1024, 1535, 1536, 65535, 65536, 1 << 31, u32::MAX]),
    ]
}

fn dom() -> impl Strategy<Value = Dom> {
    prop_oneof![
        12 => (0u8..3).prop_map(Dom::Idx),
        1 => prop::sample::select(vec![5u16, 7, 100, 0x7FEF]).prop_map(Dom::Missing),
        1 => Just(Dom::SelfId),
    ]
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        10 => (1u8..20).prop_map(Addr::Slot),
        2 => (1u8..20, 1u16..4096).prop_map(|(s, o)| Addr::Off(s, o)),
        1 => Just(Addr::Zero),
        1 => Just(Addr::Beyond),
    ]
}

fn map_spec() -> impl Strategy<Value = MapSpec> {
    let parts = prop_oneof![
        8 => Just(Parts::Host),
        3 => Just(Parts::Dev),
        3 => Just(Parts::Both),
        1 => Just(Parts::Neither),
    ];
    let extra = prop_oneof![
        12 => Just(Extra::None),
        1 => Just(Extra::App),
        2 => Just(Extra::Pte),
        1 => Just(Extra::Avail),
    ];
    let target = prop_oneof![
        1 => (dom(), gref()).prop_map(|(d, g)| Target::Ref(d, g)),
        2 => any::<u8>().prop_map(Target::Granted),
        1 => any::<u8>().prop_map(Target::Pinned),
    ];
    (target, parts, any::<bool>(), extra, addr()).prop_map(|(target, parts, ro, extra, addr)| {
        MapSpec {
            target,
            parts,
            ro,
            extra,
            addr,
        }
    })
}

fn unmap_spec() -> impl Strategy<Value = UnmapSpec> {
    let handle = prop_oneof![
        12 => Just(HandleSel::Own),
        2 => any::<u8>().prop_map(HandleSel::Other),
        2 => any::<u8>().prop_map(HandleSel::Stale),
        1 => prop_oneof![Just(0u32), Just(1), Just(255), Just(256), Just(FAST_BIT), any::<u32>()]
            .prop_map(HandleSel::Forged),
        1 => (dom(), gref()).prop_map(|(d, g)| HandleSel::ForgedFast(d, g)),
    ];
    let host = prop_oneof![
        10 => Just(HostSel::Own),
        3 => Just(HostSel::Zero),
        2 => any::<u8>().prop_map(HostSel::Other),
        2 => any::<u8>().prop_map(HostSel::Sibling),
        2 => addr().prop_map(HostSel::At),
    ];
    let dev = prop_oneof![
        6 => Just(DevSel::Own),
        6 => Just(DevSel::Zero),
        1 => Just(DevSel::Wrong),
        1 => any::<u8>().prop_map(DevSel::Other),
    ];
    (any::<u8>(), handle, host, dev).prop_map(|(target, handle, host, dev)| UnmapSpec {
        target,
        handle,
        host,
        dev,
    })
}

fn raw_write() -> impl Strategy<Value = RawWrite> {
    let flag_bits = prop::sample::subsequence(
        vec![
            gtf::PERMIT_ACCESS,
            gtf::ACCEPT_TRANSFER,
            gtf::READONLY,
            gtf::READING,
            gtf::WRITING,
            gtf::SUB_PAGE,
        ],
        0..=4,
    )
    .prop_map(|v| v.into_iter().fold(0u16, |a, b| a | b));
    prop_oneof![
        4 => Just(RawWrite::FlipReadonly),
        2 => dom().prop_map(RawWrite::Domid),
        2 => (0u32..8).prop_map(RawWrite::Frame),
        1 => (0u16..4).prop_map(RawWrite::Type),
        2 => Just(RawWrite::ClearStatus),
        1 => Just(RawWrite::SetStatus),
        1 => Just(RawWrite::SubPage),
        1 => (flag_bits, dom(), 0u32..8).prop_map(|(flags, domid, frame)| RawWrite::Whole { flags, domid, frame }),
    ]
}

fn side_sel() -> impl Strategy<Value = SideSel> {
    let gfn = || prop_oneof![8 => 0u32..(MEM_PAGES as u32), 1 => (MEM_PAGES as u32)..(MEM_PAGES as u32 + 2)];
    prop_oneof![
        3 => (dom(), prop_oneof![
            4 => 0u32..16,
            1 => prop::sample::select(vec![512u32, 513, 1023, 1024, 1536, 65536, 1 << 31, u32::MAX]),
        ])
        .prop_map(|(d, g)| SideSel::Gref(d, g)),
        6 => (any::<u8>(), any::<bool>()).prop_map(|(k, s)| SideSel::Granted(k, s)),
        3 => any::<u8>().prop_map(SideSel::Pinned),
        1 => any::<u8>().prop_map(SideSel::PinnedAny),
        5 => gfn().prop_map(SideSel::Frame),
        1 => (dom(), gfn()).prop_map(|(d, g)| SideSel::FrameAs(d, g)),
        2 => gfn().prop_map(SideSel::FramePrevDom),
        1 => (0u32..16).prop_map(SideSel::GrefPrevDom),
        6 => Just(SideSel::Prev),
    ]
}

fn off_sel() -> impl Strategy<Value = OffSel> {
    prop_oneof![
        6 => (0u16..64).prop_map(OffSel::Small),
        3 => (0u16..4096).prop_map(OffSel::Any),
        1 => prop::sample::select(vec![0u16, 1, 4094, 4095, 4096, 4097, u16::MAX]).prop_map(OffSel::Edge),
    ]
}

fn copy_spec() -> impl Strategy<Value = CopySpec> {
    let len = prop_oneof![
        1 => Just(LenSel::Zero),
        8 => (1u16..64).prop_map(LenSel::Small),
        3 => (any::<bool>(), prop::bool::weighted(0.4)).prop_map(|(dest, over)| LenSel::Fit { dest, over }),
        1 => prop::sample::select(vec![1u16, 4095, 4096, 4097, u16::MAX]).prop_map(LenSel::Any),
    ];
    (side_sel(), side_sel(), off_sel(), off_sel(), len).prop_map(
        |(src, dst, src_off, dst_off, len)| CopySpec {
            src,
            dst,
            src_off,
            dst_off,
            len,
        },
    )
}

fn poke() -> impl Strategy<Value = Option<PokeSpec>> {
    let to = prop_oneof![
        1 => Just(Poke::PagedOut),
        1 => Just(Poke::Absent),
        1 => (0u8..3, 0u32..(MEM_PAGES as u32)).prop_map(|(d, g)| Poke::Foreign(d, g)),
    ];
    prop_oneof![
        4 => Just(None),
        1 => (0u8..4, any::<bool>(), to).prop_map(|(elem, dest, to)| Some(PokeSpec { elem, dest, to })),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let idx = || 0u8..3;
    let count = || prop_oneof![8 => Just(1u8), 1 => Just(0u8), 1 => Just(2u8)];
    prop_oneof![
        12 => (idx(), gref(), prop_oneof![6 => (0u8..3).prop_map(Dom::Idx), 1 => dom()], 0u32..(MEM_PAGES as u32 + 2), any::<bool>())
            .prop_map(|(granter, gref, grantee, gfn, ro)| Op::Grant { granter, gref, grantee, gfn, ro }),
        3 => (idx(), gref()).prop_map(|(granter, gref)| Op::End { granter, gref }),
        14 => (idx(), 0u8..2, prop::collection::vec(map_spec(), 0..4))
            .prop_map(|(mapper, vcpu, batch)| Op::Map { mapper, vcpu, batch }),
        10 => (idx(), prop::bool::weighted(0.8), 0u8..2, prop::collection::vec(unmap_spec(), 0..4))
            .prop_map(|(mapper, busy, vcpu, batch)| Op::Unmap { mapper, busy, vcpu, batch }),
        1 => idx().prop_map(|mapper| Op::UnmapAll { mapper }),
        1 => (idx(), dom(), 0u32..16, prop_oneof![1 => 1u8..126, 4 => 126u8..=132], any::<bool>(), any::<bool>())
            .prop_map(|(mapper, granter, gref, n, host, ro)| Op::Flood { mapper, granter, gref, n, host, ro }),
        5 => (
            prop_oneof![1 => gref().prop_map(RawTarget::Ref), 1 => any::<u8>().prop_map(RawTarget::Pinned)],
            raw_write()
        )
            .prop_map(|(target, write)| Op::Raw { target, write }),
        1 => (idx(), dom(), 0u32..5, count())
            .prop_map(|(caller, target, nr_frames, count)| Op::Setup { caller, target, nr_frames, count }),
        1 => (idx(), dom(), count()).prop_map(|(caller, target, count)| Op::Query { caller, target, count }),
        14 => (idx(), 0u8..2, prop::collection::vec(copy_spec(), 1..=4), poke(), prop_oneof![3 => Just(0u8), 1 => any::<u8>()])
            .prop_map(|(caller, vcpu, batch, poke, preempt)| Op::Copy { caller, vcpu, batch, poke, preempt }),
        2 => (idx(), 0u32..(MEM_PAGES as u32 + 1), prop_oneof![8 => 0u16..4096, 1 => 4040u16..4200], 1u16..64, any::<u8>())
            .prop_map(|(dom, gfn, offset, len, seed)| Op::Write { dom, gfn, offset, len, seed }),
        2 => (idx(), 0u32..(MEM_PAGES as u32), any::<bool>())
            .prop_map(|(dom, gfn, out)| Op::Page { dom, gfn, out }),
        2 => (idx(), 0u32..(MEM_PAGES as u32), any::<bool>())
            .prop_map(|(dom, gfn, on)| Op::FrameType { dom, gfn, on }),
        1 => idx().prop_map(|dom| Op::Kill { dom }),
        1 => (idx(), idx(), 0u32..16, 0u32..(MEM_PAGES as u32), any::<bool>())
            .prop_map(|(granter, mapper, gref, gfn, ro)| Op::ZombieCopy { granter, mapper, gref, gfn, ro }),
        1 => (idx(), idx(), 0u32..16, 0u32..(MEM_PAGES as u32), 125u8..=129, any::<bool>())
            .prop_map(|(mapper, granter, gref, gfn, n, ro)| Op::FloodCopy { mapper, granter, gref, gfn, n, ro }),
        2 => (idx(), 0u32..16, 0u32..(MEM_PAGES as u32), 0u32..(MEM_PAGES as u32 + 1), 100u8..120, 0u16..4000, 1u16..64)
            .prop_map(|(mapper, gref, gfn, gfn2, slot, off, len)| Op::Xsa500 { mapper, gref, gfn, gfn2, slot, off, len }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let dom_spec = |hvm: bool| {
        let limit = prop_oneof![3 => Just(None), 1 => (0u32..6).prop_map(Some)];
        (1u32..=3, prop::bool::weighted(0.25), limit).prop_map(
            move |(max_grant_frames, privileged, map_limit)| DomSpec {
                hvm,
                max_grant_frames,
                privileged,
                map_limit,
            },
        )
    };
    // d0 is PV (a PV mapper always exists); the others are PV or HVM.
    let doms = (
        dom_spec(false),
        prop::collection::vec(any::<bool>().prop_flat_map(dom_spec), 1..=2),
    )
        .prop_map(|(d0, rest)| std::iter::once(d0).chain(rest).collect::<Vec<_>>());
    (
        doms,
        prop_oneof![1 => Just(None), 1 => (0u8..3).prop_map(Some)],
        prop::collection::vec(op(), 1..80),
    )
        .prop_map(|(doms, adversary, ops)| {
            let adversary = adversary.map(|a| a % doms.len() as u8);
            Scenario {
                doms,
                adversary,
                ops,
            }
        })
}

// ------------------------------------------------------------------------------ harness

/// Parks a copy hypercall at every element boundary (`CopyPreempt`) while armed, so the
/// harness can compare the state mid-batch (cached buffers hold pins and references), then
/// lets it carry on or preempts it there.
#[derive(Debug, Default)]
struct Gate {
    st: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    armed: bool,
    /// The batch waits at a boundary.
    parked: bool,
    /// The harness's answer to the parked batch.
    answer: Option<HookAction>,
}

impl Hooks for Gate {
    fn at(&self, ctx: &HookCtx) -> HookAction {
        if ctx.point != HookPoint::CopyPreempt {
            return HookAction::Continue;
        }
        let mut g = self.st.lock().unwrap();
        if !g.armed {
            return HookAction::Continue;
        }
        g.parked = true;
        self.cv.notify_all();
        loop {
            if let Some(a) = g.answer.take() {
                g.parked = false;
                return a;
            }
            g = self.cv.wait(g).unwrap();
        }
    }
}

impl Gate {
    fn arm(&self, on: bool) {
        let mut g = self.st.lock().unwrap();
        g.armed = on;
        if !on && g.parked && g.answer.is_none() {
            g.answer = Some(HookAction::Continue);
            self.cv.notify_all();
        }
    }

    /// Waits until the batch is parked (true) or `done()` says the hypercall returned.
    fn wait_parked(&self, done: &dyn Fn() -> bool) -> bool {
        let mut g = self.st.lock().unwrap();
        loop {
            if g.parked && g.answer.is_none() {
                return true;
            }
            if done() {
                return false;
            }
            // Not a timing assertion: only how often `done` is polled.
            g = self.cv.wait_timeout(g, Duration::from_millis(5)).unwrap().0;
        }
    }

    fn answer(&self, a: HookAction) {
        let mut g = self.st.lock().unwrap();
        g.answer = Some(a);
        self.cv.notify_all();
    }
}

struct Run<'h, D: Design> {
    hv: &'h Hypervisor<D>,
    /// The hypervisor's hooks.
    gate: Arc<Gate>,
    model: Model,
    ids: Vec<DomId>,
    adversary: Option<DomId>,
    /// Domains that wrote raw entries (invariant 4 not checked for them).
    adversarial: BTreeSet<DomId>,
    /// Handles of mappings each mapper removed (most recent last).
    stale: BTreeMap<DomId, Vec<u32>>,
    /// The last step may have changed guest-visible memory (a copy, a guest write, a P2M
    /// change): `compare` reads every page (only such steps write bytes, so the other steps
    /// skip the 4 KiB reads; the end of every scenario compares them regardless).
    pages_dirty: bool,
    log: String,
}

/// A mismatch, with the trace of every executed step.
fn fail(log: &str, msg: String) -> TestCaseError {
    TestCaseError::fail(format!("{msg}\n--- executed steps ---\n{log}"))
}

macro_rules! ensure {
    ($run:expr, $cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(fail(&$run.log, format!($($fmt)*)));
        }
    };
}

impl<'h, D: Design> Run<'h, D> {
    fn dom(&self, d: Dom) -> DomId {
        match d {
            Dom::Idx(i) => self.ids[i as usize % self.ids.len()],
            Dom::Missing(x) => DomId(x),
            Dom::SelfId => DomId::SELF,
        }
    }

    fn idx(&self, i: u8) -> DomId {
        self.ids[i as usize % self.ids.len()]
    }

    fn addr(a: Addr, pte: bool) -> u64 {
        match (a, pte) {
            (Addr::Slot(s), false) => u64::from(s) << 12,
            (Addr::Slot(s), true) => u64::from(s) * 8,
            (Addr::Off(s, o), false) => (u64::from(s) << 12) + u64::from(o % 4096),
            (Addr::Off(s, o), true) => u64::from(s) * 8 + u64::from(o % 8),
            (Addr::Zero, _) => 0,
            (Addr::Beyond, false) => HOST_PAGES << 12,
            (Addr::Beyond, true) => HOST_PAGES * 8,
        }
    }

    fn line(&mut self, s: String) {
        self.log.push_str(&s);
        self.log.push('\n');
    }

    fn guest_result<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        real: Result<T, GuestError>,
        model: Result<T, GuestErr>,
    ) -> Result<(), TestCaseError> {
        let real = real.map_err(|e| format!("{e:?}"));
        let model = model.map_err(|e| format!("{e:?}"));
        ensure!(
            self,
            real == model,
            "{what}: hypervisor {real:?}, model {model:?}"
        );
        Ok(())
    }

    /// The domain acting in `op` (guest-side or hypercall), if one does.
    fn actor(&self, op: &Op) -> Option<(DomId, bool)> {
        match *op {
            Op::Grant { granter, .. } | Op::End { granter, .. } => Some((self.idx(granter), false)),
            Op::Raw { .. } => self.adversary.map(|a| (a, false)),
            Op::Write { dom, .. } | Op::Page { dom, .. } | Op::FrameType { dom, .. } => {
                Some((self.idx(dom), false))
            }
            Op::Map { mapper, .. } | Op::Flood { mapper, .. } | Op::UnmapAll { mapper } => {
                Some((self.idx(mapper), true))
            }
            // A busy mapper has live mappings, so it is alive.
            Op::Unmap { mapper, busy, .. } => {
                (!busy || self.model.mappings.is_empty()).then(|| (self.idx(mapper), true))
            }
            Op::Setup { caller, .. } | Op::Query { caller, .. } | Op::Copy { caller, .. } => {
                Some((self.idx(caller), true))
            }
            Op::Kill { .. } | Op::FloodCopy { .. } | Op::Xsa500 { .. } | Op::ZombieCopy { .. } => {
                None
            }
        }
    }

    /// Whether `id` is alive in the model.
    fn alive(&self, id: DomId) -> bool {
        self.model.domains.get(&id).is_some_and(|d| !d.dying)
    }

    /// A killed domain does not act: its hypercalls are refused (`-ESRCH` while it is a
    /// zombie, no vCPU to enter once destroyed) and its guest is paused. Returns whether
    /// `op` was skipped for that reason.
    fn dead_actor(&mut self, op: &Op) -> Result<bool, TestCaseError> {
        let Some((id, hypercall)) = self.actor(op) else {
            return Ok(false);
        };
        if self.alive(id) {
            return Ok(false);
        }
        if hypercall {
            if self.model.domains.contains_key(&id) {
                let r = self.hv.vcpu(id, 0).map(|mut cx| cx.copy(&mut []));
                ensure!(
                    self,
                    r == Ok(Err(Errno::Srch)),
                    "hypercall of dying {id:?}: {r:?}, expected -ESRCH"
                );
            } else {
                let r = self.hv.vcpu(id, 0).err();
                ensure!(
                    self,
                    r == Some(EnterError::NoDomain),
                    "vCPU of destroyed {id:?}: {r:?}"
                );
            }
        }
        self.line(format!("{id:?} is dead: skipped {op:?}"));
        Ok(true)
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if self.dead_actor(op)? {
            return Ok(());
        }
        match *op {
            Op::Kill { dom } => {
                let id = self.idx(dom);
                let others = self
                    .ids
                    .iter()
                    .filter(|&&d| d != id && self.alive(d))
                    .count();
                if !self.alive(id) || others < 2 {
                    self.line(format!("kill {id:?}: skipped"));
                    return Ok(());
                }
                let st = self.hv.kill_domain(id).unwrap().run();
                let (released, destroyed) = self.model.kill(id);
                self.line(format!(
                    "kill {id:?}: released {}, destroyed {}",
                    st.mappings_released, st.destroyed
                ));
                ensure!(
                    self,
                    (st.mappings_released, st.destroyed) == (released, destroyed),
                    "teardown released {} mappings, destroyed {}; model {released}, {destroyed}",
                    st.mappings_released,
                    st.destroyed
                );
                Ok(())
            }
            Op::Copy {
                caller,
                vcpu,
                ref batch,
                poke,
                preempt,
            } => self.copy_step(caller, vcpu, batch, poke, preempt),
            Op::Write {
                dom,
                gfn,
                offset,
                len,
                seed,
            } => {
                let d = self.idx(dom);
                let data: Vec<u8> = (0..len)
                    .map(|i| seed.wrapping_add((i as u8).wrapping_mul(3)))
                    .collect();
                let real =
                    self.hv
                        .guest(d)
                        .unwrap()
                        .write_page(Gfn(gfn.into()), offset.into(), &data);
                let model = self.model.write_page(d, gfn.into(), offset.into(), &data);
                self.line(format!(
                    "write {d:?} gfn {gfn} +{offset} len {len} seed {seed}: {real:?}"
                ));
                self.guest_result("write_page", real, model)
            }
            Op::Page { dom, gfn, out } => {
                let d = self.idx(dom);
                let m = self.model.dom(d).frames[gfn as usize];
                let e = if out {
                    P2m::PagedOut(m)
                } else {
                    P2m::Present(m)
                };
                self.line(format!("p2m {d:?} gfn {gfn} -> {e:?}"));
                self.set_p2m(d, gfn.into(), e)
            }
            Op::FrameType { dom, gfn, on } => {
                let d = self.idx(dom);
                let m = self.model.dom(d).frames[gfn as usize];
                let real = self.hv.machine().frame(m).unwrap().set_other_type(on);
                let model = self.model.set_other_type(m, on);
                self.line(format!("other type {d:?} gfn {gfn} {m:?} on {on}: {real}"));
                ensure!(
                    self,
                    real == model,
                    "set_other_type: hypervisor {real}, model {model}"
                );
                Ok(())
            }
            Op::ZombieCopy {
                granter,
                mapper,
                gref,
                gfn,
                ro,
            } => {
                let n = self.ids.len() as u8;
                let mapper = if mapper % n == granter % n {
                    (granter + 1) % n
                } else {
                    mapper
                };
                let g = Dom::Idx(granter);
                let el = |src, dst| CopySpec {
                    src,
                    dst,
                    src_off: OffSel::Small(16),
                    dst_off: OffSel::Small(32),
                    len: LenSel::Small(16),
                };
                let steps = [
                    Op::Grant {
                        granter,
                        gref,
                        grantee: Dom::Idx(mapper),
                        gfn,
                        ro,
                    },
                    Op::Map {
                        mapper,
                        vcpu: 0,
                        batch: vec![MapSpec {
                            target: Target::Ref(g, gref),
                            parts: Parts::Host,
                            ro,
                            extra: Extra::None,
                            addr: Addr::Slot(120),
                        }],
                    },
                    Op::Kill { dom: granter },
                    Op::Copy {
                        caller: mapper,
                        vcpu: 1,
                        batch: vec![
                            el(SideSel::Gref(g, gref), SideSel::Frame(1)),
                            el(SideSel::Frame(2), SideSel::Gref(g, gref)),
                            el(SideSel::Gref(g, (gref + 1) % 16), SideSel::Frame(3)),
                            el(SideSel::Granted(gref as u8, false), SideSel::Frame(4)),
                        ],
                        poke: None,
                        preempt: 0,
                    },
                    Op::UnmapAll { mapper },
                    Op::Copy {
                        caller: mapper,
                        vcpu: 0,
                        batch: vec![el(SideSel::Gref(g, gref), SideSel::Frame(1))],
                        poke: None,
                        preempt: 0,
                    },
                ];
                for st in &steps {
                    self.step(st)?;
                    self.compare()?;
                }
                Ok(())
            }
            Op::FloodCopy {
                mapper,
                granter,
                gref,
                gfn,
                n,
                ro,
            } => {
                let g = Dom::Idx(granter);
                let el = |src, dst| CopySpec {
                    src,
                    dst,
                    src_off: OffSel::Small(0),
                    dst_off: OffSel::Small(8),
                    len: LenSel::Small(8),
                };
                let steps = [
                    Op::Grant {
                        granter,
                        gref,
                        grantee: Dom::Idx(mapper),
                        gfn,
                        ro,
                    },
                    Op::Flood {
                        mapper,
                        granter: g,
                        gref,
                        n,
                        host: true,
                        ro,
                    },
                    Op::Copy {
                        caller: mapper,
                        vcpu: 0,
                        batch: vec![
                            el(SideSel::Gref(g, gref), SideSel::Frame(1)),
                            el(SideSel::Prev, SideSel::Frame(2)),
                            el(SideSel::Frame(3), SideSel::Gref(g, gref)),
                            el(SideSel::Gref(g, gref), SideSel::Prev),
                        ],
                        poke: None,
                        preempt: 0,
                    },
                    Op::UnmapAll { mapper },
                ];
                for st in &steps {
                    self.step(st)?;
                    self.compare()?;
                }
                Ok(())
            }
            Op::Xsa500 {
                mapper,
                gref,
                gfn,
                gfn2,
                slot,
                off,
                len,
            } => {
                let n = self.ids.len() as u8;
                let granter = match self.adversary {
                    Some(a) => self.ids.iter().position(|&d| d == a).unwrap() as u8,
                    None => (mapper + 1) % n,
                };
                let g = Dom::Idx(granter);
                let mut steps = vec![
                    Op::Grant {
                        granter,
                        gref,
                        grantee: Dom::Idx(mapper),
                        gfn,
                        ro: false,
                    },
                    Op::Map {
                        mapper,
                        vcpu: 0,
                        batch: vec![MapSpec {
                            target: Target::Ref(g, gref),
                            parts: Parts::Host,
                            ro: true,
                            extra: Extra::None,
                            addr: Addr::Slot(slot),
                        }],
                    },
                ];
                if self.adversary.is_some() {
                    steps.push(Op::Raw {
                        target: RawTarget::Ref(gref),
                        write: RawWrite::Frame(gfn2),
                    });
                }
                let el = |src, dst| CopySpec {
                    src,
                    dst,
                    src_off: OffSel::Any(off),
                    dst_off: OffSel::Any(off),
                    len: LenSel::Small(len),
                };
                steps.push(Op::Copy {
                    caller: mapper,
                    vcpu: 0,
                    batch: vec![
                        el(SideSel::Frame(1), SideSel::Gref(g, gref)),
                        el(SideSel::Gref(g, gref), SideSel::Frame(2)),
                    ],
                    poke: None,
                    preempt: 0,
                });
                steps.push(Op::Copy {
                    caller: mapper,
                    vcpu: 1,
                    batch: vec![el(SideSel::Gref(g, gref), SideSel::Frame(3))],
                    poke: None,
                    preempt: 0,
                });
                for st in &steps {
                    self.step(st)?;
                    self.compare()?;
                }
                Ok(())
            }
            Op::Grant {
                granter,
                gref,
                grantee,
                gfn,
                ro,
            } => {
                let g = self.idx(granter);
                let grantee = self.dom(grantee);
                let in_use = self.model.dom(g).entries.get(&gref).is_some_and(|e| {
                    e.shared.flags & (gtf::READING | gtf::WRITING) != 0 || e.pinned()
                });
                if in_use && self.adversary != Some(g) {
                    // A protocol-following guest does not re-grant an entry in use.
                    self.line(format!("grant {g:?} g{gref}: skipped (in use)"));
                    return Ok(());
                }
                if in_use {
                    self.adversarial.insert(g);
                }
                let real = self.hv.guest(g).unwrap().grant_access(
                    GrantRef(gref),
                    grantee,
                    Gfn(gfn.into()),
                    ro,
                );
                let model = self.model.grant_access(g, gref, grantee, gfn, ro);
                self.line(format!(
                    "grant {g:?} g{gref} -> {grantee:?} gfn {gfn} ro {ro}: {real:?}"
                ));
                self.guest_result("grant_access", real, model)
            }
            Op::End { granter, gref } => {
                let g = self.idx(granter);
                let real = self.hv.guest(g).unwrap().end_access(GrantRef(gref));
                let model = self.model.end_access(g, gref);
                self.line(format!("end_access {g:?} g{gref}: {real:?}"));
                self.guest_result("end_access", real, model)
            }
            Op::Raw { target, write } => {
                let Some(g) = self.adversary else {
                    self.line("raw write: skipped (no adversary)".into());
                    return Ok(());
                };
                let gref = match target {
                    RawTarget::Ref(r) => r,
                    RawTarget::Pinned(k) => {
                        let pinned: Vec<u32> = self
                            .model
                            .dom(g)
                            .entries
                            .iter()
                            .filter(|(_, e)| e.pinned())
                            .map(|(&r, _)| r)
                            .collect();
                        pinned
                            .get(k as usize % pinned.len().max(1))
                            .copied()
                            .unwrap_or(0)
                    }
                };
                self.adversarial.insert(g);
                let cur = self.model.dom(g).entry(gref).shared;
                let guest = self.hv.guest(g).unwrap();
                let gr = GrantRef(gref);
                let (real, model) = match write {
                    RawWrite::FlipReadonly => {
                        let f = cur.flags ^ gtf::READONLY;
                        (
                            guest.write_entry_flags(gr, f),
                            self.model.write_flags(g, gref, f),
                        )
                    }
                    RawWrite::Type(t) => {
                        let f = (cur.flags & !gtf::TYPE_MASK) | t;
                        (
                            guest.write_entry_flags(gr, f),
                            self.model.write_flags(g, gref, f),
                        )
                    }
                    RawWrite::ClearStatus => {
                        let f = cur.flags & !(gtf::READING | gtf::WRITING);
                        (
                            guest.write_entry_flags(gr, f),
                            self.model.write_flags(g, gref, f),
                        )
                    }
                    RawWrite::SetStatus => {
                        let f = cur.flags | gtf::READING | gtf::WRITING;
                        (
                            guest.write_entry_flags(gr, f),
                            self.model.write_flags(g, gref, f),
                        )
                    }
                    RawWrite::SubPage => {
                        let f = cur.flags | gtf::SUB_PAGE;
                        (
                            guest.write_entry_flags(gr, f),
                            self.model.write_flags(g, gref, f),
                        )
                    }
                    RawWrite::Frame(fr) => (
                        guest.write_entry_frame(gr, fr),
                        self.model.write_frame(g, gref, fr),
                    ),
                    RawWrite::Domid(d) => {
                        let d = self.dom(d);
                        (
                            guest.write_entry_raw(gr, cur.flags, d, cur.frame),
                            self.model.write_raw(g, gref, cur.flags, d, cur.frame),
                        )
                    }
                    RawWrite::Whole {
                        flags,
                        domid,
                        frame,
                    } => {
                        let d = self.dom(domid);
                        (
                            guest.write_entry_raw(gr, flags, d, frame),
                            self.model.write_raw(g, gref, flags, d, frame),
                        )
                    }
                };
                self.line(format!("raw {g:?} g{gref} {write:?}: {real:?}"));
                self.guest_result("raw write", real, model)
            }
            Op::Map {
                mapper,
                vcpu,
                ref batch,
            } => {
                let ld = self.idx(mapper);
                let ins: Vec<MapIn> = batch.iter().map(|s| self.map_in(ld, s)).collect();
                self.map_batch(ld, vcpu, &ins)
            }
            Op::Flood {
                mapper,
                granter,
                gref,
                n,
                host,
                ro,
            } => {
                let ld = self.idx(mapper);
                let dom = self.dom(granter);
                let mut flags = if host {
                    GntMap::HOST_MAP
                } else {
                    GntMap::DEVICE_MAP
                };
                if ro {
                    flags |= GntMap::READONLY;
                }
                let ins: Vec<MapIn> = (0..u64::from(n))
                    .map(|i| MapIn {
                        dom,
                        gref,
                        flags: flags.bits(),
                        host_addr: (200 + i) << 12,
                    })
                    .collect();
                self.map_batch(ld, 0, &ins)
            }
            Op::Unmap {
                mapper,
                busy,
                vcpu,
                ref batch,
            } => {
                let mut ld = self.idx(mapper);
                if busy {
                    let busy: BTreeSet<DomId> =
                        self.model.mappings.values().map(|m| m.mapper).collect();
                    if !busy.is_empty() {
                        ld = *busy.iter().nth(mapper as usize % busy.len()).unwrap();
                    }
                }
                let ins: Vec<(u32, u64, u64)> =
                    batch.iter().map(|s| self.unmap_in(ld, s)).collect();
                self.unmap_batch(ld, vcpu, &ins)
            }
            Op::UnmapAll { mapper } => {
                let ld = self.idx(mapper);
                let ins: Vec<(u32, u64, u64)> = self
                    .model
                    .mappings_of(ld)
                    .into_iter()
                    .map(|(id, m)| {
                        let host = if m.flags & GntMap::HOST_MAP.bits() != 0 {
                            m.host_addr
                        } else {
                            0
                        };
                        let dev = if m.flags & GntMap::DEVICE_MAP.bits() != 0 {
                            m.bus
                        } else {
                            0
                        };
                        (self.model.handle_value(id), host, dev)
                    })
                    .collect();
                self.unmap_batch(ld, 1, &ins)
            }
            Op::Setup {
                caller,
                target,
                nr_frames,
                count,
            } => {
                let ld = self.idx(caller);
                let dom = self.dom(target);
                let mut ops: Vec<SetupTable> = (0..count)
                    .map(|_| SetupTable {
                        dom,
                        nr_frames,
                        ..Default::default()
                    })
                    .collect();
                let real = self.hv.vcpu(ld, 0).unwrap().setup_table(&mut ops);
                let model = self.model.setup_table(ld, count.into(), dom, nr_frames);
                self.line(format!(
                    "setup_table by {ld:?} on {dom:?} nr {nr_frames} count {count}: {real:?} {:?}",
                    ops.iter()
                        .map(|o| (o.status, o.frame_list.len()))
                        .collect::<Vec<_>>()
                ));
                match model {
                    Err(()) => ensure!(
                        self,
                        real == Err(Errno::Inval),
                        "setup_table: expected -EINVAL, got {real:?}"
                    ),
                    Ok((st, n)) => {
                        ensure!(self, real.is_ok(), "setup_table: hypercall failed {real:?}");
                        ensure!(
                            self,
                            ops[0].status == st,
                            "setup_table status {:?}, model {st:?}",
                            ops[0].status
                        );
                        ensure!(
                            self,
                            ops[0].frame_list.len() == n as usize,
                            "setup_table listed {} frames, model {n}",
                            ops[0].frame_list.len()
                        );
                    }
                }
                Ok(())
            }
            Op::Query {
                caller,
                target,
                count,
            } => {
                let ld = self.idx(caller);
                let dom = self.dom(target);
                let mut ops: Vec<QuerySize> = (0..count)
                    .map(|_| QuerySize {
                        dom,
                        ..Default::default()
                    })
                    .collect();
                let real = self
                    .hv
                    .vcpu(ld, 1)
                    .unwrap()
                    .grant_table_op(GnttabOp::QuerySize(&mut ops));
                let model = self.model.query_size(ld, count.into(), dom);
                self.line(format!(
                    "query_size by {ld:?} on {dom:?} count {count}: {real:?} {ops:?}"
                ));
                match model {
                    Err(()) => ensure!(
                        self,
                        real == Err(Errno::Inval),
                        "query_size: expected -EINVAL, got {real:?}"
                    ),
                    Ok((st, nr, max)) => {
                        ensure!(self, real.is_ok(), "query_size: hypercall failed {real:?}");
                        ensure!(
                            self,
                            ops[0].status == st,
                            "query_size status {:?}, model {st:?}",
                            ops[0].status
                        );
                        if st.is_ok() {
                            ensure!(
                                self,
                                (ops[0].nr_frames, ops[0].max_nr_frames) == (nr, max),
                                "query_size ({}, {}), model ({nr}, {max})",
                                ops[0].nr_frames,
                                ops[0].max_nr_frames
                            );
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn copy_step(
        &mut self,
        caller: u8,
        vcpu: u8,
        batch: &[CopySpec],
        poke: Option<PokeSpec>,
        preempt: u8,
    ) -> Result<(), TestCaseError> {
        let ld = self.idx(caller);
        let mut ops: Vec<GnttabCopy> = Vec::with_capacity(batch.len());
        for spec in batch {
            let prev = ops.last().map(|o: &GnttabCopy| {
                (
                    (
                        o.flags & gntcopy::SOURCE_GREF != 0,
                        o.source.u,
                        o.source.domid,
                    ),
                    (o.flags & gntcopy::DEST_GREF != 0, o.dest.u, o.dest.domid),
                )
            });
            let (sg, su, sd) = self.copy_side(ld, spec.src, prev.map(|p| p.0));
            let (dg, du, dd) = self.copy_side(ld, spec.dst, prev.map(|p| p.1));
            let so = Self::offset(spec.src_off);
            let dof = Self::offset(spec.dst_off);
            let len = match spec.len {
                LenSel::Zero => 0,
                LenSel::Small(n) | LenSel::Any(n) => n,
                LenSel::Fit { dest, over } => {
                    let off = u32::from(if dest { dof } else { so });
                    (4096 + u32::from(over)).saturating_sub(off).max(1) as u16
                }
            };
            let mut op = GnttabCopy::new(
                CopyPtr {
                    u: su,
                    domid: sd,
                    offset: so,
                },
                sg,
                CopyPtr {
                    u: du,
                    domid: dd,
                    offset: dof,
                },
                dg,
                len,
            );
            // Garbage in the output field must not matter.
            op.status = GntSt::NoDeviceSpace;
            ops.push(op);
        }
        // A P2M change for the duration of this hypercall.
        let poked = poke.and_then(|p| self.poke_target(ld, &ops, p).map(|t| (t, p.to)));
        let mut undo = None;
        if let Some(((dom, gfn), to)) = poked {
            let cur = self.model.p2m(dom, gfn);
            let m = match cur {
                P2m::Present(m) | P2m::PagedOut(m) => m,
                P2m::Absent => unreachable!("pokes hit live domains' P2Ms, which are full"),
            };
            let new = match to {
                Poke::PagedOut => P2m::PagedOut(m),
                Poke::Absent => P2m::Absent,
                Poke::Foreign(d, g) => match self.model.domains.get(&self.idx(d)) {
                    Some(d) if !d.dying => P2m::Present(d.frames[g as usize]),
                    _ => P2m::Absent,
                },
            };
            self.set_p2m(dom, gfn, new)?;
            undo = Some((dom, gfn, cur));
            self.line(format!(
                "p2m {dom:?} gfn {gfn}: {cur:?} -> {new:?} for one copy"
            ));
        }
        let vcpu = u16::from(vcpu) % VCPUS;
        let (real, preds) = self.copy_hypercall(ld, vcpu, &mut ops, preempt)?;
        let side = |g: bool, p: &CopyPtr| {
            if g {
                format!("{:?}:g{}+{}", p.domid, p.u as u32, p.offset)
            } else {
                format!("{:?}:gfn{}+{}", p.domid, p.u, p.offset)
            }
        };
        let s: Vec<String> = ops
            .iter()
            .map(|o| {
                format!(
                    "[{} -> {} len {} -> {:?}]",
                    side(o.flags & gntcopy::SOURCE_GREF != 0, &o.source),
                    side(o.flags & gntcopy::DEST_GREF != 0, &o.dest),
                    o.len,
                    o.status
                )
            })
            .collect();
        self.line(format!("copy by {ld:?}/v{vcpu}: {}", s.join(" ")));
        if let Some((dom, gfn, old)) = undo {
            self.set_p2m(dom, gfn, old)?;
        }
        ensure!(self, real.is_ok(), "copy hypercall failed: {real:?}");
        for (k, (p, o)) in preds.iter().zip(&ops).enumerate() {
            ensure!(
                self,
                o.status == *p,
                "copy element {k}: status {:?}, model {p:?}",
                o.status
            );
        }
        // Independently of the model's copy logic: every pin left is one a live mapping
        // accounts for (the batch released all its buffers).
        for (&id, d) in &self.model.domains {
            for &gref in d.entries.keys() {
                let mut want = [0u32; 4];
                for m in self.model.mappings.values() {
                    if m.granter == id && m.gref == gref {
                        for (w, i) in want.iter_mut().zip(reference::incr_for(m.flags)) {
                            *w += i;
                        }
                    }
                }
                let got = self.hv.active_entry(id, GrantRef(gref)).unwrap().counters();
                ensure!(
                    self,
                    got == want,
                    "{id:?} g{gref}: pins {got:?} after the copy, live mappings account for {want:?}"
                );
            }
        }
        Ok(())
    }

    /// Issues the copy hypercall and runs the model alongside. A batch of several elements runs
    /// on its own thread and parks at every element boundary: there the model has run the
    /// elements before it, and the entries and frame references (with the cached buffers'
    /// pins and references) are compared; then the batch carries on or, if `preempt` says so,
    /// is preempted. Returns the hypercall's result and the model's statuses.
    fn copy_hypercall(
        &mut self,
        ld: DomId,
        vcpu: u16,
        ops: &mut Vec<GnttabCopy>,
        preempt: u8,
    ) -> Result<(Result<(), Errno>, Vec<GntSt>), TestCaseError> {
        let hv = self.hv;
        let issue = move |ops: &mut Vec<GnttabCopy>| {
            let mut cx = hv.vcpu(ld, vcpu).unwrap();
            if vcpu == 1 {
                cx.grant_table_op(GnttabOp::Copy(ops))
            } else {
                cx.copy(ops)
            }
        };
        let input = ops.clone();
        let mut run = reference::CopyRun::default();
        let mut preds = Vec::with_capacity(ops.len());
        if ops.len() == 1 {
            let real = issue(ops);
            preds.push(self.model.copy_element(ld, &mut run, &input[0]));
            self.model.copy_end(run);
            return Ok((real, preds));
        }
        let gate = self.gate.clone();
        gate.arm(true);
        let (real, returned, mid) = std::thread::scope(|s| {
            let mut mine = std::mem::take(ops);
            let h = s.spawn(move || {
                let r = issue(&mut mine);
                (r, mine)
            });
            let mut mid = Ok(());
            for (i, op) in input.iter().enumerate().skip(1) {
                if !gate.wait_parked(&|| h.is_finished()) {
                    mid = Err(format!(
                        "the batch never reached the boundary before element {i}"
                    ));
                    break;
                }
                preds.push(self.model.copy_element(ld, &mut run, &input[i - 1]));
                if let Err(e) = self.compare_mid() {
                    mid = Err(format!("before copy element {i} ({op:?}): {e}"));
                    break;
                }
                *self.model.hits.entry("mid-batch comparison").or_default() += 1;
                if preempt & (1 << i) != 0 {
                    self.model.copy_preempt(&mut run);
                    gate.answer(HookAction::Fail);
                } else {
                    gate.answer(HookAction::Continue);
                }
            }
            gate.arm(false);
            let (r, mine) = h.join().unwrap();
            (r, mine, mid)
        });
        *ops = returned;
        if let Err(e) = mid {
            return Err(fail(&self.log, e));
        }
        preds.push(self.model.copy_element(ld, &mut run, input.last().unwrap()));
        self.model.copy_end(run);
        Ok((real, preds))
    }

    /// The mid-batch comparison: frames and entries only (not at quiescence).
    fn compare_mid(&self) -> Result<(), String> {
        let err = |e: TestCaseError| match e {
            TestCaseError::Fail(m) | TestCaseError::Reject(m) => m
                .message()
                .split("\n--- executed steps")
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        self.compare_frames().map_err(err)?;
        for (&id, d) in &self.model.domains {
            self.compare_entries(id, d).map_err(err)?;
        }
        Ok(())
    }

    /// Sets a P2M entry in the hypervisor and the model (they must agree on the old one).
    fn set_p2m(&mut self, dom: DomId, gfn: u64, e: P2m) -> Result<(), TestCaseError> {
        let real = self.hv.set_p2m(dom, Gfn(gfn), p2m_entry(e));
        let model = self.model.set_p2m(dom, gfn, e);
        ensure!(
            self,
            real == model.map(p2m_entry),
            "set_p2m {dom:?} gfn {gfn}: hypervisor had {real:?}, model {model:?}"
        );
        Ok(())
    }

    /// The (domain, gfn) the side of element `p.elem` names, if inside a P2M.
    fn poke_target(&self, ld: DomId, ops: &[GnttabCopy], p: PokeSpec) -> Option<(DomId, u64)> {
        let op = &ops[p.elem as usize % ops.len()];
        let (ptr, gref) = if p.dest {
            (&op.dest, op.flags & gntcopy::DEST_GREF != 0)
        } else {
            (&op.source, op.flags & gntcopy::SOURCE_GREF != 0)
        };
        let (dom, gfn) = if gref {
            let dom = if ptr.domid == DomId::SELF {
                ld
            } else {
                ptr.domid
            };
            let d = self.model.domains.get(&dom)?;
            let r = ptr.u as u32;
            if r >= d.nr_entries() {
                return None;
            }
            (dom, u64::from(d.entry(r).shared.frame))
        } else {
            (ld, ptr.u)
        };
        (gfn < MEM_PAGES && self.alive(dom)).then_some((dom, gfn))
    }

    fn offset(o: OffSel) -> u16 {
        match o {
            OffSel::Small(v) | OffSel::Any(v) | OffSel::Edge(v) => v,
        }
    }

    /// Entries (of any domain) granted to `ld`: permit_access with domid `ld`.
    fn granted_to(&self, ld: DomId) -> Vec<(DomId, u32)> {
        self.entries_where(&|e| {
            e.shared.flags & gtf::TYPE_MASK == gtf::PERMIT_ACCESS && e.shared.domid == ld
        })
    }

    /// Entries (of any domain) `ld` has pinned.
    fn pinned_by(&self, ld: DomId) -> Vec<(DomId, u32)> {
        self.entries_where(&|e| e.pinned() && e.act_domid == ld)
    }

    fn entries_where(&self, pred: &dyn Fn(&reference::Entry) -> bool) -> Vec<(DomId, u32)> {
        self.model
            .domains
            .iter()
            .flat_map(|(&id, d)| {
                d.entries
                    .iter()
                    .filter(|(_, e)| pred(e))
                    .map(move |(&g, _)| (id, g))
            })
            .collect()
    }

    /// `(is_gref, u, domid)` of one side of a copy element by `ld`.
    fn copy_side(
        &self,
        ld: DomId,
        sel: SideSel,
        prev: Option<(bool, u64, DomId)>,
    ) -> (bool, u64, DomId) {
        let pick = |v: Vec<(DomId, u32)>, k: u8| v.get(k as usize % v.len().max(1)).copied();
        let granted = |k: u8, self_id: bool| match pick(self.granted_to(ld), k) {
            Some((d, g)) => {
                let d = if d == ld && self_id { DomId::SELF } else { d };
                (true, u64::from(g), d)
            }
            None => (false, u64::from(k) % MEM_PAGES, DomId::SELF),
        };
        match sel {
            SideSel::Gref(d, g) => (true, u64::from(g), self.dom(d)),
            SideSel::Granted(k, self_id) => granted(k, self_id),
            SideSel::Pinned(k) => match pick(self.pinned_by(ld), k) {
                Some((d, g)) => (true, u64::from(g), d),
                None => granted(k, false),
            },
            SideSel::PinnedAny(k) => match pick(self.entries_where(&|e| e.pinned()), k) {
                Some((d, g)) => (true, u64::from(g), d),
                None => granted(k, false),
            },
            SideSel::Frame(g) => (false, u64::from(g), DomId::SELF),
            SideSel::FrameAs(d, g) => (false, u64::from(g), self.dom(d)),
            SideSel::FramePrevDom(g) => {
                (false, u64::from(g), prev.map_or(DomId::SELF, |(_, _, d)| d))
            }
            SideSel::GrefPrevDom(g) => {
                (true, u64::from(g), prev.map_or(self.ids[0], |(_, _, d)| d))
            }
            SideSel::Prev => prev.unwrap_or((false, 0, DomId::SELF)),
        }
    }

    fn map_in(&self, ld: DomId, s: &MapSpec) -> MapIn {
        let mut flags = match s.parts {
            Parts::Host => GntMap::HOST_MAP,
            Parts::Dev => GntMap::DEVICE_MAP,
            Parts::Both => GntMap::HOST_MAP | GntMap::DEVICE_MAP,
            Parts::Neither => GntMap::empty(),
        };
        if s.ro {
            flags |= GntMap::READONLY;
        }
        flags |= match s.extra {
            Extra::None => GntMap::empty(),
            Extra::App => GntMap::APPLICATION_MAP,
            Extra::Pte => GntMap::CONTAINS_PTE,
            Extra::Avail => GntMap::from_bits_retain(1 << 16),
        };
        let granted = |k: u8| {
            let v = self.granted_to(ld);
            v.get(k as usize % v.len().max(1))
                .copied()
                .unwrap_or((self.ids[0], 0))
        };
        let (dom, gref) = match s.target {
            Target::Ref(d, g) => (self.dom(d), g),
            Target::Granted(k) => granted(k),
            Target::Pinned(k) => {
                let v = self.pinned_by(ld);
                v.get(k as usize % v.len().max(1))
                    .copied()
                    .unwrap_or_else(|| granted(k))
            }
        };
        MapIn {
            dom,
            gref,
            flags: flags.bits(),
            host_addr: Self::addr(s.addr, matches!(s.extra, Extra::Pte)),
        }
    }

    fn map_batch(&mut self, ld: DomId, vcpu: u8, ins: &[MapIn]) -> Result<(), TestCaseError> {
        let preds: Vec<_> = ins.iter().map(|i| self.model.map(ld, *i)).collect();
        let mut ops: Vec<MapGrantRef> = ins
            .iter()
            .map(|i| MapGrantRef {
                host_addr: i.host_addr,
                flags: i.flags,
                ref_: GrantRef(i.gref),
                dom: i.dom,
                ..Default::default()
            })
            .collect();
        let vcpu = u16::from(vcpu) % VCPUS;
        let mut cx = self.hv.vcpu(ld, vcpu).unwrap();
        // vCPU 1 goes through the generic dispatcher.
        let real = if vcpu == 1 {
            cx.grant_table_op(GnttabOp::MapGrantRef(&mut ops))
        } else {
            cx.map_grant_ref(&mut ops)
        };
        drop(cx);
        let short = |o: &MapGrantRef| {
            format!(
                "[{:?} g{} f{:#x} @{:#x} -> {:?} {:?} bus {:#x}]",
                o.dom, o.ref_.0, o.flags, o.host_addr, o.status, o.handle, o.dev_bus_addr
            )
        };
        if ops.len() > 8 {
            let ok = ops.iter().filter(|o| o.status.is_ok()).count();
            self.line(format!(
                "map by {ld:?}/v{vcpu} x{}: {ok} ok; first {} last {}",
                ops.len(),
                short(&ops[0]),
                short(&ops[ops.len() - 1])
            ));
        } else {
            let s: Vec<String> = ops.iter().map(short).collect();
            self.line(format!("map by {ld:?}/v{vcpu}: {}", s.join(" ")));
        }
        ensure!(self, real.is_ok(), "map hypercall failed: {real:?}");
        for (k, (p, o)) in preds.iter().zip(&ops).enumerate() {
            ensure!(
                self,
                o.status == p.status,
                "map element {k}: status {:?}, model {:?}",
                o.status,
                p.status
            );
            if !p.status.is_ok() {
                continue;
            }
            ensure!(
                self,
                o.dev_bus_addr == p.dev_bus_addr,
                "map element {k}: dev_bus_addr {:#x}, model {:#x}",
                o.dev_bus_addr,
                p.dev_bus_addr
            );
            let id = p.mapping.expect("successful map has a mapping");
            match p.fast_handle {
                Some(v) => ensure!(
                    self,
                    o.handle.0 == v,
                    "map element {k}: handle {:?}, model fast {v:#x}",
                    o.handle
                ),
                None => {
                    let h = o.handle.0;
                    ensure!(
                        self,
                        h & FAST_BIT == 0,
                        "map element {k}: handle {h:#x}, model expects a slow handle"
                    );
                    let dup = self.model.mappings_of(ld).iter().any(|(other, m)| {
                        *other != id && m.handle == reference::Handle::Slow(Some(h))
                    });
                    ensure!(
                        self,
                        !dup,
                        "map element {k}: slow handle {h:#x} already names a live mapping"
                    );
                    self.model.record_slow_handle(id, h);
                }
            }
        }
        Ok(())
    }

    fn unmap_in(&self, ld: DomId, s: &UnmapSpec) -> (u32, u64, u64) {
        let live = self.model.mappings_of(ld);
        let pick = |k: u8| (!live.is_empty()).then(|| &live[k as usize % live.len()]);
        let target = pick(s.target);
        let stale = self.stale.get(&ld).map(Vec::as_slice).unwrap_or(&[]);
        let handle = match s.handle {
            HandleSel::Own => target.map_or(0, |(id, _)| self.model.handle_value(*id)),
            HandleSel::Other(k) => pick(k).map_or(1, |(id, _)| self.model.handle_value(*id)),
            HandleSel::Stale(k) => stale
                .get(k as usize % stale.len().max(1))
                .copied()
                .unwrap_or(2),
            HandleSel::Forged(h) => h,
            HandleSel::ForgedFast(d, g) => {
                FAST_BIT | u32::from(self.dom(d).0 & 0x7FFF) << 16 | (g & 0xFFFF)
            }
        };
        let pte = target.is_some_and(|(_, m)| m.flags & GntMap::CONTAINS_PTE.bits() != 0);
        let host = match s.host {
            HostSel::Own => target.map_or(0x1000, |(_, m)| m.host_addr),
            HostSel::Zero => 0,
            HostSel::Other(k) => pick(k).map_or(0x2000, |(_, m)| m.host_addr),
            HostSel::Sibling(k) => {
                let sib: Vec<u64> = match target {
                    Some((tid, t)) => live
                        .iter()
                        .filter(|(id, m)| {
                            id != tid && m.mfn == t.mfn && m.flags & GntMap::HOST_MAP.bits() != 0
                        })
                        .map(|(_, m)| m.host_addr)
                        .collect(),
                    None => Vec::new(),
                };
                sib.get(k as usize % sib.len().max(1))
                    .copied()
                    .unwrap_or_else(|| target.map_or(0x1000, |(_, m)| m.host_addr))
            }
            HostSel::At(a) => Self::addr(a, pte),
        };
        let dev = match s.dev {
            DevSel::Own => target.map_or(0x1000, |(_, m)| m.bus),
            DevSel::Zero => 0,
            DevSel::Wrong => target.map_or(0x1000, |(_, m)| m.bus + 0x1000),
            DevSel::Other(k) => pick(k).map_or(0x3000, |(_, m)| m.bus),
        };
        (handle, host, dev)
    }

    fn unmap_batch(
        &mut self,
        ld: DomId,
        vcpu: u8,
        ins: &[(u32, u64, u64)],
    ) -> Result<(), TestCaseError> {
        let before: BTreeMap<u64, u32> = self
            .model
            .mappings_of(ld)
            .into_iter()
            .map(|(id, _)| (id, self.model.handle_value(id)))
            .collect();
        let preds: Vec<GntSt> = ins
            .iter()
            .map(|&(h, a, d)| self.model.unmap(ld, h, a, d))
            .collect();
        let mut ops: Vec<UnmapGrantRef> = ins
            .iter()
            .map(|&(h, a, d)| UnmapGrantRef::new(GrantHandle(h), a, d))
            .collect();
        let vcpu = u16::from(vcpu) % VCPUS;
        let mut cx = self.hv.vcpu(ld, vcpu).unwrap();
        let real = if vcpu == 1 {
            cx.grant_table_op(GnttabOp::UnmapGrantRef(&mut ops))
        } else {
            cx.unmap_grant_ref(&mut ops)
        };
        drop(cx);
        let short = |o: &UnmapGrantRef| {
            format!(
                "[{:?} @{:#x} dev {:#x} -> {:?}]",
                o.handle, o.host_addr, o.dev_bus_addr, o.status
            )
        };
        if ops.len() > 8 {
            let ok = ops.iter().filter(|o| o.status.is_ok()).count();
            self.line(format!(
                "unmap by {ld:?}/v{vcpu} x{}: {ok} ok; first {}",
                ops.len(),
                short(&ops[0])
            ));
        } else {
            let s: Vec<String> = ops.iter().map(short).collect();
            self.line(format!("unmap by {ld:?}/v{vcpu}: {}", s.join(" ")));
        }
        ensure!(self, real.is_ok(), "unmap hypercall failed: {real:?}");
        for (k, (p, o)) in preds.iter().zip(&ops).enumerate() {
            ensure!(
                self,
                o.status == *p,
                "unmap element {k}: status {:?}, model {p:?}",
                o.status
            );
        }
        let stale = self.stale.entry(ld).or_default();
        for (id, h) in before {
            if !self.model.mappings.contains_key(&id) {
                stale.push(h);
            }
        }
        let n = stale.len();
        if n > 16 {
            stale.drain(..n - 16);
        }
        Ok(())
    }

    /// Page and type references, owner and type of every domain frame (freed ones included:
    /// the allocator may hand a freed frame out again, but only as a grant-table frame,
    /// nothing else allocates here).
    fn compare_frames(&self) -> Result<(), TestCaseError> {
        let hv = self.hv;
        for (&mfn, want) in &self.model.frames {
            let fi = hv.frame_info(mfn).unwrap();
            let owner = (want.owner != DomId::INVALID).then_some(want.owner);
            if owner.is_none() && fi.owner.is_some() {
                ensure!(
                    self,
                    hv.machine().frame(mfn).unwrap().is_xenheap(),
                    "freed {mfn:?} reallocated to {:?} as a guest frame",
                    fi.owner
                );
                continue;
            }
            ensure!(
                self,
                (fi.owner, fi.refcount, fi.writable_types) == (owner, want.refs, want.types),
                "{mfn:?}: owner {:?}, refs {}, types {}; model {owner:?}, refs {}, types {}",
                fi.owner,
                fi.refcount,
                fi.writable_types,
                want.refs,
                want.types
            );
            if owner.is_some() {
                let other = hv.machine().frame(mfn).unwrap().has_other_type();
                ensure!(
                    self,
                    other == want.other,
                    "{mfn:?}: non-writable type {other}, model {}",
                    want.other
                );
            }
        }
        Ok(())
    }

    /// Every entry of `id` the model knows: shared word (status bits included), pin counters
    /// and, while pinned, grantee and frame.
    fn compare_entries(&self, id: DomId, d: &reference::Domain) -> Result<(), TestCaseError> {
        let hv = self.hv;
        let guest = hv.guest(id).unwrap();
        for (&gref, e) in &d.entries {
            let s = guest.entry_snapshot(GrantRef(gref)).unwrap();
            ensure!(
                self,
                (s.flags, s.domid, s.frame) == (e.shared.flags, e.shared.domid, e.shared.frame),
                "{id:?} g{gref}: shared entry (flags {:#x}, {:?}, frame {}), model (flags {:#x}, {:?}, frame {})",
                s.flags,
                s.domid,
                s.frame,
                e.shared.flags,
                e.shared.domid,
                e.shared.frame
            );
            let a = hv.active_entry(id, GrantRef(gref)).unwrap();
            ensure!(
                self,
                a.counters() == e.pins,
                "{id:?} g{gref}: pins {:?}, model {:?}",
                a.counters(),
                e.pins
            );
            if e.pinned() {
                ensure!(
                    self,
                    (a.domid, a.mfn) == (e.act_domid, e.act_mfn),
                    "{id:?} g{gref}: active ({:?}, {:?}), model ({:?}, {:?})",
                    a.domid,
                    a.mfn,
                    e.act_domid,
                    e.act_mfn
                );
            }
        }
        Ok(())
    }

    /// Compares the hypervisor with the model and runs the invariant checker.
    fn compare(&self) -> Result<(), TestCaseError> {
        let hv = self.hv;
        self.compare_frames()?;
        for &id in &self.model.gone {
            ensure!(
                self,
                hv.domain(id).is_none(),
                "{id:?} should have been destroyed"
            );
        }
        for (&id, d) in &self.model.domains {
            let dom = hv.domain(id).unwrap();
            ensure!(
                self,
                dom.nr_grant_frames() == d.nr_frames,
                "{id:?}: {} grant frames, model {}",
                dom.nr_grant_frames(),
                d.nr_frames
            );
            ensure!(self, !dom.crashed(), "{id:?} crashed");
            let guest = hv.guest(id).unwrap();
            self.compare_entries(id, d)?;
            // P2M and page contents, as the guest reads its own memory.
            let mut buf = vec![0u8; 4096];
            for gfn in 0..MEM_PAGES + 1 {
                let p = dom.p2m(Gfn(gfn));
                let want = p2m_entry(self.model.p2m(id, gfn));
                ensure!(
                    self,
                    p == want,
                    "{id:?} gfn {gfn}: P2M {p:?}, model {want:?}"
                );
                if !self.pages_dirty {
                    continue;
                }
                let real = guest.read_page(Gfn(gfn), 0, &mut buf);
                match self.model.read_page(id, gfn) {
                    Ok(bytes) => {
                        ensure!(self, real.is_ok(), "{id:?} gfn {gfn}: read_page {real:?}");
                        if buf[..] == bytes[..] {
                            continue;
                        }
                        if let Some(k) = (0..buf.len()).find(|&k| buf[k] != bytes[k]) {
                            let end = (k + 16).min(buf.len());
                            return Err(fail(
                                &self.log,
                                format!(
                                    "{id:?} gfn {gfn}: bytes {k}..{end} are {:?}, model {:?}",
                                    &buf[k..end],
                                    &bytes[k..end]
                                ),
                            ));
                        }
                    }
                    Err(e) => ensure!(
                        self,
                        real.map_err(|e| format!("{e:?}")) == Err(format!("{e:?}")),
                        "{id:?} gfn {gfn}: read_page {real:?}, model {e:?}"
                    ),
                }
            }
        }
        self.compare_snapshot()?;
        let report = hv.check_with(&CheckOptions {
            adversarial: self.adversarial.clone(),
            ..Default::default()
        });
        ensure!(
            self,
            report.is_ok(),
            "invariant violations: {:#?}",
            report.violations
        );
        ensure!(
            self,
            report.mappings == self.model.mappings.len(),
            "checker saw {} mappings, model has {}",
            report.mappings,
            self.model.mappings.len()
        );
        Ok(())
    }

    /// Whole-state comparison: nothing the model does not know about has changed.
    fn compare_snapshot(&self) -> Result<(), TestCaseError> {
        let snap = self.hv.snapshot();
        for (&id, d) in &self.model.domains {
            let ds = &snap.domains[&id];
            ensure!(
                self,
                ds.stale.iter().all(|&n| n == 0),
                "{id:?}: stale TLB entries {:?}",
                ds.stale
            );
            // Entries: every non-trivial one must be one the model knows, with equal contents.
            for (&gref, info) in &ds.entries {
                let Some(e) = d.entries.get(&gref) else {
                    return Err(fail(
                        &self.log,
                        format!("{id:?} g{gref}: changed behind the model's back: {info:?}"),
                    ));
                };
                if self.model.fast_slots {
                    for (k, slot) in info.slots.iter().enumerate() {
                        let want = e.slots[k].map(|mid| &self.model.mappings[&mid]);
                        let ok = match (slot, want) {
                            (SlotInfo::Free, None) => true,
                            (
                                SlotInfo::Live {
                                    flags,
                                    host_addr,
                                    bus,
                                },
                                Some(m),
                            ) => (flags.bits(), *host_addr, *bus) == (m.flags, m.host_addr, m.bus),
                            _ => false,
                        };
                        ensure!(
                            self,
                            ok,
                            "{id:?} g{gref} slot {k}: {slot:?}, model {want:?}"
                        );
                    }
                } else {
                    ensure!(
                        self,
                        info.slots.is_empty(),
                        "{id:?} g{gref}: design without slots has {:?}",
                        info.slots
                    );
                }
            }
            for (&gref, e) in &d.entries {
                let trivial =
                    e.shared == Default::default() && !e.pinned() && e.slots == [None, None];
                ensure!(
                    self,
                    trivial != ds.entries.contains_key(&gref),
                    "{id:?} g{gref}: snapshot has it {}, model {e:?}",
                    ds.entries.contains_key(&gref)
                );
            }
            // Slow mappings of this mapper.
            let want: BTreeMap<u32, (u32, DomId, u32)> = self
                .model
                .mappings
                .values()
                .filter(|m| m.mapper == id)
                .filter_map(|m| match m.handle {
                    reference::Handle::Slow(Some(h)) => Some((h, (m.flags, m.granter, m.gref))),
                    _ => None,
                })
                .collect();
            let got: BTreeMap<u32, (u32, DomId, u32)> = ds
                .maptrack
                .iter()
                .map(|(&h, i)| (h, (i.flags.bits(), i.domid, i.gref.0)))
                .collect();
            ensure!(
                self,
                got == want,
                "{id:?}: maptrack records {got:?}, model {want:?}"
            );
            // Host page tables.
            let want: BTreeMap<u64, Pte> = d
                .ptes
                .iter()
                .map(|(&s, p)| (s, Pte::grant(p.mfn, p.writable, p.user)))
                .collect();
            ensure!(
                self,
                ds.ptes == want,
                "{id:?}: host PTEs {:?}, model {want:?}",
                ds.ptes
            );
        }
        Ok(())
    }
}

/// The initial contents of domain `i`'s gfn `g`.
fn fill(i: usize, g: u64) -> Vec<u8> {
    (0..4096usize)
        .map(|j| {
            (j.wrapping_mul(2 * g as usize + 1) + i * 97 + g as usize * 13) as u8 ^ (j >> 8) as u8
        })
        .collect()
}

/// The hypervisor's form of a model P2M entry.
fn p2m_entry(e: P2m) -> P2mEntry {
    match e {
        P2m::Present(m) => P2mEntry::Present(m),
        P2m::PagedOut(m) => P2mEntry::PagedOut(m),
        P2m::Absent => P2mEntry::Absent,
    }
}

/// Runs one scenario; returns how often each copy path of the model was taken.
fn run<D: Design>(sc: &Scenario) -> Result<BTreeMap<&'static str, u64>, TestCaseError> {
    let gate = Arc::new(Gate::default());
    let hv = Hypervisor::<D>::new(HypervisorConfig {
        machine: MachineConfig { max_frames: 4096 },
        max_domains: 8,
        hooks: Some(gate.clone()),
        ..HypervisorConfig::default()
    });
    let mut model = Model::new(<D::Slots as SlotPolicy>::ENABLED);
    let mut ids = Vec::new();
    for (i, spec) in sc.doms.iter().enumerate() {
        let cfg = DomainConfig::new(format!("d{i}"))
            .kind(if spec.hvm {
                DomainKind::Hvm
            } else {
                DomainKind::Pv
            })
            .vcpus(VCPUS)
            .memory_pages(MEM_PAGES)
            .max_grant_frames(spec.max_grant_frames)
            .privileged(spec.privileged)
            .host_pages(HOST_PAGES)
            .map_limit(spec.map_limit.map_or(MapLimit::Default, MapLimit::Limit));
        let id = hv.create_domain(cfg).unwrap();
        let d = hv.domain(id).unwrap();
        let frames = (0..MEM_PAGES)
            .map(|g| match d.p2m(Gfn(g)) {
                P2mEntry::Present(m) => m,
                other => panic!("gfn {g} of a new domain is {other:?}"),
            })
            .collect();
        let kind = if spec.hvm { Kind::Hvm } else { Kind::Pv };
        model.add_domain(
            id,
            kind,
            spec.privileged,
            frames,
            spec.max_grant_frames,
            HOST_PAGES,
            spec.map_limit,
        );
        // Every frame starts with its own pattern, so any byte a copy moves is recognisable.
        let guest = hv.guest(id).unwrap();
        for g in 0..MEM_PAGES {
            let data = fill(i, g);
            guest.write_page(Gfn(g), 0, &data).unwrap();
            model.write_page(id, g, 0, &data).unwrap();
        }
        ids.push(id);
    }
    let adversary = sc.adversary.map(|a| ids[a as usize]);
    let mut r = Run {
        hv: &hv,
        gate,
        model,
        ids,
        adversary,
        adversarial: BTreeSet::new(),
        stale: BTreeMap::new(),
        pages_dirty: true,
        log: String::new(),
    };
    let _ = writeln!(
        r.log,
        "design {}, domains {:?}, adversary {adversary:?}",
        D::NAME,
        sc.doms
    );
    r.compare()?;
    for op in &sc.ops {
        r.pages_dirty = matches!(
            op,
            Op::Copy { .. }
                | Op::Write { .. }
                | Op::Page { .. }
                | Op::FloodCopy { .. }
                | Op::Xsa500 { .. }
                | Op::ZombieCopy { .. }
                | Op::Kill { .. }
        );
        r.step(op)?;
        r.compare()?;
    }
    r.pages_dirty = true;
    r.compare()?;
    Ok(r.model.hits)
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_agrees_fast(sc in scenario()) {
        run::<Fast>(&sc)?;
    }

    #[test]
    fn model_agrees_xen(sc in scenario()) {
        run::<Xen>(&sc)?;
    }

    #[test]
    fn model_agrees_xen_plain_rw(sc in scenario()) {
        run::<XenPlainRw>(&sc)?;
    }

    #[test]
    fn model_agrees_xen_fast_slots(sc in scenario()) {
        run::<XenFastSlots>(&sc)?;
    }

    #[test]
    fn model_agrees_fast_no_slots(sc in scenario()) {
        run::<FastNoSlots>(&sc)?;
    }

    #[test]
    fn model_agrees_xen_per_map_bfn(sc in scenario()) {
        run::<XenPerMapBfn>(&sc)?;
    }
}

/// Copy paths (model tags, `reference::Model::hits`) the generators must reach, so the copy
/// comparison is not vacuous.
const COPY_PATHS: &[&str] = &[
    "okay",
    "okay len 0",
    "bad_domain",
    "bad_gntref",
    "permission_denied",
    "bad_page",
    "eagain",
    "bad_copy_arg",
    "general_error",
    "general_error: pinned by another domain",
    "general_error: pin overflow",
    "general_error: XSA-500 frame changed on upgrade",
    "general_error: non-writable type",
    "upgrade of a read-only pin",
    "pinned compatible",
    "cached buffer reused",
    "cached domid on a frame side",
    "p2m: another domain's frame",
    "bad_domain: dying granter",
    "teardown: zombie",
    "teardown: domain destroyed",
    "preempted between elements",
    "mid-batch comparison",
];

/// Coverage of the copy generators: a fixed-seed run of `COVERAGE_CASES` scenarios (so the
/// outcome is deterministic) must take every path in `COPY_PATHS`; the tally is printed
/// (`--nocapture`).
#[test]
fn copy_paths_reached() {
    const COVERAGE_CASES: usize = 64;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut hits: BTreeMap<&'static str, u64> = BTreeMap::new();
    for _ in 0..COVERAGE_CASES {
        let sc = scenario().new_tree(&mut runner).unwrap().current();
        match run::<Fast>(&sc) {
            Ok(h) => {
                for (k, v) in h {
                    *hits.entry(k).or_default() += v;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("copy paths over {COVERAGE_CASES} scenarios: {hits:#?}");
    let missing: Vec<&str> = COPY_PATHS
        .iter()
        .copied()
        .filter(|p| !hits.contains_key(p))
        .collect();
    assert!(missing.is_empty(), "copy paths never taken: {missing:?}");
}

/// Refs at and beyond 2^16 cannot be named by a fast handle: on designs with inline slots the
/// model predicts slow handles for them (and fast ones just below), on every design the whole
/// comparison runs as for the random scenarios. A fixed scenario: the tables must grow to 129
/// frames, too slow to compare at every step of the random runs.
#[test]
fn refs_beyond_fast_handle_range() {
    let host = |gref, addr, parts| MapSpec {
        target: Target::Ref(Dom::Idx(0), gref),
        parts,
        ro: false,
        extra: Extra::None,
        addr: Addr::Slot(addr),
    };
    let sc = Scenario {
        doms: vec![
            DomSpec {
                hvm: false,
                max_grant_frames: 129,
                privileged: false,
                map_limit: None,
            },
            DomSpec {
                hvm: false,
                max_grant_frames: 1,
                privileged: false,
                map_limit: None,
            },
        ],
        adversary: None,
        ops: vec![
            Op::Setup {
                caller: 0,
                target: Dom::SelfId,
                nr_frames: 129,
                count: 1,
            },
            Op::Grant {
                granter: 0,
                gref: 65536,
                grantee: Dom::Idx(1),
                gfn: 1,
                ro: false,
            },
            Op::Grant {
                granter: 0,
                gref: 65535,
                grantee: Dom::Idx(1),
                gfn: 2,
                ro: false,
            },
            Op::Map {
                mapper: 1,
                vcpu: 0,
                batch: vec![
                    host(65536, 1, Parts::Host),
                    host(65536, 2, Parts::Both),
                    host(65535, 3, Parts::Host),
                    host(65535, 4, Parts::Host),
                    host(65535, 5, Parts::Dev),
                ],
            },
            Op::Unmap {
                mapper: 1,
                busy: false,
                vcpu: 0,
                batch: vec![UnmapSpec {
                    target: 0,
                    handle: HandleSel::Own,
                    host: HostSel::Own,
                    dev: DevSel::Zero,
                }],
            },
            Op::End {
                granter: 0,
                gref: 65536,
            },
            Op::UnmapAll { mapper: 1 },
            Op::End {
                granter: 0,
                gref: 65536,
            },
            Op::End {
                granter: 0,
                gref: 65535,
            },
        ],
    };
    for r in [
        run::<Fast>(&sc),
        run::<Xen>(&sc),
        run::<XenPlainRw>(&sc),
        run::<XenFastSlots>(&sc),
        run::<FastNoSlots>(&sc),
        run::<XenPerMapBfn>(&sc),
    ] {
        if let Err(e) = r {
            panic!("{e}");
        }
    }
}

/// Regression: the machine once handed frame 0 to the first domain, so a device map of it
/// returned `dev_bus_addr == 0`, which unmap reads as "leave the device part alone" (spec 7.1):
/// the device part could never be unmapped. Frame 0 now belongs to the hypervisor.
#[test]
fn device_map_of_first_frame_can_be_unmapped() {
    let hv = Hypervisor::<Xen>::new(HypervisorConfig::default());
    let front = hv.create_domain(DomainConfig::new("front")).unwrap();
    let back = hv.create_domain(DomainConfig::new("back")).unwrap();
    let guest = hv.guest(front).unwrap();
    guest
        .grant_access(GrantRef(0), back, Gfn(0), false)
        .unwrap();
    let mut cx = hv.vcpu(back, 0).unwrap();
    let mut m = [MapGrantRef::new(front, GrantRef(0), GntMap::DEVICE_MAP, 0)];
    cx.map_grant_ref(&mut m).unwrap();
    assert_eq!(m[0].status, GntSt::Okay);
    let mut u = [UnmapGrantRef::new(m[0].handle, 0, m[0].dev_bus_addr)];
    cx.unmap_grant_ref(&mut u).unwrap();
    assert_eq!(u[0].status, GntSt::Okay);
    assert!(
        guest.end_access(GrantRef(0)).unwrap(),
        "device part still mapped (dev_bus_addr was {:#x})",
        m[0].dev_bus_addr
    );
    hv.check().assert_ok();
}

/// The fast-handle layout the model predicts, pinned down independently of the generators.
#[test]
fn fast_handle_layout() {
    assert_eq!(fast_handle(DomId(5), 0x1234), Some(0x8005_1234));
    assert_eq!(fast_handle(DomId(5), 1 << 16), None);
}

/// Regression found by the copy model: the domains of a copy batch are cached by raw domids
/// (spec 8.1 step 2), so a frame side naming the previous element's grant-side domid is not
/// looked up (no `DOMID_SELF` check) - and step 3 still says a frame side is the caller's own
/// gfn. The hypervisor translated it in the cached (foreign) domain's P2M: a domain that was
/// granted anything by `a` could read and write every frame of `a`.
fn copy_frame_side_is_callers_own<D: Design>() {
    let hv = Hypervisor::<D>::new(HypervisorConfig::default());
    let a = hv.create_domain(DomainConfig::new("a")).unwrap();
    let b = hv.create_domain(DomainConfig::new("b")).unwrap();
    let (ga, gb) = (hv.guest(a).unwrap(), hv.guest(b).unwrap());
    for g in 0..6u64 {
        ga.write_page(Gfn(g), 0, &[0xA0 + g as u8; 8]).unwrap();
        gb.write_page(Gfn(g), 0, &[0xB0 + g as u8; 8]).unwrap();
    }
    ga.grant_access(GrantRef(0), b, Gfn(0), false).unwrap();
    let frame_of = |dom: DomId, gfn: u64| CopyPtr {
        u: gfn,
        domid: dom,
        offset: 0,
    };
    let mut ops = [
        // Caches (a, SELF).
        GnttabCopy::new(
            CopyPtr::gref(a, GrantRef(0), 0),
            true,
            CopyPtr::gmfn(Gfn(1), 0),
            false,
            8,
        ),
        // Source frame side with domid a: not looked up again; must read b's own gfn 4.
        GnttabCopy::new(frame_of(a, 4), false, CopyPtr::gmfn(Gfn(2), 0), false, 8),
        // Caches (SELF, a).
        GnttabCopy::new(
            CopyPtr::gmfn(Gfn(5), 0),
            false,
            CopyPtr::gref(a, GrantRef(0), 0),
            true,
            8,
        ),
        // Destination frame side with domid a: must write b's own gfn 3.
        GnttabCopy::new(CopyPtr::gmfn(Gfn(5), 0), false, frame_of(a, 3), false, 8),
    ];
    hv.vcpu(b, 0).unwrap().copy(&mut ops).unwrap();
    let st: Vec<GntSt> = ops.iter().map(|o| o.status).collect();
    assert_eq!(st, [GntSt::Okay; 4]);
    let read = |g: &Guest<'_, D>, gfn: u64| {
        let mut buf = [0u8; 8];
        g.read_page(Gfn(gfn), 0, &mut buf).unwrap();
        buf
    };
    assert_eq!(read(&gb, 2), [0xB4; 8], "read a's gfn 4 instead of b's own");
    assert_eq!(read(&ga, 3), [0xA3; 8], "wrote into a's gfn 3");
    assert_eq!(read(&gb, 3), [0xB5; 8], "b's own gfn 3 not written");
    hv.check().assert_ok();
}

#[test]
fn copy_frame_side_is_callers_own_all_designs() {
    copy_frame_side_is_callers_own::<Fast>();
    copy_frame_side_is_callers_own::<Xen>();
    copy_frame_side_is_callers_own::<XenPlainRw>();
    copy_frame_side_is_callers_own::<XenFastSlots>();
    copy_frame_side_is_callers_own::<FastNoSlots>();
    copy_frame_side_is_callers_own::<XenPerMapBfn>();
}
