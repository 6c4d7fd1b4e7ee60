//! Shared setup for the benchmarks (`benches/map_unmap.rs`) and the instruction-count driver
//! (`benches/icount.rs`).
//!
//! A [`Rig`] is one hypervisor with a PV granter that has granted `grefs` refs (ref `g` grants
//! its gfn `g`, writable) to a PV mapper with two vCPUs. Every benchmark maps with
//! `GNTMAP_host_map` (writable), so a map takes the frame's page reference and a writable type
//! reference, installs a host PTE, and the unmap removes it, flushes the vCPU's TLB and drops
//! both references: the full path of spec 6.2 and 7.

#![allow(dead_code)] // each bench crate uses a different subset

pub mod floor;

use gnttab::prelude::*;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Linear address where the mapper's host mappings start (slot 0x10000 of its address space).
pub const HOST_BASE: u64 = 0x1000_0000;

/// Refs of the "warm" workload (cycled in order).
pub const WARM_GREFS: u32 = 4096;

/// Refs of the "cold" workload (chosen at random): 64 grant frames of 512 entries.
pub const COLD_GREFS: u32 = 32768;

/// Distance between the refs two threads use, so that the shared entries (8 bytes), active
/// entries (up to ~80 bytes), frames (24 bytes, granted gfn == ref) and host PTEs (8 bytes,
/// one slot per ref) of different threads never share a 128-byte line pair.
pub const THREAD_STRIDE: u32 = 64;

/// The host address used for ref `g` (one page per ref).
#[inline]
pub fn host_addr(g: u32) -> u64 {
    HOST_BASE + ((g as u64) << 12)
}

/// One hypervisor, a granter and a mapper.
pub struct Rig<D: Design> {
    pub hv: Hypervisor<D>,
    pub granter: DomId,
    pub mapper: DomId,
}

impl<D: Design> Rig<D> {
    /// A granter that granted refs `0..grefs` (gfn == ref) to a mapper with `vcpus` vCPUs.
    pub fn new(grefs: u32, vcpus: u16) -> Self {
        Self::with(
            grefs,
            HypervisorConfig::default(),
            DomainConfig::new("mapper").vcpus(vcpus),
        )
    }

    /// [`Rig::new`] with an explicit hypervisor configuration (IOTLB flush cost, ...) and
    /// mapper configuration (vCPUs, IOMMU mode, map limit, ...).
    pub fn with(grefs: u32, hv_cfg: HypervisorConfig, mapper_cfg: DomainConfig) -> Self {
        let hv = Hypervisor::<D>::new(hv_cfg);
        let per_frame = hv.config().entries_per_frame;
        let frames = grefs.div_ceil(per_frame).max(1);
        let granter = hv
            .create_domain(
                DomainConfig::new("granter")
                    .max_grant_frames(frames.max(64))
                    .memory_pages((grefs as u64).max(256)),
            )
            .expect("granter");
        let mapper = hv.create_domain(mapper_cfg).expect("mapper");
        setup_table(&hv, granter, frames);
        let g = hv.guest(granter).expect("granter guest");
        for r in 0..grefs {
            g.grant_access(GrantRef(r), mapper, Gfn(r as u64), false)
                .expect("grant_access");
        }
        Self {
            hv,
            granter,
            mapper,
        }
    }

    /// Enters vCPU `i` of the mapper.
    pub fn vcpu(&self, i: u16) -> VcpuCtx<'_, D> {
        self.hv.vcpu(self.mapper, i).expect("mapper vcpu")
    }

    /// The mapper's counters (fast / slow maps).
    pub fn mapper_stats(&self) -> DomainStats {
        self.hv.domain(self.mapper).expect("mapper").stats()
    }
}

/// One map hypercall of one op, then one unmap hypercall of one op, on ref `g` at
/// [`host_addr`]`(g)`. Panics if either fails (a benchmark must never time an error path).
#[inline]
pub fn pair<D: Design>(cx: &mut VcpuCtx<'_, D>, granter: DomId, g: u32) {
    pair_at(cx, granter, g, host_addr(g));
}

/// [`pair`] at an explicit host address.
#[inline]
pub fn pair_at<D: Design>(cx: &mut VcpuCtx<'_, D>, granter: DomId, g: u32, addr: u64) {
    let mut m = [MapGrantRef::new(
        granter,
        GrantRef(g),
        GntMap::HOST_MAP,
        addr,
    )];
    cx.map_grant_ref(std::hint::black_box(&mut m))
        .expect("map hypercall");
    assert_eq!(m[0].status, GntSt::Okay, "map of ref {g}");
    let mut u = [UnmapGrantRef::new(m[0].handle, addr, 0)];
    cx.unmap_grant_ref(std::hint::black_box(&mut u))
        .expect("unmap hypercall");
    assert_eq!(u[0].status, GntSt::Okay, "unmap of ref {g}");
}

/// [`pair_at`] with `GNTMAP_host_map | GNTMAP_device_map` (writable): the map also returns a
/// device (bus) address, which the unmap passes back. On a strict-IOMMU mapper both update its
/// IOMMU (design.md section 6).
#[inline]
pub fn pair_dev<D: Design>(cx: &mut VcpuCtx<'_, D>, granter: DomId, g: u32, addr: u64) {
    let mut m = [MapGrantRef::new(
        granter,
        GrantRef(g),
        GntMap::HOST_MAP | GntMap::DEVICE_MAP,
        addr,
    )];
    cx.map_grant_ref(std::hint::black_box(&mut m))
        .expect("map hypercall");
    assert_eq!(m[0].status, GntSt::Okay, "device map of ref {g}");
    let mut u = [UnmapGrantRef::new(m[0].handle, addr, m[0].dev_bus_addr)];
    cx.unmap_grant_ref(std::hint::black_box(&mut u))
        .expect("unmap hypercall");
    assert_eq!(u[0].status, GntSt::Okay, "device unmap of ref {g}");
}

/// Reusable op arrays for batched map/unmap of refs `first..first + n`.
pub struct Batch {
    pub map: Vec<MapGrantRef>,
    pub unmap: Vec<UnmapGrantRef>,
    /// The maps include `GNTMAP_device_map`: unmaps pass the device address back.
    pub device: bool,
}

impl Batch {
    pub fn new(granter: DomId, first: u32, n: u32) -> Self {
        Self::with_flags(granter, first, n, GntMap::HOST_MAP)
    }

    /// Batches with explicit map flags (e.g. `HOST_MAP | DEVICE_MAP`); the unmaps pass back
    /// each map's device address.
    pub fn with_flags(granter: DomId, first: u32, n: u32, flags: GntMap) -> Self {
        Self {
            map: (first..first + n)
                .map(|g| MapGrantRef::new(granter, GrantRef(g), flags, host_addr(g)))
                .collect(),
            unmap: (first..first + n)
                .map(|g| UnmapGrantRef::new(GrantHandle::default(), host_addr(g), 0))
                .collect(),
            device: flags.contains(GntMap::DEVICE_MAP),
        }
    }

    /// One map hypercall with every op, then one unmap hypercall with the matching ops.
    #[inline]
    pub fn run<D: Design>(&mut self, cx: &mut VcpuCtx<'_, D>) {
        cx.map_grant_ref(std::hint::black_box(&mut self.map))
            .expect("map hypercall");
        for (m, u) in self.map.iter().zip(self.unmap.iter_mut()) {
            assert_eq!(m.status, GntSt::Okay, "batched map of {:?}", m.ref_);
            u.handle = m.handle;
            if self.device {
                u.dev_bus_addr = m.dev_bus_addr;
            }
        }
        cx.unmap_grant_ref(std::hint::black_box(&mut self.unmap))
            .expect("unmap hypercall");
        for u in &self.unmap {
            assert_eq!(u.status, GntSt::Okay, "batched unmap");
        }
    }
}

/// A small deterministic generator (xorshift64*) for the cold workload's refs.
pub fn random_grefs(n: usize, range: u32, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32 % range
        })
        .collect()
}

/// Thread counts to run: 1 and 2, never more than `available_parallelism()` (on 2 cores more
/// threads than cores measures the scheduler, not the design).
pub fn thread_counts() -> Vec<usize> {
    let cap = std::thread::available_parallelism().map_or(1, |n| n.get());
    [1, 2].into_iter().filter(|&t| t <= cap).collect()
}

/// The `MultithreadedBench` pattern (sharded-slab): spawns `threads` threads; each calls
/// `setup(thread index)` (enter a vCPU, ...) outside the timed region, waits on a start
/// barrier, runs its share of `iters` iterations, and waits on an end barrier (so no thread
/// leaves its vCPU while another still runs). The time returned is from the first thread's
/// start to the last thread's finish, read by the workers themselves right after the start
/// barrier and right before the end barrier: unlike a coordinator's clock it does not include
/// how long the coordinator takes to be woken, which on a loaded machine can exceed a whole
/// short sample. It is scaled to exactly `iters` iterations in total, so criterion's "time per
/// iteration" is the aggregate time per iteration (1 / throughput), directly comparable
/// between thread counts.
pub fn timed_threads<F, W>(threads: usize, iters: u64, setup: F) -> Duration
where
    F: Fn(usize) -> W + Sync,
    W: FnMut(u64),
{
    let per = iters.div_ceil(threads as u64).max(1);
    let start = Barrier::new(threads);
    let end = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (start, end, setup) = (&start, &end, &setup);
                s.spawn(move || {
                    let mut work = setup(t);
                    start.wait();
                    let t0 = Instant::now();
                    work(per);
                    let t1 = Instant::now();
                    end.wait();
                    // The vCPU context (if any) is left after the end barrier.
                    drop(work);
                    (t0, t1)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    (last - first).mul_f64(iters as f64 / (per * threads as u64) as f64)
}

/// Design names from `GNTTAB_BENCH_DESIGNS` (comma separated), or `default`.
pub fn designs(default: &[&'static str]) -> Vec<String> {
    match std::env::var("GNTTAB_BENCH_DESIGNS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_owned()).collect(),
        _ => default.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Bytes per copy element (an Ethernet frame's payload, as netback copies).
pub const COPY_LEN: u16 = 1500;

/// Elements per copy hypercall.
pub const COPY_BATCH: u32 = 64;

/// Direction of a netback-like copy batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyDir {
    /// Guest transmit: source a grant of the granter (`GNTCOPY_source_gref`), destination the
    /// copying domain's own frame.
    Tx,
    /// Guest receive: source the copying domain's own frame, destination a grant of the
    /// granter (`GNTCOPY_dest_gref`, a writable grant).
    Rx,
}

impl CopyDir {
    pub fn name(self) -> &'static str {
        match self {
            CopyDir::Tx => "tx",
            CopyDir::Rx => "rx",
        }
    }
}

/// A reusable `GNTTABOP_copy` argument array of `n` elements of [`COPY_LEN`] bytes. Element
/// `i` uses the copying domain's own frame gfn `i` on its local side; its grant side names ref
/// `first` for every element when `same` (consecutive elements share the grant, so the
/// hypercall keeps it acquired across them: offsets alternate 0 / 2048 within the page) or ref
/// `first + i` otherwise (every element acquires and releases its own grant).
pub struct CopyBatch {
    pub ops: Vec<GnttabCopy>,
}

impl CopyBatch {
    pub fn new(granter: DomId, first: u32, n: u32, dir: CopyDir, same: bool) -> Self {
        let ops = (0..n)
            .map(|i| {
                let (gref, off) = if same {
                    (first, (i % 2) as u16 * 2048)
                } else {
                    (first + i, 0)
                };
                let grant = CopyPtr::gref(granter, GrantRef(gref), off);
                let local = CopyPtr::gmfn(Gfn(i as u64), 0);
                match dir {
                    CopyDir::Tx => GnttabCopy::new(grant, true, local, false, COPY_LEN),
                    CopyDir::Rx => GnttabCopy::new(local, false, grant, true, COPY_LEN),
                }
            })
            .collect();
        Self { ops }
    }

    /// One copy hypercall with every element; panics unless every element succeeded.
    #[inline]
    pub fn run<D: Design>(&mut self, cx: &mut VcpuCtx<'_, D>) {
        cx.copy(std::hint::black_box(&mut self.ops))
            .expect("copy hypercall");
        for op in &self.ops {
            assert_eq!(op.status, GntSt::Okay, "copy element");
        }
    }
}

/// `dom` grows its own grant table to `frames` frames (must succeed).
pub fn setup_table<D: Design>(hv: &Hypervisor<D>, dom: DomId, frames: u32) {
    let mut cx = hv.vcpu(dom, 0).expect("vcpu");
    let mut st = [SetupTable {
        dom: DomId::SELF,
        nr_frames: frames,
        ..Default::default()
    }];
    cx.setup_table(&mut st).expect("setup_table");
    assert_eq!(st[0].status, GntSt::Okay, "setup_table to {frames} frames");
}
