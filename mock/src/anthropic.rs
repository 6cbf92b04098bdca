//! Anthropic Messages dialect: `POST /v1/messages` (whole message, or the SSE event
//! sequence message_start, content_block_start, content_block_delta per token,
//! content_block_stop, message_delta, message_stop), `POST /v1/messages/count_tokens`, and
//! Anthropic's `{"type":"error","error":{"type","message"}}` error shape.

use std::fmt::Write as _;

use bytes::Bytes;

use crate::body::Encoder;
use crate::routes::{GenInfo, Generation};
use crate::util::{completion_text, push_json_str, Tok};

/// `{"type":"error","error":{"type":..,"message":..}}`; the error type follows the status.
pub(crate) fn error_body(status: u16, message: &str) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let mut s = String::with_capacity(message.len() + 64);
    let _ = write!(
        s,
        r#"{{"type":"error","error":{{"type":"{kind}","message":"#
    );
    push_json_str(&mut s, message);
    s.push_str("}}");
    s
}

/// `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens_body(input_tokens: usize) -> String {
    format!(r#"{{"input_tokens":{input_tokens}}}"#)
}

/// `POST /v1/messages`.
pub(crate) struct Messages {
    info: GenInfo,
}

impl Messages {
    pub fn new(info: GenInfo) -> Self {
        Self { info }
    }
}

impl Encoder for Messages {
    fn head(&self) -> Option<Bytes> {
        let i = &self.info;
        let s = format!(
            concat!(
                "event: message_start\n",
                r#"data: {{"type":"message_start","message":{{"id":"msg_mock_{id}","type":"message","role":"assistant","model":{model},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{p},"output_tokens":1}}}}}}"#,
                "\n\n",
                "event: content_block_start\n",
                r#"data: {{"type":"content_block_start","index":0,"content_block":{{"type":"text","text":""}}}}"#,
                "\n\n",
            ),
            id = i.id,
            model = i.model_json,
            p = i.prompt_tokens,
        );
        Some(Bytes::from(s))
    }

    fn token(&self, index: usize) -> Bytes {
        Bytes::from(format!(
            concat!(
                "event: content_block_delta\n",
                r#"data: {{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#,
                "\n\n",
            ),
            Tok(index)
        ))
    }

    fn tail(&self) -> Bytes {
        Bytes::from(format!(
            concat!(
                "event: content_block_stop\n",
                r#"data: {{"type":"content_block_stop","index":0}}"#,
                "\n\n",
                "event: message_delta\n",
                r#"data: {{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{n}}}}}"#,
                "\n\n",
                "event: message_stop\n",
                r#"data: {{"type":"message_stop"}}"#,
                "\n\n",
            ),
            n = self.info.tokens
        ))
    }
}

impl Generation for Messages {
    const STREAM_CONTENT_TYPE: &'static str = "text/event-stream";
    const MALFORMED_STREAM: &'static str =
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\n\n";

    fn whole(&self) -> String {
        let i = &self.info;
        format!(
            r#"{{"id":"msg_mock_{id}","type":"message","role":"assistant","model":{model},"content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":{p},"output_tokens":{n}}}}}"#,
            id = i.id,
            model = i.model_json,
            text = completion_text(i.tokens),
            p = i.prompt_tokens,
            n = i.tokens,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::json_str;
    use serde_json::Value;

    fn info(tokens: usize) -> GenInfo {
        GenInfo {
            id: 3,
            created: 1,
            model_json: json_str("claude-x"),
            name_json: json_str("gpu1").into(),
            prompt_tokens: 4,
            tokens,
            include_usage: false,
            ttft_ms: 0,
            token_delay_ms: 0,
        }
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON {s}: {e}"))
    }

    /// (event, data) pairs of an SSE text.
    fn events(text: &str) -> Vec<(String, Value)> {
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (ev, data) = e.split_once('\n').expect("two lines");
                let ev = ev.strip_prefix("event: ").expect("event line").to_owned();
                let data = parse(data.strip_prefix("data: ").expect("data line"));
                assert_eq!(data["type"], ev.as_str());
                (ev, data)
            })
            .collect()
    }

    #[test]
    fn stream_sequence() {
        let m = Messages::new(info(2));
        let mut text = String::new();
        for b in [m.head().expect("head"), m.token(0), m.token(1), m.tail()] {
            text.push_str(&String::from_utf8_lossy(&b));
        }
        let ev = events(&text);
        let names: Vec<&str> = ev.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[0].1["message"]["model"], "claude-x");
        assert_eq!(ev[3].1["delta"]["text"], "tok1 ");
        assert_eq!(ev[5].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(ev[5].1["usage"]["output_tokens"], 2);
    }

    #[test]
    fn whole_and_errors() {
        let v = parse(&Messages::new(info(2)).whole());
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["text"], "tok0 tok1 ");
        assert_eq!(v["usage"]["output_tokens"], 2);
        assert_eq!(v["stop_sequence"], Value::Null);
        let v = parse(&error_body(404, "model 'x' not found"));
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["message"], "model 'x' not found");
        assert_eq!(parse(&count_tokens_body(9))["input_tokens"], 9);
    }
}
