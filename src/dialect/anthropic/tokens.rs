//! The local token estimate of `count_tokens` when no backend tokenizer is available: about
//! four characters per token (Olla's rule) over every text the model would read: the system
//! prompt, message text, tool results, tool calls' inputs and tool definitions. An image counts
//! as a flat 1,600 tokens (Anthropic's figure for a ~1.15 megapixel image).

use serde_json::Value;

/// Tokens assumed per image block.
pub const IMAGE_TOKENS: u64 = 1600;

/// The text of a request a tokenizer should count, and the number of images in it.
pub fn request_text(req: &Value) -> (String, u64) {
    let mut text = String::new();
    let mut images = 0;
    if let Some(s) = req.get("system") {
        collect(s, &mut text, &mut images);
    }
    if let Some(Value::Array(msgs)) = req.get("messages") {
        for m in msgs {
            if let Some(c) = m.get("content") {
                collect(c, &mut text, &mut images);
            }
        }
    }
    if let Some(Value::Array(tools)) = req.get("tools") {
        for t in tools {
            text.push_str(&t.to_string());
            text.push('\n');
        }
    }
    (text, images)
}

fn collect(v: &Value, text: &mut String, images: &mut u64) {
    match v {
        Value::String(s) => {
            text.push_str(s);
            text.push('\n');
        }
        Value::Array(blocks) => {
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("image") => *images += 1,
                    Some("tool_use") => {
                        if let Some(i) = b.get("input") {
                            text.push_str(&i.to_string());
                            text.push('\n');
                        }
                    }
                    _ => {
                        for key in ["text", "thinking", "content"] {
                            if let Some(inner) = b.get(key) {
                                collect(inner, text, images);
                            }
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// The estimate: characters / 4, rounded up, plus the images; at least 1.
pub fn estimate(req: &Value) -> u64 {
    let (text, images) = request_text(req);
    let chars = text.chars().count() as u64;
    (chars.div_ceil(4) + images * IMAGE_TOKENS).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_every_text_and_images() {
        let req = json!({"system": "abcd", "messages": [
            {"role": "user", "content": "abcdefgh"},
            {"role": "user", "content": [{"type": "text", "text": "abc"},
                {"type": "image", "source": {}},
                {"type": "tool_result", "content": [{"type": "text", "text": "xyz"}]}]}]});
        let (text, images) = request_text(&req);
        assert_eq!(text, "abcd\nabcdefgh\nabc\nxyz\n");
        assert_eq!(images, 1);
        assert_eq!(estimate(&req), 6 + IMAGE_TOKENS);
        assert_eq!(estimate(&json!({})), 1);
    }
}
