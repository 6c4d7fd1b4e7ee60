//! `gntsim`: runs grant-table workloads on each design and reports side by side.
//!
//! See `docs/simulator.md`, or `gntsim --help`.

use clap::{Args, Parser, Subcommand};
use gnttab::sim::{self, builtin, RunRequest};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;

const ABOUT: &str = "Simulate Xen grant-table workloads on each locking design and compare them";

const LONG_ABOUT: &str = "\
Simulate Xen grant-table workloads on each locking design and compare them.

A scenario describes domains (backends, guests), the threads that drive their vCPUs (map,
unmap, copy, query, grant, end access, ...) and timed events (destroy a domain, grow a table,
rewrite entries, forge handles). gntsim runs the scenario on each design you name, one after
another with the same seed, checks every invariant at the end, and prints one comparison
table. Without arguments it runs the `default` scenario on `fast` and `xen`.";

const EXAMPLES: &str = "\
Examples:
  gntsim                                  run the default scenario on fast and xen
  gntsim list                             built-in scenarios and designs
  gntsim run netback                      a built-in scenario
  gntsim run teardown --design all        every design (the first is the ratio baseline)
  gntsim run my.toml --seconds 5 --json out.json --plot charts/
  gntsim show blkback > my.toml           start your own scenario from a built-in one
  gntsim check my.toml                    validate a scenario file without running it

Exit status: 0 all verdicts clean, 1 a verdict is not clean, 2 bad arguments or scenario.
Scenario format and report columns: docs/simulator.md";

#[derive(Parser, Debug)]
#[command(name = "gntsim", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a scenario on each design and print the comparison table.
    Run(RunArgs),
    /// List the built-in scenarios and the designs.
    List,
    /// Validate a scenario file (or built-in) without running it.
    Check {
        /// Scenario file (or built-in name).
        file: String,
    },
    /// Print a built-in scenario's TOML (a starting point for your own).
    Show {
        /// Built-in scenario name.
        name: String,
    },
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// A built-in scenario name (see `gntsim list`) or a path to a TOML scenario file.
    #[arg(default_value = "default")]
    scenario: String,
    /// Designs to run, comma-separated, in report order; the first is the baseline of the
    /// ratio column. `all` runs every design.
    #[arg(
        long = "design",
        short = 'd',
        value_delimiter = ',',
        default_value = "fast,xen"
    )]
    designs: Vec<String>,
    /// Seconds per design (default: the scenario's `seconds`).
    #[arg(long, short = 's')]
    seconds: Option<f64>,
    /// Seed for every random choice, the same for each design (default: the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop each thread after this many operations (a quick, bounded run).
    #[arg(long)]
    ops: Option<u64>,
    /// Write every figure, and the scenario, as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write SVG charts (throughput, latency, teardown) into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Print only the table (no header, notes or progress bar).
    #[arg(long, short = 'q', conflicts_with = "verbose")]
    quiet: bool,
    /// Also print per-thread, per-status, per-event and teardown details.
    #[arg(long, short = 'v')]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        None => run(RunArgs {
            scenario: "default".into(),
            designs: sim::DEFAULT_DESIGNS.iter().map(|s| s.to_string()).collect(),
            ..RunArgs::default()
        }),
        Some(Cmd::Run(a)) => run(a),
        Some(Cmd::List) => {
            list();
            ExitCode::SUCCESS
        }
        Some(Cmd::Check { file }) => match sim::load(&file) {
            Ok(sc) => {
                let p = &sc.plan;
                let n = |k: usize, w: &str| format!("{k} {w}{}", if k == 1 { "" } else { "s" });
                println!(
                    "{}: ok: scenario `{}`: {}, {}, {}, {}, {} s per design",
                    sc.origin,
                    sc.name,
                    n(p.domains.iter().filter(|d| d.spawn).count(), "domain"),
                    n(p.threads.len(), "thread"),
                    n(p.events.len(), "event"),
                    n(p.churn.len(), "churn entry").replace("entrys", "entries"),
                    sc.seconds()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Some(Cmd::Show { name }) => match builtin::find(&name) {
            Some(b) => {
                print!("{}", b.source);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: no built-in scenario {name:?}; try `gntsim list`");
                ExitCode::from(2)
            }
        },
    }
}

fn list() {
    println!("Built-in scenarios (gntsim run <name>; gntsim show <name> prints the file):");
    for b in builtin::BUILTINS {
        let desc = b
            .load()
            .map(|s| s.spec.description)
            .unwrap_or_else(|e| format!("(does not parse: {e})"));
        println!("  {:<12} {desc}", b.name);
    }
    println!();
    println!("Designs (--design a,b,...; default fast,xen):");
    for d in gnttab::design::DESIGN_NAMES {
        println!("  {:<14} {}", d, design_blurb(d));
    }
}

fn design_blurb(d: &str) -> &'static str {
    match d {
        "fast" => "lock-free table validity, two inline fast maptrack slots per entry, per-map IOMMU bus frames",
        "xen" => "upstream Xen: per-CPU rwlock table lock, per-vCPU maptrack free lists, per-MFN IOMMU counts",
        "xen-plainrw" => "Xen with a plain rwlock as the table lock (Xen before 2016)",
        "xen+fastslots" => "ablation: Xen's table lock with Fast's inline slots",
        "fast-noslots" => "ablation: lock-free tables with Xen's free-list maptrack",
        "xen+permapbfn" => "ablation: Xen's tables and maptrack with Fast's per-map bus frames",
        _ => "",
    }
}

fn run(a: RunArgs) -> ExitCode {
    let sc = match sim::load(&a.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let designs = match sim::resolve_designs(&a.designs) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(s) = a.seconds {
        if !(s.is_finite() && s > 0.0) {
            eprintln!("error: --seconds must be a positive number");
            return ExitCode::from(2);
        }
    }
    let seconds = a.seconds.unwrap_or_else(|| sc.seconds());
    let total = seconds * designs.len() as f64;
    let bar = if a.quiet || total < 1.0 {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new((designs.len() * 1000) as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] {msg} ({elapsed})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b
    };
    let names = designs.clone();
    let progress = |i: usize, f: f64| {
        bar.set_message(format!("{} on {}", sc.name, names[i]));
        bar.set_position((i * 1000) as u64 + (f * 1000.0) as u64);
    };
    let req = RunRequest {
        designs,
        seconds: a.seconds,
        seed: a.seed,
        ops_cap: a.ops,
    };
    let report = match sim::run(&sc, &req, &progress) {
        Ok(r) => r,
        Err(e) => {
            bar.finish_and_clear();
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    bar.finish_and_clear();
    print!("{}", report.render(a.quiet, a.verbose));
    if let Some(p) = &a.json {
        if let Err(e) = std::fs::write(p, report.to_json()) {
            eprintln!("error: writing {}: {e}", p.display());
            return ExitCode::from(2);
        }
        if !a.quiet {
            println!("JSON report written to {}", p.display());
        }
    }
    if let Some(d) = &a.plot {
        match sim::plot::write_all(&report, d) {
            Ok(files) => {
                if !a.quiet {
                    let names: Vec<String> =
                        files.iter().map(|f| f.display().to_string()).collect();
                    println!("charts written: {}", names.join(", "));
                }
            }
            Err(e) => {
                eprintln!("error: plotting into {}: {e}", d.display());
                return ExitCode::from(2);
            }
        }
    }
    if report.all_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
