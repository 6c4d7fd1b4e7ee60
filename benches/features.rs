//! Benchmarks of the newer features (docs/benchmarks.md section 7): every group runs the
//! designs side by side in one run, so every figure is a ratio of numbers measured together.
//!
//! | group                    | what                                                           |
//! |--------------------------|----------------------------------------------------------------|
//! | `iommu/pair/cost0`       | strict-IOMMU mapper, map+unmap pair with `host_map|device_map` |
//! | `iommu/pair/cost800`     | one op per hypercall, 1 and 2 vCPU threads on disjoint refs;   |
//! |                          | IOTLB flush free (`cost0`) or charged 800 ns (`cost800`)       |
//! | `iommu/batch32/cost0`    | the same with 32 map ops in one hypercall, then the 32 unmaps  |
//! | `iommu/batch32/cost800`  | (a backend's batch); time per batch (divide by 32 for per op) |
//! | `copy/tx`, `copy/rx`     | 64 copies of 1500 bytes in one `GNTTABOP_copy` (netback-like): |
//! |                          | guest grant -> own frames (`tx`) or the reverse (`rx`); every  |
//! |                          | element on the same grant (`same`: kept acquired across        |
//! |                          | elements) or each on its own (`diff`); time per element        |
//! | `limit/hot`, `limit/mt`  | the hot pair (1 thread; 2 threads on disjoint refs) with the   |
//! |                          | map limit off, default, or `Limit(1024)`                       |
//!
//! Designs: `iommu/*` Fast, Xen and XenPerMapBfn (the ablation: Xen's tables and maptrack with
//! per-map bus frames); `copy/*` Fast and Xen; `limit/*` Fast, Xen and XenFastSlots. Override
//! with `GNTTAB_BENCH_DESIGNS=...` (as in `benches/map_unmap.rs`).
//!
//! `iommu/*` and `limit/*` print, on stderr, the mapper's IOTLB flushes per pair (or per op)
//! and fast/slow maps over the whole benchmark, from `Domain::stats()`.
//!
//! Run: `cargo bench --bench features -- 'iommu/'` (or `copy/`, `limit/`), then
//! `scripts/bench-ratios.sh features`. In CI: `cargo test --benches` (each benchmark once).

mod common;

use common::{
    designs, pair, pair_dev, thread_counts, timed_threads, Batch, CopyBatch, CopyDir, Rig,
    COPY_BATCH, THREAD_STRIDE,
};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use gnttab::maptrack::SlotPolicy;
use gnttab::prelude::*;
use gnttab::with_design;
use std::time::{Duration, Instant};

/// Thread `t` uses ref `HOT + t * THREAD_STRIDE` (as in `benches/map_unmap.rs`).
const HOT: u32 = THREAD_STRIDE;

/// The modelled cost of one IOTLB flush in the `cost800` groups (a real shootdown: ~0.8 us).
const FLUSH_COST: Duration = Duration::from_nanos(800);

/// Map ops per hypercall in `iommu/batch32/*`.
const IOMMU_BATCH: u32 = 32;

/// The explicit limit of the `limit*` variants.
const LIMIT_N: u32 = 1024;

fn unknown(name: &str) {
    eprintln!("warning: unknown design {name:?} in GNTTAB_BENCH_DESIGNS, skipped");
}

// ---------------------------------------------------------------------------------------------
// 1. Strict IOMMU (issue 4).

/// Runs `work(cx, thread, n)` on `threads` vCPU threads of the rig's mapper as one criterion
/// benchmark with aggregate time per iteration; one iteration is one pair (or op).
fn bench_threads<D: Design>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    rig: &Rig<D>,
    threads: usize,
    work: impl Fn(&mut VcpuCtx<'_, D>, usize, u64) + Sync,
) {
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            if threads == 1 {
                // No thread spawn for one thread (same as `map_unmap`'s single-thread groups
                // apart from `iter_custom`).
                let mut cx = rig.vcpu(0);
                let t0 = Instant::now();
                work(&mut cx, 0, iters);
                t0.elapsed()
            } else {
                timed_threads(threads, iters, |t| {
                    let mut cx = rig.vcpu(t as u16);
                    let work = &work;
                    move |n| work(&mut cx, t, n)
                })
            }
        })
    });
}

/// Prints the mapper's IOTLB flushes and maps per unit since `before`.
fn report_iommu<D: Design>(label: &str, rig: &Rig<D>, before: DomainStats) {
    let s = rig.mapper_stats();
    let maps = s.maps - before.maps;
    let flushes = s.iotlb_flushes - before.iotlb_flushes;
    eprintln!(
        "{label}: maps {maps}, IOTLB flushes {flushes}, flushes per pair {:.4} (fast {}, slow {})",
        flushes as f64 / maps.max(1) as f64,
        s.fast_maps - before.fast_maps,
        s.slow_maps - before.slow_maps
    );
}

fn iommu_rig<D: Design>(cost: Duration, grefs: u32) -> Rig<D> {
    let hv_cfg = HypervisorConfig {
        iotlb_flush_cost: cost,
        ..HypervisorConfig::default()
    };
    Rig::with(
        grefs,
        hv_cfg,
        DomainConfig::new("backend")
            .vcpus(2)
            .iommu(IommuMode::Strict),
    )
}

fn iommu_pair<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>, group: &str, cost: Duration) {
    for &threads in &thread_counts() {
        let rig = iommu_rig::<D>(cost, HOT + 2 * THREAD_STRIDE + 1);
        let before = rig.mapper_stats();
        bench_threads(
            g,
            BenchmarkId::new(D::NAME, threads),
            &rig,
            threads,
            |cx, t, n| {
                let gref = HOT + t as u32 * THREAD_STRIDE;
                let addr = common::host_addr(gref);
                for _ in 0..n {
                    pair_dev(cx, rig.granter, gref, addr);
                }
            },
        );
        report_iommu(&format!("{group}/{}/{threads}", D::NAME), &rig, before);
        rig.hv.check().assert_ok();
    }
}

fn iommu_batch<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>, group: &str, cost: Duration) {
    for &threads in &thread_counts() {
        let rig = iommu_rig::<D>(cost, HOT + THREAD_STRIDE + IOMMU_BATCH + 1);
        let before = rig.mapper_stats();
        bench_threads(
            g,
            BenchmarkId::new(D::NAME, threads),
            &rig,
            threads,
            |cx, t, n| {
                // One iteration = one batch. Thread t batches refs HOT + t * THREAD_STRIDE ..
                // + 32 (disjoint ranges); the op arrays are built once per sample (two small
                // allocations against thousands of batches).
                let first = HOT + t as u32 * THREAD_STRIDE;
                let mut ops = Batch::with_flags(
                    rig.granter,
                    first,
                    IOMMU_BATCH,
                    GntMap::HOST_MAP | GntMap::DEVICE_MAP,
                );
                for _ in 0..n {
                    ops.run(cx);
                }
            },
        );
        report_iommu(&format!("{group}/{}/{threads}", D::NAME), &rig, before);
        rig.hv.check().assert_ok();
    }
}

fn bench_iommu(c: &mut Criterion) {
    if !thread_counts().contains(&2) {
        eprintln!("note: available_parallelism() < 2, iommu benchmarks run 1 thread only");
    }
    let names = designs(&[Fast::NAME, Xen::NAME, XenPerMapBfn::NAME]);
    for (label, cost) in [("cost0", Duration::ZERO), ("cost800", FLUSH_COST)] {
        let group = format!("iommu/pair/{label}");
        let mut g = c.benchmark_group(&group);
        for name in &names {
            with_design!(name.as_str(), D => iommu_pair::<D>(&mut g, &group, cost))
                .unwrap_or_else(|| unknown(name));
        }
        g.finish();
        let group = format!("iommu/batch32/{label}");
        let mut g = c.benchmark_group(&group);
        for name in &names {
            with_design!(name.as_str(), D => iommu_batch::<D>(&mut g, &group, cost))
                .unwrap_or_else(|| unknown(name));
        }
        g.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Grant copy (issue 6).

fn copy<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>, dir: CopyDir, same: bool) {
    let rig = Rig::<D>::new(HOT + COPY_BATCH, 1);
    let mut cx = rig.vcpu(0);
    let mut ops = CopyBatch::new(rig.granter, HOT, COPY_BATCH, dir, same);
    let id = BenchmarkId::new(D::NAME, if same { "same" } else { "diff" });
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            // One criterion iteration = one element of a 64-element batch.
            let batches = iters.div_ceil(COPY_BATCH as u64).max(1);
            let t0 = Instant::now();
            for _ in 0..batches {
                ops.run(&mut cx);
            }
            t0.elapsed()
                .mul_f64(iters as f64 / (batches * COPY_BATCH as u64) as f64)
        })
    });
    drop(cx);
    rig.hv.check().assert_ok();
}

fn bench_copy(c: &mut Criterion) {
    for dir in [CopyDir::Tx, CopyDir::Rx] {
        let mut g = c.benchmark_group(format!("copy/{}", dir.name()));
        for name in designs(&[Fast::NAME, Xen::NAME]) {
            for same in [true, false] {
                with_design!(name.as_str(), D => copy::<D>(&mut g, dir, same))
                    .unwrap_or_else(|| unknown(&name));
            }
        }
        g.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Map limits (issue 7).

/// The limit variants run for design `D`: `off` and `limit1024` always; `default` only for
/// designs with inline slots (for the others `Default` means no limit: the same as `off`).
fn limit_variants<D: Design>() -> Vec<(&'static str, MapLimit)> {
    let mut v = vec![("off", MapLimit::Off)];
    if <D::Slots as SlotPolicy>::ENABLED {
        v.push(("default", MapLimit::Default));
    }
    v.push(("limit1024", MapLimit::Limit(LIMIT_N)));
    v
}

fn limit<D: Design>(g: &mut BenchmarkGroup<'_, WallTime>, group: &str, threads: usize) {
    for (label, lim) in limit_variants::<D>() {
        let rig = Rig::<D>::with(
            HOT + 2 * THREAD_STRIDE + 1,
            HypervisorConfig::default(),
            DomainConfig::new("mapper").vcpus(2).map_limit(lim),
        );
        let quota = rig
            .hv
            .domain(rig.mapper)
            .expect("mapper")
            .quota()
            .map(|q| q.limit());
        assert_eq!(
            quota.is_some(),
            lim != MapLimit::Off,
            "{label}: quota present"
        );
        let before = rig.mapper_stats();
        let id = BenchmarkId::new(D::NAME, label);
        if threads == 1 {
            // `Bencher::iter`, exactly as `pair/hot` in `benches/map_unmap.rs`.
            let mut cx = rig.vcpu(0);
            g.bench_function(id, |b| b.iter(|| pair(&mut cx, rig.granter, HOT)));
        } else {
            bench_threads(g, id, &rig, threads, |cx, t, n| {
                let gref = HOT + t as u32 * THREAD_STRIDE;
                for _ in 0..n {
                    pair(cx, rig.granter, gref);
                }
            });
        }
        let s = rig.mapper_stats();
        eprintln!(
            "{group}/{}/{label}: limit {quota:?}, maps {} (fast {}, slow {})",
            D::NAME,
            s.maps - before.maps,
            s.fast_maps - before.fast_maps,
            s.slow_maps - before.slow_maps
        );
    }
}

fn bench_limit(c: &mut Criterion) {
    let names = designs(&[Fast::NAME, Xen::NAME, XenFastSlots::NAME]);
    for (group, threads) in [("limit/hot", 1), ("limit/mt", 2)] {
        if !thread_counts().contains(&threads) {
            eprintln!("note: available_parallelism() < {threads}, {group} skipped");
            continue;
        }
        let mut g = c.benchmark_group(group);
        for name in &names {
            with_design!(name.as_str(), D => limit::<D>(&mut g, group, threads))
                .unwrap_or_else(|| unknown(name));
        }
        g.finish();
    }
}

criterion_group!(benches, bench_iommu, bench_copy, bench_limit);
criterion_main!(benches);
