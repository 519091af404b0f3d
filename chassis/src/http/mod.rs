//! The HTTP edge: problem details for every error the chassis answers, the matched-route slot,
//! bounded labels, request body limits and panic recovery.
//!
//! Layers that wrap a whole [`axum::Router`] run before routing, so they cannot see axum's
//! [`MatchedPath`](axum::extract::MatchedPath). [`MatchedRoute`] bridges that: the outer layer
//! puts an empty slot in the request's extensions, [`CaptureRouteLayer`] (added with
//! `Router::layer`, so it runs after routing) fills it, and the outer layer reads it when the
//! response (or a timeout, or a panic) comes back. Labelling by the matched route, never the raw
//! path, keeps metric cardinality bounded no matter what paths scanners send.
//!
//! | layer | service | what it does |
//! |---|---|---|
//! | [`ProblemResponseLayer`] | [`ProblemResponse`] | errors of the layers inside it become problem+json ([`problem_for`]) |
//! | [`BodyLimitLayer`] | [`BodyLimit`] | a declared body over the limit fails with [`PayloadTooLarge`] (413) |
//! | [`RecoverPanicLayer`] | [`RecoverPanic`] | a panic becomes a 500 problem |
//! | [`CaptureRouteLayer`] | [`CaptureRoute`] | records the matched route template |

pub mod body_limit;
mod labels;
mod plain_error;
pub mod problem_response;
pub mod recover_panic;
mod route;

pub use body_limit::{BodyLimit, BodyLimitLayer, PayloadTooLarge};
pub use labels::{UrlScheme, method_label, status_label, url_scheme};
pub use problem_response::{ProblemResponse, ProblemResponseLayer, problem_for};
pub use recover_panic::{PanicResponse, RecoverPanic, RecoverPanicLayer};
pub(crate) use route::HoldsRoute;
pub use route::{CaptureRoute, CaptureRouteLayer, MatchedRoute, UNMATCHED_ROUTE};

pub use crate::problem::{PROBLEM_JSON, Problem};
