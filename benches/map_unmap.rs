//! Map/unmap benchmarks: every group runs the designs side by side in one run, so every figure
//! in docs/benchmarks.md is a ratio of two numbers measured together.
//!
//! | group         | what                                                                    |
//! |---------------|-------------------------------------------------------------------------|
//! | `pair/hot`    | 1 thread, map+unmap of one ref, again and again; plus the `floor` (the  |
//! |               | Fast pair's atomics alone) and `floor-xen` (the Xen pair's)             |
//! | `pair/warm`   | 1 thread, refs 0..4096 in order                                         |
//! | `pair/cold`   | 1 thread, refs drawn at random from 0..32768 (64 grant frames)          |
//! | `batch`       | 1 thread, N map ops in one hypercall then the N unmaps; time per op     |
//! | `mt/disjoint` | 1 and 2 vCPU threads of one mapper, each on its own ref (own lines);    |
//! |               | Fast, Xen, Xen with a plain rwlock, and the floor; aggregate time/pair  |
//! | `mt/same`     | 2 vCPU threads on the same ref (prints Fast's slow-path fraction)       |
//!
//! Designs default to Fast and Xen (plus XenPlainRw in `mt/disjoint`); override with
//! `GNTTAB_BENCH_DESIGNS=fast,xen,xen+fastslots,fast-noslots`.
//!
//! Thread counts never exceed `available_parallelism()`. Multi-thread groups use `iter_custom`
//! between start and end barriers (sharded-slab's `MultithreadedBench`); each thread enters its
//! own vCPU context once, before the start barrier.
//!
//! Run: `cargo bench --bench map_unmap` (everything, a few minutes), or one group, e.g.
//! `cargo bench --bench map_unmap -- 'pair/hot'`. In CI: `cargo test --benches` (each
//! benchmark runs once).

mod common;

use common::floor::Floor;
use common::{
    designs, host_addr, pair, pair_at, random_grefs, thread_counts, timed_threads, Batch, Rig,
    COLD_GREFS, THREAD_STRIDE, WARM_GREFS,
};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use gnttab::prelude::*;
use gnttab::with_design;
use std::time::Instant;

/// The ref of the hot workload (and thread 0's ref in `mt/*`); thread `t` uses
/// `HOT + t * THREAD_STRIDE`.
const HOT: u32 = THREAD_STRIDE;

fn unknown(name: &str) {
    eprintln!("warning: unknown design {name:?} in GNTTAB_BENCH_DESIGNS, skipped");
}

// ---------------------------------------------------------------------------------------------
// 1. One pair at a time, one thread.

fn pair_hot<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>) {
    let rig = Rig::<D>::new(HOT + 1, 1);
    let mut cx = rig.vcpu(0);
    g.bench_function(BenchmarkId::from_parameter(D::NAME), |b| {
        b.iter(|| pair(&mut cx, rig.granter, HOT))
    });
}

fn pair_warm<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>) {
    let rig = Rig::<D>::new(WARM_GREFS, 1);
    let mut cx = rig.vcpu(0);
    let mut i = 0u32;
    g.bench_function(BenchmarkId::from_parameter(D::NAME), |b| {
        b.iter(|| {
            pair(&mut cx, rig.granter, i % WARM_GREFS);
            i = i.wrapping_add(1);
        })
    });
}

fn pair_cold<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>) {
    let rig = Rig::<D>::new(COLD_GREFS, 1);
    let refs = random_grefs(1 << 16, COLD_GREFS, 0x5EED_C01D);
    let mask = refs.len() - 1;
    let mut cx = rig.vcpu(0);
    let mut i = 0usize;
    g.bench_function(BenchmarkId::from_parameter(D::NAME), |b| {
        b.iter(|| {
            pair(&mut cx, rig.granter, refs[i & mask]);
            i = i.wrapping_add(1);
        })
    });
}

fn bench_pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair/hot");
    for name in designs(&[Fast::NAME, Xen::NAME]) {
        with_design!(name.as_str(), D => pair_hot::<D>(&mut g)).unwrap_or_else(|| unknown(&name));
    }
    let floor = Floor::new();
    g.bench_function(BenchmarkId::from_parameter("floor"), |b| {
        b.iter(|| floor.pair())
    });
    g.bench_function(BenchmarkId::from_parameter("floor-xen"), |b| {
        b.iter(|| floor.pair_xen())
    });
    assert!(floor.is_idle(), "floor sequence left state behind");
    g.finish();

    let mut g = c.benchmark_group("pair/warm");
    for name in designs(&[Fast::NAME, Xen::NAME]) {
        with_design!(name.as_str(), D => pair_warm::<D>(&mut g)).unwrap_or_else(|| unknown(&name));
    }
    g.finish();

    let mut g = c.benchmark_group("pair/cold");
    for name in designs(&[Fast::NAME, Xen::NAME]) {
        with_design!(name.as_str(), D => pair_cold::<D>(&mut g)).unwrap_or_else(|| unknown(&name));
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Batches: N map ops in one hypercall, then the N unmaps in one hypercall. Reported per op
//    (one map op + one unmap op), so batch/1 is comparable with pair/hot.

fn batch<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>, n: u32) {
    let rig = Rig::<D>::new(HOT + n, 1);
    let mut cx = rig.vcpu(0);
    let mut ops = Batch::new(rig.granter, HOT, n);
    g.bench_function(BenchmarkId::new(D::NAME, n), |b| {
        b.iter_custom(|iters| {
            // One criterion iteration = one op of a batch.
            let batches = iters.div_ceil(n as u64).max(1);
            let t0 = Instant::now();
            for _ in 0..batches {
                ops.run(&mut cx);
            }
            t0.elapsed()
                .mul_f64(iters as f64 / (batches * n as u64) as f64)
        })
    });
}

fn bench_batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for name in designs(&[Fast::NAME, Xen::NAME]) {
        for n in [1, 32, 64] {
            with_design!(name.as_str(), D => batch::<D>(&mut g, n))
                .unwrap_or_else(|| unknown(&name));
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 3-5. Two vCPU threads of one mapper.

/// Thread `t` maps and unmaps its own ref `HOT + t * THREAD_STRIDE` (disjoint lines).
fn mt_disjoint<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    let rig = Rig::<D>::new(HOT + 2 * THREAD_STRIDE + 1, 2);
    g.bench_function(BenchmarkId::new(D::NAME, threads), |b| {
        b.iter_custom(|iters| {
            timed_threads(threads, iters, |t| {
                let mut cx = rig.vcpu(t as u16);
                let gref = HOT + t as u32 * THREAD_STRIDE;
                move |n| {
                    for _ in 0..n {
                        pair(&mut cx, rig.granter, gref);
                    }
                }
            })
        })
    });
}

fn floor_mt(g: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    let floors: Vec<Box<Floor>> = (0..threads).map(|_| Floor::new()).collect();
    g.bench_function(BenchmarkId::new("floor", threads), |b| {
        b.iter_custom(|iters| {
            timed_threads(threads, iters, |t| {
                let f = &floors[t];
                move |n| {
                    for _ in 0..n {
                        f.pair();
                    }
                }
            })
        })
    });
    assert!(
        floors.iter().all(|f| f.is_idle()),
        "floor sequence left state behind"
    );
}

/// Both threads map and unmap the same ref, each at its own host address.
fn mt_same<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    let rig = Rig::<D>::new(HOT + 1, 2);
    let before = rig.mapper_stats();
    g.bench_function(BenchmarkId::new(D::NAME, threads), |b| {
        b.iter_custom(|iters| {
            timed_threads(threads, iters, |t| {
                let mut cx = rig.vcpu(t as u16);
                // Host PTEs of the two threads on different lines.
                let addr = host_addr(COLD_GREFS + t as u32 * THREAD_STRIDE);
                move |n| {
                    for _ in 0..n {
                        pair_at(&mut cx, rig.granter, HOT, addr);
                    }
                }
            })
        })
    });
    let s = rig.mapper_stats();
    let (fast, slow) = (
        s.fast_maps - before.fast_maps,
        s.slow_maps - before.slow_maps,
    );
    eprintln!(
        "mt/same/{}/{threads}: maps {} (fast slots {fast}, slow maptrack {slow}); slow-path fraction {:.6}",
        D::NAME,
        fast + slow,
        slow as f64 / (fast + slow).max(1) as f64
    );
}

fn bench_mt(c: &mut Criterion) {
    let counts = thread_counts();
    if !counts.contains(&2) {
        eprintln!("note: available_parallelism() < 2, multi-thread benchmarks run 1 thread only");
    }
    let mut g = c.benchmark_group("mt/disjoint");
    for name in designs(&[Fast::NAME, Xen::NAME, XenPlainRw::NAME]) {
        for &t in &counts {
            with_design!(name.as_str(), D => mt_disjoint::<D>(&mut g, t))
                .unwrap_or_else(|| unknown(&name));
        }
    }
    for &t in &counts {
        floor_mt(&mut g, t);
    }
    g.finish();

    let mut g = c.benchmark_group("mt/same");
    for name in designs(&[Fast::NAME, Xen::NAME]) {
        for &t in counts.iter().filter(|&&t| t > 1) {
            with_design!(name.as_str(), D => mt_same::<D>(&mut g, t))
                .unwrap_or_else(|| unknown(&name));
        }
    }
    g.finish();
}

criterion_group!(benches, bench_pairs, bench_batches, bench_mt);
criterion_main!(benches);
