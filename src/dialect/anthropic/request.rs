//! Messages request → chat-completions request. Lenient like Anthropic's own parser (unknown
//! fields and block types are ignored), strict where the meaning would change: a request without
//! a string `model` or an array `messages` is rejected. What is kept:
//! - `system` (string or text blocks) and `system` messages inside `messages` become one leading
//!   system message, in order;
//! - text; images (base64 → `data:` URL, URL as is) → `image_url` parts;
//! - `tool_use` → assistant `tool_calls`; `tool_result` (string or blocks, `is_error` prefixed
//!   with `Error: `) → `role: tool` messages, placed before the rest of the user turn;
//! - `tools` → functions; `tool_choice` auto/any/none/tool → auto/required/none/named,
//!   `disable_parallel_tool_use` → `parallel_tool_calls: false`;
//! - `max_tokens`, `temperature`, `top_p`, `stop_sequences` → `stop`, `stream` (with
//!   `stream_options.include_usage`); `top_k` and `thinking` only in the form the backend
//!   accepts ([`Flavour`]); `metadata` and cache hints are dropped.

use serde_json::{json, Map, Value};

/// How a backend takes the options OpenAI's API has no field for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Inference engines (vLLM, SGLang, llama.cpp, LMDeploy, ...): `top_k`, and thinking through
    /// `chat_template_kwargs.enable_thinking`.
    Engine,
    /// OpenAI-style services (clouds, LiteLLM, Lemonade): no `top_k`; thinking as
    /// `reasoning_effort`.
    OpenAi,
}

/// The `thinking` option of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thinking {
    Unset,
    Disabled,
    Enabled { budget: u64 },
}

/// A translated request, rendered per backend flavour.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    body: Map<String, Value>,
    top_k: Option<Value>,
    pub thinking: Thinking,
    pub stream: bool,
    pub model: String,
    pub stop_sequences: Vec<String>,
}

impl ChatRequest {
    /// The JSON body for a backend of `flavour`.
    pub fn render(&self, flavour: Flavour) -> Vec<u8> {
        let mut body = self.body.clone();
        match flavour {
            Flavour::Engine => {
                if let Some(k) = &self.top_k {
                    body.insert("top_k".into(), k.clone());
                }
                match self.thinking {
                    Thinking::Unset => {}
                    Thinking::Disabled => {
                        body.insert(
                            "chat_template_kwargs".into(),
                            json!({"enable_thinking": false}),
                        );
                    }
                    Thinking::Enabled { budget } => {
                        body.insert(
                            "chat_template_kwargs".into(),
                            json!({"enable_thinking": true}),
                        );
                        body.insert("thinking_budget".into(), json!(budget));
                    }
                }
            }
            Flavour::OpenAi => {
                if let Thinking::Enabled { budget } = self.thinking {
                    let effort = match budget {
                        0..=4095 => "low",
                        4096..=16383 => "medium",
                        _ => "high",
                    };
                    body.insert("reasoning_effort".into(), json!(effort));
                }
            }
        }
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    }
}

/// The `model` of a request, or why the request is unusable. Used for passthrough too, where
/// the body is otherwise forwarded as it came.
pub fn validate(req: &Value) -> Result<&str, String> {
    let obj = req
        .as_object()
        .ok_or("request body must be a JSON object")?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.as_str(),
        Some(Value::String(_)) | None => return Err("model: field required".into()),
        Some(_) => return Err("model: must be a string".into()),
    };
    match obj.get("messages") {
        Some(Value::Array(msgs)) => {
            for (i, m) in msgs.iter().enumerate() {
                match m.get("role").and_then(Value::as_str) {
                    Some("user" | "assistant" | "system" | "developer") => {}
                    Some(other) => {
                        return Err(format!("messages.{i}.role: unknown role {other:?}"))
                    }
                    None => return Err(format!("messages.{i}.role: field required")),
                }
            }
        }
        None => return Err("messages: field required".into()),
        Some(_) => return Err("messages: must be an array".into()),
    }
    if let Some(mt) = obj.get("max_tokens") {
        if !mt.is_u64() {
            return Err("max_tokens: must be a non-negative integer".into());
        }
    }
    Ok(model)
}

/// Translates a Messages request.
pub fn translate(req: &Value) -> Result<ChatRequest, String> {
    let model = validate(req)?.to_string();
    let empty = Map::new();
    let obj = req.as_object().unwrap_or(&empty);
    let mut system = Vec::new();
    if let Some(s) = obj.get("system") {
        push_text(&mut system, s);
    }
    let mut messages = Vec::new();
    if let Some(Value::Array(msgs)) = obj.get("messages") {
        for m in msgs {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            let content = m.get("content").unwrap_or(&Value::Null);
            match role {
                "system" | "developer" => push_text(&mut system, content),
                "user" => user_turn(content, &mut messages),
                _ => assistant_turn(content, &mut messages),
            }
        }
    }
    if !system.is_empty() {
        messages.insert(0, json!({"role": "system", "content": system.join("\n\n")}));
    }
    let mut body = Map::new();
    body.insert("model".into(), Value::String(model.clone()));
    body.insert("messages".into(), Value::Array(messages));
    for key in ["max_tokens", "temperature", "top_p"] {
        if let Some(v) = obj.get(key).filter(|v| v.is_number()) {
            body.insert(key.into(), v.clone());
        }
    }
    let stop_sequences: Vec<String> = match obj.get("stop_sequences") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    if !stop_sequences.is_empty() {
        body.insert("stop".into(), json!(stop_sequences));
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        body.insert("stream".into(), Value::Bool(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(Value::Array(tools)) = obj.get("tools") {
        let fns: Vec<Value> = tools.iter().filter_map(tool).collect();
        if !fns.is_empty() {
            body.insert("tools".into(), Value::Array(fns));
            if let Some(tc) = obj.get("tool_choice") {
                if let Some(choice) = tool_choice(tc) {
                    body.insert("tool_choice".into(), choice);
                }
                if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                    body.insert("parallel_tool_calls".into(), Value::Bool(false));
                }
            }
        }
    }
    let thinking = match obj.get("thinking") {
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") => Thinking::Enabled {
                budget: t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0),
            },
            Some("adaptive") => Thinking::Enabled { budget: 8192 },
            Some("disabled") => Thinking::Disabled,
            _ => Thinking::Unset,
        },
        None => Thinking::Unset,
    };
    Ok(ChatRequest {
        body,
        top_k: obj.get("top_k").filter(|v| v.is_number()).cloned(),
        thinking,
        stream,
        model,
        stop_sequences,
    })
}

/// Appends the text of a string or of text blocks.
fn push_text(out: &mut Vec<String>, v: &Value) {
    match v {
        Value::String(s) if !s.is_empty() => out.push(s.clone()),
        Value::Array(blocks) => {
            let text = blocks_text(blocks);
            if !text.is_empty() {
                out.push(text);
            }
        }
        _ => {}
    }
}

/// The text blocks of a block list, joined.
fn blocks_text(blocks: &[Value]) -> String {
    let parts: Vec<&str> = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    parts.join("\n")
}

/// An image block as an `image_url` part.
fn image_part(block: &Value) -> Option<Value> {
    let src = block.get("source")?;
    let url = match src.get("type").and_then(Value::as_str)? {
        "base64" => {
            let media = src
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png");
            let data = src.get("data").and_then(Value::as_str)?;
            format!("data:{media};base64,{data}")
        }
        "url" => src.get("url").and_then(Value::as_str)?.to_string(),
        _ => return None,
    };
    Some(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn user_turn(content: &Value, out: &mut Vec<Value>) {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return;
        }
        Value::Array(b) => b,
        _ => return,
    };
    let mut parts = Vec::new();
    let mut has_image = false;
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    parts.push(json!({"type": "text", "text": t}));
                }
            }
            Some("image") => {
                if let Some(p) = image_part(b) {
                    has_image = true;
                    parts.push(p);
                }
            }
            Some("tool_result") => {
                let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                let mut text = match b.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => blocks_text(inner),
                    _ => String::new(),
                };
                if b.get("is_error") == Some(&Value::Bool(true)) {
                    text.insert_str(0, "Error: ");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        return;
    }
    let content = if has_image {
        Value::Array(parts)
    } else {
        let texts: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        Value::String(texts.join("\n"))
    };
    out.push(json!({"role": "user", "content": content}));
}

fn assistant_turn(content: &Value, out: &mut Vec<Value>) {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "assistant", "content": s}));
            return;
        }
        Value::Array(b) => b,
        _ => return,
    };
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    text.push(t);
                }
            }
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": b.get("id").and_then(Value::as_str).unwrap_or(""),
                    "type": "function",
                    "function": {
                        "name": b.get("name").and_then(Value::as_str).unwrap_or(""),
                        "arguments": input.to_string(),
                    }
                }));
            }
            _ => {}
        }
    }
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    msg.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text.join("\n"))
        },
    );
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    out.push(Value::Object(msg));
}

/// A client tool as a function; server tools (no `input_schema`) have no equivalent.
fn tool(t: &Value) -> Option<Value> {
    let name = t.get("name").and_then(Value::as_str)?;
    let schema = t.get("input_schema")?;
    let mut f = Map::new();
    f.insert("name".into(), json!(name));
    if let Some(d) = t.get("description").and_then(Value::as_str) {
        f.insert("description".into(), json!(d));
    }
    f.insert("parameters".into(), schema.clone());
    Some(json!({"type": "function", "function": f}))
}

fn tool_choice(tc: &Value) -> Option<Value> {
    match tc.get("type").and_then(Value::as_str)? {
        "auto" => Some(json!("auto")),
        "any" => Some(json!("required")),
        "none" => Some(json!("none")),
        "tool" => {
            let name = tc.get("name").and_then(Value::as_str)?;
            Some(json!({"type": "function", "function": {"name": name}}))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(req: Value, f: Flavour) -> Value {
        let t = translate(&req).unwrap();
        serde_json::from_slice(&t.render(f)).unwrap()
    }

    #[test]
    fn system_string_blocks_and_inline_system_merge() {
        let v = render(
            json!({"model": "m", "max_tokens": 5,
                "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                "messages": [
                    {"role": "system", "content": "c"},
                    {"role": "user", "content": "hi"}]}),
            Flavour::OpenAi,
        );
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "a\nb\n\nc"})
        );
        assert_eq!(v["messages"][1], json!({"role": "user", "content": "hi"}));
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        assert_eq!(v["max_tokens"], 5);
        let v = render(
            json!({"model": "m", "system": "s", "messages": []}),
            Flavour::OpenAi,
        );
        assert_eq!(v["messages"][0]["content"], "s");
    }

    #[test]
    fn images_base64_and_url() {
        let v = render(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}),
            Flavour::OpenAi,
        );
        let parts = &v["messages"][0]["content"];
        assert_eq!(parts[0], json!({"type": "text", "text": "what?"}));
        assert_eq!(parts[1]["image_url"]["url"], "data:image/jpeg;base64,QUJD");
        assert_eq!(parts[2]["image_url"]["url"], "https://x/y.png");
    }

    #[test]
    fn tools_round_trip() {
        let v = render(
            json!({"model": "m", "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "tu1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "tu1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "tool_result", "tool_use_id": "tu2", "content": "boom", "is_error": true},
                    {"type": "text", "text": "thanks"}]}],
                "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}},
                          {"type": "web_search_20250305", "name": "web_search"}],
                "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true}}),
            Flavour::OpenAi,
        );
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m[1]["content"], "checking");
        let call = &m[1]["tool_calls"][0];
        assert_eq!(call["id"], "tu1");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "tu1", "content": "sunny"})
        );
        assert_eq!(m[3]["content"], "Error: boom");
        assert_eq!(m[4], json!({"role": "user", "content": "thanks"}));
        assert_eq!(v["tools"].as_array().unwrap().len(), 1);
        assert_eq!(
            v["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(v["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(v["parallel_tool_calls"], false);
        for (tc, want) in [
            ("auto", json!("auto")),
            ("any", json!("required")),
            ("none", json!("none")),
        ] {
            assert_eq!(tool_choice(&json!({"type": tc})), Some(want));
        }
    }

    #[test]
    fn sampling_stream_and_flavours() {
        let req = json!({"model": "m", "messages": [], "stream": true, "temperature": 0.5,
            "top_p": 0.9, "top_k": 40, "stop_sequences": ["END"], "metadata": {"user_id": "u"},
            "thinking": {"type": "enabled", "budget_tokens": 10000}});
        let e = render(req.clone(), Flavour::Engine);
        assert_eq!(e["top_k"], 40);
        assert_eq!(e["chat_template_kwargs"]["enable_thinking"], true);
        assert_eq!(e["stop"], json!(["END"]));
        assert_eq!(e["stream_options"]["include_usage"], true);
        assert!(e.get("metadata").is_none());
        let o = render(req, Flavour::OpenAi);
        assert!(o.get("top_k").is_none());
        assert_eq!(o["reasoning_effort"], "medium");
        assert_eq!(o["temperature"], 0.5);
        assert_eq!(o["top_p"], 0.9);
    }

    #[test]
    fn rejects_what_cannot_be_served() {
        assert!(translate(&json!([])).is_err());
        assert!(translate(&json!({"messages": []})).is_err());
        assert!(translate(&json!({"model": 3, "messages": []})).is_err());
        assert!(translate(&json!({"model": "m"})).is_err());
        assert!(translate(&json!({"model": "m", "messages": [], "max_tokens": -1})).is_err());
        assert!(
            translate(&json!({"model": "m", "messages": [{"role": "bot", "content": "x"}]}))
                .is_err()
        );
        // Odd but harmless shapes are ignored, not rejected.
        assert!(translate(
            &json!({"model": "m", "messages": [{"role": "user", "content": 5},
            {"role": "user", "content": [{"type": "image"}, {"type": "mystery"}]}]})
        )
        .is_ok());
    }
}
