"""Cache-aware routing in front of TWO real llama.cpp llama-servers: one multi-turn
conversation with a long system prompt, run once with `load_balancer: cache-aware` and once with
`round-robin`, measuring the time to first token (streamed) of every turn.

Cache-aware keeps the conversation on the backend whose prompt cache holds its prefix (asserted
from `X-Olla-Endpoint` and `X-Olla-Routing-Pick`), so llama.cpp re-processes only the new
tokens; round-robin alternates and the other server has to process the whole prompt again.
The measured numbers are printed; the later turns must not be slower under cache-aware."""

from __future__ import annotations

import statistics
import time
import uuid

import openai

from conftest import LLAMA_ALIAS, backend_for, wait_until

TURNS = 6
QUESTIONS = [
    "Name one colour.",
    "Name one animal.",
    "Name one fruit.",
    "Name one city.",
    "Name one planet.",
    "Name one metal.",
]


def system_prompt() -> str:
    """About 450 tokens, unique per run so no run starts from the other's cache."""
    nonce = uuid.uuid4().hex
    rules = " ".join(
        f"Rule {i}: answer briefly, stay polite, use plain words and never repeat the question."
        for i in range(28)
    )
    return f"Session {nonce}. You are a terse assistant. {rules}"


def run_conversation(base: str) -> list[tuple[str, str, float]]:
    """Runs the conversation through olla; returns (endpoint, pick reason, ttft seconds) per turn."""
    client = openai.OpenAI(base_url=base + "/olla/proxy/v1", api_key="x", timeout=120, max_retries=0)
    messages = [{"role": "system", "content": system_prompt()}]
    out = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": QUESTIONS[turn]})
        started = time.perf_counter()
        ttft = None
        text = []
        with client.chat.completions.with_streaming_response.create(
            model=LLAMA_ALIAS, messages=messages, max_tokens=24, temperature=0, stream=True
        ) as raw:
            endpoint = raw.headers.get("x-olla-endpoint")
            pick = raw.headers.get("x-olla-routing-pick")
            for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    text.append(chunk.choices[0].delta.content)
        assert ttft is not None, f"turn {turn}: no content streamed"
        messages.append({"role": "assistant", "content": "".join(text)})
        out.append((endpoint, pick, ttft))
    return out


def start(llama_servers, olla, balancer: str):
    a, b = llama_servers
    ep = {"check_interval": "500ms", "check_timeout": "1s"}
    o = olla(
        [backend_for(a, "llama-a", 100, **ep), backend_for(b, "llama-b", 100, **ep)],
        overrides={"proxy": {"load_balancer": balancer}},
    )
    client = openai.OpenAI(base_url=o.base + "/olla/proxy/v1", api_key="x", timeout=30, max_retries=0)
    wait_until(lambda: LLAMA_ALIAS in [m.id for m in client.models.list()], timeout=30,
               desc="model discovered on both backends")
    return o


def test_cache_aware_keeps_the_conversation_on_its_cache_and_is_not_slower(llama_servers, olla):
    o = start(llama_servers, olla, "cache-aware")
    aware = run_conversation(o.base)
    o.stop()
    o = start(llama_servers, olla, "round-robin")
    rr = run_conversation(o.base)
    o.stop()

    for name, turns in (("cache-aware", aware), ("round-robin", rr)):
        print(f"\n{name}:")
        for i, (ep, pick, ttft) in enumerate(turns):
            print(f"  turn {i + 1}: {ep:8} pick={pick:16} ttft={ttft * 1000:7.1f} ms")

    # Routing: every later turn follows the prefix cache; round-robin alternates.
    endpoints = [t[0] for t in aware]
    assert len(set(endpoints)) == 1, endpoints
    assert all(t[1] == "prefix_match" for t in aware[1:]), aware
    assert len({t[0] for t in rr}) == 2, rr

    later_aware = statistics.median(t[2] for t in aware[1:])
    later_rr = statistics.median(t[2] for t in rr[1:])
    print(f"\nmedian TTFT of turns 2-{TURNS}: cache-aware {later_aware * 1000:.1f} ms, "
          f"round-robin {later_rr * 1000:.1f} ms ({later_rr / later_aware:.2f}x)")
    # Not slower (a 10% allowance for noise on a shared machine).
    assert later_aware <= later_rr * 1.10, (later_aware, later_rr)
