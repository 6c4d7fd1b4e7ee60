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

/// Every built-in scenario, in `gntsim list` order.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "default",
        source: include_str!("../../scenarios/default.toml"),
    },
    Builtin {
        name: "netback",
        source: include_str!("../../scenarios/netback.toml"),
    },
    Builtin {
        name: "blkback",
        source: include_str!("../../scenarios/blkback.toml"),
    },
    Builtin {
        name: "churn",
        source: include_str!("../../scenarios/churn.toml"),
    },
    Builtin {
        name: "teardown",
        source: include_str!("../../scenarios/teardown.toml"),
    },
    Builtin {
        name: "adversarial",
        source: include_str!("../../scenarios/adversarial.toml"),
    },
    Builtin {
        name: "iommu",
        source: include_str!("../../scenarios/iommu.toml"),
    },
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
