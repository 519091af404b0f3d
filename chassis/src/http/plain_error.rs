//! Client errors answered without problem details (axum's own 404 and 405, its extractors'
//! text rejections such as a malformed JSON body, a handler's bare status) turned into
//! problem+json, so every error a client sees has one form.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use http_body::{Body as _, Frame, SizeHint};

use super::Problem;
use crate::problem::PROBLEM_JSON;

/// The longest text body kept as a problem's `detail`; a longer one is cut.
const MAX_DETAIL: usize = 4096;

/// `response` as problem+json when it is a client error with an empty or plain-text body;
/// anything else unchanged.
#[inline]
pub(crate) fn as_problem(response: Response) -> Response {
    let status = response.status();
    if !status.is_client_error() {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let empty = content_type.is_none() && response.body().size_hint().exact() == Some(0);
    let text = content_type.is_some_and(|value| value.as_bytes().starts_with(b"text/plain"));
    if !(empty || text) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if empty {
        let problem = problem(status, None).into_response();
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        return Response::from_parts(parts, problem.into_body());
    }
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    let body = Body::new(TextAsProblem {
        inner: body,
        status,
        text: BytesMut::new(),
        done: false,
    });
    Response::from_parts(parts, body)
}

fn problem(status: StatusCode, detail: Option<String>) -> Problem {
    let title = status.canonical_reason().unwrap_or("Client error");
    let name = title.to_ascii_lowercase().replace([' ', '\''], "-");
    let problem = Problem::new(status, &name, title);
    match detail.filter(|d| !d.is_empty()) {
        Some(detail) => problem.with_detail(detail),
        None => problem,
    }
}

/// A text body read whole (up to [`MAX_DETAIL`]) and sent as one problem+json document
/// carrying the text as its `detail`.
struct TextAsProblem {
    inner: Body,
    status: StatusCode,
    text: BytesMut,
    done: bool,
}

impl http_body::Body for TextAsProblem {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = MAX_DETAIL.saturating_sub(self.text.len());
                        self.text.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => break,
            }
        }
        self.done = true;
        let detail = String::from_utf8_lossy(&self.text).trim().to_owned();
        let json = serde_json::to_vec(&problem(self.status, Some(detail))).expect("a problem serializes");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(json)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json(response: Response) -> serde_json::Value {
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn an_empty_404_and_a_405_become_problems_keeping_their_headers() {
        let response = as_problem(StatusCode::NOT_FOUND.into_response());
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(json(response).await["type"], "urn:chassis:problem:not-found");

        let response = as_problem((StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")]).into_response());
        assert_eq!(response.headers()[header::ALLOW], "GET");
        let problem = json(response).await;
        assert_eq!(problem["type"], "urn:chassis:problem:method-not-allowed");
        assert_eq!(problem["status"], 405);
    }

    #[tokio::test]
    async fn a_text_rejection_becomes_a_problem_with_the_text_as_detail() {
        let rejection = (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Failed to deserialize the JSON body: missing field `item`",
        );
        let response = as_problem(rejection.into_response());
        assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
        let problem = json(response).await;
        assert_eq!(problem["type"], "urn:chassis:problem:unprocessable-entity");
        assert_eq!(
            problem["detail"],
            "Failed to deserialize the JSON body: missing field `item`"
        );
    }

    #[tokio::test]
    async fn problems_json_and_successes_pass_unchanged() {
        let problem = Problem::new(StatusCode::CONFLICT, "taken", "Taken").into_response();
        assert_eq!(json(as_problem(problem)).await["type"], "urn:chassis:problem:taken");
        let json_error = (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": "x"}))).into_response();
        assert_eq!(json(as_problem(json_error)).await["error"], "x");
        let ok = as_problem((StatusCode::OK, "fine").into_response());
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }
}
