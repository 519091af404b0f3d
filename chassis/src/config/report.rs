//! Turns what the `config` crate and serde report into [`ConfigIssue`]s that name the key, where
//! its value came from, and what is expected.

use std::path::PathBuf;

use config::{Map, Value, ValueKind};

use super::{ConfigError, ConfigIssue, ConfigLoader};

/// How many invalid values one load reports at most.
const MAX_ISSUES: usize = 32;

impl ConfigLoader {
    /// Deserializes `value`, reporting every failure against the key it happened at: after a
    /// failure the key is left out (as if unset) and the rest deserialized again, so one
    /// report names all the invalid keys, not only the first. `prefix` is the path of `value`
    /// in the whole tree (empty for the root).
    pub(super) fn deserialize<T: serde::de::DeserializeOwned>(
        &self,
        mut value: Value,
        root: &Map<String, Value>,
        prefix: &str,
    ) -> Result<T, ConfigError> {
        let mut issues: Vec<ConfigIssue> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        loop {
            let error = match serde_path_to_error::deserialize(value.clone()) {
                Ok(deserialized) if issues.is_empty() => return Ok(deserialized),
                Ok(_) => return Err(ConfigError::Invalid(issues)),
                Err(error) => error,
            };
            let path = error.path().to_string();
            let inner = error.into_inner();
            let (local, problem) = describe(&path, &inner);
            // A required key left out after its own failure: already reported.
            if removed
                .iter()
                .any(|key| problem.contains(&format!("\"{}\"", key.rsplit('.').next().unwrap_or(key))))
            {
                return Err(ConfigError::Invalid(issues));
            }
            let key = match (prefix, local.as_str()) {
                ("", local) => local.to_owned(),
                (prefix, "") => prefix.to_owned(),
                (prefix, local) => format!("{prefix}.{local}"),
            };
            let source = match &inner {
                config::ConfigError::Type {
                    origin: Some(origin), ..
                } => self.describe_origin(origin, &key),
                _ => self.origin_of(root, &key),
            };
            issues.push(ConfigIssue { key, source, problem });
            removed.push(local.clone());
            if issues.len() >= MAX_ISSUES || !remove(&mut value, &local) {
                return Err(ConfigError::Invalid(issues));
            }
        }
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
            None => match current.and_then(|value| first_leaf(value, key)) {
                // A table: where its first value came from.
                Some((leaf, origin)) => self.describe_origin(&origin, &leaf),
                None if current.is_some() => "an override or built-in default".into(),
                None => "the built-in default".into(),
            },
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

/// The key and origin of the first value inside a table that has an origin.
fn first_leaf(value: &Value, key: &str) -> Option<(String, String)> {
    let ValueKind::Table(table) = &value.kind else {
        return None;
    };
    table.iter().find_map(|(name, inner)| {
        let path = format!("{key}.{name}");
        match inner.origin() {
            Some(origin) => Some((path, origin.to_owned())),
            None => first_leaf(inner, &path),
        }
    })
}

/// Removes the value at the dotted `key` (an array element's index removes the whole array);
/// `false` when there is nothing there to remove.
fn remove(value: &mut Value, key: &str) -> bool {
    let key = key.split('[').next().unwrap_or(key);
    if key.is_empty() {
        return false;
    }
    let mut segments: Vec<&str> = key.split('.').collect();
    let last = segments.pop().expect("a non-empty key has a segment");
    let mut current = value;
    for segment in segments {
        current = match &mut current.kind {
            ValueKind::Table(table) => match table.get_mut(segment) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    match &mut current.kind {
        ValueKind::Table(table) => table.remove(last).is_some(),
        _ => false,
    }
}

/// The candidate closest to `given` by edit distance, when it is close enough to be a typo.
pub(super) fn closest<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (distance(given, candidate), candidate))
        .filter(|(d, candidate)| *d <= 2.max(candidate.len() / 4) && *d < candidate.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
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
                Some(unknown) => {
                    let expected = message.split_once(", ").map(|(_, rest)| rest).unwrap_or("");
                    let valid = expected.split('`').skip(1).step_by(2);
                    let problem = match closest(unknown, valid) {
                        Some(suggestion) => format!("unknown key; did you mean `{suggestion}`? ({expected})"),
                        None => format!("unknown key; {expected}"),
                    };
                    (problem, field)
                }
                None => match message
                    .strip_prefix("enum ")
                    .and_then(|rest| rest.split_once(" does not have variant constructor "))
                {
                    Some((name, value)) => (format!("unknown value {value:?} for {name}"), None),
                    None => (message.clone(), None),
                },
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
