//! `[service]`: who the service is.

use serde::Deserialize;

use super::{Problems, Validate};

/// `[service]`: who this service is. Used in the tracing resource, `chassis_build_info` and
/// health responses. The standard `OTEL_SERVICE_NAME` sets `service.name` too (below
/// `APP__SERVICE__NAME`), so every signal names the service the same way.
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
    /// `service.instance_id`: this process among the service's replicas
    /// (`service.instance.id` in the trace resource). Default: the `HOSTNAME` environment
    /// variable (a Kubernetes pod's name), else a random UUID made at start.
    pub instance_id: Option<String>,
}

impl ServiceConfig {
    /// The instance id: `instance_id`, else `HOSTNAME`, else a UUID made once per process.
    pub fn instance_id(&self) -> String {
        static GENERATED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        self.instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.trim().is_empty()))
            .unwrap_or_else(|| GENERATED.get_or_init(|| uuid::Uuid::new_v4().to_string()).clone())
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: "service".into(),
            version: "0.0.0".into(),
            environment: "development".into(),
            instance_id: None,
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
