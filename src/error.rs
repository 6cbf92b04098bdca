//! The proxy's error type: one enum, each variant mapped to a status, an OpenAI-style
//! `{"error":{"message","type","code"}}` JSON body (Anthropic-shaped on Anthropic routes), and
//! the routing headers the request had collected. Upstream error bodies never go through here:
//! they pass through unchanged.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::http_util::{full, Body};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("No {0} endpoints available")]
    NoProviderEndpoints(String),
    #[error("path {0} is not forwarded to endpoints with auth: it is not part of their API and not in their allowed_paths")]
    PathNotAllowed(String),
    #[error("method {0} not allowed here")]
    MethodNotAllowed(String),
    #[error("request body too large: the limit is {0} bytes")]
    BodyTooLarge(u64),
    #[error("request headers too large: the limit is {0} bytes")]
    HeadersTooLarge(u64),
    #[error("request body not received within {0:?} (server.read_timeout)")]
    RequestTimeout(Duration),
    #[error("model '{0}' is not available on any healthy endpoint")]
    ModelUnavailable(String),
    #[error("no healthy endpoints available")]
    NoHealthyEndpoints,
    #[error("all endpoints are at capacity; retry later")]
    AtCapacity { retry_after: Duration },
    #[error("upstream request failed: {0}")]
    Upstream(String),
    #[error("upstream sent no response headers within {0:?}")]
    FirstByteTimeout(Duration),
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    RateLimited { retry_after: u64, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_)
            | Self::RouteNotFound(_)
            | Self::NoProviderEndpoints(_)
            | Self::PathNotAllowed(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::ModelUnavailable(_) | Self::NoHealthyEndpoints | Self::AtCapacity { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::FirstByteTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Machine-readable code (Olla's routing reasons where they exist).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "invalid_request",
            Self::ModelNotFound(_) => "model_not_found",
            Self::RouteNotFound(_) => "route_not_found",
            Self::NoProviderEndpoints(_) => "no_endpoints_available",
            Self::PathNotAllowed(_) => "path_not_allowed",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BodyTooLarge(_) => "request_too_large",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::ModelUnavailable(_) => "model_unavailable",
            Self::NoHealthyEndpoints => "no_healthy_endpoints",
            Self::AtCapacity { .. } => "at_capacity",
            Self::Upstream(_) => "upstream_error",
            Self::FirstByteTimeout(_) => "upstream_timeout",
            Self::NotImplemented(_) => "not_implemented",
            Self::Unauthorized(_) => "invalid_api_key",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal(_) => "internal_error",
        }
    }

    /// OpenAI-style error `type`.
    pub fn kind(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 405 | 413 | 431 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            501 => "not_implemented",
            _ => "api_error",
        }
    }

    /// The JSON error response (an Anthropic one naming `request_id` on Anthropic routes).
    /// olla's own headers are added with every answer's ([`crate::own_headers`]).
    pub fn to_response(&self, request_id: Option<&str>, anthropic: bool) -> Response<Body> {
        let body = if anthropic {
            crate::dialect::anthropic::error_body(
                self.status().as_u16(),
                &self.to_string(),
                request_id,
            )
        } else {
            json!({"error": {"message": self.to_string(), "type": self.kind(), "code": self.code()}})
        };
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::AtCapacity { retry_after } = self {
            let secs = retry_after.as_secs().max(1);
            if let Ok(v) = HeaderValue::try_from(secs.to_string()) {
                h.insert(http::header::RETRY_AFTER, v);
            }
        }
        if let Self::RateLimited { retry_after, .. } = self {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let Self::Unauthorized(_) = self {
            h.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"olla\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn maps_statuses_and_shapes() {
        let cases = [
            (ProxyError::BadRequest("x".into()), 400),
            (ProxyError::ModelNotFound("m".into()), 404),
            (ProxyError::BodyTooLarge(1), 413),
            (ProxyError::HeadersTooLarge(1), 431),
            (ProxyError::Upstream("x".into()), 502),
            (ProxyError::NoHealthyEndpoints, 503),
            (ProxyError::FirstByteTimeout(Duration::from_secs(1)), 504),
        ];
        for (e, status) in cases {
            let r = e.to_response(None, false);
            assert_eq!(r.status().as_u16(), status);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"]["message"].is_string() && v["error"]["code"].is_string());
        }
        let r = ProxyError::AtCapacity {
            retry_after: Duration::from_secs(3),
        }
        .to_response(None, true);
        assert_eq!(r.headers()["retry-after"], "3");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
    }
}
