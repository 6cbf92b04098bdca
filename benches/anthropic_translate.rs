//! Criterion benches of the Anthropic translation cost (pure functions, no I/O):
//! - `anthropic/request`: a Claude Code-sized Messages request (system prompt, 12 turns with a
//!   tool call and its result, 4 tools) parsed, translated and rendered for one backend;
//! - `anthropic/response`: a whole chat completion with text and a tool call translated back;
//! - `anthropic/stream_chunk`: one streamed chat-completions chunk (a token) through the stream
//!   translator, reported per chunk over a 64-chunk stream;
//! - `anthropic/stream_chunk_passthrough_baseline`: copying the same bytes, for scale.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use olla::dialect::anthropic::request::{translate, Flavour};
use olla::dialect::anthropic::response;
use olla::dialect::anthropic::stream::StreamTranslator;
use serde_json::{json, Value};

fn request() -> Vec<u8> {
    let mut messages = Vec::new();
    for i in 0..5 {
        messages.push(json!({"role": "user", "content": format!("Please look at file {i} and explain what the function does in detail. {}", "context ".repeat(40))}));
        messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": "Sure, here is the explanation. ".repeat(10)}]}));
    }
    messages.push(json!({"role": "assistant", "content": [
        {"type": "text", "text": "Let me read it."},
        {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "src/main.rs"}}]}));
    messages.push(json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "fn main() {}\n".repeat(50)}]}));
    let tools: Vec<Value> = ["read_file", "write_file", "bash", "grep"]
        .iter()
        .map(|n| json!({"name": n, "description": "A tool that does things with files and commands.",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path"]}}))
        .collect();
    serde_json::to_vec(
        &json!({"model": "qwen3:32b", "max_tokens": 4096, "stream": true,
        "system": [{"type": "text", "text": "You are a coding assistant. ".repeat(60)}],
        "messages": messages, "tools": tools, "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "u"}}),
    )
    .unwrap_or_default()
}

fn chunk(i: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("anthropic");
    let body = request();
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("request", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&body)).unwrap_or(Value::Null);
            let t = translate(&v).map(|t| t.render(Flavour::Engine));
            black_box(t)
        })
    });
    let answer = json!({"id": "c", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Here is what I found. ".repeat(30),
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"src/lib.rs\"}"}}]}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 180}});
    let answer_bytes = serde_json::to_vec(&answer).unwrap_or_default();
    g.throughput(Throughput::Bytes(answer_bytes.len() as u64));
    g.bench_function("response", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&answer_bytes)).unwrap_or(Value::Null);
            black_box(response::translate(&v, "m", "msg_1".into(), &[]))
        })
    });
    const CHUNKS: usize = 64;
    let chunks: Vec<String> = (0..CHUNKS).map(chunk).collect();
    g.throughput(Throughput::Elements(CHUNKS as u64));
    g.bench_function("stream_chunk", |b| {
        b.iter(|| {
            let mut t = StreamTranslator::new("m", "msg_1".into(), 10, Vec::new());
            let mut out = Vec::with_capacity(256);
            for c in &chunks {
                out.clear();
                t.push(black_box(c.as_bytes()), &mut out);
                black_box(&out);
            }
            t
        })
    });
    g.bench_function("stream_chunk_passthrough_baseline", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(256);
            for c in &chunks {
                out.clear();
                out.extend_from_slice(black_box(c.as_bytes()));
                black_box(&out);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
