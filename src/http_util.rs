//! Small HTTP building blocks shared by the server, routes and proxy: the response body type,
//! constructors for fixed bodies and JSON, and request-id handling.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use serde::Serialize;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response olla sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// The body of a request: read by hyper (HTTP/2, the admin listener) or by olla's HTTP/1
/// connection ([`crate::server::h1`]).
pub enum RequestBody {
    Hyper(hyper::body::Incoming),
    Http1(crate::server::h1::Inbound),
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Http1(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Http1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Http1(b) => b.size_hint(),
        }
    }
}

/// Keeps `current` in `slot` unless the waker there already wakes the same task (so an
/// unchanged waker is not cloned again); `true` when it was stored.
pub fn keep_waker(slot: &mut Option<std::task::Waker>, current: &std::task::Waker) -> bool {
    if slot.as_ref().is_some_and(|w| w.will_wake(current)) {
        return false;
    }
    *slot = Some(current.clone());
    true
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response with the given status.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

const LLAMAS: &[&str] = &[
    "huacaya", "suri", "vicuna", "alpaca", "guanaco", "woolly", "silky", "fluffy", "curly",
    "shaggy", "noble", "gentle", "swift", "steady", "proud",
];
const ACTIONS: &[&str] = &[
    "grazing",
    "trekking",
    "humming",
    "spitting",
    "prancing",
    "carrying",
    "leading",
    "following",
    "resting",
    "alerting",
    "browsing",
    "foraging",
    "wandering",
    "galloping",
    "ambling",
];

/// Lower-case hexadecimal digits by value.
pub const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The request id: an inbound `X-Request-ID` if it is at most 128 printable ASCII characters
/// without spaces (as Olla accepts it), else a generated one such as `alpaca_grazing_0f3a`.
pub fn request_id(inbound: Option<&HeaderValue>) -> String {
    if let Some(v) = inbound.and_then(|v| v.to_str().ok()) {
        if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return v.to_string();
        }
    }
    // Built by hand: through `format!` this was about 1,300 instructions per request.
    let llama = LLAMAS[fastrand::usize(..LLAMAS.len())];
    let action = ACTIONS[fastrand::usize(..ACTIONS.len())];
    let suffix = fastrand::u16(..);
    let mut id = String::with_capacity(llama.len() + action.len() + 6);
    id.push_str(llama);
    id.push('_');
    id.push_str(action);
    id.push('_');
    for shift in [12, 8, 4, 0] {
        id.push(char::from(HEX_DIGITS[usize::from(suffix >> shift & 0xf)]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sanitised_or_generated() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&ok)), "abc-123");
        let spaced = HeaderValue::from_static("a b");
        let generated = request_id(Some(&spaced));
        let parts: Vec<&str> = generated.split('_').collect();
        assert_eq!(parts.len(), 3, "{generated}");
        assert_eq!(parts[2].len(), 4);
        assert!(LLAMAS.contains(&parts[0]) && ACTIONS.contains(&parts[1]));
        assert!(parts[2]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let long = HeaderValue::try_from("x".repeat(129)).unwrap();
        assert_ne!(request_id(Some(&long)).len(), 129);
    }
}
