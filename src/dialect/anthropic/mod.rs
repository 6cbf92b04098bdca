//! The Anthropic Messages API over OpenAI chat completions: [`request`] turns a Messages request
//! into a chat-completions request, [`response`] turns a chat-completions answer into a Messages
//! answer, [`stream`] turns a chat-completions SSE stream into Messages SSE events, chunk by
//! chunk. [`tokens`] is the local token estimate of `count_tokens`. Errors use
//! [`error_body`], Anthropic's `{"type":"error","error":{"type","message"}}`.

pub mod request;
pub mod response;
pub mod stream;
pub mod tokens;

use serde_json::{json, Value};

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 413 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type","message"},"request_id"?}`.
pub fn error_body(status: u16, message: &str, request_id: Option<&str>) -> Value {
    let mut v = json!({"type": "error", "error": {"type": error_type(status), "message": message}});
    if let (Some(id), Some(obj)) = (request_id, v.as_object_mut()) {
        obj.insert("request_id".into(), Value::String(id.to_string()));
    }
    v
}

/// The message of an upstream error body (OpenAI `{"error":{"message"}}`, `{"error":"..."}`,
/// `{"message"}`, or the text itself), at most 1 KiB.
pub fn upstream_error_message(body: &[u8]) -> String {
    const MAX: usize = 1024;
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let e = v.get("error").unwrap_or(&v);
        e.get("message")
            .and_then(Value::as_str)
            .or_else(|| e.as_str())
            .map(str::to_string)
    });
    let mut msg = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if msg.len() > MAX {
        let mut cut = MAX;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    if msg.is_empty() {
        msg = "upstream error".into();
    }
    msg
}

/// A message id in Anthropic's style: `msg_01` and 22 base58 characters.
pub fn message_id() -> String {
    const B58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut s = String::with_capacity(28);
    s.push_str("msg_01");
    for _ in 0..22 {
        s.push(B58[fastrand::usize(..B58.len())] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_ids() {
        let v = error_body(404, "no model", Some("r1"));
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(error_type(529), "overloaded_error");
        assert_eq!(
            upstream_error_message(br#"{"error":{"message":"bad","type":"x"}}"#),
            "bad"
        );
        assert_eq!(upstream_error_message(br#"{"error":"flat"}"#), "flat");
        assert_eq!(upstream_error_message(b"  plain  "), "plain");
        assert_eq!(upstream_error_message(b""), "upstream error");
        let long = "é".repeat(2000);
        assert!(upstream_error_message(long.as_bytes()).len() <= 1024);
        let id = message_id();
        assert!(id.starts_with("msg_01") && id.len() == 28);
    }
}
