//! Chat-completions SSE → Messages SSE, as a per-stream state machine fed with upstream bytes
//! as they arrive (any split: lines are reassembled here) and emitting the events each chunk
//! completes, never holding back the answer. The output is always well formed:
//! one `message_start`; per block `content_block_start`, its deltas (`thinking_delta`,
//! `text_delta`, `input_json_delta`), `content_block_stop`, with one block open at a time; then
//! `message_delta` (stop reason, usage) and `message_stop`; or, on failure, an `error` event and
//! nothing after it.
//!
//! Tool calls: the first call streams its argument deltas live. Deltas for other call indices
//! (calls the backend interleaves) are assembled per index and each such call is emitted whole,
//! as its own block, when the stream ends, so interleaved calls never mix their JSON. Text or
//! reasoning arriving while a call streams live is held the same way and emitted after it.
//!
//! Bounds: an SSE line over [`MAX_LINE`] bytes, more than [`MAX_TOOLS`] calls or more than
//! [`MAX_HELD`] bytes of held arguments end the stream with an `error` event. Chunks that are not
//! JSON are skipped.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::response::{matched_stop, reasoning, stop_reason};
use super::upstream_error_message;

/// Longest SSE line accepted from the backend.
pub const MAX_LINE: usize = 1 << 20;
/// Most tool calls in one answer.
pub const MAX_TOOLS: usize = 128;
/// Most argument bytes held for calls that are not streamed live.
pub const MAX_HELD: usize = 8 << 20;

/// The `ping` event sent on long gaps.
pub const PING: &[u8] = b"event: ping\ndata: {\"type\":\"ping\"}\n\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    /// A tool call streamed live (its upstream index).
    Tool(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ToolState {
    /// Held until the end of the stream.
    Held,
    /// Streamed live in the open block.
    Live,
    /// Its live block was closed by other content; later deltas are dropped.
    Closed,
}

#[derive(Debug)]
struct Tool {
    id: String,
    name: String,
    args: String,
    state: ToolState,
}

/// Translates one stream.
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    id: String,
    input_estimate: u64,
    stop_sequences: Vec<String>,
    /// Bytes of an incomplete line.
    line: Vec<u8>,
    event: String,
    data: String,
    started: bool,
    finished: bool,
    next_index: u64,
    open: Option<(Open, u64)>,
    tools: BTreeMap<u64, Tool>,
    held: usize,
    /// Text and reasoning that arrived while a tool call was streaming.
    late_text: String,
    late_thinking: String,
    finish: Option<(String, Option<String>)>,
    usage: Option<Value>,
    /// Content deltas seen (output token estimate when the backend reports no usage).
    deltas: u64,
}

impl StreamTranslator {
    /// `model` is the model the client asked for; `input_estimate` seeds `message_start`.
    pub fn new(model: &str, id: String, input_estimate: u64, stop_sequences: Vec<String>) -> Self {
        Self {
            model: model.to_string(),
            id,
            input_estimate,
            stop_sequences,
            line: Vec::new(),
            event: String::new(),
            data: String::new(),
            started: false,
            finished: false,
            next_index: 0,
            open: None,
            tools: BTreeMap::new(),
            held: 0,
            late_text: String::new(),
            late_thinking: String::new(),
            finish: None,
            usage: None,
            deltas: 0,
        }
    }

    /// `message_stop` or `error` has been emitted: nothing more will be.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feeds upstream bytes; appends the events they complete to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !self.finished && !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let (head, rest) = chunk.split_at(nl);
                    chunk = &rest[1..];
                    if self.line.is_empty() {
                        self.take_line(head, out);
                    } else {
                        if !self.grow_line(head, out) {
                            return;
                        }
                        let line = std::mem::take(&mut self.line);
                        self.take_line(&line, out);
                    }
                }
                None => {
                    self.grow_line(chunk, out);
                    return;
                }
            }
        }
    }

    fn grow_line(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        if self.line.len() + bytes.len() > MAX_LINE {
            self.error("upstream sent an oversized stream line", out);
            return false;
        }
        self.line.extend_from_slice(bytes);
        true
    }

    /// The upstream body ended cleanly.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.take_line(&line, out);
        }
        if !self.data.is_empty() {
            self.dispatch(out);
        }
        if self.finished {
            return;
        }
        if self.finish.is_some() {
            self.close(out);
        } else {
            self.error("upstream stream ended before the answer was complete", out);
        }
    }

    /// A `ping` for a silent upstream (after `message_start`, which goes first if not yet
    /// sent); nothing once the stream ended.
    pub fn ping(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.start(out);
        out.extend_from_slice(PING);
    }

    /// The upstream body failed: an `error` event, unless the stream already ended.
    pub fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.error(message, out);
    }

    fn take_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.data.is_empty() || !self.event.is_empty() {
                self.dispatch(out);
            }
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() > MAX_LINE {
                    self.error("upstream sent an oversized stream event", out);
                    return;
                }
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            "event" => self.event = value.chars().take(64).collect(),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<u8>) {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if data.trim() == "[DONE]" {
            if self.finish.is_some() || self.started {
                self.close(out);
            } else {
                self.error("upstream stream ended before the answer was complete", out);
            }
            return;
        }
        if event == "error" {
            self.error(&upstream_error_message(data.as_bytes()), out);
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return;
        };
        if v.get("choices").is_none() {
            if let Some(e) = v.get("error") {
                let msg = upstream_error_message(e.to_string().as_bytes());
                self.error(&msg, out);
                return;
            }
        }
        self.start(out);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return;
        };
        let Some(choice) = choices
            .iter()
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        else {
            return;
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(r) = reasoning(delta).filter(|r| !r.is_empty()) {
                self.content(Open::Thinking, r, out);
            }
            if let Some(t) = delta
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                self.content(Open::Text, t, out);
            }
            if self.finished {
                return;
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (pos, call) in calls.iter().enumerate() {
                    self.tool_delta(pos as u64, call, out);
                    if self.finished {
                        return;
                    }
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some((f.to_string(), matched_stop(choice).map(str::to_string)));
        }
    }

    /// Text or reasoning: streamed in its block, or held while a tool call streams live (its
    /// JSON must not be cut short) and emitted after it.
    fn content(&mut self, kind: Open, text: &str, out: &mut Vec<u8>) {
        if matches!(self.open, Some((Open::Tool(_), _))) {
            self.held += text.len();
            if self.held > MAX_HELD {
                self.error("upstream sent oversized content", out);
                return;
            }
            let held = if kind == Open::Text {
                &mut self.late_text
            } else {
                &mut self.late_thinking
            };
            held.push_str(text);
            return;
        }
        self.block(kind, out);
        let (delta_type, field) = if kind == Open::Text {
            ("text_delta", "text")
        } else {
            ("thinking_delta", "thinking")
        };
        self.content_delta(delta_type, field, text, out);
    }

    /// `content_block_delta` for text or thinking, written straight into `out`: the event of
    /// nearly every chunk, so it skips building a JSON tree. The bytes equal
    /// [`StreamTranslator::delta`]'s for the same delta.
    fn content_delta(&mut self, delta_type: &str, field: &str, text: &str, out: &mut Vec<u8>) {
        use std::io::Write as _;
        if let Some((_, index)) = self.open {
            self.deltas += 1;
            out.extend_from_slice(
                b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
            );
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{index}");
            let _ = write!(out, ",\"delta\":{{\"type\":\"{delta_type}\",\"{field}\":");
            let _ = serde_json::to_writer(&mut *out, text);
            out.extend_from_slice(b"}}\n\n");
        }
    }

    fn tool_delta(&mut self, pos: u64, call: &Value, out: &mut Vec<u8>) {
        let idx = call.get("index").and_then(Value::as_u64).unwrap_or(pos);
        let f = call.get("function");
        let frag = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = call.get("id").and_then(Value::as_str).unwrap_or("");
        if !self.tools.contains_key(&idx) {
            if self.tools.len() >= MAX_TOOLS {
                self.error("upstream sent too many tool calls", out);
                return;
            }
            let live = !matches!(self.open, Some((Open::Tool(_), _)));
            let tool = Tool {
                id: if id.is_empty() {
                    format!("toolu_{}", &super::message_id()[6..])
                } else {
                    id.to_string()
                },
                name: name.to_string(),
                args: String::new(),
                state: if live {
                    ToolState::Live
                } else {
                    ToolState::Held
                },
            };
            let block = json!({"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}});
            self.tools.insert(idx, tool);
            if live {
                self.close_block(out);
                self.open_block(Open::Tool(idx), block, out);
            }
        } else if let Some(t) = self.tools.get_mut(&idx) {
            if t.name.is_empty() && !name.is_empty() {
                t.name = name.to_string();
            }
        }
        if frag.is_empty() {
            return;
        }
        let state = self.tools.get(&idx).map(|t| t.state);
        match state {
            Some(ToolState::Live) => {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": frag}),
                    out,
                );
            }
            Some(ToolState::Held) => {
                self.held += frag.len();
                if self.held > MAX_HELD {
                    self.error("upstream sent oversized tool arguments", out);
                    return;
                }
                if let Some(t) = self.tools.get_mut(&idx) {
                    t.args.push_str(frag);
                }
            }
            Some(ToolState::Closed) | None => {}
        }
    }

    fn emit(&mut self, kind: &str, payload: &Value, out: &mut Vec<u8>) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, payload);
        out.extend_from_slice(b"\n\n");
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started || self.finished {
            return;
        }
        self.started = true;
        let msg = json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0}}});
        self.emit("message_start", &msg, out);
    }

    /// Makes a block of `kind` the open one (closing another open block).
    fn block(&mut self, kind: Open, out: &mut Vec<u8>) {
        if matches!(self.open, Some((k, _)) if k == kind) {
            return;
        }
        self.close_block(out);
        let block = match kind {
            Open::Text => json!({"type": "text", "text": ""}),
            Open::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Open::Tool(_) => return,
        };
        self.open_block(kind, block, out);
    }

    fn open_block(&mut self, kind: Open, block: Value, out: &mut Vec<u8>) {
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        let ev = json!({"type": "content_block_start", "index": index, "content_block": block});
        self.emit("content_block_start", &ev, out);
    }

    fn delta(&mut self, delta: Value, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open {
            self.deltas += 1;
            let ev = json!({"type": "content_block_delta", "index": index, "delta": delta});
            self.emit("content_block_delta", &ev, out);
        }
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((kind, index)) = self.open.take() {
            if let Open::Tool(idx) = kind {
                if let Some(t) = self.tools.get_mut(&idx) {
                    t.state = ToolState::Closed;
                }
            }
            let ev = json!({"type": "content_block_stop", "index": index});
            self.emit("content_block_stop", &ev, out);
        }
    }

    /// Ends the message: open block, held tool calls, `message_delta`, `message_stop`.
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.start(out);
        self.close_block(out);
        let thinking = std::mem::take(&mut self.late_thinking);
        if !thinking.is_empty() {
            self.content(Open::Thinking, &thinking, out);
        }
        let text = std::mem::take(&mut self.late_text);
        if !text.is_empty() {
            self.content(Open::Text, &text, out);
        }
        self.close_block(out);
        let held: Vec<(String, String, String)> = self
            .tools
            .values_mut()
            .filter(|t| t.state == ToolState::Held)
            .map(|t| {
                t.state = ToolState::Closed;
                (t.id.clone(), t.name.clone(), std::mem::take(&mut t.args))
            })
            .collect();
        for (id, name, args) in held {
            let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
            self.open_block(Open::Tool(u64::MAX), block, out);
            if !args.is_empty() {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": args}),
                    out,
                );
            }
            self.close_block(out);
        }
        let (mut reason, seq) = stop_reason(
            self.finish.as_ref().map(|(f, _)| f.as_str()),
            self.finish.as_ref().and_then(|(_, m)| m.as_deref()),
            &self.stop_sequences,
        );
        if reason == "end_turn" && !self.tools.is_empty() {
            reason = "tool_use";
        }
        let mut usage = serde_json::Map::new();
        let reported = |k: &str| {
            self.usage
                .as_ref()
                .and_then(|u| u.get(k))
                .and_then(Value::as_u64)
        };
        usage.insert(
            "output_tokens".into(),
            json!(reported("completion_tokens").unwrap_or(self.deltas)),
        );
        if let Some(p) = reported("prompt_tokens") {
            usage.insert("input_tokens".into(), json!(p));
        }
        let ev = json!({"type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": seq}, "usage": usage});
        self.emit("message_delta", &ev, out);
        self.emit("message_stop", &json!({"type": "message_stop"}), out);
        self.finished = true;
    }

    fn error(&mut self, message: &str, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.line.clear();
        self.data.clear();
        let ev = json!({"type": "error", "error": {"type": "api_error", "message": message}});
        self.emit("error", &ev, out);
    }
}

/// Checks that `bytes` is a complete or cut-short but well-formed Messages event stream (the
/// order this module promises) and returns its events as (name, JSON) pairs. Used by tests and
/// benchmarks.
pub fn check_well_formed(bytes: &[u8]) -> Result<Vec<(String, Value)>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    for raw in text.split("\n\n").filter(|e| !e.is_empty()) {
        let (name, data) = raw
            .strip_prefix("event: ")
            .and_then(|r| r.split_once("\ndata: "))
            .ok_or_else(|| format!("malformed event {raw:?}"))?;
        let v: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
        if v["type"] != name {
            return Err(format!("event {name} carries type {}", v["type"]));
        }
        events.push((name.to_string(), v));
    }
    let mut open: Option<u64> = None;
    let mut next = 0u64;
    let mut state = 0; // 0 before start, 1 in message, 2 after message_delta, 3 ended
    for (name, v) in &events {
        if state == 3 {
            return Err(format!("{name} after the end"));
        }
        match name.as_str() {
            "ping" => {}
            "error" => state = 3,
            "message_start" if state == 0 => state = 1,
            "content_block_start" if state == 1 && open.is_none() => {
                if v["index"] != next {
                    return Err(format!("block index {} where {next} was due", v["index"]));
                }
                open = Some(next);
                next += 1;
            }
            "content_block_delta" | "content_block_stop" if state == 1 => {
                if open.is_none() || v["index"].as_u64() != open {
                    return Err(format!("{name} for a block that is not open: {v}"));
                }
                if name == "content_block_stop" {
                    open = None;
                }
            }
            "message_delta" if state == 1 && open.is_none() => state = 2,
            "message_stop" if state == 2 => state = 3,
            _ => return Err(format!("{name} out of order")),
        }
    }
    Ok(events)
}

/// Reassembles the message a well-formed event sequence describes, as the SDKs do:
/// `{"content": [blocks, tool inputs parsed], "stop": message_delta.delta, "usage": ...}`.
/// Used by tests and benchmarks.
pub fn reassemble(events: &[(String, Value)]) -> Result<Value, String> {
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial: Vec<String> = Vec::new();
    let mut stop = Value::Null;
    let mut usage = Value::Null;
    let index = |v: &Value, n: usize| {
        v["index"]
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < n)
            .ok_or_else(|| format!("bad block index in {v}"))
    };
    for (name, v) in events {
        match name.as_str() {
            "content_block_start" => {
                blocks.push(v["content_block"].clone());
                partial.push(String::new());
            }
            "content_block_delta" => {
                let i = index(v, blocks.len())?;
                let d = &v["delta"];
                let (field, piece) = match d["type"].as_str() {
                    Some("text_delta") => ("text", &d["text"]),
                    Some("thinking_delta") => ("thinking", &d["thinking"]),
                    _ => ("", &d["partial_json"]),
                };
                let piece = piece.as_str().unwrap_or("");
                if field.is_empty() {
                    partial[i].push_str(piece);
                } else {
                    let t = blocks[i][field].as_str().unwrap_or("").to_string() + piece;
                    blocks[i][field] = Value::String(t);
                }
            }
            "content_block_stop" => {
                let i = index(v, blocks.len())?;
                if !partial[i].is_empty() {
                    blocks[i]["input"] = serde_json::from_str(&partial[i])
                        .map_err(|e| format!("tool input: {e}"))?;
                }
            }
            "message_delta" => {
                stop = v["delta"].clone();
                usage = v["usage"].clone();
            }
            _ => {}
        }
    }
    Ok(json!({"content": blocks, "stop": stop, "usage": usage}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_content_deltas_equal_the_tree_built_ones() {
        for (kind, delta_type, field) in [
            (Open::Text, "text_delta", "text"),
            (Open::Thinking, "thinking_delta", "thinking"),
        ] {
            let text = "h\u{e9}llo \"q\" \\ \n\u{1}";
            let mut fast = StreamTranslator::new("m", "id".into(), 1, Vec::new());
            fast.open = Some((kind, 3));
            let mut a = Vec::new();
            fast.content_delta(delta_type, field, text, &mut a);
            let mut tree = StreamTranslator::new("m", "id".into(), 1, Vec::new());
            tree.open = Some((kind, 3));
            let mut b = Vec::new();
            tree.delta(json!({"type": delta_type, field: text}), &mut b);
            assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        }
    }

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        let c = json!({"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    }

    fn run(input: &[u8], split: usize) -> Vec<u8> {
        let mut t = StreamTranslator::new("m", "msg_1".into(), 5, vec!["END".into()]);
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            t.push(piece, &mut out);
        }
        t.finish(&mut out);
        out
    }

    fn assemble(events: &[(String, Value)]) -> Value {
        reassemble(events).unwrap()
    }

    #[test]
    fn text_and_thinking_then_usage() {
        let input = [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"reasoning_content": "think "}), None),
            chunk(json!({"reasoning_content": "more"}), None),
            chunk(json!({"content": "Hel"}), None),
            chunk(json!({"content": "lo"}), None),
            chunk(json!({}), Some("stop")),
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4}}\n\n"
                .into(),
            "data: [DONE]\n\n".into(),
        ]
        .concat();
        let out = run(input.as_bytes(), usize::MAX);
        let events = check_well_formed(&out).unwrap();
        assert_eq!(events[0].0, "message_start");
        assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 5);
        let m = assemble(&events);
        assert_eq!(m["content"][0]["thinking"], "think more");
        assert_eq!(m["content"][1]["text"], "Hello");
        assert_eq!(m["stop"]["stop_reason"], "end_turn");
        assert_eq!(m["usage"], json!({"output_tokens": 4, "input_tokens": 9}));
        assert_eq!(events.last().unwrap().0, "message_stop");
    }

    #[test]
    fn tool_calls_stream_live_and_interleaved_ones_assemble() {
        let tc = |i: u64, id: Option<&str>, name: Option<&str>, args: &str| {
            let mut f = json!({"arguments": args});
            if let Some(n) = name {
                f["name"] = json!(n);
            }
            let mut c = json!({"index": i, "type": "function", "function": f});
            if let Some(id) = id {
                c["id"] = json!(id);
            }
            chunk(json!({"tool_calls": [c]}), None)
        };
        let input = [
            chunk(json!({"content": "Checking."}), None),
            tc(0, Some("call_a"), Some("weather"), ""),
            tc(0, None, None, "{\"city\":"),
            tc(1, Some("call_b"), Some("time"), "{\"tz\":"),
            tc(0, None, None, "\"Paris\"}"),
            tc(1, None, None, "\"CET\"}"),
            chunk(json!({}), Some("tool_calls")),
            "data: [DONE]\n\n".into(),
        ]
        .concat();
        let whole = run(input.as_bytes(), usize::MAX);
        let events = check_well_formed(&whole).unwrap();
        let m = assemble(&events);
        assert_eq!(m["content"][0]["text"], "Checking.");
        assert_eq!(m["content"][1]["id"], "call_a");
        assert_eq!(m["content"][1]["input"], json!({"city": "Paris"}));
        assert_eq!(m["content"][2]["name"], "time");
        assert_eq!(m["content"][2]["input"], json!({"tz": "CET"}));
        assert_eq!(m["stop"]["stop_reason"], "tool_use");
        // The live call's deltas left before the stream ended.
        let live_delta = events
            .iter()
            .position(|(n, v)| n == "content_block_delta" && v["index"] == 1)
            .unwrap();
        assert!(live_delta < events.len() - 6);
        for split in [1, 2, 3, 7, 64] {
            assert_eq!(run(input.as_bytes(), split), whole, "split {split}");
        }
    }

    #[test]
    fn stop_sequence_crlf_and_comments() {
        let input = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\r\n\r\n: keepalive\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"stop_reason\":\"END\"}]}\r\n\r\n";
        let out = run(input.as_bytes(), 5);
        let m = assemble(&check_well_formed(&out).unwrap());
        assert_eq!(m["content"][0]["text"], "a");
        assert_eq!(m["stop"]["stop_reason"], "stop_sequence");
        assert_eq!(m["stop"]["stop_sequence"], "END");
        assert_eq!(m["usage"]["output_tokens"], 1);
    }

    #[test]
    fn errors_end_the_stream() {
        // Truncated: no finish, no [DONE].
        let out = run(chunk(json!({"content": "a"}), None).as_bytes(), 3);
        let events = check_well_formed(&out).unwrap();
        assert_eq!(events.last().unwrap().0, "error");
        // An upstream error event (as the proxy body writes it) and an error chunk.
        let out = run(
            b"event: error\ndata: {\"error\":{\"message\":\"idle\"}}\n\n",
            4,
        );
        let events = check_well_formed(&out).unwrap();
        assert_eq!(events[0].1["error"]["message"], "idle");
        let out = run(
            b"data: {\"error\":{\"message\":\"oom\"}}\n\ndata: [DONE]\n\n",
            100,
        );
        let events = check_well_formed(&out).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1["error"]["message"], "oom");
        // An oversized line.
        let mut t = StreamTranslator::new("m", "i".into(), 0, vec![]);
        let mut out = Vec::new();
        let big = vec![b'x'; MAX_LINE / 4];
        for _ in 0..5 {
            t.push(&big, &mut out);
        }
        assert!(t.is_finished());
        t.fail("again", &mut out);
        assert_eq!(check_well_formed(&out).unwrap().len(), 1);
        // Garbage chunks are skipped.
        let input = format!(
            "data: {{nope\n\ndata: 5\n\n{}data: [DONE]\n\n",
            chunk(json!({"content": "ok"}), Some("stop"))
        );
        let m = assemble(&check_well_formed(&run(input.as_bytes(), 2)).unwrap());
        assert_eq!(m["content"][0]["text"], "ok");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One upstream delta: 0 text, 1 reasoning, 2 and 3 argument pieces of tool calls 0 and 1.
    fn upstream(parts: &[(u8, String)], usage: bool) -> Vec<u8> {
        let mut out = String::new();
        let mut started = [false; 2];
        for (kind, text) in parts {
            let delta = match kind {
                0 => json!({"content": text}),
                1 => json!({"reasoning_content": text}),
                k => {
                    let i = usize::from(k - 2);
                    let mut call = json!({"index": i, "function": {"arguments": text}});
                    if !started[i] {
                        started[i] = true;
                        call["id"] = json!(format!("call_{i}"));
                        call["function"]["name"] = json!(format!("tool{i}"));
                    }
                    json!({"tool_calls": [call]})
                }
            };
            let c = json!({"choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
            out.push_str(&format!("data: {c}\n\n"));
        }
        out.push_str(
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        );
        if usage {
            out.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n");
        }
        out.push_str("data: [DONE]\n\n");
        out.into_bytes()
    }

    fn feed(input: &[u8], cuts: &[prop::sample::Index]) -> Vec<u8> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        at.sort_unstable();
        let mut t = StreamTranslator::new("m", "msg_p".into(), 1, vec![]);
        let mut out = Vec::new();
        let mut from = 0;
        for cut in at.into_iter().chain([input.len()]) {
            t.push(&input[from..cut], &mut out);
            from = cut;
        }
        t.finish(&mut out);
        out
    }

    fn part() -> impl Strategy<Value = (u8, String)> {
        (0u8..4, "[a-z \"\\\\{}:é\n]{0,12}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_split_gives_the_same_well_formed_events(
            parts in prop::collection::vec(part(), 0..24),
            usage in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let input = upstream(&parts, usage);
            let whole = feed(&input, &[]);
            let split = feed(&input, &cuts);
            prop_assert_eq!(&split, &whole);
            let events = check_well_formed(&whole).map_err(TestCaseError::fail)?;
            prop_assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"));
            prop_assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"));
            // Every upstream piece of text arrives, in order, in its block type.
            let text: String = parts.iter().filter(|p| p.0 == 0).map(|p| p.1.as_str()).collect();
            let got: String = events
                .iter()
                .filter(|(_, v)| v["delta"]["type"] == "text_delta")
                .map(|(_, v)| v["delta"]["text"].as_str().unwrap_or("").to_string())
                .collect();
            prop_assert_eq!(got, text);
            for i in 0..2u8 {
                let args: String =
                    parts.iter().filter(|p| p.0 == i + 2).map(|p| p.1.as_str()).collect();
                let name = format!("tool{i}");
                let Some(block) = events.iter().find(|(n, v)| {
                    n == "content_block_start" && v["content_block"]["name"] == name.as_str()
                }) else {
                    prop_assert!(!parts.iter().any(|p| p.0 == i + 2));
                    continue;
                };
                let index = block.1["index"].clone();
                let got: String = events
                    .iter()
                    .filter(|(_, v)| v["delta"]["type"] == "input_json_delta" && v["index"] == index)
                    .map(|(_, v)| v["delta"]["partial_json"].as_str().unwrap_or("").to_string())
                    .collect();
                prop_assert_eq!(got, args);
            }
        }

        #[test]
        fn malformed_input_never_panics_and_stays_well_formed(
            noise in prop::collection::vec(any::<u8>(), 0..600),
            parts in prop::collection::vec(part(), 0..6),
            at in any::<prop::sample::Index>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let clean = upstream(&parts, false);
            let pos = at.index(clean.len() + 1);
            let mut input = clean[..pos].to_vec();
            input.extend_from_slice(&noise);
            input.extend_from_slice(&clean[pos..]);
            let out = feed(&input, &cuts);
            let events = check_well_formed(&out).map_err(TestCaseError::fail)?;
            let last = events.last().map(|e| e.0.clone());
            prop_assert!(matches!(last.as_deref(), Some("message_stop" | "error")), "{:?}", last);
            let out = feed(&noise, &cuts);
            check_well_formed(&out).map_err(TestCaseError::fail)?;
        }
    }
}
