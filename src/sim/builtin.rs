//! The built-in scenarios: the files in `scenarios/`, embedded in the binary so
//! `gntsim run netback` works from any directory.

use super::scenario::{Scenario, ScenarioError};

/// One built-in scenario.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    /// Name (`gntsim run <name>`).
    pub name: &'static str,
    /// The TOML text.
    pub source: &'static str,
}

/// A built-in scenario: its name and the text of `scenarios/<name>.toml`.
macro_rules! builtin {
    ($name:literal) => {
        Builtin {
            name: $name,
            source: include_str!(concat!("../../scenarios/", $name, ".toml")),
        }
    };
}

/// Every built-in scenario, in `gntsim list` order.
pub const BUILTINS: &[Builtin] = &[
    builtin!("default"),
    builtin!("netback"),
    builtin!("blkback"),
    builtin!("churn"),
    builtin!("teardown"),
    builtin!("adversarial"),
    builtin!("iommu"),
];

/// The built-in scenario called `name`.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

impl Builtin {
    /// Parses it (built-ins are tested to parse).
    pub fn load(&self) -> Result<Scenario, ScenarioError> {
        Scenario::parse(self.source, &format!("builtin:{}", self.name), self.name)
    }
}
