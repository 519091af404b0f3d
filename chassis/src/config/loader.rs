//! The layered loader: defaults < files < environment variables < overrides.

use std::any::TypeId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Map, Source as _, Value, ValueKind};
use serde::de::DeserializeOwned;

use super::introspect::field_names;
use super::report::file_error;
use super::service::is_environment_name;
use super::{ConfigError, Problems, ServiceConfig, Validate};

/// Builds the configuration tree from defaults, files, the environment and overrides, and
/// splits it into sections owned by a library and the service's own settings.
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    pub(super) prefix: String,
    dir: Option<PathBuf>,
    files: Vec<PathBuf>,
    defaults: Vec<(String, Value)>,
    pub(super) overrides: Vec<(String, Value)>,
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
        // The standard name of the service, below the chassis' own variable.
        if let Some(name) = self.env_var("OTEL_SERVICE_NAME") {
            builder = builder.add_source(Named {
                key: "service.name",
                value: name,
                origin: "environment variable OTEL_SERVICE_NAME",
            });
        }
        builder = builder.add_source(JsonValues(env));
        for (key, value) in &self.overrides {
            builder = builder
                .set_override(key.as_str(), value.clone())
                .map_err(|e| self.invalid_key(key, e))?;
        }
        builder.build().map_err(file_error)
    }

    /// Loads the tree, deserializes the top-level sections named by `S`'s fields into `S` and
    /// validates them, and deserializes every other key into the service's settings `T`.
    ///
    /// `S` is the aggregate of a library's sections (the chassis' own is
    /// `chassis::runtime::ChassisConfig`); its serde field names are the section names.
    pub fn load<S, T>(&self) -> Result<(S, T), ConfigError>
    where
        S: DeserializeOwned + Validate,
        T: DeserializeOwned + 'static,
    {
        // The environment decides which file to read, and may itself come from any source but
        // that file: read it from everything else first.
        let first = self.build(None)?;
        let environment = first
            .get_string("service.environment")
            .unwrap_or_else(|_| ServiceConfig::default().environment);
        let tree = self.build(is_environment_name(&environment).then_some(environment.as_str()))?;
        let root: Map<String, Value> = tree.collect().map_err(file_error)?;

        let names = field_names::<S>();
        let (owned, own): (Map<String, Value>, Map<String, Value>) = root
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| names.contains(&k.as_str()));

        // Every problem in one report: the sections', the unknown sections, the settings'.
        let mut issues = Vec::new();
        let sections = match self.deserialize::<S>(Value::new(None, ValueKind::Table(owned)), &root, "") {
            Ok(sections) => {
                let mut problems = Problems::default();
                sections.validate(&mut problems);
                issues.extend(problems.into_issues(|key| self.origin_of(&root, key)));
                Some(sections)
            }
            Err(error) => {
                issues.extend(error.issues().iter().cloned());
                None
            }
        };
        let no_settings = TypeId::of::<T>() == TypeId::of::<()>();
        let (unknown, own) = self.unknown_sections::<T>(own, names, &root);
        issues.extend(unknown);
        let own = if no_settings {
            Value::new(None, ValueKind::Nil)
        } else {
            Value::new(None, ValueKind::Table(own))
        };
        let settings = match self.deserialize::<T>(own, &root, "") {
            Ok(settings) => Some(settings),
            Err(error) => {
                issues.extend(error.issues().iter().cloned());
                None
            }
        };
        match (sections, settings) {
            (Some(sections), Some(settings)) if issues.is_empty() => Ok((sections, settings)),
            _ => Err(ConfigError::Invalid(issues)),
        }
    }

    /// The top-level keys that are no setting of the service and look like a misspelt section
    /// (`htttp`). Returns their issues and the service's keys without them.
    fn unknown_sections<T: DeserializeOwned + 'static>(
        &self,
        own: Map<String, Value>,
        sections: &[&'static str],
        root: &Map<String, Value>,
    ) -> (Vec<super::ConfigIssue>, Map<String, Value>) {
        let settings = field_names::<T>();
        let mut issues = Vec::new();
        let mut kept = Map::new();
        for (key, value) in own {
            let suggestion = super::report::closest(&key, sections.iter().copied());
            let unknown = !settings.contains(&key.as_str()) && suggestion.is_some();
            if !unknown {
                kept.insert(key, value);
                continue;
            }
            let problem = format!(
                "unknown section; did you mean `{}`? (the chassis' sections are {})",
                suggestion.unwrap_or_default(),
                sections.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            );
            issues.push(super::ConfigIssue {
                source: self.origin_of(root, &key),
                key,
                problem,
            });
        }
        (issues, kept)
    }
}

/// One value from a named origin.
#[derive(Debug, Clone)]
struct Named {
    key: &'static str,
    value: String,
    origin: &'static str,
}

impl config::Source for Named {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        let origin = self.origin.to_owned();
        let value = Value::new(Some(&origin), ValueKind::String(self.value.clone()));
        Ok(Map::from([(self.key.to_owned(), value)]))
    }
}

/// Environment variables whose value is a JSON array or object (`APP__JWT__SECRETS='["a","b"]'`)
/// read as that list or table; every other value as the string it is.
#[derive(Debug, Clone)]
struct JsonValues(Environment);

impl config::Source for JsonValues {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        let mut values = self.0.collect()?;
        for value in values.values_mut() {
            let ValueKind::String(text) = &value.kind else {
                continue;
            };
            let trimmed = text.trim_start();
            if !(trimmed.starts_with('[') || trimmed.starts_with('{')) {
                continue;
            }
            let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                config::ConfigError::Message(format!(
                    "an environment variable's value starts like JSON but is not: {e} (in {text:?})"
                ))
            })?;
            *value = from_json(json);
        }
        Ok(values)
    }
}

fn from_json(json: serde_json::Value) -> Value {
    let origin = Some(&"the environment".to_owned());
    let kind = match json {
        serde_json::Value::Null => ValueKind::Nil,
        serde_json::Value::Bool(b) => ValueKind::Boolean(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => ValueKind::I64(i),
            (None, Some(f)) => ValueKind::Float(f),
            _ => ValueKind::String(n.to_string()),
        },
        serde_json::Value::String(s) => ValueKind::String(s),
        serde_json::Value::Array(items) => ValueKind::Array(items.into_iter().map(from_json).collect()),
        serde_json::Value::Object(fields) => {
            ValueKind::Table(fields.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    };
    Value::new(origin, kind)
}

fn toml_file(path: &Path, required: bool) -> File<config::FileSourceFile, FileFormat> {
    File::from(path).format(FileFormat::Toml).required(required)
}
