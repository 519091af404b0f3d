//! What a call's result means to the breaker.

/// The breaker's reading of one call's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A success (slow or not, by its duration).
    Success,
    /// A failure (slow or not, by its duration).
    Failure,
    /// Not the dependency's doing (a client error, a validation failure): recorded nowhere,
    /// not counted towards `minimum_calls`; a probe that is ignored gives its slot back.
    Ignore,
}

/// Decides what a call's result means to the breaker.
///
/// Closures `Fn(&Result<T, E>) -> Verdict` are classifiers.
pub trait Classify<T, E> {
    /// The verdict on `result`.
    fn classify(&self, result: &Result<T, E>) -> Verdict;
}

/// The default classifier: every error is a failure (timeouts included), and so is an HTTP
/// response with a 5xx status; anything else (4xx included) is a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors;

impl<B, E> Classify<http::Response<B>, E> for ServerErrors {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Verdict {
        match result {
            Ok(response) if response.status().is_server_error() => Verdict::Failure,
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::Failure,
        }
    }
}

/// Like [`ServerErrors`], except that 4xx answers are ignored: they say nothing about the
/// dependency's health, so they count neither way (Resilience4j's `ignoreExceptions`).
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreClientErrors;

impl<B, E> Classify<http::Response<B>, E> for IgnoreClientErrors {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Verdict {
        match result {
            Ok(response) if response.status().is_client_error() => Verdict::Ignore,
            other => ServerErrors.classify(other),
        }
    }
}

/// A classifier for services that are not HTTP: every error is a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors;

impl<T, E> Classify<T, E> for Errors {
    fn classify(&self, result: &Result<T, E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::Failure,
        }
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Verdict,
{
    fn classify(&self, result: &Result<T, E>) -> Verdict {
        self(result)
    }
}
