//! The simulator behind `gntsim`: workloads run on a design, measured and checked.
//!
//! This module is compiled with the `sim` feature (on by default).

pub mod default_scenario;
