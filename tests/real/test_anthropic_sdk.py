"""The official `anthropic` SDK against olla's `/olla/anthropic` translation, in front of
`olla-mock` processes that speak only the OpenAI dialect (16 tokens "tok0 " .. "tok15 ", 20 ms
apart; `mock:tool` and `mock:think` in the prompt make the mock call the first tool and send
`reasoning_content`).

Proves the Messages API olla builds from chat completions is what the SDK expects:
`messages.create` and `messages.stream` with text, an image, a tool the model calls (the
streamed `input_json_delta` pieces assemble to the right input), thinking, a multi-turn
conversation with a system prompt, stop reasons and usage in `get_final_message()`, and the
Anthropic error types."""

from __future__ import annotations

import base64
import json
import time

import anthropic
import pytest

from conftest import http_get, mock_backend, wait_until

TOKENS = 16
TOKEN_DELAY_MS = 20
EXPECTED_TEXT = "".join(f"tok{i} " for i in range(TOKENS))
MODEL = "gpt-mock-a"
TOOL_INPUT = {"city": "Paris", "days": 3}
REASONING = "Let me think step by step."
WEATHER = {
    "name": "get_weather",
    "description": "Weather forecast for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                     "required": ["city"]},
}
# A 1x1 PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


def client(o) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=o.base + "/olla/anthropic", api_key="client-key", timeout=30,
                               max_retries=0)


def last_work(mock) -> dict:
    status, body = http_get(mock.url + "/_mock/last_work")
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def stack(olla_mock, olla):
    """One openai-compatible mock (no native Messages API) behind olla; health checks rare."""
    m = olla_mock("oai-mock", models=[MODEL], tokens=TOKENS, token_delay_ms=TOKEN_DELAY_MS)
    o = olla([mock_backend(m, "openai-compatible")])
    c = client(o)
    wait_until(lambda: MODEL in [x.id for x in c.models.list().data], timeout=15, interval=0.1,
               desc=f"{MODEL} in /olla/anthropic/v1/models")
    return o, m


def test_create_text_with_system_multi_turn(stack):
    o, m = stack
    raw = client(o).messages.with_raw_response.create(
        model=MODEL, max_tokens=64, system="You are terse.",
        messages=[{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": [{"type": "text", "text": "and again?"}]}],
    )
    assert raw.headers.get("x-olla-mode") is None, dict(raw.headers)
    assert raw.headers.get("request-id"), dict(raw.headers)
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == EXPECTED_TEXT
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == TOKENS and msg.usage.input_tokens > 0, msg.usage
    sent = last_work(m)
    assert sent["path"] == "/v1/chat/completions"
    body = json.loads(sent["body"])
    assert [x["role"] for x in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "You are terse."
    assert body["messages"][3]["content"] == "and again?"
    assert body["max_tokens"] == 64


def test_stream_text_final_message(stack):
    o, _ = stack
    t0 = time.perf_counter()
    arrivals = []
    with client(o).messages.stream(model=MODEL, max_tokens=64, system="Be brief.",
                                   messages=[{"role": "user", "content": "count"}]) as s:
        for text in s.text_stream:
            arrivals.append(time.perf_counter() - t0)
        final = s.get_final_message()
    assert final.content[0].text == EXPECTED_TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == TOKENS and final.usage.input_tokens > 0, final.usage
    assert len(arrivals) == TOKENS
    # Incremental: the text arrives over the backend's ~300 ms, not in one burst at the end
    # (a generous bound: the machine is shared and busy).
    assert arrivals[-1] - arrivals[0] >= 0.3 * (TOKENS - 1) * TOKEN_DELAY_MS / 1000, arrivals


def test_image_blocks_become_image_urls(stack):
    o, m = stack
    msg = client(o).messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What is in these images?"}]}])
    assert msg.content[0].text == EXPECTED_TEXT
    parts = json.loads(last_work(m)["body"])["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert parts[1]["image_url"]["url"] == "https://example.com/cat.png"
    assert parts[2] == {"type": "text", "text": "What is in these images?"}


def test_tool_call_create_then_result_round_trip(stack):
    o, m = stack
    c = client(o)
    first = c.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER],
                              messages=[{"role": "user", "content": "mock:tool weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    tool = [b for b in first.content if b.type == "tool_use"]
    assert len(tool) == 1 and tool[0].name == "get_weather" and tool[0].input == TOOL_INPUT, first.content
    sent = json.loads(last_work(m)["body"])
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    # The result goes back as a tool message, an error one prefixed.
    second = c.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"},
                               messages=[
                                   {"role": "user", "content": "weather in Paris?"},
                                   {"role": "assistant", "content": first.content},
                                   {"role": "user", "content": [
                                       {"type": "tool_result", "tool_use_id": tool[0].id,
                                        "content": [{"type": "text", "text": "sunny"}]},
                                       {"type": "tool_result", "tool_use_id": "other", "content": "boom",
                                        "is_error": True}]}])
    assert second.stop_reason == "end_turn" and second.content[0].text == EXPECTED_TEXT
    sent = json.loads(last_work(m)["body"])
    assert sent["tool_choice"] == "required"
    msgs = sent["messages"]
    assert msgs[1]["tool_calls"][0]["id"] == tool[0].id
    assert json.loads(msgs[1]["tool_calls"][0]["function"]["arguments"]) == TOOL_INPUT
    assert msgs[2] == {"role": "tool", "tool_call_id": tool[0].id, "content": "sunny"}
    assert msgs[3]["content"] == "Error: boom"


def test_stream_tool_call_input_json_assembles(stack):
    o, _ = stack
    deltas = []
    with client(o).messages.stream(model=MODEL, max_tokens=64, tools=[WEATHER],
                                   messages=[{"role": "user", "content": "mock:tool weather?"}]) as s:
        for event in s:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                deltas.append(event.delta.partial_json)
        final = s.get_final_message()
    assert len(deltas) == 3, deltas  # streamed in the backend's pieces, not as one blob
    assert json.loads("".join(deltas)) == TOOL_INPUT
    tool = [b for b in final.content if b.type == "tool_use"]
    assert len(tool) == 1 and tool[0].input == TOOL_INPUT and tool[0].name == "get_weather", final.content
    assert final.content[0].type == "text" and final.content[0].text == EXPECTED_TEXT
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == TOKENS


def test_thinking_create_and_stream(stack):
    o, m = stack
    c = client(o)
    msg = c.messages.create(model=MODEL, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                            messages=[{"role": "user", "content": "mock:think why?"}])
    assert [b.type for b in msg.content] == ["thinking", "text"], msg.content
    assert msg.content[0].thinking == REASONING
    assert msg.content[1].text == EXPECTED_TEXT
    # An openai-compatible backend gets the budget as a reasoning effort.
    assert json.loads(last_work(m)["body"])["reasoning_effort"] == "low"
    with c.messages.stream(model=MODEL, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                           messages=[{"role": "user", "content": "mock:think why?"}]) as s:
        kinds = [e.delta.type for e in s if e.type == "content_block_delta"]
        final = s.get_final_message()
    assert kinds.count("thinking_delta") == 2 and kinds.count("text_delta") == TOKENS, kinds
    assert final.content[0].type == "thinking" and final.content[0].thinking == REASONING
    assert final.content[1].text == EXPECTED_TEXT
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == TOKENS


def test_errors_and_count_tokens(stack):
    o, _ = stack
    c = client(o)
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    assert e.value.response.headers.get("request-id")
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "robot", "content": "x"}])
    n = c.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "a" * 40}])
    assert n.input_tokens == 11  # estimate: 41 characters (with the separator) / 4, rounded up
