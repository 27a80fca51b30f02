//! ctxcore's errors as gRPC statuses: a trailers-only response (HTTP 200,
//! `content-type: application/grpc`, `grpc-status`, `grpc-message`, no body).
//!
//! A deadline is `DEADLINE_EXCEEDED` (4) and a cancel `CANCELLED` (1), as
//! gRPC defines them (not tonic's `Cancelled` for a timeout). The message is
//! the error's own text, percent-encoded as the gRPC HTTP/2 protocol asks;
//! the cause is included only when exposed (see
//! [`response`](crate::response)).
//!
//! ```
//! use ctxcore::{ContextError, Error};
//! use ctxcore_http::{grpc, response::ErrorResponse};
//!
//! let err = ErrorResponse::new(ContextError::new(Error::DeadlineExceeded, "internal detail"));
//! let resp: http::Response<String> = grpc::into_response(&err);
//! assert_eq!(resp.status(), http::StatusCode::OK);
//! assert_eq!(resp.headers()["content-type"], "application/grpc");
//! assert_eq!(resp.headers()["grpc-status"], "4");
//! assert_eq!(resp.headers()["grpc-message"], "context deadline exceeded");
//! assert!(resp.body().is_empty());
//! ```

use crate::response::ErrorResponse;
use ctxcore::Error;
use http::{header, HeaderValue, Response};

/// gRPC's `CANCELLED` status code.
///
/// ```
/// assert_eq!(ctxcore_http::grpc::CANCELLED, 1);
/// ```
pub const CANCELLED: u8 = 1;

/// gRPC's `DEADLINE_EXCEEDED` status code.
///
/// ```
/// assert_eq!(ctxcore_http::grpc::DEADLINE_EXCEEDED, 4);
/// ```
pub const DEADLINE_EXCEEDED: u8 = 4;

/// The `grpc-status` for an error kind: 4 for a deadline, 1 for a cancel.
///
/// ```
/// use ctxcore::Error;
/// assert_eq!(ctxcore_http::grpc::code_for(Error::DeadlineExceeded), 4);
/// assert_eq!(ctxcore_http::grpc::code_for(Error::Canceled), 1);
/// ```
pub fn code_for(kind: Error) -> u8 {
    match kind {
        Error::DeadlineExceeded => DEADLINE_EXCEEDED,
        _ => CANCELLED,
    }
}

/// Percent-encodes a `grpc-message`: every byte outside printable ASCII
/// (0x20–0x7E), and `%` itself, becomes `%XX`.
///
/// ```
/// assert_eq!(ctxcore_http::grpc::encode_message("50% done\n"), "50%25 done%0A");
/// assert_eq!(ctxcore_http::grpc::encode_message("€"), "%E2%82%AC");
/// ```
pub fn encode_message(msg: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// The trailers-only gRPC response for `err`: HTTP 200,
/// `content-type: application/grpc`, `grpc-status` and the percent-encoded
/// [`body_text`](ErrorResponse::body_text) as `grpc-message`, and an empty
/// (default) body.
///
/// ```
/// use ctxcore_http::{grpc, response::ErrorResponse};
/// let resp: http::Response<String> = grpc::into_response(&ErrorResponse::new(ctxcore::Error::Canceled));
/// assert_eq!(resp.headers()["grpc-status"], "1");
/// assert_eq!(resp.headers()["grpc-message"], "context canceled");
/// ```
pub fn into_response<B: Default>(err: &ErrorResponse) -> Response<B> {
    // The kind only (see `ErrorResponse::into_response`).
    tracing::debug!(
        error = %err.error().kind(),
        cause_exposed = err.cause_is_exposed(),
        "request context error as a gRPC status"
    );
    let mut resp = Response::new(B::default());
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(code_for(err.error().kind()))),
    );
    // Only printable ASCII after encoding: always a valid header value.
    if let Ok(v) = HeaderValue::try_from(encode_message(&err.body_text())) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// An [`ErrorResponse`] that becomes a gRPC status with axum's
/// `IntoResponse` (feature `axum`), or through [`into_response`].
///
/// ```
/// use ctxcore_http::{grpc::GrpcErrorResponse, response::ErrorResponse};
/// let err = GrpcErrorResponse::from(ErrorResponse::new(ctxcore::Error::DeadlineExceeded));
/// let resp: http::Response<String> = ctxcore_http::grpc::into_response(&err.0);
/// assert_eq!(resp.headers()["grpc-status"], "4");
/// ```
#[derive(Clone, Debug)]
pub struct GrpcErrorResponse(pub ErrorResponse);

impl From<ErrorResponse> for GrpcErrorResponse {
    fn from(err: ErrorResponse) -> Self {
        GrpcErrorResponse(err)
    }
}

impl From<ctxcore::ContextError> for GrpcErrorResponse {
    fn from(err: ctxcore::ContextError) -> Self {
        GrpcErrorResponse(ErrorResponse::new(err))
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum_core::response::IntoResponse for GrpcErrorResponse {
    fn into_response(self) -> axum_core::response::Response {
        into_response(&self.0)
    }
}
