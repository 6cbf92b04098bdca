"""olla in front of TWO real llama.cpp llama-servers (SmolLM2-135M, real tokens), driven by the real
`openai` and `anthropic` SDKs: chat (streamed and not) through the universal and the llama.cpp
routes, the model catalog, failover on a SIGKILLed backend and recovery, unbuffered streaming
(time to first token through olla vs direct) and the Anthropic Messages path passthrough."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import anthropic
import openai
import pytest

from conftest import LLAMA_ALIAS, backend_for, wait_until

MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
ROUTES = {"proxy": "/olla/proxy/v1", "llamacpp": "/olla/llamacpp/v1"}


def oai(base: str, timeout: float = 60.0) -> openai.OpenAI:
    # max_retries=0: a failure must show up as a failure, not be hidden by an SDK retry.
    return openai.OpenAI(base_url=base, api_key="x", timeout=timeout, max_retries=0)


def start_pair(llama_servers, olla, **endpoint_extra):
    """olla with llama-a (priority 100) and llama-b (priority 50), 500ms health checks."""
    a, b = llama_servers
    ep = {"check_interval": "500ms", "check_timeout": "1s", **endpoint_extra}
    return olla([backend_for(a, "llama-a", 100, **ep), backend_for(b, "llama-b", 50, **ep)])


def model_ids(client: openai.OpenAI) -> list[str]:
    return [m.id for m in client.models.list()]


def assert_routing_headers(headers, endpoint: Optional[str] = "llama-a"):
    if endpoint is not None:
        assert headers.get("x-olla-endpoint") == endpoint, dict(headers)
    else:
        assert headers.get("x-olla-endpoint") in ("llama-a", "llama-b"), dict(headers)
    assert headers.get("x-olla-backend-type") == "llamacpp", dict(headers)
    assert headers.get("x-olla-request-id"), dict(headers)


# --------------------------------------------------------------------------- basic chat


def test_models_list_shows_discovered_model(llama_servers, olla):
    o = start_pair(llama_servers, olla)
    for route in ROUTES.values():
        c = oai(o.base + route)
        ids = wait_until(lambda: (lambda ids: ids if LLAMA_ALIAS in ids else None)(model_ids(c)),
                         timeout=15, desc=f"{LLAMA_ALIAS} in {route}/models")
        assert ids == [LLAMA_ALIAS], (route, ids)  # one model, deduplicated over both backends


@pytest.mark.parametrize("route", list(ROUTES))
def test_chat_non_stream(llama_servers, olla, route):
    o = start_pair(llama_servers, olla)
    raw = oai(o.base + ROUTES[route]).chat.completions.with_raw_response.create(
        model=LLAMA_ALIAS, messages=MESSAGES, max_tokens=16, temperature=0
    )
    assert raw.status_code == 200
    assert_routing_headers(raw.headers, "llama-a")  # the priority-100 backend
    r = raw.parse()
    msg = r.choices[0].message
    assert msg.role == "assistant"
    assert msg.content and msg.content.strip(), r
    assert r.choices[0].finish_reason in ("stop", "length"), r
    assert r.model, r
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 16, r.usage
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 16, r.usage


@pytest.mark.parametrize("route", list(ROUTES))
def test_chat_stream_with_usage(llama_servers, olla, route):
    o = start_pair(llama_servers, olla)
    stream = oai(o.base + ROUTES[route]).chat.completions.create(
        model=LLAMA_ALIAS, messages=MESSAGES, max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    assert_routing_headers(stream.response.headers, "llama-a")
    assert stream.response.headers.get("content-type", "").startswith("text/event-stream")
    pieces, finish, usage, n_chunks = [], None, None, 0
    for chunk in stream:
        n_chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                pieces.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    text = "".join(pieces)
    assert len(pieces) >= 2, pieces  # token by token, not one blob
    assert text.strip(), pieces
    assert finish in ("stop", "length"), finish
    assert usage is not None, "no usage chunk although stream_options.include_usage was set"
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16, usage
    if finish == "length":
        assert usage.completion_tokens == 16, usage


# --------------------------------------------------------------------------- failover


@dataclass
class Call:
    i: int
    start: float
    end: float = 0.0
    endpoint: Optional[str] = None
    error: Optional[str] = None
    text: str = ""


@dataclass
class Runner:
    """Sends non-streamed chat requests one after another in a thread and records each."""

    client: openai.OpenAI
    calls: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    started: threading.Condition = field(default_factory=threading.Condition)
    max_calls: int = 400

    def one(self, i: int) -> Call:
        call = Call(i, time.monotonic())
        with self.started:
            self.calls.append(call)
            self.started.notify_all()
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=LLAMA_ALIAS, messages=MESSAGES, max_tokens=8, temperature=0,
                extra_body={"ignore_eos": True},
            )
            r = raw.parse()
            call.endpoint = raw.headers.get("x-olla-endpoint")
            call.text = r.choices[0].message.content or ""
            if raw.status_code != 200 or not call.text.strip():
                call.error = f"status {raw.status_code}, body {r!r}"
        except Exception as e:  # noqa: BLE001 - every failure is recorded and asserted on
            call.error = f"{type(e).__name__}: {e}"
        call.end = time.monotonic()
        return call

    def run(self):
        for i in range(self.max_calls):  # bounded
            if self.stop.is_set():
                return
            self.one(i)

    def wait_started(self, n: int, timeout: float) -> Call:
        """Block until call #n has been started; return it."""
        deadline = time.monotonic() + timeout
        with self.started:
            while len(self.calls) <= n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"call #{n} not started within {timeout}s ({len(self.calls)} started)")
                self.started.wait(left)
            return self.calls[n]

    def snapshot(self) -> list:
        with self.started:
            return list(self.calls)


def describe(calls) -> str:
    return "\n".join(
        f"  #{c.i:3d} {c.start:.3f}..{c.end:.3f} {c.endpoint or '-':8s} {c.error or ''}" for c in calls
    )


def test_failover_on_sigkill_then_recovery(llama_servers, olla):
    a, b = llama_servers
    o = start_pair(llama_servers, olla)
    runner = Runner(oai(o.base + "/olla/proxy/v1", timeout=30))
    worker = threading.Thread(target=runner.run, name="failover-runner", daemon=True)
    worker.start()
    try:
        # Phase 1: a few requests, all on llama-a (priority 100).
        victim = runner.wait_started(8, timeout=60)
        # Kill llama-a while request #8 is in flight: it takes ~60-100 ms (8 tokens), so kill
        # 20 ms after it was sent. (A timing choice only: the assertions use recorded times.)
        time.sleep(0.02)
        t_kill0 = time.monotonic()
        a.kill()  # SIGKILL + reap
        t_kill1 = time.monotonic()

        # Phase 2: 15 more requests with llama-a dead.
        runner.wait_started(victim.i + 16, timeout=60)
        t_restart0 = time.monotonic()
        a.restart()  # same port, waits for /health 200
        t_restart1 = time.monotonic()

        # Phase 3: traffic must come back to llama-a within the deadline.
        def back_on_a():
            return next((c for c in runner.snapshot() if c.start >= t_restart1 and c.endpoint == "llama-a"), None)

        first_back = wait_until(back_on_a, timeout=30, interval=0.05, desc="a request served by llama-a again")
        # ...and stay there: 5 more requests after the first one back.
        runner.wait_started(first_back.i + 6, timeout=30)
    finally:
        runner.stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive()
    calls = [c for c in runner.snapshot() if c.end]  # completed calls (the last may be cut by stop)
    log = describe(calls)
    print(f"\nkill at {t_kill0:.3f}..{t_kill1:.3f}, restart {t_restart0:.3f}..{t_restart1:.3f}\n{log}")

    before = [c for c in calls if c.end < t_kill0]
    in_flight = [c for c in calls if c.start < t_kill0 <= c.end]  # running when SIGKILL was sent
    after_kill = [c for c in calls if c.start >= t_kill0 and c.end < t_restart0]
    during_restart = [c for c in calls if c.start < t_restart1 and c.end >= t_restart0]
    after_restart = [c for c in calls if c.start >= t_restart1]
    failures = [c for c in calls if c.error is not None]

    assert len(before) >= 8
    assert all(c.error is None and c.endpoint == "llama-a" for c in before), log
    # The runner is sequential and the kill came 20 ms into request #8 (which takes >= 50 ms).
    assert len(in_flight) == 1, f"expected exactly one request in flight at the kill\n{log}"
    # Every request started after the kill succeeded, on llama-b.
    assert len(after_kill) >= 10, log
    bad = [c for c in after_kill if c.error is not None or c.endpoint != "llama-b"]
    assert not bad, f"requests after the kill not served by llama-b:\n{describe(bad)}\n--- all ---\n{log}"
    # While llama-a comes back up on the same port nothing fails either, and after the restart
    # traffic is back on llama-a and stays there (5+ more requests).
    assert all(c.error is None for c in during_restart + after_restart), log
    later = [c for c in after_restart if c.i > first_back.i]
    assert len(later) >= 5 and all(c.endpoint == "llama-a" for c in later), log
    # The only request allowed to fail is the one in flight at the kill. (olla retries a
    # connection error that comes before the first response byte on the next backend, and
    # llama-server sends nothing of a non-streamed reply before it is done, so even that one
    # is expected to be failed over to llama-b.)
    assert [c.i for c in failures] in ([], [c.i for c in in_flight]), log
    for c in in_flight:
        print(f"request in flight at the kill: #{c.i} endpoint={c.endpoint} error={c.error} "
              f"({(t_kill0 - c.start) * 1000:.0f} ms after it was sent, took {(c.end - c.start) * 1000:.0f} ms)")
    failover_log = [ln for ln in o.logs().splitlines() if "llama-a" in ln and ("WARN" in ln or "routable" in ln)]
    print("olla log (llama-a warnings and routability changes):\n  " + "\n  ".join(failover_log[:12]))
    print(f"back on llama-a {first_back.start - t_restart1:.2f}s after the restart was healthy; "
          f"{len(after_kill)} requests while llama-a was dead, failures: {len(failures)}")


# --------------------------------------------------------------------------- streaming is not buffered


def timed_stream(client: openai.OpenAI, max_tokens: int = 16):
    """One streamed chat; returns (ttft, [arrival time of each content chunk], endpoint header)."""
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=LLAMA_ALIAS, messages=MESSAGES, max_tokens=max_tokens, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )
    arrivals = []
    for chunk in stream:
        if any(ch.delta.content for ch in chunk.choices):
            arrivals.append(time.perf_counter() - t0)
    return arrivals[0], arrivals, stream.response.headers.get("x-olla-endpoint")


def test_streaming_ttft_through_olla_close_to_direct(llama_servers, olla):
    a, _ = llama_servers
    o = start_pair(llama_servers, olla)
    direct = oai(a.url + "/v1")
    via = oai(o.base + "/olla/llamacpp/v1")
    # Warm up both paths (connection pools, llama-server prompt cache).
    for c in (direct, via, direct, via):
        timed_stream(c)
    runs = {"direct": [], "olla": []}
    spans = {"direct": [], "olla": []}
    for _ in range(7):  # alternate, so drift (load, cache state) hits both sides alike
        for name, c in (("direct", direct), ("olla", via)):
            ttft, arrivals, endpoint = timed_stream(c)
            if name == "olla":
                assert endpoint == "llama-a"  # same backend as the direct side
            assert len(arrivals) == 16, arrivals
            runs[name].append(ttft)
            spans[name].append(arrivals)
    med = {k: statistics.median(v) * 1000 for k, v in runs.items()}
    print(f"\nTTFT ms direct: {[round(x * 1000, 1) for x in runs['direct']]} median {med['direct']:.1f}")
    print(f"TTFT ms olla:   {[round(x * 1000, 1) for x in runs['olla']]} median {med['olla']:.1f}")
    print(f"median difference olla - direct: {med['olla'] - med['direct']:.1f} ms")
    assert med["olla"] - med["direct"] < 25.0, med

    # Chunks arrive spread over the generation, as the backend produces them: the first arrives
    # long before the last, and the spread matches the direct stream's (a buffering proxy would
    # deliver all 16 within a millisecond or two, at the end).
    print(f"olla chunk arrivals ms (run 1): {[round(x * 1000, 1) for x in spans['olla'][0]]}")
    span_direct = statistics.median(x[-1] - x[0] for x in spans["direct"])
    span_olla = statistics.median(x[-1] - x[0] for x in spans["olla"])
    print(f"first->last content chunk ms: direct median {span_direct * 1000:.1f}, olla median {span_olla * 1000:.1f}")
    assert span_direct > 0.02, "direct stream too fast to judge spread"  # 16 tokens at ~110 tok/s ~ 140 ms
    assert span_olla > 0.5 * span_direct, (span_olla, span_direct)
    for arrivals in spans["olla"]:
        gaps = [y - x for x, y in zip(arrivals, arrivals[1:])]
        # Most chunks come separately (>= 1 ms apart), not in one burst.
        assert sum(g >= 0.001 for g in gaps) >= len(gaps) // 2, [round(g * 1000, 2) for g in gaps]
        # The first token arrives in the first half of the stream's duration.
        assert arrivals[0] < 0.5 * arrivals[-1], arrivals


# --------------------------------------------------------------------------- Anthropic path passthrough


def test_anthropic_sdk_messages_passthrough_to_llama_server(llama_servers, olla):
    """olla forwards any path: the Anthropic SDK's POST /v1/messages via /olla/proxy reaches
    llama-server's own Anthropic endpoint (no translation involved)."""
    o = start_pair(llama_servers, olla)
    client = anthropic.Anthropic(base_url=o.base + "/olla/proxy", api_key="x", timeout=60, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=LLAMA_ALIAS, max_tokens=16, messages=[{"role": "user", "content": "Say hello."}]
    )
    assert raw.status_code == 200
    assert_routing_headers(raw.headers, "llama-a")
    m = raw.parse()
    assert m.type == "message" and m.role == "assistant", m
    text = "".join(b.text for b in m.content if b.type == "text")
    assert text.strip(), m
    assert m.stop_reason in ("end_turn", "max_tokens"), m
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 16, m.usage
