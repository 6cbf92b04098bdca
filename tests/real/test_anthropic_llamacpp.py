"""`/olla/anthropic` in front of TWO real llama.cpp llama-servers, which speak the Messages API
natively: olla passes requests through unchanged (`X-Olla-Mode: passthrough`), streamed and not,
with the official `anthropic` SDK; when the serving llama-server is SIGKILLed, the next request
fails over to the other one."""

from __future__ import annotations

import anthropic

from conftest import LLAMA_ALIAS, backend_for, wait_until

MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
# Greedy decoding. With sampling, SmolLM2 sometimes opens with an emoji whose first token is an
# incomplete UTF-8 sequence, and llama-server then leaves `message_start` out of its stream (seen
# directly, without olla, in about 1 stream in 40), which the SDK cannot assemble into a message.
GREEDY = {"temperature": 0}  # this SDK version takes no `temperature` argument


def start_pair(llama_servers, olla):
    """olla with llama-a (priority 100) and llama-b (priority 50), 500ms health checks."""
    a, b = llama_servers
    ep = {"check_interval": "500ms", "check_timeout": "1s"}
    return olla([backend_for(a, "llama-a", 100, **ep), backend_for(b, "llama-b", 50, **ep)])


def client(o) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=o.base + "/olla/anthropic", api_key="x", timeout=60, max_retries=0)


def test_create_and_stream_pass_through(llama_servers, olla):
    o = start_pair(llama_servers, olla)
    c = client(o)
    wait_until(lambda: LLAMA_ALIAS in [m.id for m in c.models.list().data], timeout=15,
               desc=f"{LLAMA_ALIAS} in /olla/anthropic/v1/models")
    raw = c.messages.with_raw_response.create(model=LLAMA_ALIAS, max_tokens=16, extra_body=GREEDY, system="You are terse.",
                                              messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers.get("x-olla-mode") == "passthrough", dict(raw.headers)
    assert raw.headers.get("x-olla-endpoint") == "llama-a", dict(raw.headers)
    m = raw.parse()
    assert m.type == "message" and m.role == "assistant", m
    assert "".join(b.text for b in m.content if b.type == "text").strip(), m
    assert m.stop_reason in ("end_turn", "max_tokens"), m
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 16, m.usage

    with c.messages.stream(model=LLAMA_ALIAS, max_tokens=16, extra_body=GREEDY, messages=MESSAGES) as s:
        assert s.response.headers.get("x-olla-mode") == "passthrough"
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) >= 2, pieces  # token by token
    assert "".join(pieces).strip()
    assert final.stop_reason in ("end_turn", "max_tokens"), final
    assert 0 < final.usage.output_tokens <= 16, final.usage


def test_sigkill_of_the_serving_backend_fails_over(llama_servers, olla):
    a, _ = llama_servers
    o = start_pair(llama_servers, olla)
    c = client(o)
    wait_until(lambda: LLAMA_ALIAS in [m.id for m in c.models.list().data], timeout=15,
               desc=f"{LLAMA_ALIAS} in /olla/anthropic/v1/models")
    raw = c.messages.with_raw_response.create(model=LLAMA_ALIAS, max_tokens=8, extra_body=GREEDY, messages=MESSAGES)
    assert raw.headers.get("x-olla-endpoint") == "llama-a"
    a.kill()  # SIGKILL + reap
    # The very next request, before any health check noticed, is served by llama-b.
    raw = c.messages.with_raw_response.create(model=LLAMA_ALIAS, max_tokens=8, extra_body=GREEDY, messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers.get("x-olla-endpoint") == "llama-b", dict(raw.headers)
    assert raw.headers.get("x-olla-mode") == "passthrough"
    assert raw.parse().content, raw.parse()
    with c.messages.stream(model=LLAMA_ALIAS, max_tokens=8, extra_body=GREEDY, messages=MESSAGES) as s:
        assert s.response.headers.get("x-olla-endpoint") == "llama-b"
        assert "".join(s.text_stream).strip()
