//! The futures the layers share: a call that is either made or answered by the layer itself,
//! and an inner future whose error is boxed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// What a layer's response future does: poll the inner service's future (`Called`), or hand
    /// out the answer the layer gave without calling it (`Answered`: a rejection, a panic).
    #[project = CallProj]
    pub(crate) enum Call<F, A> {
        Called { #[pin] future: F },
        Answered { answer: Option<A> },
    }
}

/// What a layer answers without calling the inner service, made into the call's output when
/// it is polled. Layers keep it small (an error, a panic's payload) rather than a whole
/// response: it is part of every request's future, which the layers above move around.
pub(crate) trait Answer<O> {
    fn into_output(self) -> O;
}

/// An output given in full (a response the layer built).
impl<O> Answer<O> for O {
    #[inline(always)]
    fn into_output(self) -> O {
        self
    }
}

/// A failing layer's rejection: the call fails with this error.
pub(crate) struct Rejection(pub(crate) BoxError);

impl<T> Answer<Result<T, BoxError>> for Rejection {
    #[inline(always)]
    fn into_output(self) -> Result<T, BoxError> {
        Err(self.0)
    }
}

/// A response the layer answers with itself (boxed: rejections are rare, and the answer is part
/// of every request's future).
pub(crate) struct Answered(pub(crate) Box<axum::response::Response>);

impl<E> Answer<Result<axum::response::Response, E>> for Answered {
    #[inline(always)]
    fn into_output(self) -> Result<axum::response::Response, E> {
        Ok(*self.0)
    }
}

impl<F, A> Call<F, A> {
    #[inline(always)]
    pub(crate) fn called(future: F) -> Self {
        Self::Called { future }
    }

    #[inline(always)]
    pub(crate) fn answered(answer: A) -> Self {
        Self::Answered { answer: Some(answer) }
    }
}

impl<F: Future, A: Answer<F::Output>> Future for Call<F, A> {
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            CallProj::Called { future } => future.poll(cx),
            CallProj::Answered { answer } => Poll::Ready(answer.take().expect("polled after completion").into_output()),
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
