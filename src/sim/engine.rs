//! Runs a [`Plan`] on one design and measures it.
//!
//! One OS thread per `[[thread]]`, one for all `[[event]]`s (in time order), one per
//! `[[churn]]` entry; the calling thread keeps time. Every figure in the result is counted or
//! timed here (or read from the library's own counters: `Domain::stats`, `TeardownStats`,
//! `hv.check`); nothing is estimated.
//!
//! Latency: each hypercall is timed with two `Instant::now()` calls around it and recorded in a
//! per-thread [`Histogram`] (one add), so the measurement costs two clock reads per hypercall
//! (see [`timer_overhead_ns`]), not per element.

use super::hist::Histogram;
use super::scenario::{
    CopyDir, EventKind, EventPlan, OpKind, Plan, ReadonlySpec, Scenario, Source, ThreadPlan,
};
use crate::abi::{
    gtf, CopyPtr, DomId, Errno, Gfn, GntMap, GntSt, GnttabCopy, GrantHandle, GrantRef, MapGrantRef,
    QuerySize, SetupTable, UnmapGrantRef, PAGE_SIZE,
};
use crate::check::{CheckOptions, CheckReport};
use crate::design::Design;
use crate::domain::{DomainState, DomainStats};
use crate::hypervisor::{Hypervisor, HypervisorConfig};
use crate::machine::{HostAddr, P2mEntry};
use crate::teardown::Step;
use crossbeam_utils::CachePadded;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Run length (the scenario's `seconds` unless overridden).
    pub seconds: f64,
    /// Seed.
    pub seed: u64,
    /// Cap on every thread's operations (overrides the threads' `ops` when smaller).
    pub ops_cap: Option<u64>,
}

/// Hypercall kinds timed separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hc {
    /// `GNTTABOP_map_grant_ref`.
    Map,
    /// `GNTTABOP_unmap_grant_ref`.
    Unmap,
    /// `GNTTABOP_copy`.
    Copy,
    /// `GNTTABOP_query_size`.
    Query,
    /// `GNTTABOP_setup_table` (grow events).
    Setup,
    /// Forged maps (expected to fail).
    ForgedMap,
    /// Forged unmaps (expected to fail).
    ForgedUnmap,
}

impl Hc {
    /// Every kind, in report order.
    pub const ALL: [Hc; 7] = [
        Hc::Map,
        Hc::Unmap,
        Hc::Copy,
        Hc::Query,
        Hc::Setup,
        Hc::ForgedMap,
        Hc::ForgedUnmap,
    ];
    /// Name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Hc::Map => "map",
            Hc::Unmap => "unmap",
            Hc::Copy => "copy",
            Hc::Query => "query",
            Hc::Setup => "setup",
            Hc::ForgedMap => "forged_map",
            Hc::ForgedUnmap => "forged_unmap",
        }
    }
}

/// Counters and latencies of one hypercall kind.
#[derive(Clone, Debug, Default)]
pub struct HcStats {
    /// Hypercalls issued (that entered the hypervisor: not the ones refused with -ESRCH).
    pub calls: u64,
    /// Elements in them.
    pub elements: u64,
    /// Element statuses by `-code` (0 = okay .. 13 = no_space).
    pub statuses: [u64; 14],
    /// Per-hypercall latency.
    pub hist: Histogram,
    /// Per-hypercall latency of the calls started while a teardown was running.
    pub hist_in_teardown: Histogram,
}

impl HcStats {
    fn merge(&mut self, o: &HcStats) {
        self.calls += o.calls;
        self.elements += o.elements;
        for (a, b) in self.statuses.iter_mut().zip(o.statuses.iter()) {
            *a += b;
        }
        self.hist.merge(&o.hist);
        self.hist_in_teardown.merge(&o.hist_in_teardown);
    }
    fn status(&mut self, s: GntSt) {
        self.statuses[(-s.code()) as usize] += 1;
    }
}

/// Guest-side counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestCounts {
    /// `grant` operations (grant_access of a free ref).
    pub grants: u64,
    /// end_access that succeeded (standalone or in regrant).
    pub ends_ok: u64,
    /// end_access refused because the grant was in use.
    pub ends_busy: u64,
    /// Entries rewritten by `flip` operations and events.
    pub flips: u64,
}

impl GuestCounts {
    fn merge(&mut self, o: &GuestCounts) {
        self.grants += o.grants;
        self.ends_ok += o.ends_ok;
        self.ends_busy += o.ends_busy;
        self.flips += o.flips;
    }
}

/// Persistent-grant cache counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct PersistentCounts {
    /// Segments served by a mapping already held.
    pub hits: u64,
    /// Segments that needed a map.
    pub misses: u64,
    /// Mappings evicted (unmapped) to keep the cache within `max_held`.
    pub evictions: u64,
}

/// A mapping a thread holds.
#[derive(Clone, Copy, Debug)]
struct Held {
    granter: DomId,
    gref: u32,
    handle: GrantHandle,
    /// Host page index (absolute), if host-mapped.
    page: Option<u64>,
    dev: u64,
}

/// What one thread did.
#[derive(Clone, Debug)]
pub struct ThreadRun {
    /// Index in the scenario file.
    pub index: usize,
    /// Domain (or group member list) name.
    pub domain: String,
    /// vCPU (if it issued hypercalls).
    pub vcpu: Option<u16>,
    /// Operations executed (a request counts once; skipped picks do not count).
    pub ops: u64,
    /// Per hypercall kind.
    pub hc: BTreeMap<Hc, HcStats>,
    /// Guest side.
    pub guest: GuestCounts,
    /// Persistent cache.
    pub persistent: PersistentCounts,
    /// Bytes copied by successful copy elements.
    pub copy_bytes: u64,
    /// Bytes read through new mappings (`touch`).
    pub touched_bytes: u64,
    /// Unexpected results (first few described).
    pub anomalies: Vec<String>,
    /// Number of unexpected results.
    pub anomaly_count: u64,
    /// Seconds after the start when its domain was found dying (hypercalls refused).
    pub stopped_by_kill: Option<f64>,
    /// Seconds after the start when it stopped.
    pub end_s: f64,
    /// Mappings held at the end (released by the drain).
    pub held_at_end: usize,
}

/// One teardown, step by step.
#[derive(Clone, Debug, Default)]
pub struct TeardownRun {
    /// The dying domain.
    pub domain: String,
    /// Seconds after the start when kill_domain was called.
    pub started_s: f64,
    /// Time kill_domain took (pausing: waiting for the domain's vCPUs to leave hypercalls).
    pub pause_ns: u64,
    /// `(start offset from the end of the pause, duration)` of each step, in ns (at most
    /// 10 000 kept).
    pub steps: Vec<(u64, u64)>,
    /// The library's own statistics.
    pub steps_total: u64,
    /// Longest step as the library measured it.
    pub longest_step_ns: u64,
    /// Longest step as measured around `step()` here.
    pub longest_step_outer_ns: u64,
    /// Sum of step times (library).
    pub busy_ns: u64,
    /// kill to done, wall clock (includes gaps between steps).
    pub wall_ns: u64,
    /// Mappings released.
    pub mappings_released: u64,
    /// Frames released.
    pub frames_released: u64,
    /// Records and frames visited.
    pub visited: u64,
    /// Destroyed for good at the end.
    pub destroyed: bool,
}

/// What an event did.
#[derive(Clone, Debug)]
pub struct EventRun {
    /// Index in the file.
    pub index: usize,
    /// Kind.
    pub kind: EventKind,
    /// Domain acted on.
    pub domain: String,
    /// Planned time.
    pub planned_s: f64,
    /// When it fired (None: the run ended first).
    pub fired_s: Option<f64>,
    /// One line saying what happened.
    pub outcome: String,
    /// Teardown (destroy events).
    pub teardown: Option<TeardownRun>,
    /// Hypercall stats of grow / forge events.
    pub hc: BTreeMap<Hc, HcStats>,
    /// Unexpected results.
    pub anomalies: Vec<String>,
}

/// What the churn actors did.
#[derive(Clone, Debug, Default)]
pub struct ChurnRun {
    /// Instances created.
    pub created: u64,
    /// Instances destroyed (kill + complete teardown).
    pub destroyed: u64,
    /// Creation time (create_domain + setup_table + grants).
    pub create: Histogram,
    /// Whole-teardown time (kill to done).
    pub teardown_wall: Histogram,
    /// Longest single step of each teardown.
    pub teardown_longest_step: Histogram,
    /// The teardown with the longest step.
    pub worst: Option<TeardownRun>,
    /// Failures (creation refused, ...).
    pub errors: Vec<String>,
}

impl ChurnRun {
    fn merge(&mut self, o: ChurnRun) {
        self.created += o.created;
        self.destroyed += o.destroyed;
        self.create.merge(&o.create);
        self.teardown_wall.merge(&o.teardown_wall);
        self.teardown_longest_step.merge(&o.teardown_longest_step);
        let worse = match (&self.worst, &o.worst) {
            (None, _) => true,
            (Some(a), Some(b)) => b.longest_step_ns > a.longest_step_ns,
            _ => false,
        };
        if worse {
            self.worst = o.worst;
        }
        self.errors.extend(o.errors);
    }
}

/// The invariant checker's verdict plus the run's own consistency checks.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The checker's report at quiescence, mappings still held.
    pub live: CheckReport,
    /// Mappings released by the drain (every one must unmap with `okay`).
    pub drained: u64,
    /// The checker's report after the drain.
    pub after_drain: CheckReport,
    /// Unexpected results during the run and the drain.
    pub anomalies: Vec<String>,
    /// How many.
    pub anomaly_count: u64,
    /// Domains exempt from invariant 4 (they rewrote their entries).
    pub adversarial: Vec<String>,
}

impl Verdict {
    /// All clean.
    pub fn clean(&self) -> bool {
        self.live.is_ok() && self.after_drain.is_ok() && self.anomaly_count == 0
    }
}

/// Everything measured on one design.
#[derive(Clone, Debug)]
pub struct DesignRun {
    /// Design name.
    pub design: &'static str,
    /// From the start signal to the last workload thread's stop.
    pub elapsed: Duration,
    /// Threads.
    pub threads: Vec<ThreadRun>,
    /// Events.
    pub events: Vec<EventRun>,
    /// Churn.
    pub churn: Option<ChurnRun>,
    /// Library counters summed over the scenario's domains (read at kill or at the end).
    pub stats: DomainStats,
    /// `(seconds, hypercall elements completed so far)` sampled by the timekeeper.
    pub timeline: Vec<(f64, u64)>,
    /// OS threads the run used besides the timekeeper.
    pub os_threads: usize,
    /// Verdict.
    pub verdict: Verdict,
}

impl DesignRun {
    /// Per-kind totals over threads and events.
    pub fn hc_totals(&self) -> BTreeMap<Hc, HcStats> {
        let mut m: BTreeMap<Hc, HcStats> = BTreeMap::new();
        for t in &self.threads {
            for (k, s) in &t.hc {
                m.entry(*k).or_default().merge(s);
            }
        }
        for e in &self.events {
            for (k, s) in &e.hc {
                m.entry(*k).or_default().merge(s);
            }
        }
        m
    }
    /// Guest-side totals.
    pub fn guest_totals(&self) -> GuestCounts {
        let mut g = GuestCounts::default();
        for t in &self.threads {
            g.merge(&t.guest);
        }
        g
    }
    /// Persistent totals.
    pub fn persistent_totals(&self) -> PersistentCounts {
        let mut p = PersistentCounts::default();
        for t in &self.threads {
            p.hits += t.persistent.hits;
            p.misses += t.persistent.misses;
            p.evictions += t.persistent.evictions;
        }
        p
    }
    /// Every teardown (events and the churn's worst).
    pub fn teardowns(&self) -> Vec<&TeardownRun> {
        let mut v: Vec<&TeardownRun> = self
            .events
            .iter()
            .filter_map(|e| e.teardown.as_ref())
            .collect();
        if let Some(w) = self.churn.as_ref().and_then(|c| c.worst.as_ref()) {
            v.push(w);
        }
        v
    }
}

/// Median cost of one `Instant::now()` pair, in ns (the timing overhead per hypercall).
pub fn timer_overhead_ns() -> u64 {
    let mut v: Vec<u64> = (0..2001)
        .map(|_| {
            let t = Instant::now();
            let u = Instant::now();
            (u - t).as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

#[inline]
fn next(s: &mut u64) -> u64 {
    // splitmix64: the workload's own choices (not the hypervisor's).
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
#[inline]
fn below(s: &mut u64, n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        next(s) % n
    }
}
#[inline]
fn unit(s: &mut u64) -> f64 {
    (next(s) >> 11) as f64 / (1u64 << 53) as f64
}

const MAX_ANOMALY_TEXTS: usize = 8;

fn note(list: &mut Vec<String>, count: &mut u64, msg: impl FnOnce() -> String) {
    *count += 1;
    if list.len() < MAX_ANOMALY_TEXTS {
        list.push(msg());
    }
}

/// State shared by every actor of a run.
struct Shared {
    stop: AtomicBool,
    /// Teardowns in progress (events and churn).
    teardowns: AtomicU32,
    /// Bumped whenever a member list changes.
    version: AtomicU64,
    /// Live members of each source: spawned domains by plan index, churn entries after them.
    members: Vec<RwLock<Vec<(DomId, usize)>>>,
    n_domains: usize,
    /// Hypercall elements completed, per thread (single writer each).
    progress: Vec<CachePadded<AtomicU64>>,
    finished: AtomicUsize,
    /// Set by the timekeeper between the two barrier rounds.
    start: OnceLock<Instant>,
    /// Library counters of killed domains, read right after the kill.
    killed_stats: Mutex<BTreeMap<usize, DomainStats>>,
}

impl Shared {
    fn slot(&self, s: Source) -> usize {
        match s {
            Source::Domain(i) => i,
            Source::Churn(c) => self.n_domains + c,
        }
    }
    fn now_s(&self) -> f64 {
        self.start.get().map_or(0.0, |s| s.elapsed().as_secs_f64())
    }
    fn remove_member(&self, s: Source, id: DomId) {
        self.members[self.slot(s)]
            .write()
            .expect("member list")
            .retain(|(d, _)| *d != id);
        self.version.fetch_add(1, Ordering::Release);
    }
    fn add_member(&self, s: Source, id: DomId, plan_idx: usize) {
        self.members[self.slot(s)]
            .write()
            .expect("member list")
            .push((id, plan_idx));
        self.version.fetch_add(1, Ordering::Release);
    }
}

/// Runs `sc` on design `D`. `tick` is called by the timekeeper with the fraction done.
pub fn run<D: Design>(
    sc: &Scenario,
    opts: &RunOptions,
    tick: &(dyn Fn(f64) + Sync),
) -> Result<DesignRun, String> {
    let plan = &sc.plan;
    let hv = Hypervisor::<D>::new(HypervisorConfig {
        seed: opts.seed,
        ..HypervisorConfig::default()
    });
    // Create the spawned domains, grow their tables, make their grants.
    let mut ids: Vec<Option<DomId>> = vec![None; plan.domains.len()];
    for (i, d) in plan.domains.iter().enumerate().filter(|(_, d)| d.spawn) {
        let id = hv
            .create_domain(d.config.clone())
            .map_err(|e| format!("creating domain {:?}: {e:?}", d.name))?;
        ids[i] = Some(id);
    }
    for (i, d) in plan.domains.iter().enumerate().filter(|(_, d)| d.spawn) {
        populate(&hv, ids[i].expect("spawned"), d, &ids)?;
    }

    let n_threads = plan.threads.len();
    let shared = Shared {
        stop: AtomicBool::new(false),
        teardowns: AtomicU32::new(0),
        version: AtomicU64::new(0),
        members: (0..plan.domains.len() + plan.churn.len())
            .map(|i| {
                RwLock::new(
                    ids.get(i)
                        .copied()
                        .flatten()
                        .map(|id| vec![(id, i)])
                        .unwrap_or_default(),
                )
            })
            .collect(),
        n_domains: plan.domains.len(),
        progress: (0..n_threads)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
        finished: AtomicUsize::new(0),
        start: OnceLock::new(),
        killed_stats: Mutex::new(BTreeMap::new()),
    };
    let os_threads = n_threads + usize::from(!plan.events.is_empty()) + plan.churn.len();
    // Two rounds: everyone ready (vCPUs entered), then go (after the start time is set).
    let barrier = Barrier::new(os_threads + 1);
    let run_secs = opts.seconds;

    type Joined = (
        Vec<(ThreadRun, Vec<Held>)>,
        Vec<EventRun>,
        Option<ChurnRun>,
        Vec<(f64, u64)>,
        f64,
    );
    let (workers_out, events, churn, timeline, end_s): Joined = std::thread::scope(|s| {
        let (hv, ids, barrier, sh) = (&hv, &ids, &barrier, &shared);
        let workers: Vec<_> = plan
            .threads
            .iter()
            .enumerate()
            .map(|(k, tp)| {
                let cap = match (tp.ops, opts.ops_cap) {
                    (0, c) => c.unwrap_or(0),
                    (n, Some(c)) => n.min(c),
                    (n, None) => n,
                };
                s.spawn(move || {
                    let mut w = Worker::<D>::new(hv, plan, tp, k, ids, sh, opts.seed, cap);
                    barrier.wait();
                    barrier.wait();
                    w.run();
                    sh.finished.fetch_add(1, Ordering::AcqRel);
                    w.finish()
                })
            })
            .collect();
        let ev = (!plan.events.is_empty()).then(|| {
            s.spawn(move || {
                barrier.wait();
                barrier.wait();
                run_events(hv, plan, ids, sh, run_secs, opts.seed)
            })
        });
        let churners: Vec<_> = (0..plan.churn.len())
            .map(|c| {
                s.spawn(move || {
                    barrier.wait();
                    barrier.wait();
                    run_churn(hv, plan, c, ids, sh)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        sh.start.set(start).expect("start is set once");
        barrier.wait();
        let mut timeline = vec![(0.0, 0u64)];
        let limit = Duration::from_secs_f64(run_secs);
        let sample = Duration::from_millis(20);
        loop {
            let el = start.elapsed();
            if el >= limit || sh.finished.load(Ordering::Acquire) == n_threads {
                break;
            }
            std::thread::sleep(sample.min(limit - el));
            let done: u64 = sh.progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
            let t = start.elapsed().as_secs_f64();
            timeline.push((t, done));
            tick((t / run_secs).min(1.0));
        }
        // The timeline ends here: what completes after the stop signal is in-flight calls.
        sh.stop.store(true, Ordering::Release);
        let outs: Vec<(ThreadRun, Vec<Held>)> = workers
            .into_iter()
            .map(|h| h.join().expect("worker thread panicked"))
            .collect();
        let end_s = outs.iter().map(|t| t.0.end_s).fold(0.0, f64::max);
        let events = ev
            .map(|h| h.join().expect("event thread panicked"))
            .unwrap_or_default();
        let mut churn: Option<ChurnRun> = None;
        for h in churners {
            let c = h.join().expect("churn thread panicked");
            match &mut churn {
                None => churn = Some(c),
                Some(a) => a.merge(c),
            }
        }
        tick(1.0);
        (outs, events, churn, timeline, end_s)
    });
    let killed = std::mem::take(&mut *shared.killed_stats.lock().expect("stats"));

    // Library counters of the scenario's own domains: at the kill for killed ones, now for
    // the others (all threads have stopped).
    let mut stats = DomainStats::default();
    for (i, id) in ids.iter().enumerate() {
        let st = match killed.get(&i) {
            Some(s) => Some(*s),
            None => id.and_then(|id| hv.domain(id)).map(|d| d.stats()),
        };
        if let Some(s) = st {
            stats.maps += s.maps;
            stats.fast_maps += s.fast_maps;
            stats.slow_maps += s.slow_maps;
            stats.unmaps += s.unmaps;
            stats.tlb_flushes += s.tlb_flushes;
            stats.iotlb_flushes += s.iotlb_flushes;
        }
    }

    // Verdict: check at quiescence, drain every held mapping, check again.
    let adversarial: Vec<usize> = plan
        .domains
        .iter()
        .enumerate()
        .filter(|(_, d)| d.adversarial && d.spawn)
        .map(|(i, _)| i)
        .collect();
    let opts_chk = CheckOptions {
        adversarial: adversarial.iter().filter_map(|&i| ids[i]).collect(),
        ..CheckOptions::default()
    };
    let live = hv.check_with(&opts_chk);
    let mut anomalies: Vec<String> = Vec::new();
    let mut anomaly_count = 0;
    let mut threads = Vec::with_capacity(workers_out.len());
    let mut held_lists = Vec::with_capacity(workers_out.len());
    for (t, h) in workers_out {
        for a in &t.anomalies {
            if anomalies.len() < MAX_ANOMALY_TEXTS {
                anomalies.push(format!("thread[{}]: {a}", t.index));
            }
        }
        anomaly_count += t.anomaly_count;
        held_lists.push((t.index, h));
        threads.push(t);
    }
    for e in &events {
        for a in &e.anomalies {
            note(&mut anomalies, &mut anomaly_count, || {
                format!("event[{}]: {a}", e.index)
            });
        }
    }
    if let Some(c) = &churn {
        for a in &c.errors {
            note(&mut anomalies, &mut anomaly_count, || format!("churn: {a}"));
        }
    }
    let drained = drain(
        &hv,
        plan,
        &ids,
        held_lists,
        &mut anomalies,
        &mut anomaly_count,
    );
    let after_drain = hv.check_with(&opts_chk);
    Ok(DesignRun {
        design: D::NAME,
        elapsed: Duration::from_secs_f64(end_s),
        threads,
        events,
        churn,
        stats,
        timeline,
        os_threads,
        verdict: Verdict {
            live,
            drained,
            after_drain,
            anomalies,
            anomaly_count,
            adversarial: adversarial
                .iter()
                .map(|&i| plan.domains[i].name.clone())
                .collect(),
        },
    })
}

/// Sets up a new domain's table and makes its grants.
fn populate<D: Design>(
    hv: &Hypervisor<D>,
    id: DomId,
    d: &super::scenario::DomainPlan,
    ids: &[Option<DomId>],
) -> Result<(), String> {
    if d.grant_frames > 1 {
        let mut cx = hv
            .vcpu(id, 0)
            .map_err(|e| format!("{}: vCPU 0: {e}", d.name))?;
        let mut op = [SetupTable {
            dom: DomId::SELF,
            nr_frames: d.grant_frames,
            ..Default::default()
        }];
        cx.setup_table(&mut op)
            .map_err(|e| format!("{}: setup_table: {e}", d.name))?;
        if op[0].status != GntSt::Okay {
            return Err(format!(
                "{}: setup_table to {} frames: {}",
                d.name, d.grant_frames, op[0].status
            ));
        }
    }
    let g = hv.guest(id).ok_or_else(|| format!("{}: gone", d.name))?;
    let mem = d.config.memory_pages;
    for b in &d.grants {
        let to = ids[b.to].ok_or_else(|| format!("{}: grantee not created", d.name))?;
        for r in b.first..b.end {
            g.grant_access(GrantRef(r), to, Gfn(u64::from(r) % mem), b.readonly(r))
                .map_err(|e| format!("{}: grant ref {r}: {e}", d.name))?;
        }
    }
    Ok(())
}

/// Unmaps every mapping the threads of live domains still hold (each must succeed); returns
/// how many.
fn drain<D: Design>(
    hv: &Hypervisor<D>,
    plan: &Plan,
    ids: &[Option<DomId>],
    lists: Vec<(usize, Vec<Held>)>,
    anomalies: &mut Vec<String>,
    count: &mut u64,
) -> u64 {
    let mut n = 0;
    for (thread, list) in lists {
        let tp = &plan.threads[thread];
        let Some(me) = ids[tp.domains[0]] else {
            continue;
        };
        let alive = hv
            .domain(me)
            .is_some_and(|d| d.state() == DomainState::Alive);
        if !alive || list.is_empty() {
            continue;
        }
        let Ok(mut cx) = hv.vcpu(me, tp.vcpu) else {
            note(anomalies, count, || {
                format!("drain: cannot enter vCPU {} of thread[{thread}]", tp.vcpu)
            });
            continue;
        };
        for chunk in list.chunks(256) {
            let mut un: Vec<UnmapGrantRef> = chunk
                .iter()
                .map(|h| UnmapGrantRef::new(h.handle, h.page.map_or(0, |p| p << 12), h.dev))
                .collect();
            if let Err(e) = cx.unmap_grant_ref(&mut un) {
                note(anomalies, count, || {
                    format!("drain: unmap hypercall failed: {e}")
                });
                break;
            }
            for (u, h) in un.iter().zip(chunk) {
                if u.status == GntSt::Okay {
                    n += 1;
                } else {
                    note(anomalies, count, || {
                        format!(
                            "drain: unmap of a held mapping (handle {:?}, {:?} ref {}) returned {}",
                            h.handle, h.granter, h.gref, u.status
                        )
                    });
                }
            }
        }
    }
    n
}

/// Guest-side bookkeeping of one domain instance a thread acts for.
struct GuestSide<'h, D: Design> {
    view: crate::hypervisor::Guest<'h, D>,
    plan_idx: usize,
    /// Every ref of the domain's grant blocks with (block index, granted?).
    refs: Vec<(u32, usize, bool)>,
    grantees: Vec<DomId>,
    mem: u64,
}

struct Worker<'a, D: Design> {
    hv: &'a Hypervisor<D>,
    plan: &'a Plan,
    tp: &'a ThreadPlan,
    k: usize,
    sh: &'a Shared,
    cap: u64,
    rng: u64,
    me: DomId,
    me_idx: usize,
    cx: Option<crate::hypervisor::VcpuCtx<'a, D>>,
    view: Option<crate::hypervisor::Guest<'a, D>>,
    guests: Vec<GuestSide<'a, D>>,
    ids: &'a [Option<DomId>],
    /// Candidate granters `(id, plan index)` and the member version they were built at.
    cands: Vec<(DomId, usize)>,
    cand_version: u64,
    held: VecDeque<Held>,
    cache: HashMap<(DomId, u32), Held>,
    cache_order: VecDeque<(DomId, u32)>,
    free_pages: Vec<u64>,
    out: ThreadRun,
    done_elems: u64,
    hot_n: u32,
    warm_n: u32,
    buf: Vec<u8>,
}

impl<'a, D: Design> Worker<'a, D> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        hv: &'a Hypervisor<D>,
        plan: &'a Plan,
        tp: &'a ThreadPlan,
        k: usize,
        ids: &'a [Option<DomId>],
        sh: &'a Shared,
        seed: u64,
        cap: u64,
    ) -> Self {
        let me_idx = tp.domains[0];
        let me = ids[me_idx].expect("thread domains are spawned");
        let cx = tp.needs_vcpu().then(|| {
            hv.vcpu(me, tp.vcpu)
                .expect("each vCPU is driven by one thread (validated)")
        });
        let guests = if tp.mix.iter().any(|(_, k)| !k.hypercall()) {
            tp.domains
                .iter()
                .map(|&i| {
                    let d = &plan.domains[i];
                    let mut refs = Vec::new();
                    for (bi, b) in d.grants.iter().enumerate() {
                        refs.extend((b.first..b.end).map(|r| (r, bi, true)));
                    }
                    GuestSide {
                        view: hv.guest(ids[i].expect("spawned")).expect("guest view"),
                        plan_idx: i,
                        refs,
                        grantees: d
                            .grants
                            .iter()
                            .map(|b| ids[b.to].expect("spawned"))
                            .collect(),
                        mem: d.config.memory_pages,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let n = tp.refs.1 - tp.refs.0;
        let hot_n = ((f64::from(n) * tp.hot.0).round() as u32).min(n);
        let warm_n = ((f64::from(n) * tp.warm.0).round() as u32).min(n - hot_n);
        let free_pages = (tp.window_base..tp.window_base + tp.window_pages - 1)
            .rev()
            .collect();
        let name = if tp.domains.len() == 1 {
            plan.domains[me_idx].name.clone()
        } else {
            tp.domains
                .iter()
                .map(|&i| plan.domains[i].name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        Self {
            hv,
            plan,
            tp,
            k,
            sh,
            cap,
            rng: seed ^ (tp.index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F),
            me,
            me_idx,
            cx,
            view: hv.guest(me),
            guests,
            ids,
            cands: Vec::new(),
            cand_version: u64::MAX,
            held: VecDeque::new(),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            free_pages,
            out: ThreadRun {
                index: tp.index,
                domain: name,
                vcpu: tp.needs_vcpu().then_some(tp.vcpu),
                ops: 0,
                hc: BTreeMap::new(),
                guest: GuestCounts::default(),
                persistent: PersistentCounts::default(),
                copy_bytes: 0,
                touched_bytes: 0,
                anomalies: Vec::new(),
                anomaly_count: 0,
                stopped_by_kill: None,
                end_s: 0.0,
                held_at_end: 0,
            },
            done_elems: 0,
            hot_n,
            warm_n,
            buf: vec![0; PAGE_SIZE],
        }
    }

    fn anomaly(&mut self, f: impl FnOnce() -> String) {
        note(&mut self.out.anomalies, &mut self.out.anomaly_count, f);
    }

    fn run(&mut self) {
        let mut idle = 0u32;
        while !self.sh.stop.load(Ordering::Relaxed) {
            if self.cap > 0 && self.out.ops >= self.cap {
                break;
            }
            let u = unit(&mut self.rng);
            let kind = self
                .tp
                .mix
                .iter()
                .find(|(c, _)| u < *c)
                .map_or(self.tp.mix[self.tp.mix.len() - 1].1, |x| x.1);
            match self.op(kind) {
                Ok(true) => {
                    self.out.ops += 1;
                    idle = 0;
                }
                Ok(false) => {
                    // Nothing to do (nothing held, or no granter alive): pick again at once.
                    // Only a long run of these yields or sleeps; yielding on every one would
                    // make the thread spend its wall time in the empty state on a busy machine.
                    idle += 1;
                    if self.guests.is_empty() && self.cx.is_none() {
                        break; // a guest-side thread whose domains all died
                    }
                    if idle > 4096 {
                        std::thread::sleep(Duration::from_micros(200));
                    } else if idle > 256 {
                        std::thread::yield_now();
                    }
                    continue;
                }
                Err(Errno::Srch) => {
                    self.out.stopped_by_kill = Some(self.sh.now_s());
                    break;
                }
                Err(e) => {
                    self.anomaly(|| format!("hypercall failed with {e}"));
                    break;
                }
            }
            self.sh.progress[self.k].store(self.done_elems, Ordering::Relaxed);
            if self.tp.yield_each {
                std::thread::yield_now();
            }
        }
        self.out.end_s = self.sh.now_s();
    }

    /// The thread's results and the mappings it still holds (for the drain).
    fn finish(mut self) -> (ThreadRun, Vec<Held>) {
        self.cx = None; // leave the vCPU before the drain re-enters it
        let mut list: Vec<Held> = self.held.drain(..).collect();
        list.extend(self.cache.drain().map(|(_, h)| h));
        self.out.held_at_end = list.len();
        (self.out, list)
    }

    fn hc(&mut self, k: Hc) -> &mut HcStats {
        self.out.hc.entry(k).or_default()
    }

    /// Times one hypercall on this thread's vCPU.
    fn timed<T>(
        &mut self,
        k: Hc,
        n: usize,
        f: impl FnOnce(&mut crate::hypervisor::VcpuCtx<'a, D>) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let in_td = self.sh.teardowns.load(Ordering::Relaxed) > 0;
        let cx = self.cx.as_mut().expect("hypercall ops have a vCPU");
        let t = Instant::now();
        let r = f(cx);
        let dt = t.elapsed().as_nanos() as u64;
        if r.is_ok() {
            let s = self.out.hc.entry(k).or_default();
            s.calls += 1;
            s.elements += n as u64;
            s.hist.record(dt);
            if in_td {
                s.hist_in_teardown.record(dt);
            }
            self.done_elems += n as u64;
        }
        r
    }

    fn refresh(&mut self) {
        let v = self.sh.version.load(Ordering::Acquire);
        if v == self.cand_version {
            return;
        }
        self.cand_version = v;
        self.cands.clear();
        for s in &self.tp.granters {
            let m = self.sh.members[self.sh.slot(*s)].read().expect("members");
            self.cands.extend(m.iter().copied());
        }
    }

    fn pick_granter(&mut self) -> Option<(DomId, usize)> {
        self.refresh();
        if self.cands.is_empty() {
            return None;
        }
        let i = below(&mut self.rng, self.cands.len() as u64) as usize;
        Some(self.cands[i])
    }

    fn pick_ref(&mut self) -> u32 {
        let (a, b) = self.tp.refs;
        let n = b - a;
        let u = unit(&mut self.rng);
        let (hot, warm) = (self.tp.hot, self.tp.warm);
        let cold = n - self.hot_n - self.warm_n;
        if u < hot.1 && self.hot_n > 0 {
            a + below(&mut self.rng, u64::from(self.hot_n)) as u32
        } else if u < hot.1 + warm.1 && self.warm_n > 0 {
            a + self.hot_n + below(&mut self.rng, u64::from(self.warm_n)) as u32
        } else if cold > 0 {
            a + self.hot_n + self.warm_n + below(&mut self.rng, u64::from(cold)) as u32
        } else {
            a + below(&mut self.rng, u64::from(n)) as u32
        }
    }

    fn map_flags(&self, granter_plan: usize, r: u32) -> GntMap {
        let mut f = GntMap::empty();
        if self.tp.host {
            f |= GntMap::HOST_MAP;
        }
        if self.tp.device {
            f |= GntMap::DEVICE_MAP;
        }
        let ro = match self.tp.readonly {
            ReadonlySpec::Match => self.plan.domains[granter_plan].readonly(r),
            ReadonlySpec::Always => true,
            ReadonlySpec::Never => false,
        };
        if ro {
            f |= GntMap::READONLY;
        }
        f
    }

    /// One operation; Ok(false) if there was nothing to do.
    fn op(&mut self, kind: OpKind) -> Result<bool, Errno> {
        match kind {
            OpKind::Map => {
                if self.held.len() + self.tp.batch as usize > self.tp.max_held as usize {
                    return self.unmap_oldest();
                }
                let picks = self.picks(self.tp.batch as usize);
                if picks.is_empty() {
                    return Ok(false);
                }
                let got = self.map_batch(&picks)?;
                self.held.extend(got);
                Ok(true)
            }
            OpKind::Unmap => self.unmap_oldest(),
            OpKind::Request if self.tp.persistent => self.persistent_request(),
            OpKind::Request => {
                let picks = self.picks(self.tp.batch as usize);
                if picks.is_empty() {
                    return Ok(false);
                }
                let got = self.map_batch(&picks)?;
                self.unmap_list(&got, "request")?;
                Ok(true)
            }
            OpKind::Copy => self.copy_batch(),
            OpKind::Query => {
                let dom = self
                    .tp
                    .query
                    .and_then(|q| self.ids[q])
                    .unwrap_or(DomId::SELF);
                let mut q = [QuerySize {
                    dom,
                    ..Default::default()
                }];
                self.timed(Hc::Query, 1, |cx| cx.query_size(&mut q))?;
                let st = q[0].status;
                self.hc(Hc::Query).status(st);
                Ok(true)
            }
            OpKind::Grant | OpKind::EndAccess | OpKind::Regrant | OpKind::Flip => {
                Ok(self.guest_op(kind))
            }
            OpKind::Forge => self.forge(),
        }
    }

    /// `n` (granter, plan index, ref) picks; empty if there is no granter.
    fn picks(&mut self, n: usize) -> Vec<(DomId, usize, u32)> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let Some((g, gi)) = self.pick_granter() else {
                return Vec::new();
            };
            let r = self.pick_ref();
            v.push((g, gi, r));
        }
        v
    }

    /// Maps `picks` in one hypercall; returns the successful mappings.
    fn map_batch(&mut self, picks: &[(DomId, usize, u32)]) -> Result<Vec<Held>, Errno> {
        let mut ops = Vec::with_capacity(picks.len());
        let mut pages = Vec::with_capacity(picks.len());
        for &(g, gi, r) in picks {
            let flags = self.map_flags(gi, r);
            let page = if self.tp.host {
                self.free_pages.pop()
            } else {
                None
            };
            if self.tp.host && page.is_none() {
                break;
            }
            pages.push(page);
            ops.push(MapGrantRef::new(
                g,
                GrantRef(r),
                flags,
                page.map_or(0, |p| p << 12),
            ));
        }
        let n = ops.len();
        let r = self.timed(Hc::Map, n, |cx| cx.map_grant_ref(&mut ops));
        if let Err(e) = r {
            self.free_pages.extend(pages.into_iter().flatten());
            return Err(e);
        }
        let mut got = Vec::with_capacity(n);
        for (op, page) in ops.iter().zip(pages) {
            self.hc(Hc::Map).status(op.status);
            if op.status.is_ok() {
                let h = Held {
                    granter: op.dom,
                    gref: op.ref_.0,
                    handle: op.handle,
                    page,
                    dev: if self.tp.device { op.dev_bus_addr } else { 0 },
                };
                self.touch(&h);
                got.push(h);
            } else if let Some(p) = page {
                self.free_pages.push(p);
            }
        }
        Ok(got)
    }

    /// Reads `touch` bytes through a new mapping (by DMA for device mappings).
    fn touch(&mut self, h: &Held) {
        let n = usize::from(self.tp.touch);
        if n == 0 {
            return;
        }
        // Device mappings are read by DMA through the bus address, host ones by the CPU.
        let r = match (self.tp.device, h.page, &self.view) {
            (false, Some(p), Some(v)) => v
                .read_mapped(HostAddr::Linear(p << 12), 0, &mut self.buf[..n])
                .map_err(|e| format!("CPU read: {e:?}")),
            _ => self
                .hv
                .dma_read(self.me, h.dev, &mut self.buf[..n])
                .map_err(|e| format!("DMA read at {:#x}: {e:?}", h.dev)),
        };
        match r {
            Ok(()) => self.out.touched_bytes += n as u64,
            Err(e) => {
                let h = *h;
                self.anomaly(|| {
                    format!(
                        "reading through a new mapping of {:?} ref {} failed: {e}",
                        h.granter, h.gref
                    )
                });
            }
        }
    }

    /// Unmaps `list` in one hypercall; every element must succeed.
    fn unmap_list(&mut self, list: &[Held], what: &str) -> Result<(), Errno> {
        if list.is_empty() {
            return Ok(());
        }
        let mut un: Vec<UnmapGrantRef> = list
            .iter()
            .map(|h| UnmapGrantRef::new(h.handle, h.page.map_or(0, |p| p << 12), h.dev))
            .collect();
        // Err: the domain is dying, and its teardown releases the mappings.
        self.timed(Hc::Unmap, un.len(), |cx| cx.unmap_grant_ref(&mut un))?;
        for (u, h) in un.iter().zip(list) {
            self.hc(Hc::Unmap).status(u.status);
            if let Some(p) = h.page {
                self.free_pages.push(p);
            }
            if !u.status.is_ok() {
                let (h, st) = (*h, u.status);
                self.anomaly(|| {
                    format!(
                        "{what}: unmap of a held mapping (handle {:?}, {:?} ref {}) returned {st}",
                        h.handle, h.granter, h.gref
                    )
                });
            }
        }
        Ok(())
    }

    fn unmap_oldest(&mut self) -> Result<bool, Errno> {
        if self.held.is_empty() {
            return Ok(false);
        }
        let n = (self.tp.batch as usize).min(self.held.len());
        let list: Vec<Held> = self.held.drain(..n).collect();
        match self.unmap_list(&list, "unmap") {
            Ok(()) => Ok(true),
            Err(e) => {
                // Keep them listed (teardown owns them now); nothing more to do.
                self.held.extend(list);
                Err(e)
            }
        }
    }

    fn persistent_request(&mut self) -> Result<bool, Errno> {
        let picks = self.picks(self.tp.batch as usize);
        if picks.is_empty() {
            return Ok(false);
        }
        let mut miss: Vec<(DomId, usize, u32)> = Vec::new();
        for &(g, gi, r) in &picks {
            if let Some(h) = self.cache.get(&(g, r)).copied() {
                self.out.persistent.hits += 1;
                self.touch(&h);
            } else if miss.iter().any(|&(g2, _, r2)| g2 == g && r2 == r) {
                self.out.persistent.hits += 1;
            } else {
                miss.push((g, gi, r));
            }
        }
        self.out.persistent.misses += miss.len() as u64;
        if !miss.is_empty() {
            let got = self.map_batch(&miss)?;
            for h in got {
                self.cache_order.push_back((h.granter, h.gref));
                self.cache.insert((h.granter, h.gref), h);
            }
        }
        if self.cache.len() > self.tp.max_held as usize {
            let extra = self.cache.len() - self.tp.max_held as usize;
            let mut ev = Vec::with_capacity(extra);
            while ev.len() < extra {
                let Some(key) = self.cache_order.pop_front() else {
                    break;
                };
                if let Some(h) = self.cache.remove(&key) {
                    ev.push(h);
                }
            }
            self.out.persistent.evictions += ev.len() as u64;
            if let Err(e) = self.unmap_list(&ev, "persistent eviction") {
                for h in ev {
                    self.cache.insert((h.granter, h.gref), h);
                }
                return Err(e);
            }
        }
        Ok(true)
    }

    fn copy_batch(&mut self) -> Result<bool, Errno> {
        let picks = self.picks(self.tp.batch as usize);
        if picks.is_empty() {
            return Ok(false);
        }
        let mem = self.plan.domains[self.me_idx].config.memory_pages;
        let c = self.tp.copy.clone();
        let mut ops: Vec<GnttabCopy> = Vec::with_capacity(picks.len());
        for &(g, gi, r) in &picks {
            let len = c.min + below(&mut self.rng, u64::from(c.max - c.min) + 1) as u16;
            let off = below(&mut self.rng, (PAGE_SIZE - usize::from(len)) as u64 + 1) as u16;
            let own = CopyPtr::gmfn(Gfn(below(&mut self.rng, mem)), off);
            let gr = CopyPtr::gref(g, GrantRef(r), off);
            let ro = self.plan.domains[gi].readonly(r);
            let to_grant = !ro
                && match c.direction {
                    CopyDir::FromGrant => false,
                    CopyDir::ToGrant => true,
                    CopyDir::Both => next(&mut self.rng) & 1 == 1,
                };
            ops.push(if to_grant {
                GnttabCopy::new(own, false, gr, true, len)
            } else {
                GnttabCopy::new(gr, true, own, false, len)
            });
        }
        let n = ops.len();
        self.timed(Hc::Copy, n, |cx| cx.copy(&mut ops))?;
        for op in &ops {
            self.hc(Hc::Copy).status(op.status);
            if op.status.is_ok() {
                self.out.copy_bytes += u64::from(op.len);
            }
        }
        Ok(true)
    }

    /// Guest-side operations; false if nothing was done.
    fn guest_op(&mut self, kind: OpKind) -> bool {
        // Domains that died stop acting (their vCPUs are paused).
        self.guests
            .retain(|g| g.view.domain().state() == DomainState::Alive);
        if self.guests.is_empty() {
            return false;
        }
        let gi = below(&mut self.rng, self.guests.len() as u64) as usize;
        let rng = &mut self.rng;
        let g = &mut self.guests[gi];
        let d = &self.plan.domains[g.plan_idx];
        match kind {
            OpKind::Grant | OpKind::EndAccess => {
                let want_granted = kind == OpKind::EndAccess;
                // A few random probes for a ref in the wanted state.
                for _ in 0..8 {
                    let i = below(rng, g.refs.len() as u64) as usize;
                    let (r, bi, granted) = g.refs[i];
                    if granted != want_granted {
                        continue;
                    }
                    if want_granted {
                        match g.view.end_access(GrantRef(r)) {
                            Ok(true) => {
                                g.refs[i].2 = false;
                                self.out.guest.ends_ok += 1;
                            }
                            Ok(false) => self.out.guest.ends_busy += 1,
                            Err(_) => return false,
                        }
                    } else {
                        let gfn = Gfn(below(rng, g.mem));
                        if g.view
                            .grant_access(
                                GrantRef(r),
                                g.grantees[bi],
                                gfn,
                                d.grants[bi].readonly(r),
                            )
                            .is_err()
                        {
                            return false;
                        }
                        g.refs[i].2 = true;
                        self.out.guest.grants += 1;
                    }
                    return true;
                }
                false
            }
            OpKind::Regrant => {
                let i = below(rng, g.refs.len() as u64) as usize;
                let (r, bi, granted) = g.refs[i];
                if granted {
                    match g.view.end_access(GrantRef(r)) {
                        Ok(true) => self.out.guest.ends_ok += 1,
                        Ok(false) => {
                            self.out.guest.ends_busy += 1;
                            return true;
                        }
                        Err(_) => return false,
                    }
                }
                let gfn = Gfn(below(rng, g.mem));
                if g.view
                    .grant_access(GrantRef(r), g.grantees[bi], gfn, d.grants[bi].readonly(r))
                    .is_err()
                {
                    return false;
                }
                g.refs[i].2 = true;
                self.out.guest.grants += 1;
                true
            }
            OpKind::Flip => {
                let i = below(rng, g.refs.len() as u64) as usize;
                let (r, bi, _) = g.refs[i];
                flip_entry(
                    &g.view,
                    rng,
                    GrantRef(r),
                    g.grantees[bi],
                    d.grants[bi].readonly(r),
                    g.mem,
                );
                self.out.guest.flips += 1;
                true
            }
            _ => false,
        }
    }

    fn forge(&mut self) -> Result<bool, Errno> {
        let Some((g, _)) = self.pick_granter() else {
            return Ok(false);
        };
        let r = self.pick_ref();
        let forge_page = (self.tp.window_base + self.tp.window_pages - 1) << 12;
        match forge_op(self.hv, &mut self.rng, g, r, forge_page) {
            Forged::Unmap(u) => {
                let mut un = [u];
                self.timed(Hc::ForgedUnmap, 1, |cx| cx.unmap_grant_ref(&mut un))?;
                let st = un[0].status;
                self.hc(Hc::ForgedUnmap).status(st);
                if st.is_ok() {
                    self.anomaly(|| format!("a forged unmap succeeded: {:?}", un[0]));
                }
            }
            Forged::Map(m) => {
                let mut ops = [m];
                self.timed(Hc::ForgedMap, 1, |cx| cx.map_grant_ref(&mut ops))?;
                let st = ops[0].status;
                self.hc(Hc::ForgedMap).status(st);
                if st.is_ok() {
                    self.anomaly(|| format!("a forged map succeeded: {:?}", ops[0]));
                }
            }
        }
        Ok(true)
    }
}

/// Rewrites one shared entry the way a hostile guest might.
fn flip_entry<D: Design>(
    view: &crate::hypervisor::Guest<'_, D>,
    rng: &mut u64,
    r: GrantRef,
    grantee: DomId,
    ro: bool,
    mem: u64,
) {
    let Ok(snap) = view.entry_snapshot(r) else {
        return;
    };
    let _ = match below(rng, 6) {
        // Toggle read-only under a live mapping.
        0 => view.write_entry_flags(r, snap.flags ^ gtf::READONLY),
        // Invalidate it.
        1 => view.write_entry_flags(r, 0),
        // Point it at another (maybe unpopulated) frame.
        2 => view.write_entry_frame(r, below(rng, mem * 2) as u32),
        // Grant it to a domain id nobody has.
        3 => view.write_entry_raw(
            r,
            gtf::PERMIT_ACCESS,
            DomId(0x7000 + below(rng, 0x7F0) as u16),
            snap.frame,
        ),
        // Restore a proper grant (keeping whatever status bits are there: a guest may).
        _ => view.write_entry_raw(
            r,
            gtf::PERMIT_ACCESS
                | if ro { gtf::READONLY } else { 0 }
                | (snap.flags & (gtf::READING | gtf::WRITING)),
            grantee,
            u32::try_from(u64::from(r.0) % mem).unwrap_or(0),
        ),
    };
}

enum Forged {
    Map(MapGrantRef),
    Unmap(UnmapGrantRef),
}

/// One forged operation against granter `g`'s ref `r` by a domain that holds no mapping.
fn forge_op<D: Design>(
    hv: &Hypervisor<D>,
    rng: &mut u64,
    g: DomId,
    r: u32,
    forge_page: u64,
) -> Forged {
    match below(rng, 5) {
        // A random handle.
        0 => Forged::Unmap(UnmapGrantRef::new(
            GrantHandle(next(rng) as u32),
            forge_page,
            0,
        )),
        // A fast-format handle naming (g, r), device part only, with the right bus address
        // (the granted frame's machine address): someone else may hold that slot.
        1 => {
            let frame = hv
                .guest(g)
                .and_then(|v| v.entry_snapshot(GrantRef(r)).ok())
                .map_or(0, |s| u64::from(s.frame));
            let dev = hv
                .domain(g)
                .and_then(|d| match d.p2m(Gfn(frame)) {
                    P2mEntry::Present(m) => Some(m.addr()),
                    _ => None,
                })
                .unwrap_or(0x1000);
            let h = 1u32 << 31 | u32::from(g.0 & 0x7FFF) << 16 | (r & 0xFFFF);
            Forged::Unmap(UnmapGrantRef::new(GrantHandle(h), 0, dev))
        }
        // The same handle with a host address.
        2 => {
            let h = 1u32 << 31 | u32::from(g.0 & 0x7FFF) << 16 | (r & 0xFFFF);
            Forged::Unmap(UnmapGrantRef::new(GrantHandle(h), forge_page, 0))
        }
        // A small slow handle.
        3 => Forged::Unmap(UnmapGrantRef::new(
            GrantHandle(below(rng, 1024) as u32),
            forge_page,
            0,
        )),
        // Map a ref granted to someone else (or beyond the table).
        _ => {
            let rr = if next(rng) & 1 == 0 { r } else { r + (1 << 20) };
            Forged::Map(MapGrantRef::new(
                g,
                GrantRef(rr),
                GntMap::HOST_MAP,
                forge_page,
            ))
        }
    }
}

/// Teardown of `id`, every step timed.
fn destroy<D: Design>(
    hv: &Hypervisor<D>,
    sh: &Shared,
    id: DomId,
    name: &str,
    gap_us: u64,
) -> Result<(TeardownRun, Option<DomainStats>), String> {
    sh.teardowns.fetch_add(1, Ordering::AcqRel);
    let started_s = sh.now_s();
    let t0 = Instant::now();
    let r = hv.kill_domain(id);
    let pause_ns = t0.elapsed().as_nanos() as u64;
    let mut td = match r {
        Ok(t) => t,
        Err(e) => {
            sh.teardowns.fetch_sub(1, Ordering::AcqRel);
            return Err(format!("kill_domain({name}): {e}"));
        }
    };
    let stats = hv.domain(id).map(|d| d.stats());
    // Step offsets count from here: the teardown job's start (after the pause).
    let tj = Instant::now();
    let mut out = TeardownRun {
        domain: name.to_string(),
        started_s,
        pause_ns,
        ..Default::default()
    };
    loop {
        let s0 = Instant::now();
        let st = td.step();
        let dur = s0.elapsed().as_nanos() as u64;
        if out.steps.len() < 10_000 {
            out.steps.push(((s0 - tj).as_nanos() as u64, dur));
        }
        out.longest_step_outer_ns = out.longest_step_outer_ns.max(dur);
        if st == Step::Done {
            break;
        }
        if gap_us > 0 {
            std::thread::sleep(Duration::from_micros(gap_us));
        }
    }
    out.wall_ns = t0.elapsed().as_nanos() as u64;
    sh.teardowns.fetch_sub(1, Ordering::AcqRel);
    let s = td.stats();
    out.steps_total = s.steps;
    out.longest_step_ns = s.longest_step.as_nanos() as u64;
    out.busy_ns = s.busy.as_nanos() as u64;
    out.mappings_released = s.mappings_released;
    out.frames_released = s.frames_released;
    out.visited = s.visited;
    out.destroyed = s.destroyed;
    Ok((out, stats))
}

fn run_events<D: Design>(
    hv: &Hypervisor<D>,
    plan: &Plan,
    ids: &[Option<DomId>],
    sh: &Shared,
    run_secs: f64,
    seed: u64,
) -> Vec<EventRun> {
    let mut order: Vec<&EventPlan> = plan.events.iter().collect();
    order.sort_by(|a, b| a.at.seconds(run_secs).total_cmp(&b.at.seconds(run_secs)));
    let mut rng = seed ^ 0xE7E7_E7E7;
    let mut out = Vec::new();
    for ep in order {
        let planned = ep.at.seconds(run_secs);
        let name = plan.domains[ep.domain].name.clone();
        let mut ev = EventRun {
            index: ep.index,
            kind: ep.kind,
            domain: name.clone(),
            planned_s: planned,
            fired_s: None,
            outcome: String::new(),
            teardown: None,
            hc: BTreeMap::new(),
            anomalies: Vec::new(),
        };
        // Wait for the planned time (or the end of the run).
        loop {
            if sh.stop.load(Ordering::Acquire) {
                break;
            }
            let now = sh.now_s();
            if now >= planned {
                break;
            }
            std::thread::sleep(Duration::from_secs_f64((planned - now).min(0.005)));
        }
        if sh.stop.load(Ordering::Acquire) {
            ev.outcome = "not fired: the run ended first".into();
            out.push(ev);
            continue;
        }
        ev.fired_s = Some(sh.now_s());
        let id = ids[ep.domain].expect("event domains are spawned");
        match ep.kind {
            EventKind::Destroy => {
                sh.remove_member(Source::Domain(ep.domain), id);
                match destroy(hv, sh, id, &name, ep.step_gap_us) {
                    Ok((t, st)) => {
                        if let Some(st) = st {
                            sh.killed_stats.lock().expect("stats").insert(ep.domain, st);
                        }
                        ev.outcome = format!(
                            "{} steps, longest {:.1} us, {} mappings and {} frames released, {}",
                            t.steps_total,
                            t.longest_step_ns as f64 / 1e3,
                            t.mappings_released,
                            t.frames_released,
                            if t.destroyed {
                                "destroyed"
                            } else {
                                "zombie until its foreign mappings go"
                            }
                        );
                        ev.teardown = Some(t);
                    }
                    Err(e) => {
                        ev.outcome = e.clone();
                        ev.anomalies.push(e);
                    }
                }
            }
            EventKind::Grow => {
                let (by, v) = ep.by.expect("grow has an issuer");
                let by_id = ids[by].expect("spawned");
                match hv.vcpu(by_id, v) {
                    Ok(mut cx) => {
                        let dom = if by == ep.domain { DomId::SELF } else { id };
                        let mut op = [SetupTable {
                            dom,
                            nr_frames: ep.frames,
                            ..Default::default()
                        }];
                        let in_td = sh.teardowns.load(Ordering::Relaxed) > 0;
                        let t = Instant::now();
                        let r = cx.setup_table(&mut op);
                        let dt = t.elapsed().as_nanos() as u64;
                        match r {
                            Ok(()) => {
                                let s = ev.hc.entry(Hc::Setup).or_default();
                                s.calls += 1;
                                s.elements += 1;
                                s.hist.record(dt);
                                if in_td {
                                    s.hist_in_teardown.record(dt);
                                }
                                s.status(op[0].status);
                                ev.outcome = format!(
                                    "setup_table to {} frames: {} in {:.1} us",
                                    ep.frames,
                                    op[0].status,
                                    dt as f64 / 1e3
                                );
                            }
                            Err(e) => ev.outcome = format!("setup_table refused: {e}"),
                        }
                    }
                    Err(e) => {
                        ev.outcome =
                            format!("cannot enter vCPU {v} of {}: {e}", plan.domains[by].name)
                    }
                }
            }
            EventKind::Flip => match hv.guest(id) {
                Some(view) if view.domain().state() == DomainState::Alive => {
                    let d = &plan.domains[ep.domain];
                    let all: Vec<(u32, usize)> = d
                        .grants
                        .iter()
                        .enumerate()
                        .flat_map(|(bi, b)| (b.first..b.end).map(move |r| (r, bi)))
                        .collect();
                    for _ in 0..ep.count {
                        let (r, bi) = all[below(&mut rng, all.len() as u64) as usize];
                        let grantee = ids[d.grants[bi].to].expect("spawned");
                        flip_entry(
                            &view,
                            &mut rng,
                            GrantRef(r),
                            grantee,
                            d.grants[bi].readonly(r),
                            d.config.memory_pages,
                        );
                    }
                    ev.outcome = format!("{} entries rewritten", ep.count);
                }
                _ => ev.outcome = "domain not alive: nothing rewritten".into(),
            },
            EventKind::Forge => {
                let (by, v) = ep.by.expect("forge has an issuer");
                let by_id = ids[by].expect("spawned");
                match hv.vcpu(by_id, v) {
                    Ok(mut cx) => {
                        let d = &plan.domains[ep.domain];
                        let span = d.grants.iter().map(|b| b.end).max().unwrap_or(1);
                        let page =
                            (d.config.host_pages.min(plan.domains[by].config.host_pages) - 1) << 12;
                        let mut failed = 0;
                        for _ in 0..ep.count {
                            let r = below(&mut rng, u64::from(span)) as u32;
                            let f = forge_op(hv, &mut rng, id, r, page);
                            let in_td = sh.teardowns.load(Ordering::Relaxed) > 0;
                            let t = Instant::now();
                            let (k, res, st, desc) = match f {
                                Forged::Unmap(u) => {
                                    let mut a = [u];
                                    let res = cx.unmap_grant_ref(&mut a);
                                    (Hc::ForgedUnmap, res, a[0].status, format!("{:?}", a[0]))
                                }
                                Forged::Map(m) => {
                                    let mut a = [m];
                                    let res = cx.map_grant_ref(&mut a);
                                    (Hc::ForgedMap, res, a[0].status, format!("{:?}", a[0]))
                                }
                            };
                            let dt = t.elapsed().as_nanos() as u64;
                            if res.is_err() {
                                ev.outcome = "the forging domain is dying".into();
                                break;
                            }
                            let s = ev.hc.entry(k).or_default();
                            s.calls += 1;
                            s.elements += 1;
                            s.hist.record(dt);
                            if in_td {
                                s.hist_in_teardown.record(dt);
                            }
                            s.status(st);
                            if st.is_ok() {
                                ev.anomalies
                                    .push(format!("a forged operation succeeded: {desc}"));
                            } else {
                                failed += 1;
                            }
                        }
                        if ev.outcome.is_empty() {
                            ev.outcome =
                                format!("{failed} of {} forged operations refused", ep.count);
                        }
                    }
                    Err(e) => {
                        ev.outcome =
                            format!("cannot enter vCPU {v} of {}: {e}", plan.domains[by].name)
                    }
                }
            }
        }
        out.push(ev);
    }
    out.sort_by_key(|e| e.index);
    out
}

fn run_churn<D: Design>(
    hv: &Hypervisor<D>,
    plan: &Plan,
    c: usize,
    ids: &[Option<DomId>],
    sh: &Shared,
) -> ChurnRun {
    let cp = &plan.churn[c];
    let tmpl = &plan.domains[cp.template];
    let src = Source::Churn(c);
    let lifetime = Duration::from_millis(cp.lifetime_ms);
    let mut out = ChurnRun::default();
    let mut live: VecDeque<(DomId, String, Instant)> = VecDeque::new();
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Acquire) {
        // Fill up to `live`, staggering first lifetimes so instances do not die together.
        while live.len() < cp.live as usize && !sh.stop.load(Ordering::Acquire) {
            let name = format!("{}-{n}", tmpl.name);
            n += 1;
            let mut cfg = tmpl.config.clone();
            cfg.name = name.clone();
            let t = Instant::now();
            match hv.create_domain(cfg) {
                Ok(id) => {
                    if let Err(e) = populate(hv, id, tmpl, ids) {
                        out.errors.push(e);
                        return out;
                    }
                    out.create.record(t.elapsed().as_nanos() as u64);
                    out.created += 1;
                    sh.add_member(src, id, cp.template);
                    let stagger = if out.created <= u64::from(cp.live) {
                        lifetime.mul_f64(live.len() as f64 / f64::from(cp.live))
                    } else {
                        Duration::ZERO
                    };
                    live.push_back((
                        id,
                        name,
                        Instant::now()
                            .checked_sub(stagger)
                            .unwrap_or_else(Instant::now),
                    ));
                }
                Err(e) => {
                    out.errors.push(format!("create_domain({name}): {e:?}"));
                    return out;
                }
            }
        }
        // Kill the oldest when its time is up.
        let Some(&(id, ref name, born)) = live.front() else {
            continue;
        };
        let age = born.elapsed();
        if age < lifetime {
            std::thread::sleep((lifetime - age).min(Duration::from_millis(5)));
            continue;
        }
        let name = name.clone();
        live.pop_front();
        sh.remove_member(src, id);
        match destroy(hv, sh, id, &name, 0) {
            Ok((t, _)) => {
                out.destroyed += 1;
                out.teardown_wall.record(t.wall_ns);
                out.teardown_longest_step.record(t.longest_step_ns);
                if out
                    .worst
                    .as_ref()
                    .is_none_or(|w| t.longest_step_ns > w.longest_step_ns)
                {
                    out.worst = Some(t);
                }
            }
            Err(e) => out.errors.push(e),
        }
    }
    out
}
