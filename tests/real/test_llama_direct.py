"""Smoke test of the harness itself, without olla: two real llama-servers answer the real
`openai` SDK directly (non-streamed and streamed chat, models.list), and kill()/restart() work."""

import openai
import pytest

from conftest import LLAMA_ALIAS, free_port, olla_config, to_yaml, wait_until

MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", timeout=60, max_retries=0)


def test_two_servers_on_distinct_ports(llama_servers):
    assert len(llama_servers) == 2
    assert llama_servers[0].port != llama_servers[1].port
    assert all(s.healthy() for s in llama_servers)


@pytest.mark.parametrize("idx", [0, 1])
def test_models_list(llama_servers, idx):
    ids = [m.id for m in client(llama_servers[idx]).models.list()]
    assert LLAMA_ALIAS in ids, ids


@pytest.mark.parametrize("idx", [0, 1])
def test_chat_non_stream(llama_servers, idx):
    r = client(llama_servers[idx]).chat.completions.create(
        model=LLAMA_ALIAS, messages=MESSAGES, max_tokens=16, temperature=0
    )
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip(), r
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0
    assert r.usage.prompt_tokens > 0


@pytest.mark.parametrize("idx", [0, 1])
def test_chat_stream(llama_servers, idx):
    stream = client(llama_servers[idx]).chat.completions.create(
        model=LLAMA_ALIAS, messages=MESSAGES, max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert len(pieces) >= 2, pieces  # really streamed, token by token
    assert "".join(pieces).strip()
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_kill_and_restart_same_port(llama_servers):
    b = llama_servers[1]
    port = b.port
    b.kill()
    assert not b.is_running()
    with pytest.raises(openai.APIConnectionError):
        client(b).models.list()
    b.restart()
    assert b.port == port and b.healthy()
    assert LLAMA_ALIAS in [m.id for m in client(b).models.list()]


def test_killed_server_is_back_for_the_next_test(llama_servers):
    # The previous test may have left a server killed; the fixture restarts it.
    b = llama_servers[1]
    b.kill()


def test_fixture_restored_killed_server(llama_servers):
    assert all(s.is_running() and s.healthy() for s in llama_servers)


def test_wait_until():
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3, timeout=2, interval=0.01)
    with pytest.raises(TimeoutError, match="never"):
        wait_until(lambda: False, timeout=0.1, interval=0.01, desc="never")
    p = free_port()
    assert 0 < p < 65536


def test_olla_config_yaml():
    cfg = olla_config(
        [{"name": "llama-a", "url": "http://127.0.0.1:1", "type": "llamacpp", "priority": 100,
          "check_interval": "1s", "check_timeout": "1s"}],
        port=4000,
        overrides={"proxy": {"engine": "olla"}},
    )
    assert to_yaml(cfg) == (
        "server:\n"
        '  host: "127.0.0.1"\n'
        "  port: 4000\n"
        "proxy:\n"
        '  load_balancer: "priority"\n'
        '  engine: "olla"\n'
        "discovery:\n"
        "  model_discovery:\n"
        "    enabled: true\n"
        '    interval: "5m"\n'
        "  static:\n"
        "    endpoints:\n"
        '      - name: "llama-a"\n'
        '        url: "http://127.0.0.1:1"\n'
        '        type: "llamacpp"\n'
        "        priority: 100\n"
        '        check_interval: "1s"\n'
        '        check_timeout: "1s"\n'
        "logging:\n"
        '  level: "info"\n'
        '  format: "text"\n'
    )
