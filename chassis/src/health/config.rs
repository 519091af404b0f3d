//! `[health]`: how checks run.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{Problems, Validate};

/// `[health]`: how checks run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// `health.cache_ttl`: how long a probe's check results are reused. Default `"1s"`; `"0s"`
    /// runs the checks on every probe.
    #[serde(with = "crate::config::duration")]
    pub cache_ttl: Duration,
    /// `health.check_timeout`: the timeout of a check that sets none itself. Default `"1s"`, the
    /// same as Kubernetes' default probe timeout, so a hung dependency reports `fail` instead of
    /// timing out the probe.
    #[serde(with = "crate::config::duration")]
    pub check_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(1),
            check_timeout: Duration::from_secs(1),
        }
    }
}

impl Validate for HealthConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            !self.check_timeout.is_zero(),
            "check_timeout",
            "must be greater than zero",
        );
    }
}
