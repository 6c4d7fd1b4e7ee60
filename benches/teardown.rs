//! Teardown of a backend (issue 5; docs/benchmarks.md section 7.2): a plain benchmark binary
//! (`harness = false`) that prints a table. Criterion does not suit it: every measurement
//! destroys its subject, and building a backend with 50,000 mappings costs more than tearing
//! it down.
//!
//! Per design (default Fast and Xen; `GNTTAB_BENCH_DESIGNS` overrides), one hypervisor holds:
//!
//! * `front`: a PV frontend whose refs the backend maps (ref `r` grants gfn `r`);
//! * `big0..big3`: unrelated granters whose grant tables grow, level by level, so that the
//!   active entries of domains OTHER than the backend total about 10^4, 10^5, then 10^6
//!   (every entry granted, read-only, to an unrelated domain `other`);
//! * `dom0`: a privileged domain that issues `GNTTABOP_query_size` on `front`;
//! * for every measurement a fresh `backend` (1 vCPU) holding `M` = 50,000 live host mappings
//!   of `front`'s refs: refs `0..M - 750` mapped once and 250 refs mapped three times (on the
//!   designs with inline slots the first two maps of a ref share its fast slots and the third
//!   takes a maptrack handle, so 49,750 fast + 250 slow; on the others all 50,000 are maptrack
//!   records).
//!
//! For each level and each repetition (`TEARDOWN_REPS`, default 5), designs alternating:
//!
//! 1. **idle**: `dom0` issues `TEARDOWN_QUERIES` (default 100,000) `query_size` on `front`,
//!    one at a time, each timed; p99 of those latencies.
//! 2. **teardown**: `hv.kill_domain(backend)` then `Teardown::run()`, timed as a whole (the
//!    pause included); `TeardownStats::longest_step` and `visited` recorded.
//! 3. **during**: a new backend, and two threads: one steps the teardown to completion, the
//!    other issues `query_size` on `front` in a loop until it is done; p99 of those latencies.
//! 4. **controls**: the same query loop for as many queries as step 3 made, while the other
//!    thread spins on plain arithmetic (`p99 ctrl`), then while it streams writes over a 16 MiB
//!    buffer (`p99 mem`); neither does hypervisor work: what sharing the machine alone
//!    does to the p99.
//!
//! Every figure printed is the **median of the repetitions** (teardown time, longest step,
//! p99s). The summary gives teardown time at the largest level over the smallest (target for
//! Fast: <= 1.5) and p99 during teardown over idle (target: <= 2).
//!
//! `cargo bench --bench teardown` runs the full table; without `--bench` (what
//! `cargo test --benches` does) a small smoke run checks the harness. Environment:
//! `TEARDOWN_M` (mappings), `TEARDOWN_LEVELS` (comma-separated entry counts of the other
//! domains), `TEARDOWN_REPS`, `TEARDOWN_QUERIES`.

mod common;

use gnttab::prelude::*;
use gnttab::with_design;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Unrelated granters the other domains' entries are spread over.
const BIG_GRANTERS: u32 = 4;
/// Refs mapped three times by the backend (2 fast + 1 slow on slot designs).
const TRIPLE_REFS: u32 = 250;
/// Map ops per hypercall while building a backend.
const BUILD_BATCH: usize = 512;
/// Linear address of the backend's host mappings.
const HOST_BASE: u64 = 0x1000_0000;

#[derive(Clone, Debug)]
struct Params {
    mappings: u32,
    levels: Vec<u64>,
    reps: usize,
    queries: usize,
    trace: Option<Duration>,
}

impl Params {
    fn from_env(full: bool) -> Self {
        fn env<T: std::str::FromStr>(k: &str) -> Option<T> {
            std::env::var(k).ok().and_then(|v| v.trim().parse().ok())
        }
        let levels = std::env::var("TEARDOWN_LEVELS").ok().map(|v| {
            v.split(',')
                .map(|s| s.trim().parse::<f64>().expect("TEARDOWN_LEVELS: numbers") as u64)
                .collect::<Vec<_>>()
        });
        let trace = env::<u64>("TEARDOWN_TRACE").map(Duration::from_micros);
        if full {
            Self {
                trace,
                mappings: env("TEARDOWN_M").unwrap_or(50_000),
                levels: levels.unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]),
                reps: env("TEARDOWN_REPS").unwrap_or(5),
                queries: env("TEARDOWN_QUERIES").unwrap_or(100_000),
            }
        } else {
            Self {
                trace,
                mappings: env("TEARDOWN_M").unwrap_or(2_000),
                levels: levels.unwrap_or_else(|| vec![2_048, 8_192]),
                reps: env("TEARDOWN_REPS").unwrap_or(1),
                queries: env("TEARDOWN_QUERIES").unwrap_or(1_000),
            }
        }
    }
}

/// One repetition's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    teardown: Duration,
    longest_step: Duration,
    steps: u64,
    visited: u64,
    released: u64,
    p99_idle: Duration,
    p99_during: Duration,
    p99_control: Duration,
    p99_control_mem: Duration,
    queries_during: usize,
}

/// A design's hypervisor and domains, behind a trait object so designs can alternate.
trait Case {
    fn name(&self) -> &'static str;
    /// Grows the big granters so that other domains hold at least `entries` entries; returns
    /// the exact count.
    fn grow_to(&mut self, entries: u64) -> u64;
    fn sample(&mut self, p: &Params) -> Sample;
    fn check(&self);
}

struct Bench<D: Design> {
    hv: Hypervisor<D>,
    front: DomId,
    bigs: Vec<DomId>,
    other: DomId,
    dom0: DomId,
    mappings: u32,
    backends: u32,
}

fn p99(mut v: Vec<u32>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
    Duration::from_nanos(v[i] as u64)
}

impl<D: Design> Bench<D> {
    fn new(p: &Params) -> Self {
        let hv = Hypervisor::<D>::new(HypervisorConfig::default());
        let per_frame = hv.config().entries_per_frame;
        let distinct = p.mappings - 2 * TRIPLE_REFS;
        let front_frames = distinct.div_ceil(per_frame);
        let max_level = p.levels.iter().copied().max().unwrap_or(0);
        let big_frames = (max_level.div_ceil(BIG_GRANTERS as u64 * per_frame as u64) as u32).max(1);
        let front = hv
            .create_domain(
                DomainConfig::new("front")
                    .memory_pages(distinct as u64)
                    .max_grant_frames(front_frames.max(1)),
            )
            .expect("front");
        let other = hv.create_domain(DomainConfig::new("other")).expect("other");
        let dom0 = hv
            .create_domain(DomainConfig::new("dom0").privileged(true))
            .expect("dom0");
        let bigs = (0..BIG_GRANTERS)
            .map(|i| {
                hv.create_domain(DomainConfig::new(format!("big{i}")).max_grant_frames(big_frames))
                    .expect("big granter")
            })
            .collect();
        let b = Self {
            hv,
            front,
            bigs,
            other,
            dom0,
            mappings: p.mappings,
            backends: 0,
        };
        b.setup_table(front, front_frames);
        b
    }

    fn setup_table(&self, dom: DomId, frames: u32) {
        common::setup_table(&self.hv, dom, frames);
    }

    /// A new backend holding `self.mappings` live host mappings of `front`'s refs.
    fn build_backend(&mut self) -> DomId {
        self.backends += 1;
        let back = self
            .hv
            .create_domain(DomainConfig::new(format!("backend{}", self.backends)))
            .expect("backend");
        let distinct = self.mappings - 2 * TRIPLE_REFS;
        let g = self.hv.guest(self.front).expect("front guest");
        for r in 0..distinct {
            g.grant_access(GrantRef(r), back, Gfn(r as u64), false)
                .expect("grant_access");
        }
        // Refs 0..distinct once, then the last TRIPLE_REFS of them twice more.
        let refs = (0..distinct).chain((0..2).flat_map(|_| distinct - TRIPLE_REFS..distinct));
        let ops: Vec<MapGrantRef> = refs
            .enumerate()
            .map(|(i, r)| {
                MapGrantRef::new(
                    self.front,
                    GrantRef(r),
                    GntMap::HOST_MAP,
                    HOST_BASE + ((i as u64) << 12),
                )
            })
            .collect();
        assert_eq!(ops.len(), self.mappings as usize);
        let mut cx = self.hv.vcpu(back, 0).expect("backend vcpu");
        for mut chunk in ops.chunks(BUILD_BATCH).map(<[MapGrantRef]>::to_vec) {
            cx.map_grant_ref(&mut chunk).expect("map hypercall");
            assert!(
                chunk.iter().all(|m| m.status == GntSt::Okay),
                "backend map failed"
            );
        }
        back
    }

    /// `n` timed queries while another thread runs `other` until they are done.
    fn query_loop_beside(&self, n: usize, other: impl Fn(&AtomicBool) + Sync) -> Vec<u32> {
        let done = AtomicBool::new(false);
        std::thread::scope(|sc| {
            let t = sc.spawn(|| other(&done));
            let lat = self.query_loop(n, None);
            done.store(true, Ordering::Release);
            t.join().expect("control thread");
            lat
        })
    }

    /// `n` timed `query_size` calls by dom0 on `front`; with `stop = (running, done)`: sets
    /// `running` after the first call and goes on until `done` is set.
    fn query_loop(&self, n: usize, stop: Option<(&AtomicBool, &AtomicBool)>) -> Vec<u32> {
        let mut cx = self.hv.vcpu(self.dom0, 0).expect("dom0 vcpu");
        let mut lat = Vec::with_capacity(n.max(1 << 16));
        loop {
            let mut q = [QuerySize {
                dom: self.front,
                ..Default::default()
            }];
            let t = Instant::now();
            cx.query_size(std::hint::black_box(&mut q))
                .expect("query_size");
            let dt = t.elapsed();
            assert_eq!(q[0].status, GntSt::Okay, "query_size");
            lat.push(dt.as_nanos().min(u32::MAX as u128) as u32);
            match stop {
                Some((running, done)) => {
                    running.store(true, Ordering::Release);
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                }
                None => {
                    if lat.len() >= n {
                        break;
                    }
                }
            }
        }
        lat
    }
}

impl<D: Design> Case for Bench<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }

    fn grow_to(&mut self, entries: u64) -> u64 {
        let per_frame = self.hv.config().entries_per_frame;
        let frames = entries.div_ceil(BIG_GRANTERS as u64 * per_frame as u64) as u32;
        for &big in &self.bigs {
            let d = self.hv.domain(big).expect("big granter");
            let from = d.nr_grant_frames() * per_frame;
            drop(d);
            self.setup_table(big, frames);
            let g = self.hv.guest(big).expect("big guest");
            for r in from..frames * per_frame {
                g.grant_access(GrantRef(r), self.other, Gfn((r % 256) as u64), true)
                    .expect("grant_access");
            }
        }
        (BIG_GRANTERS * frames * per_frame) as u64
    }

    fn sample(&mut self, p: &Params) -> Sample {
        // 1. idle queries.
        let p99_idle = p99(self.query_loop(p.queries, None));

        // 2. teardown alone.
        let back = self.build_backend();
        let t0 = Instant::now();
        let mut td = self.hv.kill_domain(back).expect("kill");
        let mut prev = td.stats();
        while td.step() == Step::More {
            if p.trace.is_some() {
                prev = trace_step(p, D::NAME, prev, td.stats());
            }
        }
        let alone = td.stats();
        if p.trace.is_some() {
            trace_step(p, D::NAME, prev, alone);
        }
        let teardown = t0.elapsed();
        assert_eq!(
            alone.mappings_released, self.mappings as u64,
            "every mapping released"
        );
        assert!(alone.destroyed, "backend destroyed for good");

        // 3. teardown stepped by one thread, queries on another.
        let back = self.build_backend();
        let done = AtomicBool::new(false);
        let running = AtomicBool::new(false);
        let this = &*self;
        let (lat, st) = std::thread::scope(|sc| {
            let q = sc.spawn(|| this.query_loop(0, Some((&running, &done))));
            // Start the teardown only once the query loop runs (a thread woken from a
            // barrier may take longer to run than a small teardown).
            while !running.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            let mut td = this.hv.kill_domain(back).expect("kill");
            while td.step() == Step::More {}
            done.store(true, Ordering::Release);
            (q.join().expect("query thread"), td.stats())
        });
        assert_eq!(st.mappings_released, self.mappings as u64);
        let queries_during = lat.len();
        let p99_during = p99(lat);

        // 4. controls: as many queries while the other thread only spins on registers, then
        //    while it streams writes over a buffer larger than the L2 (memory traffic like a
        //    teardown's, no hypervisor work): separates "the other core is busy" from "the
        //    other core is busy with memory" from "the queries wait for the teardown".
        let n = queries_during.max(1);
        let p99_control = p99(this.query_loop_beside(n, |done| {
            let mut x = 1u64;
            while !done.load(Ordering::Acquire) {
                for _ in 0..64 {
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                    );
                }
            }
        }));
        let p99_control_mem = p99(this.query_loop_beside(n, |done| {
            // 16 MiB, one write per cache line.
            let mut buf = vec![0u64; 2 << 20];
            let mut i = 0usize;
            while !done.load(Ordering::Acquire) {
                for _ in 0..64 {
                    buf[i] = buf[i].wrapping_add(1);
                    i = (i + 8) % buf.len();
                }
            }
            std::hint::black_box(&buf);
        }));
        Sample {
            teardown,
            longest_step: alone.longest_step,
            steps: alone.steps,
            visited: alone.visited,
            released: alone.mappings_released,
            p99_idle,
            p99_during,
            p99_control,
            p99_control_mem,
            queries_during,
        }
    }

    fn check(&self) {
        self.hv.check().assert_ok();
    }
}

/// `TEARDOWN_TRACE=<us>`: prints every step longer than that, with what it visited.
fn trace_step(p: &Params, design: &str, prev: TeardownStats, now: TeardownStats) -> TeardownStats {
    let dt = now.busy - prev.busy;
    if p.trace.is_some_and(|min| dt >= min) {
        eprintln!(
            "trace {design}: step {} took {:.1} us: visited {}..{}, released {}, frames {}",
            now.steps,
            us(dt),
            prev.visited,
            now.visited,
            now.mappings_released - prev.mappings_released,
            now.frames_released - prev.frames_released
        );
    }
    now
}

fn median_by<T: Copy, K: PartialOrd>(v: &[T], key: impl Fn(&T) -> K) -> T {
    let mut w: Vec<T> = v.to_vec();
    w.sort_by(|a, b| key(a).partial_cmp(&key(b)).expect("comparable"));
    w[w.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let p = Params::from_env(full);
    let names = common::designs(&[Fast::NAME, Xen::NAME]);
    let mut cases: Vec<Box<dyn Case>> = names
        .iter()
        .filter_map(|n| {
            let b: Option<Box<dyn Case>> =
                with_design!(n.as_str(), D => Box::new(Bench::<D>::new(&p)) as Box<dyn Case>);
            if b.is_none() {
                eprintln!("warning: unknown design {n:?}, skipped");
            }
            b
        })
        .collect();
    println!(
        "teardown: M = {} mappings ({} refs mapped 3x), {} repetitions (figures are medians), \
         {} idle queries; levels {:?}",
        p.mappings, TRIPLE_REFS, p.reps, p.queries, p.levels
    );
    println!(
        "{:<9} {:>10} {:>12} {:>8} {:>13} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "design",
        "other ents",
        "teardown us",
        "vs 1st",
        "longest st us",
        "steps",
        "visited",
        "p99 idle",
        "p99 ctrl",
        "p99 mem",
        "p99 td ns",
        "td/idle",
        "queries"
    );
    let mut first: Vec<Option<Duration>> = vec![None; cases.len()];
    let mut last: Vec<Duration> = vec![Duration::ZERO; cases.len()];
    let mut worst_p99_ratio: Vec<f64> = vec![0.0; cases.len()];
    for &level in &p.levels {
        let mut entries = 0;
        for c in cases.iter_mut() {
            entries = c.grow_to(level);
        }
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
        for _ in 0..p.reps {
            // Designs alternate within each repetition.
            for (i, c) in cases.iter_mut().enumerate() {
                samples[i].push(c.sample(&p));
            }
        }
        for (i, c) in cases.iter().enumerate() {
            let s = &samples[i];
            let td = median_by(s, |x| x.teardown).teardown;
            let longest = median_by(s, |x| x.longest_step).longest_step;
            let idle = median_by(s, |x| x.p99_idle).p99_idle;
            let ctrl = median_by(s, |x| x.p99_control).p99_control;
            let ctrl_mem = median_by(s, |x| x.p99_control_mem).p99_control_mem;
            let during = median_by(s, |x| x.p99_during).p99_during;
            let q = median_by(s, |x| x.queries_during).queries_during;
            let base = *first[i].get_or_insert(td);
            last[i] = td;
            let ratio = during.as_secs_f64() / idle.as_secs_f64().max(1e-9);
            worst_p99_ratio[i] = worst_p99_ratio[i].max(ratio);
            println!(
                "{:<9} {:>10} {:>12.0} {:>8.2} {:>13.1} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9.2} {:>8}",
                c.name(),
                entries,
                us(td),
                td.as_secs_f64() / base.as_secs_f64(),
                us(longest),
                s[0].steps,
                s[0].visited,
                idle.as_nanos(),
                ctrl.as_nanos(),
                ctrl_mem.as_nanos(),
                during.as_nanos(),
                ratio,
                q
            );
            debug_assert!(s.iter().all(|x| x.released == s[0].released));
        }
    }
    for c in &cases {
        c.check();
    }
    println!();
    for (i, c) in cases.iter().enumerate() {
        let growth = last[i].as_secs_f64() / first[i].map_or(1.0, |d| d.as_secs_f64());
        println!(
            "{}: teardown time, largest level / smallest = {:.2} (target for fast <= 1.5); \
             worst p99 query_size during teardown / idle = {:.2} (target <= 2)",
            c.name(),
            growth,
            worst_p99_ratio[i]
        );
    }
    if !full {
        println!("teardown: smoke run ok (cargo bench --bench teardown for the full table)");
    }
}
