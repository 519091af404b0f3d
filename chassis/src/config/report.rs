//! Turns what the `config` crate and serde report into [`ConfigIssue`]s that name the key, where
//! its value came from, and what is expected.

use std::path::PathBuf;

use config::{Map, Value, ValueKind};

use super::{ConfigError, ConfigIssue, ConfigLoader};

impl ConfigLoader {
    /// Deserializes `value`, reporting a failure against the key it happened at.
    pub(super) fn deserialize<T: serde::de::DeserializeOwned>(
        &self,
        value: Value,
        root: &Map<String, Value>,
    ) -> Result<T, ConfigError> {
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
    pub(super) fn origin_of(&self, root: &Map<String, Value>, key: &str) -> String {
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

    pub(super) fn invalid_key(&self, key: &str, error: config::ConfigError) -> ConfigError {
        ConfigError::Invalid(vec![ConfigIssue {
            key: key.to_owned(),
            source: "an override".into(),
            problem: error.to_string(),
        }])
    }
}

/// A failure of the `config` crate itself: a file that does not parse, or a source that fails.
pub(super) fn file_error(error: config::ConfigError) -> ConfigError {
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
