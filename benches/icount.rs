//! Instruction-count driver: runs `PAIRS` map+unmap pairs of one design after a fixed setup,
//! for `valgrind --tool=callgrind` (see `scripts/icount.sh`, which runs it with N and 2N pairs
//! so that setup cancels: instructions per pair = (I(2N) - I(N)) / N).
//!
//! ```text
//! icount <design> <workload> <pairs>     workload: hot | warm | cold | batch32 | floor |
//!                                                   floor-xen
//! icount                                 (no arguments: what `cargo test --benches` and
//!                                         `cargo bench` run) a short smoke run of every design
//! ```
//!
//! `hot`, `warm` and `cold` are the workloads of `pair/*` in `benches/map_unmap.rs`; `batch32`
//! counts one pair as one op of a 32-op map batch plus its share of the unmap batch; `floor`
//! and `floor-xen` run the floor sequences of benches/common/floor.rs (the design argument is
//! then ignored).

mod common;

use common::floor::Floor;
use common::{pair, random_grefs, Batch, Rig, COLD_GREFS, THREAD_STRIDE, WARM_GREFS};
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
        Workload::Hot => {
            for _ in 0..n {
                pair(cx, rig.granter, HOT);
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
        Workload::Batch32 | Workload::Floor | Workload::FloorXen => {
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
fn run_floor(f: &Floor, xen: bool, n: u64) {
    for _ in 0..n {
        if xen {
            f.pair_xen();
        } else {
            f.pair();
        }
    }
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
        Workload::Batch32 => {
            let rig = Rig::<D>::new(HOT + 32, 1);
            let mut cx = rig.vcpu(0);
            let mut ops = Batch::new(rig.granter, HOT, 32);
            // n pairs = n / 32 batches (the script passes multiples of 32).
            run_batches(&mut cx, &mut ops, warmup.div_ceil(32));
            counted(|| run_batches(&mut cx, &mut ops, n.div_ceil(32)));
        }
        _ => {
            let grefs = match w {
                Workload::Hot => HOT + 1,
                Workload::Warm => WARM_GREFS,
                _ => COLD_GREFS,
            };
            let rig = Rig::<D>::new(grefs, 1);
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
                for w in [Workload::Hot, Workload::Warm, Workload::Batch32] {
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
