//! The simulator behind `gntsim`: scenario files, the engine that runs them on each design,
//! the report (table and JSON) and the charts.
//!
//! This module is compiled with the `sim` feature (on by default). The usual entry points:
//!
//! ```no_run
//! use gnttab::sim::{self, RunRequest};
//!
//! let sc = sim::load("netback").unwrap(); // a built-in name or a file path
//! let req = RunRequest { seconds: Some(0.2), ..RunRequest::default() };
//! let report = sim::run(&sc, &req, &|_, _| {}).unwrap();
//! print!("{}", report.render(false, false));
//! assert!(report.all_clean());
//! ```
//!
//! `docs/simulator.md` documents the scenario format, the report and the JSON schema.

pub mod builtin;
pub mod engine;
pub mod hist;
pub mod plot;
pub mod report;
pub mod scenario;

pub use report::Report;
pub use scenario::{Scenario, ScenarioError};

/// Designs `gntsim` runs when none are named.
pub const DEFAULT_DESIGNS: &[&str] = &["fast", "xen"];

/// What to run a scenario with.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// Design names, in report order (the first is the ratio baseline); `all` means every
    /// design.
    pub designs: Vec<String>,
    /// Seconds per design (default: the scenario's `seconds`).
    pub seconds: Option<f64>,
    /// Seed (default: the scenario's `seed`).
    pub seed: Option<u64>,
    /// Cap on each thread's operations (default: none beyond the scenario's `ops`).
    pub ops_cap: Option<u64>,
}

impl Default for RunRequest {
    fn default() -> Self {
        Self {
            designs: DEFAULT_DESIGNS.iter().map(|s| s.to_string()).collect(),
            seconds: None,
            seed: None,
            ops_cap: None,
        }
    }
}

/// Loads a built-in scenario by name, or else a scenario file by path.
pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
    if let Some(b) = builtin::find(name_or_path) {
        return b.load();
    }
    let p = std::path::Path::new(name_or_path);
    if !p.exists() {
        let names: Vec<&str> = builtin::BUILTINS.iter().map(|b| b.name).collect();
        return Err(ScenarioError {
            origin: name_or_path.to_string(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!(
                "no built-in scenario and no file by that name (built-ins: {}; try `gntsim list`)",
                names.join(", ")
            ),
            source_line: String::new(),
        });
    }
    Scenario::from_file(p)
}

/// Expands and checks design names (`all` = every design).
pub fn resolve_designs(names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let n = n.trim();
        if n.is_empty() {
            continue;
        }
        if n == "all" {
            out.extend(crate::design::DESIGN_NAMES.iter().map(|s| s.to_string()));
        } else if crate::design::DESIGN_NAMES.contains(&n) {
            out.push(n.to_string());
        } else {
            return Err(format!(
                "unknown design {n:?} (designs: {}, or all)",
                crate::design::DESIGN_NAMES.join(", ")
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|d| seen.insert(d.clone()));
    if out.is_empty() {
        return Err("no design to run".into());
    }
    Ok(out)
}

/// Runs `sc` on every requested design, one after another with the same seed, and builds the
/// report. `progress(design_index, fraction_of_that_design)` is called as the run advances.
pub fn run(
    sc: &Scenario,
    req: &RunRequest,
    progress: &(dyn Fn(usize, f64) + Sync),
) -> Result<Report, String> {
    let designs = resolve_designs(&req.designs)?;
    let seconds = req.seconds.unwrap_or_else(|| sc.seconds());
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("--seconds must be positive, not {seconds}"));
    }
    let opts = engine::RunOptions {
        seconds,
        seed: req.seed.unwrap_or(sc.spec.seed),
        ops_cap: req.ops_cap,
    };
    let timer = engine::timer_overhead_ns();
    let mut runs = Vec::new();
    for (i, name) in designs.iter().enumerate() {
        let tick = move |f: f64| progress(i, f);
        let r = crate::with_design!(name.as_str(), D => engine::run::<D>(sc, &opts, &tick))
            .ok_or_else(|| format!("unknown design {name:?}"))??;
        runs.push(r);
    }
    let info = report::RunInfo {
        designs,
        seconds,
        seed: opts.seed,
        ops_cap: opts.ops_cap,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads_per_design: runs.first().map_or(0, |r| r.os_threads),
        timer_overhead_ns: timer,
    };
    Ok(Report::new(sc, info, &runs))
}
