//! The report: every figure of a run, as printed (table) and as saved (`--json`).
//!
//! The table is rendered from the same [`Report`] the JSON serialises, so the two never
//! disagree. The JSON schema is documented in `docs/simulator.md` ("JSON schema", version
//! [`SCHEMA_VERSION`]).

use super::engine::{DesignRun, Hc, HcStats, TeardownRun};
use super::hist::Histogram;
use super::scenario::{EventKind, Scenario, ScenarioSpec};
use crate::abi::GntSt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Version of the JSON schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// What the simulator cannot measure, stated in every report.
pub const NOT_MEASURED: &[&str] = &[
    "lock wait and hold times: the library has no lock instrumentation; waits are inside the per-hypercall latencies",
    "per-element latency inside a batch: only whole hypercalls are timed",
    "time spent preempted by the host OS: included in latencies (the machine may be shared)",
];

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always `"gntsim-report"`.
    pub schema: &'static str,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Crate version.
    pub gnttab_version: &'static str,
    /// The scenario, echoed.
    pub scenario: ScenarioEcho,
    /// How it was run.
    pub run: RunInfo,
    /// What the numbers do not include.
    pub not_measured: Vec<&'static str>,
    /// One entry per design, in command-line order (the first is the ratio baseline).
    pub results: Vec<DesignReport>,
}

/// The scenario as run.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioEcho {
    /// Name.
    pub name: String,
    /// `builtin:<name>` or the file path.
    pub origin: String,
    /// One line.
    pub description: String,
    /// The parsed scenario, defaults filled in.
    pub spec: ScenarioSpec,
    /// The source text.
    pub toml: String,
}

/// How the run was made.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// Designs, in order.
    pub designs: Vec<String>,
    /// Seconds per design.
    pub seconds: f64,
    /// Seed (the same for every design).
    pub seed: u64,
    /// Cap on each thread's operations, if any.
    pub ops_cap: Option<u64>,
    /// Cores the OS reports (`std::thread::available_parallelism`).
    pub cores: usize,
    /// OS threads each design's run uses (workload + event + churn threads; the timekeeper,
    /// mostly asleep, is not counted).
    pub threads_per_design: usize,
    /// Median cost of the two clock reads around each timed hypercall, ns (included in every
    /// latency).
    pub timer_overhead_ns: u64,
}

/// Latency and status summary of one hypercall kind.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Hypercalls.
    pub calls: u64,
    /// Elements in them.
    pub elements: u64,
    /// Exact mean, ns.
    pub mean_ns: f64,
    /// Median, ns (bucket midpoint, within ~1.6%).
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Exact maximum, ns.
    pub max_ns: u64,
    /// Element statuses by name (`okay`, `general_error`, ...), non-zero only.
    pub statuses: BTreeMap<String, u64>,
    /// Non-empty histogram buckets `[lo_ns, hi_ns, count]`.
    pub histogram: Vec<[u64; 3]>,
}

impl Latency {
    fn from_hist(h: &Histogram, calls: u64, elements: u64, statuses: &[u64; 14]) -> Option<Self> {
        if h.count() == 0 {
            return None;
        }
        Some(Latency {
            calls,
            elements,
            mean_ns: h.mean(),
            p50_ns: h.quantile(0.5).unwrap_or(0),
            p90_ns: h.quantile(0.9).unwrap_or(0),
            p99_ns: h.quantile(0.99).unwrap_or(0),
            p999_ns: h.quantile(0.999).unwrap_or(0),
            max_ns: h.max().unwrap_or(0),
            statuses: statuses
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(i, &n)| (status_name(-(i as i16)), n))
                .collect(),
            histogram: h.buckets().into_iter().map(|(a, b, c)| [a, b, c]).collect(),
        })
    }
}

/// `GNTST_*` name in snake case.
pub fn status_name(code: i16) -> String {
    match GntSt::from_code(code) {
        Some(GntSt::Okay) => "okay",
        Some(GntSt::GeneralError) => "general_error",
        Some(GntSt::BadDomain) => "bad_domain",
        Some(GntSt::BadGntref) => "bad_gntref",
        Some(GntSt::BadHandle) => "bad_handle",
        Some(GntSt::BadVirtAddr) => "bad_virt_addr",
        Some(GntSt::BadDevAddr) => "bad_dev_addr",
        Some(GntSt::NoDeviceSpace) => "no_device_space",
        Some(GntSt::PermissionDenied) => "permission_denied",
        Some(GntSt::BadPage) => "bad_page",
        Some(GntSt::BadCopyArg) => "bad_copy_arg",
        Some(GntSt::AddressTooBig) => "address_too_big",
        Some(GntSt::Eagain) => "eagain",
        Some(GntSt::NoSpace) => "no_space",
        None => return format!("status_{code}"),
    }
    .to_string()
}

/// Maps by where they were recorded (library counters).
#[derive(Clone, Debug, Serialize)]
pub struct Maps {
    /// Successful maps.
    pub ok: u64,
    /// Recorded in an inline fast slot.
    pub fast: u64,
    /// Recorded in the maptrack table.
    pub slow: u64,
    /// `fast / ok` (null without maps).
    pub fast_fraction: Option<f64>,
}

/// Flush counters (library counters).
#[derive(Clone, Debug, Serialize)]
pub struct Flushes {
    /// TLB flushes by the scenario's domains' vCPUs.
    pub tlb: u64,
    /// IOTLB flushes.
    pub iotlb: u64,
    /// Map + unmap elements the flushes are divided by.
    pub per_op_denominator: u64,
    /// `tlb / per_op_denominator` (null without map/unmap elements).
    pub tlb_per_op: Option<f64>,
    /// `iotlb / per_op_denominator`.
    pub iotlb_per_op: Option<f64>,
}

/// Guest-side operations.
#[derive(Clone, Debug, Serialize)]
pub struct GuestOps {
    /// grant_access calls.
    pub grants: u64,
    /// Successful end_access.
    pub ends_ok: u64,
    /// end_access refused (grant in use).
    pub ends_busy: u64,
    /// Entries rewritten by adversarial guests.
    pub flips: u64,
}

/// Persistent-grant cache.
#[derive(Clone, Debug, Serialize)]
pub struct Persistent {
    /// Segments served by a held mapping.
    pub hits: u64,
    /// Segments that needed a map.
    pub misses: u64,
    /// Mappings evicted.
    pub evictions: u64,
}

/// One teardown.
#[derive(Clone, Debug, Serialize)]
pub struct TeardownReport {
    /// Dying domain.
    pub domain: String,
    /// `"event"` or `"churn-worst"` (the churned instance whose teardown had the longest step).
    pub source: &'static str,
    /// Seconds after the start.
    pub started_s: f64,
    /// kill_domain (pause) time, ns.
    pub pause_ns: u64,
    /// Steps.
    pub steps: u64,
    /// Longest step (the library's `TeardownStats::longest_step`), ns.
    pub longest_step_ns: u64,
    /// Longest step timed around `Teardown::step()` by the simulator, ns.
    pub longest_step_outer_ns: u64,
    /// Sum of steps, ns.
    pub busy_ns: u64,
    /// kill to done, ns.
    pub wall_ns: u64,
    /// Mappings released.
    pub mappings_released: u64,
    /// Frames released.
    pub frames_released: u64,
    /// Destroyed for good (else a zombie until its foreign mappings go).
    pub destroyed: bool,
    /// `[start_ns, duration_ns]` of each step, the start counted from the end of the pause
    /// (when kill_domain returned the job); first 10 000 steps.
    pub timeline: Vec<[u64; 2]>,
}

impl TeardownReport {
    fn new(t: &TeardownRun, source: &'static str) -> Self {
        TeardownReport {
            domain: t.domain.clone(),
            source,
            started_s: t.started_s,
            pause_ns: t.pause_ns,
            steps: t.steps_total,
            longest_step_ns: t.longest_step_ns,
            longest_step_outer_ns: t.longest_step_outer_ns,
            busy_ns: t.busy_ns,
            wall_ns: t.wall_ns,
            mappings_released: t.mappings_released,
            frames_released: t.frames_released,
            destroyed: t.destroyed,
            timeline: t.steps.iter().map(|&(a, b)| [a, b]).collect(),
        }
    }
}

/// Churn summary.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    /// Instances created.
    pub created: u64,
    /// Instances destroyed.
    pub destroyed: u64,
    /// Creation (create + setup + grants) p50, ns.
    pub create_p50_ns: Option<u64>,
    /// Creation p99, ns.
    pub create_p99_ns: Option<u64>,
    /// Teardown wall time p50, ns.
    pub teardown_p50_ns: Option<u64>,
    /// Teardown wall time p99, ns.
    pub teardown_p99_ns: Option<u64>,
    /// Longest step of any churn teardown, ns.
    pub longest_step_max_ns: Option<u64>,
}

/// One event.
#[derive(Clone, Debug, Serialize)]
pub struct EventReport {
    /// Index in the file.
    pub index: usize,
    /// Kind.
    pub kind: EventKind,
    /// Domain acted on.
    pub domain: String,
    /// Planned time, s.
    pub planned_s: f64,
    /// When it fired (null: the run ended first).
    pub fired_s: Option<f64>,
    /// What happened.
    pub outcome: String,
}

/// One thread.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadReport {
    /// Index in the file.
    pub index: usize,
    /// Domain(s).
    pub domain: String,
    /// vCPU (null for guest-side-only threads).
    pub vcpu: Option<u16>,
    /// Operations executed.
    pub ops: u64,
    /// Hypercall elements completed.
    pub elements: u64,
    /// Elements per second of the run.
    pub elements_per_sec: f64,
    /// Per hypercall kind: calls, elements, p50 and p99.
    pub hypercalls: BTreeMap<String, ThreadHc>,
    /// Bytes copied.
    pub copy_bytes: u64,
    /// Bytes read through new mappings.
    pub touched_bytes: u64,
    /// Persistent cache.
    pub persistent: Persistent,
    /// Guest side.
    pub guest: GuestOps,
    /// When its domain was killed under it (s), if it was.
    pub stopped_by_kill_s: Option<f64>,
    /// Mappings it held at the end (unmapped by the drain).
    pub held_at_end: usize,
    /// Unexpected results.
    pub anomaly_count: u64,
}

/// A thread's view of one hypercall kind.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadHc {
    /// Calls.
    pub calls: u64,
    /// Elements.
    pub elements: u64,
    /// Median, ns.
    pub p50_ns: u64,
    /// p99, ns.
    pub p99_ns: u64,
}

/// The verdict.
#[derive(Clone, Debug, Serialize)]
pub struct VerdictReport {
    /// No invariant violation (before and after the drain) and no unexpected result.
    pub clean: bool,
    /// Live mappings the checker saw at quiescence.
    pub live_mappings: usize,
    /// Of which in fast slots.
    pub live_fast_mappings: usize,
    /// Violations at quiescence.
    pub violations: Vec<String>,
    /// Mappings unmapped by the drain.
    pub drained: u64,
    /// Violations after the drain.
    pub violations_after_drain: Vec<String>,
    /// Unexpected results (first few).
    pub anomalies: Vec<String>,
    /// How many.
    pub anomaly_count: u64,
    /// Domains exempt from invariant 4 because they rewrote their own entries.
    pub adversarial_domains: Vec<String>,
}

/// Everything about one design.
#[derive(Clone, Debug, Serialize)]
pub struct DesignReport {
    /// Design name.
    pub design: String,
    /// Measured run time, s.
    pub elapsed_s: f64,
    /// Hypercall elements completed.
    pub ops: u64,
    /// Hypercalls.
    pub hypercalls: u64,
    /// `ops / elapsed_s`.
    pub ops_per_sec: f64,
    /// `ops_per_sec / first design's ops_per_sec`.
    pub ratio_to_first: f64,
    /// Per hypercall kind (`map`, `unmap`, `copy`, `query`, `setup`, `forged_map`,
    /// `forged_unmap`), present kinds only.
    pub latency: BTreeMap<String, Latency>,
    /// The same, for calls started while a teardown ran.
    pub latency_in_teardown: BTreeMap<String, Latency>,
    /// Fast/slow split.
    pub maps: Maps,
    /// Flushes.
    pub flushes: Flushes,
    /// Guest side.
    pub guest: GuestOps,
    /// Persistent cache.
    pub persistent: Persistent,
    /// Bytes copied by successful copy elements.
    pub copy_bytes: u64,
    /// Teardowns (events, and the churn's worst).
    pub teardowns: Vec<TeardownReport>,
    /// Longest step of any teardown, ns (null: none ran).
    pub teardown_longest_step_ns: Option<u64>,
    /// Churn.
    pub churn: Option<ChurnReport>,
    /// Events.
    pub events: Vec<EventReport>,
    /// Threads.
    pub threads: Vec<ThreadReport>,
    /// `[t_s, ops_per_sec over the preceding interval]` (intervals of about 20 ms, sampled by
    /// the timekeeper until the stop signal; intervals shorter than 5 ms are left out).
    pub timeline: Vec<[f64; 2]>,
    /// Verdict.
    pub verdict: VerdictReport,
}

fn hc_map(m: &BTreeMap<Hc, HcStats>, in_td: bool) -> BTreeMap<String, Latency> {
    m.iter()
        .filter_map(|(k, s)| {
            let h = if in_td { &s.hist_in_teardown } else { &s.hist };
            let (calls, elements) = if in_td {
                (h.count(), 0)
            } else {
                (s.calls, s.elements)
            };
            let statuses = if in_td { [0; 14] } else { s.statuses };
            Latency::from_hist(h, calls, elements, &statuses).map(|l| (k.name().to_string(), l))
        })
        .collect()
}

impl DesignReport {
    fn new(r: &DesignRun, base_ops_per_sec: Option<f64>) -> Self {
        let tot = r.hc_totals();
        let ops: u64 = tot.values().map(|s| s.elements).sum();
        let hypercalls: u64 = tot.values().map(|s| s.calls).sum();
        let secs = r.elapsed.as_secs_f64();
        let ops_per_sec = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
        let per_op = tot.get(&Hc::Map).map_or(0, |s| s.elements)
            + tot.get(&Hc::Unmap).map_or(0, |s| s.elements);
        let g = r.guest_totals();
        let p = r.persistent_totals();
        let mut teardowns: Vec<TeardownReport> = r
            .events
            .iter()
            .filter_map(|e| e.teardown.as_ref())
            .map(|t| TeardownReport::new(t, "event"))
            .collect();
        if let Some(w) = r.churn.as_ref().and_then(|c| c.worst.as_ref()) {
            teardowns.push(TeardownReport::new(w, "churn-worst"));
        }
        let teardown_longest_step_ns = r.teardowns().iter().map(|t| t.longest_step_ns).max();
        let timeline = r
            .timeline
            .windows(2)
            .filter(|w| w[1].0 - w[0].0 >= 0.005)
            .map(|w| [w[1].0, (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0)])
            .collect();
        let threads = r
            .threads
            .iter()
            .map(|t| {
                let elements: u64 = t.hc.values().map(|s| s.elements).sum();
                ThreadReport {
                    index: t.index,
                    domain: t.domain.clone(),
                    vcpu: t.vcpu,
                    ops: t.ops,
                    elements,
                    elements_per_sec: if secs > 0.0 {
                        elements as f64 / secs
                    } else {
                        0.0
                    },
                    hypercalls: t
                        .hc
                        .iter()
                        .map(|(k, s)| {
                            (
                                k.name().to_string(),
                                ThreadHc {
                                    calls: s.calls,
                                    elements: s.elements,
                                    p50_ns: s.hist.quantile(0.5).unwrap_or(0),
                                    p99_ns: s.hist.quantile(0.99).unwrap_or(0),
                                },
                            )
                        })
                        .collect(),
                    copy_bytes: t.copy_bytes,
                    touched_bytes: t.touched_bytes,
                    persistent: Persistent {
                        hits: t.persistent.hits,
                        misses: t.persistent.misses,
                        evictions: t.persistent.evictions,
                    },
                    guest: GuestOps {
                        grants: t.guest.grants,
                        ends_ok: t.guest.ends_ok,
                        ends_busy: t.guest.ends_busy,
                        flips: t.guest.flips,
                    },
                    stopped_by_kill_s: t.stopped_by_kill,
                    held_at_end: t.held_at_end,
                    anomaly_count: t.anomaly_count,
                }
            })
            .collect();
        let v = &r.verdict;
        DesignReport {
            design: r.design.to_string(),
            elapsed_s: secs,
            ops,
            hypercalls,
            ops_per_sec,
            ratio_to_first: match base_ops_per_sec {
                Some(b) if b > 0.0 => ops_per_sec / b,
                _ => 1.0,
            },
            latency: hc_map(&tot, false),
            latency_in_teardown: hc_map(&tot, true),
            maps: Maps {
                ok: r.stats.maps,
                fast: r.stats.fast_maps,
                slow: r.stats.slow_maps,
                fast_fraction: (r.stats.maps > 0)
                    .then(|| r.stats.fast_maps as f64 / r.stats.maps as f64),
            },
            flushes: Flushes {
                tlb: r.stats.tlb_flushes,
                iotlb: r.stats.iotlb_flushes,
                per_op_denominator: per_op,
                tlb_per_op: (per_op > 0).then(|| r.stats.tlb_flushes as f64 / per_op as f64),
                iotlb_per_op: (per_op > 0).then(|| r.stats.iotlb_flushes as f64 / per_op as f64),
            },
            guest: GuestOps {
                grants: g.grants,
                ends_ok: g.ends_ok,
                ends_busy: g.ends_busy,
                flips: g.flips,
            },
            persistent: Persistent {
                hits: p.hits,
                misses: p.misses,
                evictions: p.evictions,
            },
            copy_bytes: r.threads.iter().map(|t| t.copy_bytes).sum(),
            teardowns,
            teardown_longest_step_ns,
            churn: r.churn.as_ref().map(|c| ChurnReport {
                created: c.created,
                destroyed: c.destroyed,
                create_p50_ns: c.create.quantile(0.5),
                create_p99_ns: c.create.quantile(0.99),
                teardown_p50_ns: c.teardown_wall.quantile(0.5),
                teardown_p99_ns: c.teardown_wall.quantile(0.99),
                longest_step_max_ns: c.teardown_longest_step.max(),
            }),
            events: r
                .events
                .iter()
                .map(|e| EventReport {
                    index: e.index,
                    kind: e.kind,
                    domain: e.domain.clone(),
                    planned_s: e.planned_s,
                    fired_s: e.fired_s,
                    outcome: e.outcome.clone(),
                })
                .collect(),
            threads,
            timeline,
            verdict: VerdictReport {
                clean: v.clean(),
                live_mappings: v.live.mappings,
                live_fast_mappings: v.live.fast_mappings,
                violations: v.live.violations.iter().map(|x| x.to_string()).collect(),
                drained: v.drained,
                violations_after_drain: v
                    .after_drain
                    .violations
                    .iter()
                    .map(|x| x.to_string())
                    .collect(),
                anomalies: v.anomalies.clone(),
                anomaly_count: v.anomaly_count,
                adversarial_domains: v.adversarial.clone(),
            },
        }
    }
}

impl Report {
    /// Builds the report of `runs` (in order; the first is the baseline).
    pub fn new(sc: &Scenario, info: RunInfo, runs: &[DesignRun]) -> Self {
        let mut results: Vec<DesignReport> = Vec::new();
        for r in runs {
            let base = results.first().map(|b| b.ops_per_sec);
            results.push(DesignReport::new(r, base));
        }
        Report {
            schema: "gntsim-report",
            schema_version: SCHEMA_VERSION,
            gnttab_version: env!("CARGO_PKG_VERSION"),
            scenario: ScenarioEcho {
                name: sc.name.clone(),
                origin: sc.origin.clone(),
                description: sc.spec.description.clone(),
                spec: sc.spec.clone(),
                toml: sc.source.clone(),
            },
            run: info,
            not_measured: NOT_MEASURED.to_vec(),
            results,
        }
    }

    /// Whether every design's verdict is clean.
    pub fn all_clean(&self) -> bool {
        self.results.iter().all(|r| r.verdict.clean)
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialise")
    }

    /// The comparison table and its notes. `verbose` adds per-thread, per-status and
    /// per-event detail.
    pub fn render(&self, quiet: bool, verbose: bool) -> String {
        let mut o = String::new();
        let res = &self.results;
        let Some(first) = res.first() else {
            return o;
        };
        let kinds: Vec<&str> = ["map", "unmap", "copy", "query", "setup"]
            .into_iter()
            .filter(|k| res.iter().any(|r| r.latency.contains_key(*k)))
            .collect();
        let any_maps = res.iter().any(|r| r.maps.ok > 0);
        let any_per_op = res.iter().any(|r| r.flushes.per_op_denominator > 0);
        let any_iotlb = self
            .scenario
            .spec
            .domain
            .iter()
            .any(|d| d.get_ref().iommu == super::scenario::IommuSpec::Strict);
        let any_td = res.iter().any(|r| r.teardown_longest_step_ns.is_some());
        let any_q_td = res
            .iter()
            .any(|r| r.latency_in_teardown.contains_key("query"));

        let mut head: Vec<String> = vec![
            "design".into(),
            "ops/s".into(),
            format!("vs {}", first.design),
        ];
        for k in &kinds {
            head.push(format!("{k} p50/p99"));
        }
        if any_maps {
            head.push("fast maps".into());
        }
        if any_per_op {
            head.push("TLB fl/op".into());
        }
        if any_iotlb && any_per_op {
            head.push("IOTLB fl/op".into());
        }
        if any_td {
            head.push("teardown max step".into());
        }
        if any_q_td {
            head.push("query p99 in teardown".into());
        }
        head.push("verdict".into());
        let mut rows: Vec<Vec<String>> = Vec::new();
        for r in res {
            let mut row = vec![
                r.design.clone(),
                thousands(r.ops_per_sec),
                format!("{:.2}x", r.ratio_to_first),
            ];
            for k in &kinds {
                row.push(match r.latency.get(*k) {
                    Some(l) => format!("{} / {}", fmt_ns(l.p50_ns as f64), fmt_ns(l.p99_ns as f64)),
                    None => "-".into(),
                });
            }
            if any_maps {
                row.push(match r.maps.fast_fraction {
                    Some(f) => format!("{:.1}%", f * 100.0),
                    None => "-".into(),
                });
            }
            if any_per_op {
                row.push(
                    r.flushes
                        .tlb_per_op
                        .map_or("-".into(), |x| format!("{x:.4}")),
                );
            }
            if any_iotlb && any_per_op {
                row.push(
                    r.flushes
                        .iotlb_per_op
                        .map_or("-".into(), |x| format!("{x:.4}")),
                );
            }
            if any_td {
                row.push(
                    r.teardown_longest_step_ns
                        .map_or("-".into(), |x| fmt_ns(x as f64)),
                );
            }
            if any_q_td {
                row.push(
                    r.latency_in_teardown
                        .get("query")
                        .map_or("-".into(), |l| fmt_ns(l.p99_ns as f64)),
                );
            }
            row.push(verdict_text(&r.verdict));
            rows.push(row);
        }
        let widths: Vec<usize> = (0..head.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].chars().count())
                    .chain([head[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String], o: &mut String| {
            for (c, cell) in cells.iter().enumerate() {
                let last = c + 1 == cells.len();
                if c == 0 || last {
                    let _ = write!(o, "{:<w$}", cell, w = if last { 0 } else { widths[c] });
                } else {
                    let _ = write!(o, "{:>w$}", cell, w = widths[c]);
                }
                if !last {
                    o.push_str("  ");
                }
            }
            o.push('\n');
        };
        if !quiet {
            let _ = writeln!(
                o,
                "scenario `{}` ({}): {}",
                self.scenario.name, self.scenario.origin, self.scenario.description
            );
            let _ = writeln!(
                o,
                "{} s per design, seed {}{}; {} per design on a machine with {}",
                self.run.seconds,
                self.run.seed,
                self.run
                    .ops_cap
                    .map_or(String::new(), |c| format!(", at most {c} ops per thread")),
                plural(self.run.threads_per_design, "thread"),
                plural(self.run.cores, "core")
            );
            if self.run.threads_per_design > self.run.cores {
                let _ = writeln!(
                    o,
                    "note: more threads than cores: the OS time-slices them, so latency tails include scheduling delays"
                );
            }
        }
        if !quiet {
            o.push('\n');
        }
        line(&head, &mut o);
        for r in &rows {
            line(r, &mut o);
        }
        for r in res {
            for v in r
                .verdict
                .violations
                .iter()
                .chain(&r.verdict.violations_after_drain)
                .take(10)
            {
                let _ = writeln!(o, "  {}: {v}", r.design);
            }
            for a in r.verdict.anomalies.iter().take(10) {
                let _ = writeln!(o, "  {}: {a}", r.design);
            }
        }
        if quiet {
            return o;
        }
        o.push('\n');
        let mut notes = vec![
            "ops/s: grant-table hypercall elements completed per second by all threads (map, unmap and copy elements, query and setup calls)".to_string(),
            format!("vs {}: ops/s divided by the first design's; all designs ran one after another with the same seed", first.design),
            format!(
                "p50/p99: latency of whole hypercalls (a batch each), log buckets within ~1.6%, including ~{} ns of timer overhead",
                self.run.timer_overhead_ns
            ),
        ];
        if any_maps {
            notes.push("fast maps: successful maps recorded in an inline fast slot (library counter); the rest used the maptrack table".into());
        }
        if any_per_op {
            notes.push("TLB fl/op: TLB flushes by the scenario's vCPUs per map+unmap element (library counter)".into());
        }
        if any_iotlb && any_per_op {
            notes.push("IOTLB fl/op: IOTLB flushes per map+unmap element (library counter)".into());
        }
        if any_td {
            notes.push("teardown max step: longest non-preemptible Teardown::step() of any teardown (TeardownStats::longest_step)".into());
        }
        if any_q_td {
            notes.push("query p99 in teardown: p99 of query_size hypercalls started while a teardown was running".into());
        }
        notes.push("verdict: hv.check_with() at quiescence with the mappings still held, and again after unmapping them all; any unexpected status also fails it".into());
        notes.push(format!("not measured: {}", NOT_MEASURED[0]));
        for n in notes {
            let _ = writeln!(o, "  {n}");
        }
        if verbose {
            self.render_verbose(&mut o);
        }
        o
    }

    fn render_verbose(&self, o: &mut String) {
        for r in &self.results {
            let _ = writeln!(
                o,
                "\n== {} ({:.3} s, {} hypercalls, {} elements) ==",
                r.design, r.elapsed_s, r.hypercalls, r.ops
            );
            for (k, l) in &r.latency {
                let st: Vec<String> = l.statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
                let _ = writeln!(
                    o,
                    "  {k:<13} {:>9} calls {:>10} elems  mean {:>8}  p50 {:>8}  p90 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}  [{}]",
                    l.calls,
                    l.elements,
                    fmt_ns(l.mean_ns),
                    fmt_ns(l.p50_ns as f64),
                    fmt_ns(l.p90_ns as f64),
                    fmt_ns(l.p99_ns as f64),
                    fmt_ns(l.p999_ns as f64),
                    fmt_ns(l.max_ns as f64),
                    st.join(", ")
                );
            }
            for (k, l) in &r.latency_in_teardown {
                let _ = writeln!(
                    o,
                    "  {k:<13} during teardowns: {} calls, p50 {}, p99 {}, max {}",
                    l.calls,
                    fmt_ns(l.p50_ns as f64),
                    fmt_ns(l.p99_ns as f64),
                    fmt_ns(l.max_ns as f64)
                );
            }
            let _ = writeln!(
                o,
                "  maps ok {} (fast {}, slow {}); TLB flushes {}, IOTLB flushes {}; copied {} bytes",
                r.maps.ok, r.maps.fast, r.maps.slow, r.flushes.tlb, r.flushes.iotlb, r.copy_bytes
            );
            if r.guest.grants + r.guest.ends_ok + r.guest.ends_busy + r.guest.flips > 0 {
                let _ = writeln!(
                    o,
                    "  guests: {} grants, {} end_access ok, {} refused (in use), {} entries rewritten",
                    r.guest.grants, r.guest.ends_ok, r.guest.ends_busy, r.guest.flips
                );
            }
            if r.persistent.hits + r.persistent.misses > 0 {
                let _ = writeln!(
                    o,
                    "  persistent grants: {} hits, {} misses, {} evictions",
                    r.persistent.hits, r.persistent.misses, r.persistent.evictions
                );
            }
            for t in &r.threads {
                let hc: Vec<String> = t
                    .hypercalls
                    .iter()
                    .map(|(k, h)| {
                        format!(
                            "{k} {}x p50 {} p99 {}",
                            h.calls,
                            fmt_ns(h.p50_ns as f64),
                            fmt_ns(h.p99_ns as f64)
                        )
                    })
                    .collect();
                let _ = writeln!(
                    o,
                    "  thread[{}] {}{}: {} ops, {} elems/s{}{}; {}",
                    t.index,
                    t.domain,
                    t.vcpu.map_or(String::new(), |v| format!(" vcpu {v}")),
                    t.ops,
                    thousands(t.elements_per_sec),
                    t.stopped_by_kill_s.map_or(String::new(), |s| format!(
                        ", stopped by the kill at {s:.3} s"
                    )),
                    if t.held_at_end > 0 {
                        format!(", held {} at the end", t.held_at_end)
                    } else {
                        String::new()
                    },
                    if hc.is_empty() {
                        "guest side only".into()
                    } else {
                        hc.join("; ")
                    }
                );
            }
            for e in &r.events {
                let _ = writeln!(
                    o,
                    "  event[{}] {:?} {} planned {:.3} s, fired {}: {}",
                    e.index,
                    e.kind,
                    e.domain,
                    e.planned_s,
                    e.fired_s.map_or("never".into(), |s| format!("{s:.3} s")),
                    e.outcome
                );
            }
            for t in &r.teardowns {
                let _ = writeln!(
                    o,
                    "  teardown of {} ({}): pause {}, {} steps, longest {} (outer {}), busy {}, wall {}, {} mappings, {} frames, {}",
                    t.domain,
                    t.source,
                    fmt_ns(t.pause_ns as f64),
                    t.steps,
                    fmt_ns(t.longest_step_ns as f64),
                    fmt_ns(t.longest_step_outer_ns as f64),
                    fmt_ns(t.busy_ns as f64),
                    fmt_ns(t.wall_ns as f64),
                    t.mappings_released,
                    t.frames_released,
                    if t.destroyed { "destroyed" } else { "zombie" }
                );
            }
            if let Some(c) = &r.churn {
                let f = |x: Option<u64>| x.map_or("-".into(), |v| fmt_ns(v as f64));
                let _ = writeln!(
                    o,
                    "  churn: {} created (p50 {}, p99 {}), {} destroyed (teardown p50 {}, p99 {}, longest step {})",
                    c.created,
                    f(c.create_p50_ns),
                    f(c.create_p99_ns),
                    c.destroyed,
                    f(c.teardown_p50_ns),
                    f(c.teardown_p99_ns),
                    f(c.longest_step_max_ns)
                );
            }
            let v = &r.verdict;
            let _ = writeln!(
                o,
                "  checker: {} live mappings ({} fast) at quiescence, {} violations; drained {}, then {} violations; {} anomalies{}",
                v.live_mappings,
                v.live_fast_mappings,
                v.violations.len(),
                v.drained,
                v.violations_after_drain.len(),
                v.anomaly_count,
                if v.adversarial_domains.is_empty() {
                    String::new()
                } else {
                    format!("; invariant 4 not checked for {}", v.adversarial_domains.join(", "))
                }
            );
        }
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn verdict_text(v: &VerdictReport) -> String {
    if v.clean {
        let n = v.live_mappings;
        return format!("clean ({n} live map{})", if n == 1 { "" } else { "s" });
    }
    let mut parts = Vec::new();
    let nv = v.violations.len() + v.violations_after_drain.len();
    if nv > 0 {
        parts.push(format!("{nv} VIOLATIONS"));
    }
    if v.anomaly_count > 0 {
        parts.push(format!("{} UNEXPECTED RESULTS", v.anomaly_count));
    }
    parts.join(", ")
}

/// `1234567.8` -> `1,234,568`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds in a readable unit.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.2}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(fmt_ns(850.0), "850ns");
        assert_eq!(fmt_ns(1240.0), "1.24µs");
        assert_eq!(fmt_ns(12_300_000.0), "12.30ms");
        assert_eq!(status_name(-13), "no_space");
    }
}
