//! OpenAI-compatible dialect (also served for LM Studio, llama.cpp, vLLM, SGLang, Lemonade,
//! Docker Model Runner): model lists, chat completions, text completions, embeddings and
//! the OpenAI error shape, plus the engine-specific extras (LM Studio `/api/v0/models`,
//! llama.cpp `/props` and `/slots`, vLLM `/version`).
//!
//! Bodies are preformatted strings (no `serde_json::Value` on the hot path); every string
//! that comes from a request or the config goes through [`push_json_str`].

use std::fmt::Write as _;

use bytes::Bytes;

use crate::body::Encoder;
use crate::routes::{GenInfo, Generation};
use crate::util::{
    completion_text, json_str, push_embedding, push_json_str, ModelMeta, Tok, CTX_LEN,
    MODEL_CREATED,
};

/// `{"error":{"message","type","code"}}`.
pub(crate) fn error_body(message: &str, kind: &str, code: Option<&str>) -> String {
    let mut s = String::with_capacity(message.len() + 80);
    s.push_str(r#"{"error":{"message":"#);
    push_json_str(&mut s, message);
    s.push_str(r#","type":"#);
    push_json_str(&mut s, kind);
    s.push_str(r#","code":"#);
    match code {
        Some(c) => push_json_str(&mut s, c),
        None => s.push_str("null"),
    }
    s.push_str("}}");
    s
}

/// `GET /v1/models`: the OpenAI list, with vLLM's `root`/`max_model_len`, llama.cpp's
/// `meta` per entry, and llama.cpp's extra top-level `models` array.
pub(crate) fn models_body(name: &str, models: &[String]) -> String {
    let owner = json_str(name);
    let mut s = String::with_capacity(256 + models.len() * 512);
    s.push_str(r#"{"object":"list","data":["#);
    for (i, m) in models.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let id = json_str(m);
        let meta = ModelMeta::guess(m);
        let _ = write!(
            s,
            r#"{{"id":{id},"object":"model","created":{MODEL_CREATED},"owned_by":{owner},"root":{id},"parent":null,"max_model_len":{CTX_LEN},"permission":[],"meta":{{"n_ctx_train":{CTX_LEN},"n_params":{params},"size":{size}}}}}"#,
            params = meta.size * 5 / 3,
            size = meta.size,
        );
    }
    s.push_str(r#"],"models":["#);
    for (i, m) in models.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let id = json_str(m);
        let meta = ModelMeta::guess(m);
        let family = json_str(&meta.family);
        let _ = write!(
            s,
            r#"{{"name":{id},"model":{id},"modified_at":"","size":"","digest":"","type":"model","description":"","tags":[""],"capabilities":["completion"],"parameters":"","details":{{"parent_model":"","format":"gguf","family":{family},"families":[{family}],"parameter_size":"{ps}","quantization_level":"Q4_K_M"}}}}"#,
            ps = meta.parameter_size,
        );
    }
    s.push_str("]}");
    s
}

/// `GET /api/v0/models` (LM Studio's REST API).
pub(crate) fn lmstudio_models_body(models: &[String], loaded: &[String]) -> String {
    let mut s = String::with_capacity(64 + models.len() * 256);
    s.push_str(r#"{"object":"list","data":["#);
    for (i, m) in models.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let meta = ModelMeta::guess(m);
        let kind = if meta.family.contains("bert") || m.contains("embed") {
            "embeddings"
        } else {
            "llm"
        };
        let _ = write!(
            s,
            r#"{{"id":{id},"object":"model","type":"{kind}","publisher":{publisher},"arch":{arch},"compatibility_type":"gguf","quantization":"Q4_K_M","state":"{state}","max_context_length":{CTX_LEN}}}"#,
            id = json_str(m),
            state = if loaded.contains(m) {
                "loaded"
            } else {
                "not-loaded"
            },
            publisher = json_str(&meta.publisher),
            arch = json_str(&meta.family),
        );
    }
    s.push_str("]}");
    s
}

/// `GET /props` (llama.cpp).
pub(crate) fn props_body(name: &str, model: &str) -> String {
    let path = json_str(&format!("/models/{model}.gguf"));
    format!(
        r#"{{"default_generation_settings":{{"n_ctx":{CTX_LEN},"model":{path},"params":{{"n_predict":-1,"temperature":0.8,"top_k":40,"top_p":0.95,"stream":false}}}},"total_slots":{SLOTS},"model_path":{path},"chat_template":"{{{{ messages }}}}","build_info":{build}}}"#,
        build = json_str(name),
    )
}

/// Number of llama.cpp slots the mock reports.
pub(crate) const SLOTS: u64 = 4;

/// `GET /slots` (llama.cpp): the first `busy` slots are processing.
pub(crate) fn slots_body(busy: u64) -> String {
    let mut s = String::from("[");
    for id in 0..SLOTS {
        if id > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            r#"{{"id":{id},"id_task":-1,"n_ctx":{n_ctx},"speculative":false,"is_processing":{busy}}}"#,
            n_ctx = CTX_LEN / SLOTS as u32,
            busy = id < busy,
        );
    }
    s.push(']');
    s
}

/// `GET /version` (vLLM).
pub(crate) const VLLM_VERSION_BODY: &str = r#"{"version":"0.11.0"}"#;

fn usage(s: &mut String, prompt: usize, completion: usize) {
    let _ = write!(
        s,
        r#""usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}"#,
        prompt + completion
    );
}

/// What a chat request asks the mock to add to its answer, by keywords in the request body
/// (so SDK tests can ask through any client):
/// - `mock:think` (or `reasoning_effort`, or `"enable_thinking":true`): a `reasoning_content`
///   part before the text;
/// - `mock:tool` with a `tools` list: a call of the first tool, its arguments
///   ([`TOOL_ARGS`]) streamed in three pieces, finishing with `tool_calls`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ChatExtras {
    pub think: bool,
    pub tool: Option<String>,
}

/// The arguments of the mock's tool call.
pub(crate) const TOOL_ARGS: [&str; 3] = [r#"{"city": "#, r#""Paris", "#, r#""days": 3}"#];
/// The mock's reasoning text, as streamed.
pub(crate) const REASONING: [&str; 2] = ["Let me think", " step by step."];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl ChatExtras {
    pub fn from_body(body: &[u8]) -> Self {
        let think = contains(body, b"mock:think")
            || contains(body, b"\"reasoning_effort\"")
            || contains(body, b"\"enable_thinking\":true");
        let tool = if contains(body, b"mock:tool") {
            serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.pointer("/tools/0/function/name")
                        .and_then(|n| n.as_str())
                        .map(str::to_owned)
                })
        } else {
            None
        };
        Self { think, tool }
    }
}

/// `POST /v1/chat/completions`.
pub(crate) struct Chat {
    info: GenInfo,
    extras: ChatExtras,
    /// `data: {"id":..,"object":"chat.completion.chunk",...,"choices":[`
    chunk_prefix: String,
}

impl Chat {
    pub fn with_extras(info: GenInfo, extras: ChatExtras) -> Self {
        let mut c = Self::new(info);
        c.extras = extras;
        c
    }

    fn delta_chunk(&self, s: &mut String, delta: &str, finish: &str) {
        s.push_str(&self.chunk_prefix);
        let _ = write!(
            s,
            r#"{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
        );
        s.push_str("\n\n");
    }

    pub fn new(info: GenInfo) -> Self {
        let chunk_prefix = format!(
            r#"data: {{"id":"chatcmpl-mock-{id}","object":"chat.completion.chunk","created":{created},"model":{model},"system_fingerprint":{fp},"choices":["#,
            id = info.id,
            created = info.created,
            model = info.model_json,
            fp = info.name_json,
        );
        Self {
            info,
            extras: ChatExtras::default(),
            chunk_prefix,
        }
    }
}

impl Encoder for Chat {
    fn head(&self) -> Option<Bytes> {
        let mut s = self.chunk_prefix.clone();
        s.push_str(
            r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        );
        s.push_str("\n\n");
        if self.extras.think {
            for part in REASONING {
                let delta = format!(r#"{{"reasoning_content":{}}}"#, json_str(part));
                self.delta_chunk(&mut s, &delta, "null");
            }
        }
        Some(Bytes::from(s))
    }

    fn token(&self, index: usize) -> Bytes {
        let mut s = String::with_capacity(self.chunk_prefix.len() + 96);
        s.push_str(&self.chunk_prefix);
        let _ = write!(
            s,
            r#"{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":null}}]}}"#,
            Tok(index)
        );
        s.push_str("\n\n");
        Bytes::from(s)
    }

    fn tail(&self) -> Bytes {
        let Some(tool) = &self.extras.tool else {
            return stream_tail(
                &self.chunk_prefix,
                r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#,
                &self.info,
            );
        };
        let mut s = String::with_capacity(self.chunk_prefix.len() * 6 + 400);
        let first = format!(
            r#"{{"tool_calls":[{{"index":0,"id":"call_mock_{id}","type":"function","function":{{"name":{name},"arguments":""}}}}]}}"#,
            id = self.info.id,
            name = json_str(tool),
        );
        self.delta_chunk(&mut s, &first, "null");
        for part in TOOL_ARGS {
            let delta = format!(
                r#"{{"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}}"#,
                json_str(part)
            );
            self.delta_chunk(&mut s, &delta, "null");
        }
        let rest = stream_tail(
            &self.chunk_prefix,
            r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}"#,
            &self.info,
        );
        s.push_str(&String::from_utf8_lossy(&rest));
        Bytes::from(s)
    }
}

impl Generation for Chat {
    const STREAM_CONTENT_TYPE: &'static str = "text/event-stream";
    const MALFORMED_STREAM: &'static str =
        "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chu\n\ndata: [DONE]\n\n";

    fn whole(&self) -> String {
        let i = &self.info;
        let mut s = String::with_capacity(320 + i.tokens * 6);
        let _ = write!(
            s,
            r#"{{"id":"chatcmpl-mock-{id}","object":"chat.completion","created":{created},"model":{model},"system_fingerprint":{fp},"choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}""#,
            id = i.id,
            created = i.created,
            model = i.model_json,
            fp = i.name_json,
            text = completion_text(i.tokens),
        );
        if self.extras.think {
            let _ = write!(
                s,
                r#","reasoning_content":{}"#,
                json_str(&REASONING.concat())
            );
        }
        let finish = match &self.extras.tool {
            Some(tool) => {
                let _ = write!(
                    s,
                    r#","tool_calls":[{{"id":"call_mock_{id}","type":"function","function":{{"name":{name},"arguments":{args}}}}}]"#,
                    id = i.id,
                    name = json_str(tool),
                    args = json_str(&TOOL_ARGS.concat()),
                );
                "tool_calls"
            }
            None => "stop",
        };
        let _ = write!(s, r#"}},"logprobs":null,"finish_reason":"{finish}"}}],"#);
        usage(&mut s, i.prompt_tokens, i.tokens);
        s.push('}');
        s
    }
}

/// The end of an OpenAI stream: the chunk carrying `final_choice`, the usage chunk when asked
/// for (`include_usage`), then `[DONE]`.
fn stream_tail(chunk_prefix: &str, final_choice: &str, info: &GenInfo) -> Bytes {
    let mut s = String::with_capacity(chunk_prefix.len() * 2 + 160);
    s.push_str(chunk_prefix);
    s.push_str(final_choice);
    s.push_str("]}\n\n");
    if info.include_usage {
        s.push_str(chunk_prefix);
        s.push_str("],");
        usage(&mut s, info.prompt_tokens, info.tokens);
        s.push_str("}\n\n");
    }
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

/// `POST /v1/completions`.
pub(crate) struct Completion {
    info: GenInfo,
    chunk_prefix: String,
}

impl Completion {
    pub fn new(info: GenInfo) -> Self {
        let chunk_prefix = format!(
            r#"data: {{"id":"cmpl-mock-{id}","object":"text_completion","created":{created},"model":{model},"system_fingerprint":{fp},"choices":["#,
            id = info.id,
            created = info.created,
            model = info.model_json,
            fp = info.name_json,
        );
        Self { info, chunk_prefix }
    }
}

impl Encoder for Completion {
    fn head(&self) -> Option<Bytes> {
        None
    }

    fn token(&self, index: usize) -> Bytes {
        let mut s = String::with_capacity(self.chunk_prefix.len() + 80);
        s.push_str(&self.chunk_prefix);
        let _ = write!(
            s,
            r#"{{"text":"{}","index":0,"logprobs":null,"finish_reason":null}}]}}"#,
            Tok(index)
        );
        s.push_str("\n\n");
        Bytes::from(s)
    }

    fn tail(&self) -> Bytes {
        stream_tail(
            &self.chunk_prefix,
            r#"{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}"#,
            &self.info,
        )
    }
}

impl Generation for Completion {
    const STREAM_CONTENT_TYPE: &'static str = "text/event-stream";
    const MALFORMED_STREAM: &'static str =
        "data: {\"id\":\"cmpl-mock\",\"object\":\"text_compl\n\ndata: [DONE]\n\n";

    fn whole(&self) -> String {
        let i = &self.info;
        let mut s = String::with_capacity(320 + i.tokens * 6);
        let _ = write!(
            s,
            r#"{{"id":"cmpl-mock-{id}","object":"text_completion","created":{created},"model":{model},"system_fingerprint":{fp},"choices":[{{"text":"{text}","index":0,"logprobs":null,"finish_reason":"stop"}}],"#,
            id = i.id,
            created = i.created,
            model = i.model_json,
            fp = i.name_json,
            text = completion_text(i.tokens),
        );
        usage(&mut s, i.prompt_tokens, i.tokens);
        s.push('}');
        s
    }
}

/// `POST /v1/embeddings`: one vector per input item.
pub(crate) fn embeddings_body(info: &GenInfo, inputs: &[u64]) -> String {
    let mut s = String::with_capacity(96 + inputs.len() * 96);
    s.push_str(r#"{"object":"list","data":["#);
    for (i, h) in inputs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, r#"{{"object":"embedding","index":{i},"embedding":"#);
        push_embedding(&mut s, *h);
        s.push('}');
    }
    let _ = write!(
        s,
        r#"],"model":{model},"usage":{{"prompt_tokens":{p},"total_tokens":{p}}}}}"#,
        model = info.model_json,
        p = info.prompt_tokens,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn info(tokens: usize, include_usage: bool) -> GenInfo {
        GenInfo {
            id: 7,
            created: 1,
            model_json: json_str("m\"x"),
            name_json: json_str("gpu1").into(),
            prompt_tokens: 5,
            tokens,
            include_usage,
            ttft_ms: 0,
            token_delay_ms: 0,
        }
    }

    fn sse_events(bytes: &[Bytes]) -> Vec<String> {
        let all: String = bytes
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        all.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap_or(e).to_owned())
            .collect()
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON {s}: {e}"))
    }

    #[test]
    fn chat_whole_is_valid() {
        let v = parse(&Chat::new(info(3, false)).whole());
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "m\"x");
        assert_eq!(v["system_fingerprint"], "gpu1");
        assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["usage"]["total_tokens"], 8);
    }

    #[test]
    fn chat_stream_events() {
        let c = Chat::new(info(2, true));
        let mut frames = vec![c.head().expect("head")];
        frames.extend((0..2).map(|i| c.token(i)));
        frames.push(c.tail());
        let events = sse_events(&frames);
        assert_eq!(events.len(), 6);
        assert_eq!(events[5], "[DONE]");
        let first = parse(&events[0]);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(parse(&events[1])["choices"][0]["delta"]["content"], "tok0 ");
        assert_eq!(parse(&events[2])["choices"][0]["delta"]["content"], "tok1 ");
        let last = parse(&events[3]);
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let usage = parse(&events[4]);
        assert_eq!(usage["choices"].as_array().map(Vec::len), Some(0));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        for e in &events[..5] {
            assert_eq!(parse(e)["object"], "chat.completion.chunk");
        }
        // Without include_usage there is no usage chunk.
        let c = Chat::new(info(1, false));
        assert_eq!(sse_events(&[c.tail()]).len(), 2);
    }

    #[test]
    fn chat_extras_reasoning_and_tool_call() {
        let body = br#"{"messages":[{"role":"user","content":"mock:tool mock:think"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]}"#;
        let extras = ChatExtras::from_body(body);
        assert_eq!(
            extras,
            ChatExtras {
                think: true,
                tool: Some("get_weather".into())
            }
        );
        assert_eq!(ChatExtras::from_body(b"{}"), ChatExtras::default());
        let c = Chat::with_extras(info(1, true), extras);
        let v = parse(&c.whole());
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["reasoning_content"], "Let me think step by step.");
        assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(
            msg["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args["city"], "Paris");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let frames = vec![c.head().expect("head"), c.token(0), c.tail()];
        let events = sse_events(&frames);
        let parsed: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| parse(e))
            .collect();
        assert_eq!(
            parsed[1]["choices"][0]["delta"]["reasoning_content"],
            "Let me think"
        );
        let args: String = parsed
            .iter()
            .filter_map(|e| {
                e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, TOOL_ARGS.concat());
        assert!(parsed
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "tool_calls"));
        assert!(parsed.iter().any(|e| e["usage"]["completion_tokens"] == 1));
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }

    #[test]
    fn completion_shapes() {
        let c = Completion::new(info(2, false));
        let v = parse(&c.whole());
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "tok0 tok1 ");
        let events = sse_events(&[c.token(0), c.tail()]);
        assert_eq!(parse(&events[0])["choices"][0]["text"], "tok0 ");
        assert_eq!(parse(&events[1])["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[2], "[DONE]");
    }

    #[test]
    fn lists_and_extras_are_valid() {
        let models = vec!["a".to_owned(), "llama3:8b".to_owned()];
        let v = parse(&models_body("gpu\"1", &models));
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][1]["id"], "llama3:8b");
        assert_eq!(v["data"][1]["owned_by"], "gpu\"1");
        assert_eq!(v["data"][1]["max_model_len"], 4096);
        assert_eq!(v["models"][1]["name"], "llama3:8b");
        let v = parse(&lmstudio_models_body(&models, &models));
        assert_eq!(v["data"][0]["type"], "llm");
        assert_eq!(v["data"][0]["state"], "loaded");
        assert_eq!(v["data"][0]["max_context_length"], 4096);
        let v = parse(&props_body("gpu1", "a"));
        assert_eq!(v["total_slots"], 4);
        assert_eq!(v["default_generation_settings"]["n_ctx"], 4096);
        let v = parse(&slots_body(1));
        assert_eq!(v[0]["is_processing"], true);
        assert_eq!(v[1]["is_processing"], false);
        parse(VLLM_VERSION_BODY);
        for bad in [Chat::MALFORMED_STREAM, Completion::MALFORMED_STREAM] {
            let events = sse_events(&[Bytes::from_static(bad.as_bytes())]);
            assert_eq!(events.len(), 2);
            assert!(serde_json::from_str::<Value>(&events[0]).is_err());
            assert_eq!(events[1], "[DONE]");
        }
        let v = parse(&error_body(
            "model 'x' not found",
            "invalid_request_error",
            Some("model_not_found"),
        ));
        assert_eq!(v["error"]["code"], "model_not_found");
    }

    #[test]
    fn embeddings_one_per_input() {
        let v = parse(&embeddings_body(&info(0, false), &[1, 2, 3]));
        let data = v["data"].as_array().expect("data");
        assert_eq!(data.len(), 3);
        assert_eq!(data[2]["index"], 2);
        assert_eq!(data[0]["embedding"].as_array().map(Vec::len), Some(8));
    }
}
