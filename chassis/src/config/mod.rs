//! Layered, typed configuration: one tree holding the chassis' own sections and the service's
//! settings.
//!
//! Sources, lowest precedence first:
//!
//! 1. built-in defaults (documented on each section's type),
//! 2. `config/default.toml` (optional),
//! 3. `config/{environment}.toml` (optional; the environment is `service.environment`,
//!    `development` unless set),
//! 4. files named explicitly with [`ConfigLoader::file`] or `{PREFIX}_CONFIG_FILE` (required),
//! 5. environment variables `{PREFIX}__SECTION__KEY`, e.g. `APP__HTTP__PORT=8081`,
//! 6. programmatic overrides ([`ConfigLoader::set`]).
//!
//! The folder is `config/` under the working directory, or `{PREFIX}_CONFIG_DIR`.
//!
//! The chassis owns the top-level sections listed in [`RESERVED_SECTIONS`]; everything else in the
//! tree is deserialized into the service's own settings type. Validation happens once, at
//! start: a wrong type, an unparsable value, a zero timeout or an unknown key in a chassis
//! section fails with a [`ConfigError`] naming the key, where its value came from, and what is
//! expected.
//!
//! ```
//! use chassis::config::ConfigLoader;
//!
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     greeting: String,
//! }
//!
//! let config = ConfigLoader::new()
//!     .dir("does-not-exist") // optional files may be missing
//!     .environment_source([("APP__HTTP__PORT", "8081"), ("APP__GREETING", "hi")])
//!     .set("service.name", "orders")
//!     .load::<Settings>()
//!     .unwrap();
//! assert_eq!(config.chassis.http.port, 8081);
//! assert_eq!(config.chassis.service.name, "orders");
//! assert_eq!(config.settings.greeting, "hi");
//! ```

mod units;

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Map, Source as _, Value, ValueKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use units::{ByteSize, duration};

use crate::health::HealthConfig;
use crate::metrics::MetricsConfig;
use crate::runtime::{AdminConfig, HttpConfig, ShutdownConfig};
use crate::telemetry::TelemetryConfig;

/// The top-level keys that belong to the chassis. Everything else is the service's own.
pub const RESERVED_SECTIONS: &[&str] = &[
    "service",
    "http",
    "admin",
    "telemetry",
    "metrics",
    "health",
    "shutdown",
    "clients",
    "messaging",
];

/// The loaded configuration: the chassis' sections and the service's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config<T> {
    /// The chassis' own sections.
    pub chassis: ChassisConfig,
    /// The service's settings: every key outside [`RESERVED_SECTIONS`].
    pub settings: T,
}

/// The chassis' own sections of the configuration tree.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ChassisConfig {
    /// `[service]`: identity of the service.
    pub service: ServiceConfig,
    /// `[http]`: the main listener and its request limits.
    pub http: HttpConfig,
    /// `[admin]`: the admin listener (health probes, `/metrics`).
    pub admin: AdminConfig,
    /// `[telemetry]`: logs and traces.
    pub telemetry: TelemetryConfig,
    /// `[metrics]`: the Prometheus recorder and the HTTP RED metrics.
    pub metrics: MetricsConfig,
    /// `[health]`: health check execution.
    pub health: HealthConfig,
    /// `[shutdown]`: graceful shutdown timing.
    pub shutdown: ShutdownConfig,
    /// `[clients.<name>]`: the downstream services this one calls.
    pub clients: std::collections::BTreeMap<String, crate::client::ClientConfig>,
    /// `[messaging]`: the message bus.
    pub messaging: crate::messaging::MessagingConfig,
}

impl ChassisConfig {
    fn validate(&self, problems: &mut Problems) {
        self.service.validate(problems);
        self.http.validate(problems);
        self.admin.validate(&self.http, problems);
        self.telemetry.validate(problems);
        self.metrics.validate(problems);
        self.health.validate(problems);
        self.shutdown.validate(problems);
        self.messaging.validate(problems);
        for (name, client) in &self.clients {
            client.validate(&format!("clients.{name}"), problems);
        }
    }
}

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

impl ServiceConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(!self.name.trim().is_empty(), "service.name", "must not be empty");
        problems.check(
            !self.environment.trim().is_empty()
                && self
                    .environment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "service.environment",
            "must be a non-empty name of letters, digits, '-' or '_' (it names config/{environment}.toml)",
        );
    }
}

/// Settings type for a service that has no settings of its own.
///
/// `Context<()>` works as well.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct NoSettings {}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read or parsed.
    #[error("configuration file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// One or more values are invalid.
    #[error("{}", Issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The individual problems, when the error is about values.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            Self::Invalid(issues) => issues,
            Self::File { .. } => &[],
        }
    }
}

/// One invalid value: which key, where its value came from, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigIssue {
    /// The dotted key, e.g. `http.port`.
    pub key: String,
    /// Where the value came from: a file path, an environment variable, an override, or the
    /// built-in default.
    pub source: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}` (from {}): {}", self.key, self.source, self.problem)
    }
}

struct Issues<'a>(&'a [ConfigIssue]);

impl fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for issue in many {
                    write!(f, "\n  - {issue}")?;
                }
                Ok(())
            }
        }
    }
}

/// Problems found by validation, collected so all of them are reported at once.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<(String, String)>);

impl Problems {
    pub(crate) fn check(&mut self, ok: bool, key: &str, problem: impl Into<String>) {
        if !ok {
            self.0.push((key.to_owned(), problem.into()));
        }
    }

    pub(crate) fn push(&mut self, key: &str, problem: impl Into<String>) {
        self.0.push((key.to_owned(), problem.into()));
    }

    /// For settings built in code rather than loaded: the problems, attributed to "the code".
    pub(crate) fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Invalid(
            self.0
                .into_iter()
                .map(|(key, problem)| ConfigIssue {
                    key,
                    source: "the settings passed in code".into(),
                    problem,
                })
                .collect(),
        ))
    }
}

/// Builds a [`Config`] from defaults, files, the environment and overrides.
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    prefix: String,
    dir: Option<PathBuf>,
    files: Vec<PathBuf>,
    defaults: Vec<(String, Value)>,
    overrides: Vec<(String, Value)>,
    environment: Option<HashMap<String, String>>,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    /// A loader with prefix `APP` and folder `config/`.
    pub fn new() -> Self {
        Self {
            prefix: "APP".into(),
            dir: None,
            files: Vec::new(),
            defaults: Vec::new(),
            overrides: Vec::new(),
            environment: None,
        }
    }

    /// The environment variable prefix (default `APP`): keys are read from
    /// `{PREFIX}__SECTION__KEY`, the folder from `{PREFIX}_CONFIG_DIR`, extra files from
    /// `{PREFIX}_CONFIG_FILE`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The folder holding `default.toml` and `{environment}.toml` (default `config`).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Adds a required file, layered after the environment's file. A missing file is an error.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// Sets a built-in default for `key` (lowest precedence).
    pub fn default_value(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.defaults.push((key.to_owned(), value.into()));
        self
    }

    /// Overrides `key` (highest precedence). Tests use it to bind to port 0.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.overrides.push((key.to_owned(), value.into()));
        self
    }

    /// Reads environment variables from `vars` instead of the process environment.
    pub fn environment_source<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.environment = Some(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self
    }

    /// The configured prefix.
    pub fn env_prefix(&self) -> &str {
        &self.prefix
    }

    fn env_var(&self, name: &str) -> Option<String> {
        match &self.environment {
            Some(vars) => vars.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
        .filter(|v| !v.is_empty())
    }

    fn config_dir(&self) -> PathBuf {
        self.dir
            .clone()
            .or_else(|| self.env_var(&format!("{}_CONFIG_DIR", self.prefix)).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config"))
    }

    fn explicit_files(&self) -> Vec<PathBuf> {
        let mut files = self.files.clone();
        if let Some(list) = self.env_var(&format!("{}_CONFIG_FILE", self.prefix)) {
            files.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
            );
        }
        files
    }

    fn build(&self, environment: Option<&str>) -> Result<config::Config, ConfigError> {
        let dir = self.config_dir();
        let mut builder = config::Config::builder();
        for (key, value) in &self.defaults {
            builder = builder
                .set_default(key.as_str(), value.clone())
                .map_err(|e| self.invalid_key(key, e))?;
        }
        builder = builder.add_source(toml_file(&dir.join("default.toml"), false));
        if let Some(environment) = environment {
            builder = builder.add_source(toml_file(&dir.join(format!("{environment}.toml")), false));
        }
        for file in self.explicit_files() {
            if !file.is_file() {
                return Err(ConfigError::File {
                    path: file,
                    reason: "not found (it was named explicitly, so it is required)".into(),
                });
            }
            builder = builder.add_source(toml_file(&file, true));
        }
        let env = Environment::with_prefix(&self.prefix)
            .prefix_separator("__")
            .separator("__")
            .ignore_empty(true);
        let env = match &self.environment {
            Some(vars) => env.source(Some(vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())),
            None => env,
        };
        builder = builder.add_source(env);
        for (key, value) in &self.overrides {
            builder = builder
                .set_override(key.as_str(), value.clone())
                .map_err(|e| self.invalid_key(key, e))?;
        }
        builder.build().map_err(file_error)
    }

    fn invalid_key(&self, key: &str, error: config::ConfigError) -> ConfigError {
        ConfigError::Invalid(vec![ConfigIssue {
            key: key.to_owned(),
            source: "an override".into(),
            problem: error.to_string(),
        }])
    }

    /// Loads, deserializes and validates the configuration.
    pub fn load<T>(&self) -> Result<Config<T>, ConfigError>
    where
        T: DeserializeOwned + 'static,
    {
        // The environment decides which file to read, and may itself come from any source but
        // that file: read it from everything else first.
        let first = self.build(None)?;
        let environment = first
            .get_string("service.environment")
            .unwrap_or_else(|_| ServiceConfig::default().environment);
        let valid_name = !environment.is_empty()
            && environment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let tree = self.build(valid_name.then_some(environment.as_str()))?;
        let root: Map<String, Value> = tree.collect().map_err(file_error)?;

        let (reserved, own): (Map<String, Value>, Map<String, Value>) = root
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| RESERVED_SECTIONS.contains(&k.as_str()));

        let chassis: ChassisConfig = self.deserialize(Value::new(None, ValueKind::Table(reserved)), &root)?;
        let mut problems = Problems::default();
        chassis.validate(&mut problems);
        if !problems.0.is_empty() {
            return Err(ConfigError::Invalid(
                problems
                    .0
                    .into_iter()
                    .map(|(key, problem)| ConfigIssue {
                        source: self.origin_of(&root, &key),
                        key,
                        problem,
                    })
                    .collect(),
            ));
        }

        let own = if TypeId::of::<T>() == TypeId::of::<()>() {
            Value::new(None, ValueKind::Nil)
        } else {
            Value::new(None, ValueKind::Table(own))
        };
        let settings: T = self.deserialize(own, &root)?;
        Ok(Config { chassis, settings })
    }

    fn deserialize<T: DeserializeOwned>(&self, value: Value, root: &Map<String, Value>) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let (key, problem) = describe(&path, &inner);
            let source = match &inner {
                config::ConfigError::Type {
                    origin: Some(origin), ..
                } => self.describe_origin(origin, &key),
                _ => self.origin_of(root, &key),
            };
            ConfigError::Invalid(vec![ConfigIssue { key, source, problem }])
        })
    }

    /// Where the value at `key` came from.
    fn origin_of(&self, root: &Map<String, Value>, key: &str) -> String {
        if self.overrides.iter().any(|(k, _)| k == key) {
            return "an override".into();
        }
        let mut segments = key.split('.');
        let mut current = segments.next().and_then(|first| root.get(first));
        for segment in segments {
            current = match current.map(|v| &v.kind) {
                Some(ValueKind::Table(table)) => table.get(segment),
                _ => None,
            };
        }
        match current.and_then(Value::origin) {
            Some(origin) => self.describe_origin(origin, key),
            None if current.is_some() => "an override or built-in default".into(),
            None => "the built-in default".into(),
        }
    }

    fn describe_origin(&self, origin: &str, key: &str) -> String {
        if origin == "the environment" {
            let var = key.split('.').map(str::to_uppercase).collect::<Vec<_>>().join("__");
            format!("environment variable {}__{var}", self.prefix)
        } else {
            origin.to_owned()
        }
    }
}

fn toml_file(path: &Path, required: bool) -> File<config::FileSourceFile, FileFormat> {
    File::from(path).format(FileFormat::Toml).required(required)
}

fn file_error(error: config::ConfigError) -> ConfigError {
    match error {
        config::ConfigError::FileParse { uri, cause } => ConfigError::File {
            path: uri.map(PathBuf::from).unwrap_or_default(),
            reason: cause.to_string(),
        },
        config::ConfigError::Foreign(cause) => ConfigError::File {
            path: PathBuf::new(),
            reason: cause.to_string(),
        },
        other => ConfigError::Invalid(vec![ConfigIssue {
            key: String::new(),
            source: "configuration".into(),
            problem: other.to_string(),
        }]),
    }
}

/// Turns a deserialization error into `(key, problem)` with the key fully qualified.
fn describe(path: &str, error: &config::ConfigError) -> (String, String) {
    let path = if path == "." { String::new() } else { path.to_owned() };
    let (problem, field) = match error {
        config::ConfigError::Type {
            unexpected, expected, ..
        } => (format!("invalid type: {unexpected}, expected {expected}"), None),
        config::ConfigError::At { error, .. } => return describe(&path, error),
        config::ConfigError::Message(message) => {
            // serde's "unknown field `x`, expected one of ..." names the key one level down.
            let field = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned);
            match &field {
                Some(_) => {
                    let expected = message.split_once(", ").map(|(_, rest)| rest).unwrap_or("");
                    (format!("unknown key; {expected}"), field)
                }
                None => (message.clone(), None),
            }
        }
        other => (other.to_string(), None),
    };
    let key = match field {
        // serde_path_to_error already counts the unknown field as part of the path.
        Some(field) if path == field || path.ends_with(&format!(".{field}")) => path,
        Some(field) if path.is_empty() => field,
        Some(field) => format!("{path}.{field}"),
        None => path,
    };
    (key, problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[derive(Debug, Deserialize)]
    struct Settings {
        #[serde(default)]
        greeting: Option<String>,
    }

    fn loader(dir: &Path) -> ConfigLoader {
        ConfigLoader::new()
            .dir(dir)
            .environment_source(Vec::<(String, String)>::new())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    fn single_issue(err: ConfigError) -> ConfigIssue {
        match err {
            ConfigError::Invalid(mut issues) if issues.len() == 1 => issues.remove(0),
            other => panic!("expected one issue, got {other}"),
        }
    }

    #[test]
    fn defaults_apply_with_no_sources() {
        let dir = tempfile::tempdir().unwrap();
        let config = loader(dir.path()).load::<()>().unwrap();
        assert_eq!(config.chassis.http.port, 8080);
        assert_eq!(config.chassis.admin.port, 9090);
        assert_eq!(config.chassis.service.environment, "development");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "default.toml",
            "greeting = \"default\"\n[http]\nport = 1000\nrequest_timeout = \"5s\"\n[service]\nenvironment = \"staging\"\n",
        );
        write(
            dir.path(),
            "staging.toml",
            "greeting = \"staging\"\n[http]\nport = 2000\n",
        );
        let extra = write(dir.path(), "extra.toml", "[http]\nport = 3000\n");

        let config = loader(dir.path()).load::<Settings>().unwrap();
        assert_eq!(config.chassis.http.port, 2000, "environment file beats default.toml");
        assert_eq!(config.settings.greeting.as_deref(), Some("staging"));
        assert_eq!(config.chassis.http.request_timeout, Duration::from_secs(5));

        let config = loader(dir.path()).file(&extra).load::<Settings>().unwrap();
        assert_eq!(
            config.chassis.http.port, 3000,
            "explicit file beats the environment file"
        );

        let config = loader(dir.path())
            .file(&extra)
            .environment_source([("APP__HTTP__PORT", "4000")])
            .load::<Settings>()
            .unwrap();
        assert_eq!(config.chassis.http.port, 4000, "environment variables beat files");

        let config = loader(dir.path())
            .environment_source([("APP__HTTP__PORT", "4000")])
            .set("http.port", 5000)
            .load::<Settings>()
            .unwrap();
        assert_eq!(config.chassis.http.port, 5000, "overrides beat everything");
    }

    #[test]
    fn environment_variable_selects_the_environment_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "production.toml", "[http]\nport = 80\n");
        let config = loader(dir.path())
            .environment_source([("APP__SERVICE__ENVIRONMENT", "production")])
            .load::<()>()
            .unwrap();
        assert_eq!(config.chassis.http.port, 80);
    }

    #[test]
    fn custom_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let config = loader(dir.path())
            .prefix("ORDERS")
            .environment_source([("ORDERS__HTTP__PORT", "81"), ("APP__HTTP__PORT", "82")])
            .load::<()>()
            .unwrap();
        assert_eq!(config.chassis.http.port, 81);
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http]\nport = \"eighty\"\n");
        let issue = single_issue(loader(dir.path()).load::<()>().unwrap_err());
        assert_eq!(issue.key, "http.port");
        assert!(issue.source.ends_with("default.toml"), "{issue}");
        assert!(issue.problem.contains("\"eighty\""), "{issue}");
        assert!(issue.problem.contains("integer"), "{issue}");
    }

    #[test]
    fn wrong_type_from_the_environment_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let issue = single_issue(
            loader(dir.path())
                .environment_source([("APP__HTTP__PORT", "eighty")])
                .load::<()>()
                .unwrap_err(),
        );
        assert_eq!(issue.key, "http.port");
        assert_eq!(issue.source, "environment variable APP__HTTP__PORT");
    }

    #[test]
    fn unparsable_address_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[admin]\nhost = \"not-an-ip\"\n");
        let issue = single_issue(loader(dir.path()).load::<()>().unwrap_err());
        assert_eq!(issue.key, "admin.host");
        assert!(issue.problem.contains("IP address"), "{issue}");
        assert!(issue.source.ends_with("default.toml"), "{issue}");
    }

    #[test]
    fn zero_timeout_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http]\nrequest_timeout = \"0s\"\n");
        let issue = single_issue(loader(dir.path()).load::<()>().unwrap_err());
        assert_eq!(issue.key, "http.request_timeout");
        assert!(issue.problem.contains("greater than zero"), "{issue}");
        assert!(issue.source.ends_with("default.toml"), "{issue}");
    }

    #[test]
    fn duration_without_unit_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let issue = single_issue(
            loader(dir.path())
                .environment_source([("APP__SHUTDOWN__GRACE_PERIOD", "30")])
                .load::<()>()
                .unwrap_err(),
        );
        assert_eq!(issue.key, "shutdown.grace_period");
        assert!(issue.problem.contains("\"30s\""), "{issue}");
    }

    #[test]
    fn unknown_key_in_a_chassis_section_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http]\nprot = 8080\n");
        let issue = single_issue(loader(dir.path()).load::<()>().unwrap_err());
        assert_eq!(issue.key, "http.prot");
        assert!(issue.problem.contains("unknown key"), "{issue}");
        assert!(issue.problem.contains("port"), "{issue}");
        assert!(issue.source.ends_with("default.toml"), "{issue}");
    }

    #[test]
    fn unknown_keys_outside_chassis_sections_belong_to_the_service() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[orders]\nmax_items = 5\n");
        loader(dir.path()).load::<NoSettings>().unwrap();
        loader(dir.path()).load::<()>().unwrap();
    }

    #[test]
    fn service_settings_errors_name_the_key() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Strict {
            retries: u8,
        }
        let dir = tempfile::tempdir().unwrap();
        let issue = single_issue(
            loader(dir.path())
                .environment_source([("APP__RETRIES", "many")])
                .load::<Strict>()
                .unwrap_err(),
        );
        assert_eq!(issue.key, "retries");
        assert_eq!(issue.source, "environment variable APP__RETRIES");
    }

    #[test]
    fn missing_service_setting_is_reported() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Needs {
            database_url: String,
        }
        let dir = tempfile::tempdir().unwrap();
        let err = loader(dir.path()).load::<Needs>().unwrap_err();
        assert!(err.to_string().contains("database_url"), "{err}");
    }

    #[test]
    fn missing_optional_files_are_fine_but_a_named_file_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let err = loader(dir.path())
            .file(dir.path().join("nope.toml"))
            .load::<()>()
            .unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("nope.toml"), "{err}");

        let err = loader(dir.path())
            .environment_source([("APP_CONFIG_FILE", dir.path().join("gone.toml").to_str().unwrap())])
            .load::<()>()
            .unwrap_err();
        assert!(err.to_string().contains("gone.toml"), "{err}");
    }

    #[test]
    fn malformed_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http\nport = 1\n");
        let err = loader(dir.path()).load::<()>().unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("default.toml"), "{err}");
    }

    #[test]
    fn several_validation_problems_are_reported_together() {
        let dir = tempfile::tempdir().unwrap();
        let err = loader(dir.path())
            .set("http.request_timeout", "0s")
            .set("telemetry.sampling_ratio", 2.0)
            .load::<()>()
            .unwrap_err();
        let keys: Vec<_> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"http.request_timeout"), "{err}");
        assert!(keys.contains(&"telemetry.sampling_ratio"), "{err}");
        assert!(err.issues().iter().all(|i| i.source == "an override"), "{err}");
    }
}
