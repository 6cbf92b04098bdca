//! Chat-completions answer → Messages answer: `reasoning_content` / `reasoning` become a
//! `thinking` block, the text a `text` block, each tool call a `tool_use` block with its
//! arguments parsed as JSON; `finish_reason` maps to `stop_reason` ([`stop_reason`]); usage
//! carries over.

use serde_json::{json, Map, Value};

/// `stop_reason` and `stop_sequence` for an OpenAI `finish_reason`. `matched` is the stop string
/// the backend reports having matched (vLLM `stop_reason`, SGLang `matched_stop`), if any;
/// it counts only when it is one of the request's `stop_sequences`.
pub fn stop_reason(
    finish: Option<&str>,
    matched: Option<&str>,
    stop_sequences: &[String],
) -> (&'static str, Option<String>) {
    if let Some(m) = matched.filter(|m| stop_sequences.iter().any(|s| s == m)) {
        return ("stop_sequence", Some(m.to_string()));
    }
    let reason = match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    };
    (reason, None)
}

/// The stop string a choice says it matched.
pub fn matched_stop(choice: &Value) -> Option<&str> {
    choice
        .get("stop_reason")
        .and_then(Value::as_str)
        .or_else(|| choice.get("matched_stop").and_then(Value::as_str))
}

/// A tool call's arguments as the `input` object: `{}` when empty, the parsed object, else the
/// raw text kept under `_raw` (never dropped silently).
pub fn parse_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw": arguments}),
    }
}

/// The reasoning text of a message or delta (`reasoning_content`, else `reasoning`).
pub fn reasoning(v: &Value) -> Option<&str> {
    v.get("reasoning_content")
        .and_then(Value::as_str)
        .or_else(|| v.get("reasoning").and_then(Value::as_str))
}

/// Anthropic `usage` from OpenAI `usage`.
pub fn usage(u: Option<&Value>) -> Value {
    let get = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let mut out = Map::new();
    out.insert("input_tokens".into(), json!(get("prompt_tokens")));
    out.insert("output_tokens".into(), json!(get("completion_tokens")));
    if let Some(c) = u
        .and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens"))
        .and_then(Value::as_u64)
    {
        out.insert("cache_read_input_tokens".into(), json!(c));
    }
    Value::Object(out)
}

/// Translates a whole chat completion. `model` is the model the client asked for.
pub fn translate(resp: &Value, model: &str, id: String, stop_sequences: &[String]) -> Value {
    let choice = resp.pointer("/choices/0").unwrap_or(&Value::Null);
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(r) = reasoning(msg).filter(|r| !r.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    if let Some(t) = msg.get("content").and_then(Value::as_str) {
        if !t.is_empty() {
            content.push(json!({"type": "text", "text": t}));
        }
    }
    if let Some(Value::Array(calls)) = msg.get("tool_calls") {
        for (i, c) in calls.iter().enumerate() {
            let f = c.get("function").unwrap_or(&Value::Null);
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map_or_else(|| format!("toolu_{i}"), str::to_string);
            content.push(json!({
                "type": "tool_use",
                "id": id,
                "name": f.get("name").and_then(Value::as_str).unwrap_or(""),
                "input": parse_input(f.get("arguments").and_then(Value::as_str).unwrap_or("")),
            }));
        }
    }
    let (reason, seq) = stop_reason(
        choice.get("finish_reason").and_then(Value::as_str),
        matched_stop(choice),
        stop_sequences,
    );
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": seq,
        "usage": usage(resp.get("usage")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_thinking_tools_and_usage() {
        let resp = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.", "reasoning_content": "hmm",
            "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"type": "function", "function": {"name": "noop", "arguments": ""}}]}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 3}}});
        let v = translate(&resp, "alias", "msg_x".into(), &[]);
        assert_eq!(v["model"], "alias");
        assert_eq!(
            v["content"][0],
            json!({"type": "thinking", "thinking": "hmm", "signature": ""})
        );
        assert_eq!(
            v["content"][1],
            json!({"type": "text", "text": "Let me check."})
        );
        assert_eq!(v["content"][2]["input"], json!({"city": "Paris"}));
        assert_eq!(v["content"][2]["id"], "call_1");
        assert_eq!(v["content"][3]["input"], json!({}));
        assert_eq!(v["content"][3]["id"], "toolu_1");
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["usage"]["input_tokens"], 11);
        assert_eq!(v["usage"]["output_tokens"], 7);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 3);
    }

    #[test]
    fn stop_reasons() {
        let stops = vec!["END".to_string()];
        assert_eq!(stop_reason(Some("stop"), None, &stops), ("end_turn", None));
        assert_eq!(stop_reason(Some("length"), None, &[]).0, "max_tokens");
        assert_eq!(
            stop_reason(Some("stop"), Some("END"), &stops),
            ("stop_sequence", Some("END".into()))
        );
        // A matched string that was not asked for is not a stop sequence.
        assert_eq!(stop_reason(Some("stop"), Some("x"), &stops).0, "end_turn");
        let resp = json!({"choices": [{"finish_reason": "stop", "stop_reason": "END",
            "message": {"content": "a"}}]});
        let v = translate(&resp, "m", "i".into(), &stops);
        assert_eq!(v["stop_reason"], "stop_sequence");
        assert_eq!(v["stop_sequence"], "END");
        assert_eq!(parse_input("[1]"), json!({"_raw": "[1]"}));
        // Garbage answers still give a well-formed message.
        let v = translate(&json!("nonsense"), "m", "i".into(), &[]);
        assert_eq!(v["content"], json!([]));
        assert_eq!(v["usage"]["output_tokens"], 0);
    }
}
