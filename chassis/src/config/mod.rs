//! Layered, typed configuration: one tree holding a library's sections and the service's
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
//! [`ConfigLoader::load`] splits the tree: the top-level sections named by the fields of a
//! sections type (the chassis' is [`ChassisConfig`](crate::runtime::ChassisConfig)) are
//! deserialized into it and [validated](Validate); everything else is deserialized into the
//! service's own settings type. Validation happens once, at start: a wrong type, an
//! unparsable value, a zero timeout or an unknown key in a chassis section fails with a
//! [`ConfigError`] naming the key, where its value came from, and what is expected.
//!
//! ```
//! use chassis::config::ConfigLoader;
//! use chassis::runtime::ChassisConfig;
//!
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     greeting: String,
//! }
//!
//! let (chassis, settings) = ConfigLoader::new()
//!     .dir("does-not-exist") // optional files may be missing
//!     .environment_source([("APP__HTTP__PORT", "8081"), ("APP__GREETING", "hi")])
//!     .set("service.name", "orders")
//!     .load::<ChassisConfig, Settings>()
//!     .unwrap();
//! assert_eq!(chassis.http.port, 8081);
//! assert_eq!(chassis.service.name, "orders");
//! assert_eq!(settings.greeting, "hi");
//! ```

mod choices;
mod error;
mod introspect;
mod loader;
mod problems;
mod report;
mod secret;
mod service;
mod units;

pub(crate) use introspect::field_names;

pub(crate) use choices::choices;
pub use error::{ConfigError, ConfigIssue};
pub use loader::ConfigLoader;
pub use problems::{Problems, Validate, validate};
pub use secret::Secret;
pub use service::{NoSettings, ServiceConfig};
pub use units::{ByteSize, duration};

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    /// A library's sections, as the loader sees any: `[http]` and `[service]` here.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sections {
        service: ServiceConfig,
        http: Http,
    }

    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Http {
        port: u16,
        #[serde(with = "duration")]
        timeout: Duration,
    }

    impl Default for Http {
        fn default() -> Self {
            Self {
                port: 8080,
                timeout: Duration::from_secs(30),
            }
        }
    }

    impl Validate for Sections {
        fn validate(&self, problems: &mut Problems) {
            problems.nested("service", |p| self.service.validate(p));
            problems.check(
                !self.http.timeout.is_zero(),
                "http.timeout",
                "must be greater than zero",
            );
            problems.check(self.http.port != 1, "http.port", "must not be 1");
        }
    }

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
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "default.toml",
            "greeting = \"default\"\n[http]\nport = 1000\ntimeout = \"5s\"\n[service]\nenvironment = \"staging\"\n",
        );
        write(
            dir.path(),
            "staging.toml",
            "greeting = \"staging\"\n[http]\nport = 2000\n",
        );
        let extra = write(dir.path(), "extra.toml", "[http]\nport = 3000\n");

        let (sections, settings) = loader(dir.path()).load::<Sections, Settings>().unwrap();
        assert_eq!(sections.http.port, 2000, "environment file beats default.toml");
        assert_eq!(settings.greeting.as_deref(), Some("staging"));
        assert_eq!(sections.http.timeout, Duration::from_secs(5));

        let (sections, _) = loader(dir.path()).file(&extra).load::<Sections, ()>().unwrap();
        assert_eq!(sections.http.port, 3000, "explicit file beats the environment file");

        let (sections, _) = loader(dir.path())
            .file(&extra)
            .environment_source([("APP__HTTP__PORT", "4000")])
            .load::<Sections, ()>()
            .unwrap();
        assert_eq!(sections.http.port, 4000, "environment variables beat files");

        let (sections, _) = loader(dir.path())
            .environment_source([("APP__HTTP__PORT", "4000")])
            .set("http.port", 5000)
            .load::<Sections, ()>()
            .unwrap();
        assert_eq!(sections.http.port, 5000, "overrides beat everything");
    }

    #[test]
    fn the_sections_are_the_fields_of_the_sections_type() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "default.toml",
            "[orders]\nmax_items = 5\n[http]\nport = 81\n",
        );
        let (sections, settings) = loader(dir.path()).load::<Sections, serde_json::Value>().unwrap();
        assert_eq!(sections.http.port, 81);
        assert_eq!(settings, serde_json::json!({"orders": {"max_items": 5}}));
        loader(dir.path()).load::<Sections, NoSettings>().unwrap();
    }

    #[test]
    fn environment_variable_selects_the_environment_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "production.toml", "[http]\nport = 80\n");
        let (sections, _) = loader(dir.path())
            .environment_source([("APP__SERVICE__ENVIRONMENT", "production")])
            .load::<Sections, ()>()
            .unwrap();
        assert_eq!(sections.http.port, 80);
    }

    #[test]
    fn custom_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (sections, _) = loader(dir.path())
            .prefix("ORDERS")
            .environment_source([("ORDERS__HTTP__PORT", "81"), ("APP__HTTP__PORT", "82")])
            .load::<Sections, ()>()
            .unwrap();
        assert_eq!(sections.http.port, 81);
    }

    #[test]
    fn wrong_type_names_key_and_source() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http]\nport = \"eighty\"\n");
        let issue = single_issue(loader(dir.path()).load::<Sections, ()>().unwrap_err());
        assert_eq!(issue.key, "http.port");
        assert!(issue.source.ends_with("default.toml"), "{issue}");
        assert!(issue.problem.contains("\"eighty\""), "{issue}");
        assert!(issue.problem.contains("integer"), "{issue}");

        let issue = single_issue(
            loader(dir.path())
                .environment_source([("APP__HTTP__PORT", "eighty")])
                .load::<Sections, ()>()
                .unwrap_err(),
        );
        assert_eq!(issue.key, "http.port");
        assert_eq!(issue.source, "environment variable APP__HTTP__PORT");
    }

    #[test]
    fn validation_problems_name_the_key_and_source_all_at_once() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http]\ntimeout = \"0s\"\n");
        let err = loader(dir.path())
            .set("http.port", 1)
            .load::<Sections, ()>()
            .unwrap_err();
        let issues = err.issues();
        assert_eq!(issues.len(), 2, "{err}");
        assert_eq!(issues[0].key, "http.timeout");
        assert!(issues[0].source.ends_with("default.toml"), "{err}");
        assert_eq!(issues[1].key, "http.port");
        assert_eq!(issues[1].source, "an override");
    }

    #[test]
    fn duration_without_unit_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let issue = single_issue(
            loader(dir.path())
                .environment_source([("APP__HTTP__TIMEOUT", "30")])
                .load::<Sections, ()>()
                .unwrap_err(),
        );
        assert_eq!(issue.key, "http.timeout");
        assert!(issue.problem.contains("\"30s\""), "{issue}");
    }

    #[test]
    fn unknown_key_in_a_section_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http]\nprot = 8080\n");
        let issue = single_issue(loader(dir.path()).load::<Sections, ()>().unwrap_err());
        assert_eq!(issue.key, "http.prot");
        assert!(issue.problem.contains("unknown key"), "{issue}");
        assert!(issue.problem.contains("port"), "{issue}");
        assert!(issue.source.ends_with("default.toml"), "{issue}");
    }

    #[test]
    fn every_problem_of_every_source_is_reported_at_once_with_suggestions() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Strict {
            retries: u8,
            mode: Mode,
        }
        crate::config::choices! {
            #[derive(Debug)]
            enum Mode {
                Fast = "fast",
                Safe = "safe",
            }
        }
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "default.toml",
            "mode = \"quick\"\n[http]\ntimeout = \"5 parsecs\"\n",
        );
        let error = loader(dir.path())
            .environment_source([
                ("APP__HTTP__PORTT", "81"),
                ("APP__HTTTP__PORT", "1"),
                ("APP__RETRIES", "many"),
            ])
            .load::<Sections, Strict>()
            .unwrap_err();
        let issues = error.issues();
        let find = |key: &str| {
            issues
                .iter()
                .find(|i| i.key == key)
                .unwrap_or_else(|| panic!("no issue for {key} in {error}"))
        };
        assert!(find("http.portt").problem.contains("did you mean `port`"), "{error}");
        assert_eq!(find("http.portt").source, "environment variable APP__HTTP__PORTT");
        assert!(find("http.timeout").problem.contains("parsecs"), "{error}");
        let section = find("htttp");
        assert!(section.problem.contains("did you mean `http`"), "{error}");
        assert_eq!(section.source, "environment variable APP__HTTTP__PORT");
        assert!(find("retries").problem.contains("integer"), "{error}");
        let mode = find("mode");
        assert!(mode.problem.contains(r#"expected one of "fast", "safe""#), "{error}");
        assert_eq!(issues.len(), 5, "{error}");
    }

    #[test]
    fn otel_service_name_names_the_service_below_the_chassis_variable() {
        let dir = tempfile::tempdir().unwrap();
        let (sections, _) = loader(dir.path())
            .environment_source([("OTEL_SERVICE_NAME", "checkout")])
            .load::<Sections, ()>()
            .unwrap();
        assert_eq!(sections.service.name, "checkout");
        let (sections, _) = loader(dir.path())
            .environment_source([("OTEL_SERVICE_NAME", "checkout"), ("APP__SERVICE__NAME", "orders")])
            .load::<Sections, ()>()
            .unwrap();
        assert_eq!(sections.service.name, "orders");
    }

    #[test]
    fn lists_and_tables_come_from_the_environment_as_json() {
        #[derive(Debug, Deserialize)]
        struct Lists {
            secrets: Vec<String>,
            limits: std::collections::BTreeMap<String, u32>,
        }
        let dir = tempfile::tempdir().unwrap();
        let (_, lists) = loader(dir.path())
            .environment_source([
                ("APP__SECRETS", r#"["one", "two"]"#),
                ("APP__LIMITS", r#"{"orders": 5}"#),
            ])
            .load::<Sections, Lists>()
            .unwrap();
        assert_eq!(lists.secrets, ["one", "two"]);
        assert_eq!(lists.limits["orders"], 5);
        let error = loader(dir.path())
            .environment_source([("APP__SECRETS", "[one")])
            .load::<Sections, Lists>()
            .unwrap_err();
        assert!(
            error.to_string().contains("not JSON") || error.to_string().contains("is not"),
            "{error}"
        );
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
                .load::<Sections, Strict>()
                .unwrap_err(),
        );
        assert_eq!(issue.key, "retries");
        assert_eq!(issue.source, "environment variable APP__RETRIES");

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Needs {
            database_url: String,
        }
        let err = loader(dir.path()).load::<Sections, Needs>().unwrap_err();
        assert!(err.to_string().contains("database_url"), "{err}");
    }

    #[test]
    fn missing_optional_files_are_fine_but_a_named_file_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let err = loader(dir.path())
            .file(dir.path().join("nope.toml"))
            .load::<Sections, ()>()
            .unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("nope.toml"), "{err}");

        let err = loader(dir.path())
            .environment_source([("APP_CONFIG_FILE", dir.path().join("gone.toml").to_str().unwrap())])
            .load::<Sections, ()>()
            .unwrap_err();
        assert!(err.to_string().contains("gone.toml"), "{err}");
    }

    #[test]
    fn malformed_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http\nport = 1\n");
        let err = loader(dir.path()).load::<Sections, ()>().unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("default.toml"), "{err}");
    }
}
