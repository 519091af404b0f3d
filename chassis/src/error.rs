//! The error returned by the service's init function and by start-up.

use std::fmt;

/// `Result<T, chassis::Error>`: what the service's init function returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, boxed: what the chassis' layers fail with (like tower's own layers). Downcast it to
/// tell the errors apart, e.g. [`Elapsed`](crate::resilience::Elapsed) or
/// [`CircuitOpen`](crate::resilience::CircuitOpen).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error that stops a service from starting or running.
///
/// Any error type converts into it with `?`, so an init function can use the errors of the
/// libraries it calls directly. The chassis' own start-up errors (configuration, telemetry,
/// binding a listener) are typed and can be recovered with [`Error::downcast_ref`].
///
/// Like `anyhow::Error`, this type does not implement [`std::error::Error`] itself: that is what
/// lets every error convert into it. Use [`Error::into_boxed`] where a boxed error is needed.
///
/// ```
/// fn parse_port(raw: &str) -> chassis::Result<u16> {
///     let port: u16 = raw.parse()?;
///     if port == 0 {
///         return Err(chassis::Error::msg("port must not be zero"));
///     }
///     Ok(port)
/// }
/// assert!(parse_port("80").is_ok());
/// assert_eq!(parse_port("0").unwrap_err().to_string(), "port must not be zero");
/// ```
pub struct Error {
    inner: BoxError,
}

impl Error {
    /// An error with just a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            inner: message.to_string().into(),
        }
    }

    /// Wraps an already boxed error.
    pub fn from_boxed(error: BoxError) -> Self {
        Self { inner: error }
    }

    /// The underlying error, if it is of type `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.inner.downcast_ref::<E>()
    }

    /// Converts into a boxed standard error.
    pub fn into_boxed(self) -> BoxError {
        self.inner
    }

    /// The error and its chain of sources, one per line, for a start-up failure message.
    pub fn report(&self) -> String {
        with_causes(&*self.inner, "\n  caused by: ")
    }
}

/// `error` and its chain of sources, outermost first, each after `separator`; a cause whose
/// text the message already holds is left out (`client error (Connect): invalid peer
/// certificate: UnknownIssuer`).
pub(crate) fn with_causes(error: &(dyn std::error::Error + 'static), separator: &str) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(separator);
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl<E> From<E> for Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self { inner: Box::new(error) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report())
    }
}

impl From<Error> for BoxError {
    fn from(error: Error) -> Self {
        error.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn report_lists_the_source_chain() {
        let err = Error::from(Outer(std::io::Error::other("disk on fire")));
        assert_eq!(err.report(), "outer\n  caused by: disk on fire");
        assert!(err.downcast_ref::<Outer>().is_some());
    }
}
