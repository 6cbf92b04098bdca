"""The admin endpoint against real llama.cpp backends, driven by `olla ctl`: add a llama-server at
run time, serve through it, drain it while a real stream runs (the stream completes, nothing new
reaches it), then remove it."""

from __future__ import annotations

import json
import subprocess
import threading

import openai

from conftest import LLAMA_ALIAS, backend_for, free_port, wait_until

TOKEN = "real-admin-token"


def ctl(olla_bin: str, admin: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [olla_bin, "ctl", "--admin-url", admin, "--token", TOKEN, *args],
        capture_output=True, text=True, timeout=120,
    )
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def backends(olla_bin: str, admin: str) -> dict:
    out = ctl(olla_bin, admin, "--json", "backends").stdout
    return {b["name"]: b for b in json.loads(out)["backends"]}


def test_ctl_adds_serves_drains_and_removes_a_llama_server(llama_servers, olla, olla_bin):
    a, b = llama_servers
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    o = olla(
        [backend_for(a, "llama-a", 100, check_interval="500ms")],
        overrides={"admin": {"enabled": True, "listen": f"127.0.0.1:{admin_port}", "token": TOKEN}},
    )
    wait_until(lambda: backends(olla_bin, admin)["llama-a"]["status"] == "healthy", timeout=30,
               desc="llama-a healthy")

    # Add llama-b at run time with a higher priority: it serves within seconds.
    table = ctl(olla_bin, admin, "add", "--name", "llama-b", "--url", b.url, "--type", "llamacpp",
                "--priority", "200", "--check-interval", "500ms", "--check-timeout", "1s").stdout
    assert "llama-b" in table
    wait_until(lambda: LLAMA_ALIAS in backends(olla_bin, admin)["llama-b"]["models"], timeout=30,
               desc="llama-b discovered")
    client = openai.OpenAI(base_url=o.url("/olla/proxy/v1"), api_key="x", timeout=60, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=LLAMA_ALIAS, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers.get("x-olla-endpoint") == "llama-b"
    assert raw.parse().choices[0].message.content

    # Drain llama-b while a real stream runs on it: the stream completes, new requests go to a.
    done = {}

    def stream():
        chunks = client.chat.completions.create(
            model=LLAMA_ALIAS, max_tokens=64, stream=True,
            messages=[{"role": "user", "content": "Count from one to twenty."}])
        done["text"] = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
        done["ok"] = True

    t = threading.Thread(target=stream)
    t.start()
    wait_until(lambda: backends(olla_bin, admin)["llama-b"]["in_flight"] >= 1, timeout=30,
               interval=0.02, desc="stream in flight on llama-b")
    ctl(olla_bin, admin, "drain", "llama-b")
    raw = client.chat.completions.with_raw_response.create(
        model=LLAMA_ALIAS, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers.get("x-olla-endpoint") == "llama-a"
    t.join(timeout=120)
    assert done.get("ok") and done["text"], done

    # Remove it: gone from the list; traffic stays on llama-a.
    out = ctl(olla_bin, admin, "remove", "llama-b", "--timeout", "10s").stdout
    assert "removed llama-b" in out
    assert "llama-b" not in backends(olla_bin, admin)
    failed = ctl(olla_bin, admin, "drain", "llama-b", check=False)
    assert failed.returncode != 0 and "404" in failed.stderr
    raw = client.chat.completions.with_raw_response.create(
        model=LLAMA_ALIAS, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers.get("x-olla-endpoint") == "llama-a"
