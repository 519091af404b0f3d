//! Validation: settings check themselves and report every problem at once.

use super::{ConfigError, ConfigIssue};

/// Settings that check their own values.
///
/// Every chassis section implements it, and so can a service's own settings types. Keys are
/// named relative to the section; [`Problems::nested`] puts them under the section's key.
///
/// ```
/// use chassis::config::{Problems, Validate};
///
/// struct Pool { min: u32, max: u32 }
///
/// impl Validate for Pool {
///     fn validate(&self, problems: &mut Problems) {
///         problems.check(self.max > 0, "max", "must be at least 1");
///         problems.check(self.min <= self.max, "min", "must be at most max");
///     }
/// }
///
/// let error = chassis::config::validate("pool", &Pool { min: 5, max: 0 }).unwrap_err();
/// let keys: Vec<_> = error.issues().iter().map(|i| i.key.as_str()).collect();
/// assert_eq!(keys, ["pool.max", "pool.min"]);
/// ```
pub trait Validate {
    /// Adds a problem for every invalid value.
    fn validate(&self, problems: &mut Problems);
}

impl<V: Validate> Validate for Option<V> {
    fn validate(&self, problems: &mut Problems) {
        if let Some(value) = self {
            value.validate(problems);
        }
    }
}

/// Checks `settings` built in code (not loaded), naming its keys under `section`: every problem
/// in one [`ConfigError`], or `Ok`.
pub fn validate<V: Validate + ?Sized>(section: &str, settings: &V) -> Result<(), ConfigError> {
    let mut problems = Problems::default();
    problems.nested(section, |problems| settings.validate(problems));
    problems.into_result()
}

/// The problems found by validation, collected so that all of them are reported at once.
#[derive(Debug, Default)]
pub struct Problems {
    found: Vec<(String, String)>,
    prefix: String,
}

impl Problems {
    /// Records `problem` for `key` unless `ok`.
    pub fn check(&mut self, ok: bool, key: &str, problem: impl Into<String>) {
        if !ok {
            self.push(key, problem);
        }
    }

    /// Records `problem` for `key`.
    pub fn push(&mut self, key: &str, problem: impl Into<String>) {
        let key = match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{key}", self.prefix),
        };
        self.found.push((key, problem.into()));
    }

    /// Runs `validate` with keys named under `section` (`nested("retry", ..)` turns `max_delay`
    /// into `retry.max_delay`).
    pub fn nested(&mut self, section: &str, validate: impl FnOnce(&mut Self)) {
        let outer = self.prefix.len();
        if !self.prefix.is_empty() && !section.is_empty() {
            self.prefix.push('.');
        }
        self.prefix.push_str(section);
        validate(self);
        self.prefix.truncate(outer);
    }

    /// `true` when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The problems, each with the source `origin` gives its key.
    pub(crate) fn into_issues(self, origin: impl Fn(&str) -> String) -> Vec<ConfigIssue> {
        self.found
            .into_iter()
            .map(|(key, problem)| ConfigIssue {
                source: origin(&key),
                key,
                problem,
            })
            .collect()
    }

    /// For settings built in code rather than loaded: the problems, attributed to the code.
    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.found.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Invalid(
            self.into_issues(|_| "the settings passed in code".into()),
        ))
    }
}
