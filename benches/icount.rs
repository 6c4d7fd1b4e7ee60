//! Instruction-count driver: runs `PAIRS` map+unmap pairs of one design after a fixed setup,
//! for `valgrind --tool=callgrind` (see `scripts/icount.sh`, which runs it with N and 2N pairs
//! so that setup cancels: instructions per pair = (I(2N) - I(N)) / N).
//!
//! ```text
//! icount <design> <workload> <pairs>     workload: hot | warm | cold | batch32 | floor |
//!                                                   floor-xen | iommu | iommu32 |
//!                                                   hot-limit-off | hot-limit1024 |
//!                                                   copy-{tx,rx}-{same,diff}
//! icount                                 (no arguments: what `cargo test --benches` and
//!                                         `cargo bench` run) a short smoke run of every design
//! ```
//!
//! `hot`, `warm` and `cold` are the workloads of `pair/*` in `benches/map_unmap.rs`; `batch32`
//! counts one pair as one op of a 32-op map batch plus its share of the unmap batch; `floor`
//! and `floor-xen` run the floor sequences of benches/common/floor.rs (the design argument is
//! then ignored).
//!
//! Workloads of the newer features (docs/benchmarks.md section 7; the unit is still called a
//! "pair" by the script):
//!
//! * `iommu`: the hot pair with `host_map | device_map` by a strict-IOMMU mapper (IOTLB flush
//!   cost 0: a charged cost is a timed busy-wait, which callgrind would count as a loop of
//!   clock reads); `iommu32`: the same in batches of 32 (unit: one op).
//! * `hot-limit-off`, `hot-limit1024`: the hot pair with the mapper's map limit
//!   `MapLimit::Off` or `MapLimit::Limit(1024)` (`hot` itself runs with `MapLimit::Default`).
//! * `copy-tx-same`, `copy-tx-diff`, `copy-rx-same`, `copy-rx-diff`: `GNTTABOP_copy` batches of
//!   64 elements of 1500 bytes (`features.rs`'s `copy/*` groups); unit: one element; the count
//!   must be a multiple of 64.

mod common;

use common::floor::Floor;
use common::{
    host_addr, pair, pair_dev, random_grefs, Batch, CopyBatch, CopyDir, Rig, COLD_GREFS,
    COPY_BATCH, THREAD_STRIDE, WARM_GREFS,
};
use gnttab::design::DESIGN_NAMES;
use gnttab::prelude::*;
use gnttab::with_design;

const HOT: u32 = THREAD_STRIDE;

/// Pairs run before the counted part in both the N and the 2N run (the same in both, so it
/// cancels too); it takes first-use costs (maptrack growth, PTE tables, lazily allocated
/// pages, allocator warm-up) out of the way.
const WARMUP: u64 = 2 * COLD_GREFS as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Hot,
    Warm,
    Cold,
    Batch32,
    Floor,
    FloorXen,
    Iommu,
    Iommu32,
    HotLimit(MapLimit),
    Copy(CopyDir, bool),
}

impl Workload {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hot" => Self::Hot,
            "warm" => Self::Warm,
            "cold" => Self::Cold,
            "batch32" => Self::Batch32,
            "floor" => Self::Floor,
            "floor-xen" => Self::FloorXen,
            "iommu" => Self::Iommu,
            "iommu32" => Self::Iommu32,
            "hot-limit-off" => Self::HotLimit(MapLimit::Off),
            "hot-limit1024" => Self::HotLimit(MapLimit::Limit(1024)),
            "copy-tx-same" => Self::Copy(CopyDir::Tx, true),
            "copy-tx-diff" => Self::Copy(CopyDir::Tx, false),
            "copy-rx-same" => Self::Copy(CopyDir::Rx, true),
            "copy-rx-diff" => Self::Copy(CopyDir::Rx, false),
            _ => return None,
        })
    }
}

/// The pair loop (warm-up and counted part).
#[inline(never)]
fn run_pairs<D: Design>(
    rig: &Rig<D>,
    cx: &mut VcpuCtx<'_, D>,
    w: Workload,
    refs: &[u32],
    from: u64,
    n: u64,
) {
    match w {
        Workload::Hot | Workload::HotLimit(_) => {
            for _ in 0..n {
                pair(cx, rig.granter, HOT);
            }
        }
        Workload::Iommu => {
            for _ in 0..n {
                pair_dev(cx, rig.granter, HOT, host_addr(HOT));
            }
        }
        Workload::Warm => {
            for i in from..from + n {
                pair(cx, rig.granter, (i % WARM_GREFS as u64) as u32);
            }
        }
        Workload::Cold => {
            let mask = refs.len() as u64 - 1;
            for i in from..from + n {
                pair(cx, rig.granter, refs[(i & mask) as usize]);
            }
        }
        Workload::Batch32
        | Workload::Iommu32
        | Workload::Copy(..)
        | Workload::Floor
        | Workload::FloorXen => {
            unreachable!("handled by the callers")
        }
    }
}

/// Runs `f`: the measured part of a run. Kept out of line so that
/// `callgrind --toggle-collect='*icount::counted*'` profiles the counted pairs only (not the
/// setup nor the warm-up, which run the same functions).
#[inline(never)]
fn counted<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[inline(never)]
fn run_batches<D: Design>(cx: &mut VcpuCtx<'_, D>, ops: &mut Batch, batches: u64) {
    for _ in 0..batches {
        ops.run(cx);
    }
}

#[inline(never)]
fn run_copies<D: Design>(cx: &mut VcpuCtx<'_, D>, ops: &mut CopyBatch, batches: u64) {
    for _ in 0..batches {
        ops.run(cx);
    }
}

#[inline(never)]
fn run_floor(f: &Floor, xen: bool, n: u64) {
    for _ in 0..n {
        if xen {
            f.pair_xen();
        } else {
            f.pair();
        }
    }
}

/// A rig whose 1-vCPU mapper is in strict IOMMU mode (IOTLB flushes free: see the module docs).
fn strict_rig<D: Design>(grefs: u32) -> Rig<D> {
    Rig::with(
        grefs,
        HypervisorConfig::default(),
        DomainConfig::new("mapper").iommu(IommuMode::Strict),
    )
}

fn run<D: Design>(w: Workload, warmup: u64, n: u64) {
    match w {
        Workload::Floor | Workload::FloorXen => {
            let f = Floor::new();
            let xen = w == Workload::FloorXen;
            run_floor(&f, xen, warmup);
            counted(|| run_floor(&f, xen, n));
            assert!(f.is_idle());
        }
        Workload::Batch32 | Workload::Iommu32 => {
            let (rig, flags) = if w == Workload::Iommu32 {
                (
                    strict_rig::<D>(HOT + 32),
                    GntMap::HOST_MAP | GntMap::DEVICE_MAP,
                )
            } else {
                (Rig::<D>::new(HOT + 32, 1), GntMap::HOST_MAP)
            };
            let mut cx = rig.vcpu(0);
            let mut ops = Batch::with_flags(rig.granter, HOT, 32, flags);
            // n pairs = n / 32 batches (the script passes multiples of 32).
            run_batches(&mut cx, &mut ops, warmup.div_ceil(32));
            counted(|| run_batches(&mut cx, &mut ops, n.div_ceil(32)));
        }
        Workload::Copy(dir, same) => {
            assert!(
                warmup % COPY_BATCH as u64 == 0 && n % COPY_BATCH as u64 == 0,
                "copy workloads count elements in whole batches of {COPY_BATCH}"
            );
            let rig = Rig::<D>::new(HOT + COPY_BATCH, 1);
            let mut cx = rig.vcpu(0);
            let mut ops = CopyBatch::new(rig.granter, HOT, COPY_BATCH, dir, same);
            run_copies(&mut cx, &mut ops, warmup / COPY_BATCH as u64);
            counted(|| run_copies(&mut cx, &mut ops, n / COPY_BATCH as u64));
        }
        _ => {
            let grefs = match w {
                Workload::Hot | Workload::HotLimit(_) | Workload::Iommu => HOT + 1,
                Workload::Warm => WARM_GREFS,
                _ => COLD_GREFS,
            };
            let rig = match w {
                Workload::Iommu => strict_rig::<D>(grefs),
                Workload::HotLimit(l) => Rig::<D>::with(
                    grefs,
                    HypervisorConfig::default(),
                    DomainConfig::new("mapper").map_limit(l),
                ),
                _ => Rig::<D>::new(grefs, 1),
            };
            let refs = if w == Workload::Cold {
                random_grefs(1 << 16, COLD_GREFS, 0x5EED_C01D)
            } else {
                Vec::new()
            };
            let mut cx = rig.vcpu(0);
            run_pairs(&rig, &mut cx, w, &refs, 0, warmup);
            counted(|| run_pairs(&rig, &mut cx, w, &refs, warmup, n));
            let s = rig.mapper_stats();
            assert_eq!(s.maps, warmup + n);
            assert_eq!(s.unmaps, warmup + n);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    match positional.as_slice() {
        [design, workload, n] => {
            let w = Workload::parse(workload)
                .unwrap_or_else(|| panic!("unknown workload {workload:?}"));
            let n: u64 = n.parse().expect("pairs: a number");
            with_design!(*design, D => run::<D>(w, WARMUP, n))
                .unwrap_or_else(|| panic!("unknown design {design:?}; one of {DESIGN_NAMES:?}"));
        }
        _ => {
            // `cargo test --benches` / `cargo bench` (possibly with a filter): smoke-run
            // every design and workload briefly so the driver cannot rot.
            for name in DESIGN_NAMES {
                for w in [
                    Workload::Hot,
                    Workload::Warm,
                    Workload::Batch32,
                    Workload::Iommu,
                    Workload::Iommu32,
                    Workload::HotLimit(MapLimit::Off),
                    Workload::HotLimit(MapLimit::Limit(1024)),
                    Workload::Copy(CopyDir::Tx, true),
                    Workload::Copy(CopyDir::Rx, false),
                ] {
                    with_design!(*name, D => run::<D>(w, 64, 64)).expect("known design");
                }
            }
            run::<Fast>(Workload::Floor, 64, 64);
            run::<Fast>(Workload::FloorXen, 64, 64);
            println!(
                "icount: smoke run of {} designs ok (use scripts/icount.sh to count)",
                DESIGN_NAMES.len()
            );
        }
    }
}
