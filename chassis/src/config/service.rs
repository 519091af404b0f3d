//! `[service]`: who the service is.

use serde::Deserialize;

use super::{Problems, Validate};

/// `[service]`: who this service is. Used in the tracing resource, `chassis_build_info` and
/// health responses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// `service.name`: default: the crate name when started by `#[chassis::main]`, else `"service"`.
    pub name: String,
    /// `service.version`: default: the crate version when started by `#[chassis::main]`, else `"0.0.0"`.
    pub version: String,
    /// `service.environment`: default `"development"`. Selects `config/{environment}.toml`.
    pub environment: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: "service".into(),
            version: "0.0.0".into(),
            environment: "development".into(),
        }
    }
}

/// `true` for a name that may name `config/{environment}.toml`.
pub(super) fn is_environment_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Validate for ServiceConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(!self.name.trim().is_empty(), "name", "must not be empty");
        problems.check(
            is_environment_name(&self.environment),
            "environment",
            "must be a non-empty name of letters, digits, '-' or '_' (it names config/{environment}.toml)",
        );
    }
}

/// Settings type for a service that has no settings of its own.
///
/// `Context<()>` works as well.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct NoSettings {}
