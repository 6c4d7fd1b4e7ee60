//! `gntsim`: runs grant-table workloads on each design and reports side by side.

use clap::{Parser, Subcommand};
use gnttab::sim::default_scenario::{self, Outcome, Params};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "gntsim",
    version,
    about = "Simulate Xen grant-table workloads on each locking design and compare them"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the default scenario: a backend with 2 vCPU threads mapping and unmapping grants of
    /// 4 guests that keep granting and ending access.
    Run {
        /// Designs to run, in report order (the first is the ratio baseline).
        #[arg(long = "design", value_delimiter = ',', default_values_t = vec!["fast".to_string(), "xen".to_string()])]
        designs: Vec<String>,
        /// Seconds per design.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Seed for every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// List the designs.
    List,
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Run {
        designs: vec!["fast".into(), "xen".into()],
        seconds: 3.0,
        seed: 1,
    }) {
        Cmd::List => {
            for d in gnttab::design::DESIGN_NAMES {
                println!("{d}");
            }
        }
        Cmd::Run {
            designs,
            seconds,
            seed,
        } => {
            let p = Params {
                duration: Duration::from_secs_f64(seconds),
                seed,
                ..Params::default()
            };
            println!(
                "default scenario: backend with {} vCPU threads, {} guests x {} refs, batches of {}, {seconds} s per design",
                p.backend_vcpus, p.guests, p.refs_per_guest, p.batch
            );
            let mut outs: Vec<Outcome> = Vec::new();
            for name in &designs {
                let Some(o) =
                    gnttab::with_design!(name.as_str(), D => default_scenario::run::<D>(&p))
                else {
                    eprintln!("unknown design {name:?}; try `gntsim list`");
                    std::process::exit(2);
                };
                outs.push(o);
            }
            print_table(&outs);
            if outs.iter().any(|o| !o.check.is_ok()) {
                std::process::exit(1);
            }
        }
    }
}

fn print_table(outs: &[Outcome]) {
    println!();
    println!(
        "{:<14} {:>12} {:>8} {:>10} {:>10} {:>9} {:>10} {:>9}  verdict",
        "design", "ops/s", "ratio", "map ok", "map fail", "fast %", "slow maps", "flushes"
    );
    let base = outs.first().map(Outcome::ops_per_sec).unwrap_or(1.0);
    for o in outs {
        let ok = o.map_status.get(&0).copied().unwrap_or(0);
        let fail: u64 = o
            .map_status
            .iter()
            .filter(|(k, _)| **k != 0)
            .map(|(_, v)| v)
            .sum();
        let fast_pct = if o.backend.maps > 0 {
            100.0 * o.backend.fast_maps as f64 / o.backend.maps as f64
        } else {
            0.0
        };
        let verdict = if o.check.is_ok() {
            format!("clean ({} live mappings)", o.check.mappings)
        } else {
            format!("{} VIOLATIONS", o.check.violations.len())
        };
        println!(
            "{:<14} {:>12.0} {:>8.2} {:>10} {:>10} {:>8.1}% {:>10} {:>9}  {}",
            o.design,
            o.ops_per_sec(),
            o.ops_per_sec() / base,
            ok,
            fail,
            fast_pct,
            o.backend.slow_maps,
            o.backend.tlb_flushes,
            verdict
        );
        for v in o.check.violations.iter().take(10) {
            println!("    {v}");
        }
    }
    println!();
    println!(
        "ops/s counts map and unmap elements; ratio is against the first design; map failures are"
    );
    println!(
        "GNTST_general_error from grants the guests ended while the backend was not mapping them."
    );
}
