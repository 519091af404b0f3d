//! The futures the layers share: a call that is either made or answered by the layer itself,
//! and an inner future whose error is boxed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// What a layer's response future does: poll the inner service's future (`Called`), or hand
    /// out the answer the layer gave without calling it (`Answered`: a rejection, a replay).
    #[project = CallProj]
    pub(crate) enum Call<F, O> {
        Called { #[pin] future: F },
        Answered { output: Option<O> },
    }
}

impl<F, O> Call<F, O> {
    #[inline(always)]
    pub(crate) fn called(future: F) -> Self {
        Self::Called { future }
    }

    #[inline(always)]
    pub(crate) fn answered(output: O) -> Self {
        Self::Answered { output: Some(output) }
    }
}

impl<F: Future<Output = O>, O> Future for Call<F, O> {
    type Output = O;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        match self.project() {
            CallProj::Called { future } => future.poll(cx),
            CallProj::Answered { output } => Poll::Ready(output.take().expect("polled after completion")),
        }
    }
}

pin_project! {
    /// `future` with its error boxed.
    pub(crate) struct ErrInto<F> {
        #[pin]
        future: F,
    }
}

impl<F> ErrInto<F> {
    #[inline(always)]
    pub(crate) fn new(future: F) -> Self {
        Self { future }
    }
}

impl<F, T, E> Future for ErrInto<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map_err(Into::into)
    }
}
