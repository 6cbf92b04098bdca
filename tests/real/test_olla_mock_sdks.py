"""The real `openai` and `ollama` SDKs against olla in front of `olla-mock` processes (fake
backends speaking the OpenAI and Ollama dialects; 16 tokens "tok0 " .. "tok15 ", 20 ms apart).

Proves olla's routing and aggregation with the real client libraries: the OpenAI model list and
streamed chat on `/olla/proxy/v1` and `/olla/openai/v1`, the Ollama SDK on `/olla/ollama`
(aggregated `/api/tags`, NDJSON chat stream, non-streamed generate), and that `/olla/ollama`
reaches Ollama backends only. Not a proof that a real Ollama would behave the same."""

from __future__ import annotations

import time

import ollama
import openai
import pytest

from conftest import mock_backend, wait_until

TOKENS = 16
TOKEN_DELAY_MS = 20
EXPECTED_TEXT = "".join(f"tok{i} " for i in range(TOKENS))

OAI_MODELS = ["gpt-mock-a", "gpt-mock-b"]
OLLAMA_MODELS = ["llama3.2:1b", "qwen2.5:0.5b"]
OPENAI_ROUTES = {"proxy": "/olla/proxy/v1", "openai": "/olla/openai/v1"}
OVERRIDES = {"discovery": {"model_discovery": {"interval": "2s"}}}


def oai(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="x", timeout=30, max_retries=0)


def ollama_client(o) -> ollama.Client:
    return ollama.Client(host=o.base + "/olla/ollama", timeout=30)


def wait_models(o, route: str, want: set[str]) -> list[str]:
    """Poll `<route>/models` until every model in `want` is listed (discovery done)."""
    c = oai(o.base + route)

    def ready():
        ids = [m.id for m in c.models.list()]
        return ids if want <= set(ids) else None

    return wait_until(ready, timeout=15, interval=0.1, desc=f"{sorted(want)} in {route}/models")


def gen_requests(mock, path: str) -> int:
    return mock.stats()["by_path"].get(path, 0)


@pytest.fixture
def stack(olla_mock, olla):
    """One `openai-compatible` mock and one `ollama` mock (different models) behind olla."""
    oai_mock = olla_mock("oai-mock", models=OAI_MODELS, tokens=TOKENS, token_delay_ms=TOKEN_DELAY_MS)
    oll_mock = olla_mock("ollama-mock", models=OLLAMA_MODELS, tokens=TOKENS, token_delay_ms=TOKEN_DELAY_MS)
    o = olla([mock_backend(oai_mock, "openai-compatible"), mock_backend(oll_mock, "ollama")], overrides=OVERRIDES)
    wait_models(o, "/olla/proxy/v1", set(OAI_MODELS + OLLAMA_MODELS))
    return o, oai_mock, oll_mock


# --------------------------------------------------------------------------- openai SDK


@pytest.mark.parametrize("route", list(OPENAI_ROUTES))
def test_openai_models_list(stack, route):
    o, _, _ = stack
    ids = [m.id for m in oai(o.base + OPENAI_ROUTES[route]).models.list()]
    # Both backends are OpenAI-compatible (Ollama serves /v1 too); each model listed once.
    assert sorted(ids) == sorted(OAI_MODELS + OLLAMA_MODELS), ids


@pytest.mark.parametrize("route", list(OPENAI_ROUTES))
@pytest.mark.parametrize("model,backend", [("gpt-mock-a", "oai-mock"), ("llama3.2:1b", "ollama-mock")])
def test_openai_stream_chat(stack, route, model, backend):
    o, oai_mock, oll_mock = stack
    mocks = {"oai-mock": oai_mock, "ollama-mock": oll_mock}
    t0 = time.perf_counter()
    stream = oai(o.base + OPENAI_ROUTES[route]).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    h = stream.response.headers
    assert h.get("x-olla-endpoint") == backend, dict(h)
    assert h.get("x-olla-backend-type") == ("openai-compatible" if backend == "oai-mock" else "ollama"), dict(h)
    assert h.get("x-olla-request-id"), dict(h)
    pieces, arrivals, finish, usage = [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                pieces.append(ch.delta.content)
                arrivals.append(time.perf_counter() - t0)
            if ch.finish_reason:
                finish = ch.finish_reason
    assert "".join(pieces) == EXPECTED_TEXT, pieces
    assert len(pieces) == TOKENS
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == TOKENS, usage
    # Streamed as produced: 15 gaps of 20 ms between first and last token.
    assert arrivals[-1] - arrivals[0] >= 0.5 * (TOKENS - 1) * TOKEN_DELAY_MS / 1000, arrivals
    # The request reached the backend that owns the model, on its OpenAI path, and only that one.
    # (Counts, not /_mock/last: health checks and discovery also hit the mocks.)
    other = oll_mock if backend == "oai-mock" else oai_mock
    assert gen_requests(mocks[backend], "/v1/chat/completions") == 1
    assert gen_requests(other, "/v1/chat/completions") == 0


# --------------------------------------------------------------------------- ollama SDK


def test_ollama_list_aggregated_tags(stack):
    o, _, _ = stack
    resp = ollama_client(o).list()
    names = sorted(m.model for m in resp.models)
    assert names == sorted(OLLAMA_MODELS), names  # the openai-compatible mock's models are not there
    for m in resp.models:
        assert m.details is not None and m.details.family, m
        assert m.size and m.size > 0, m


def test_ollama_chat_stream(stack):
    o, oai_mock, oll_mock = stack
    t0 = time.perf_counter()
    chunks, arrivals = [], []
    for part in ollama_client(o).chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=True):
        chunks.append(part)
        arrivals.append(time.perf_counter() - t0)
    content = [c.message.content for c in chunks if not c.done]
    assert "".join(content) == EXPECTED_TEXT, content
    assert len(content) == TOKENS
    final = chunks[-1]
    assert final.done is True and final.done_reason == "stop", final
    assert final.eval_count == TOKENS, final
    assert all(not c.done for c in chunks[:-1])
    assert arrivals[-1] - arrivals[0] >= 0.5 * (TOKENS - 1) * TOKEN_DELAY_MS / 1000, arrivals
    assert gen_requests(oll_mock, "/api/chat") == 1
    assert gen_requests(oai_mock, "/api/chat") == 0


def test_ollama_generate_non_stream(stack):
    o, oai_mock, oll_mock = stack
    r = ollama_client(o).generate(model="qwen2.5:0.5b", prompt="Why is the sky blue?", stream=False)
    assert r.response == EXPECTED_TEXT, r
    assert r.done is True and r.done_reason == "stop", r
    assert r.eval_count == TOKENS, r
    assert r.model == "qwen2.5:0.5b", r
    assert gen_requests(oll_mock, "/api/generate") == 1
    assert gen_requests(oai_mock, "/api/generate") == 0


def test_ollama_prefix_sees_only_ollama_backends(stack):
    """`/olla/ollama/...` reaches Ollama backends only: its tags, its OpenAI model list and its
    routing ignore the openai-compatible mock's models."""
    o, oai_mock, oll_mock = stack
    client = ollama_client(o)
    assert sorted(m.model for m in client.list().models) == sorted(OLLAMA_MODELS)
    ids = [m.id for m in oai(o.base + "/olla/ollama/v1").models.list()]
    assert sorted(ids) == sorted(OLLAMA_MODELS), ids
    # A model only the openai-compatible backend has is not found through /olla/ollama ...
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="gpt-mock-a", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert e.value.status_code == 404, (e.value.status_code, e.value.error)
    with pytest.raises(openai.NotFoundError):
        oai(o.base + "/olla/ollama/v1").chat.completions.create(
            model="gpt-mock-b", messages=[{"role": "user", "content": "hi"}])
    # ... and the openai-compatible backend received no generation request at all.
    st = oai_mock.stats()
    assert not any(p in st["by_path"] for p in ("/api/chat", "/v1/chat/completions")), st
    # The same model through the universal route works (so the 404 above is the route's scope).
    r = oai(o.base + "/olla/proxy/v1").chat.completions.with_raw_response.create(
        model="gpt-mock-a", messages=[{"role": "user", "content": "hi"}])
    assert r.headers.get("x-olla-endpoint") == "oai-mock"
    assert r.parse().choices[0].message.content == EXPECTED_TEXT


def test_ollama_tags_aggregated_over_two_ollama_backends(olla_mock, olla):
    """Two Ollama backends with overlapping models: one tags list, each model once; a request
    goes to the backend that has the model."""
    m1 = olla_mock("ollama-1", models=["llama3.2:1b", "shared:7b"], tokens=TOKENS, token_delay_ms=1)
    m2 = olla_mock("ollama-2", models=["phi3:mini", "shared:7b"], tokens=TOKENS, token_delay_ms=1)
    oai_mock = olla_mock("oai-mock", models=["gpt-mock-a"], tokens=TOKENS, token_delay_ms=1)
    o = olla([mock_backend(m1, "ollama"), mock_backend(m2, "ollama"), mock_backend(oai_mock, "openai-compatible")],
             overrides=OVERRIDES)
    wait_models(o, "/olla/proxy/v1", {"llama3.2:1b", "shared:7b", "phi3:mini", "gpt-mock-a"})
    client = ollama_client(o)
    names = [m.model for m in client.list().models]
    assert sorted(names) == ["llama3.2:1b", "phi3:mini", "shared:7b"], names
    r = client.generate(model="phi3:mini", prompt="hi", stream=False)
    assert r.response == EXPECTED_TEXT
    assert gen_requests(m2, "/api/generate") == 1 and gen_requests(m1, "/api/generate") == 0
    r = client.generate(model="llama3.2:1b", prompt="hi", stream=False)
    assert r.response == EXPECTED_TEXT
    assert gen_requests(m1, "/api/generate") == 1 and gen_requests(m2, "/api/generate") == 1
