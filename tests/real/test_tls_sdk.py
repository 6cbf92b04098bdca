"""The official `openai` and `anthropic` SDKs over https:// against olla terminating TLS (a
certificate made here with the openssl CLI, trusted through the HTTP clients' `verify=`), in front of an
`olla-mock` speaking the OpenAI dialect, with inbound API keys on: the SDKs' own key headers
(`Authorization: Bearer` for openai, `x-api-key` for anthropic) authenticate, a wrong key is the
SDK's AuthenticationError, and the key never reaches the backend."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from conftest import OllaProcess, free_port, mock_backend, olla_config, wait_until

TOKENS = 16
EXPECTED_TEXT = "".join(f"tok{i} " for i in range(TOKENS))
MODEL = "gpt-mock-a"
KEY = "sk-team-a-0123456789"


def _openssl(cwd: Path, *args: str) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"openssl {args}: {r.stderr}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(d, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=olla sdk test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl(d, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return d


class TlsOlla(OllaProcess):
    """olla serving https:// only; its health is polled over TLS with the test CA."""

    ca: str = ""

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "TlsOlla":
        from conftest import to_yaml
        import os

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_yaml(self.config))
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")
        self._spawn([self.binary, "-c", str(self.config_path)], cwd=self.workdir, env=env)
        ctx = ssl.create_default_context(cafile=self.ca)

        def ready():
            if not self.is_running():
                raise RuntimeError(f"olla exited:\n{self.log_tail()}")
            return httpx.get(self.base + "/internal/health", verify=ctx, timeout=1.0).status_code == 200

        wait_until(ready, timeout=timeout, interval=0.1, desc="olla healthy over TLS")
        return self


@pytest.fixture
def stack(olla_bin, olla_mock, pki, tmp_path):
    m = olla_mock("oai-mock", models=[MODEL], tokens=TOKENS, token_delay_ms=10)
    cfg = olla_config([mock_backend(m, "openai-compatible")], free_port(), {
        "server": {"tls": {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")}},
        "auth": {"keys": [{"name": "team-a", "key": KEY}]},
    })
    o = TlsOlla(olla_bin, cfg, tmp_path / "olla-tls")
    o.ca = str(pki / "ca.pem")
    try:
        o.start()
        yield o, m, ssl.create_default_context(cafile=o.ca)
    finally:
        o.stop(grace=5.0)


def oai(o, ctx, key=KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=o.base + "/olla/proxy/v1", api_key=key, max_retries=0, timeout=30,
                         http_client=httpx.Client(verify=ctx))


def claude(o, ctx, key=KEY) -> anthropic.Anthropic:
    # This SDK brings its own HTTP client package; its DefaultHttpxClient takes `verify=` too.
    return anthropic.Anthropic(base_url=o.base + "/olla/anthropic", api_key=key, max_retries=0, timeout=30,
                               http_client=anthropic.DefaultHttpxClient(verify=ctx))


def assert_no_key_upstream(m) -> None:
    req = m._get_json("/_mock/last_work")
    headers = {k.lower(): v for k, v in (req.get("headers") or [])} if isinstance(req.get("headers"), list) \
        else {k.lower(): v for k, v in (req.get("headers") or {}).items()}
    assert "authorization" not in headers and "x-api-key" not in headers, headers
    assert KEY not in str(req), "the inbound key reached the backend"
    assert headers.get("x-forwarded-proto") == "https", headers


def test_openai_sdk_over_https_with_a_key(stack):
    o, m, ctx = stack
    c = oai(o, ctx)
    wait_until(lambda: MODEL in [x.id for x in c.models.list()], timeout=15, interval=0.1, desc="model listed")
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == EXPECTED_TEXT
    assert_no_key_upstream(m)
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model=MODEL, stream=True,
                                             messages=[{"role": "user", "content": "hi"}]) if ch.choices)
    assert text == EXPECTED_TEXT
    with pytest.raises(openai.AuthenticationError):
        oai(o, ctx, key="sk-wrong-key-000").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_anthropic_sdk_over_https_with_a_key(stack):
    o, m, ctx = stack
    c = claude(o, ctx)
    wait_until(lambda: MODEL in [x.id for x in c.models.list().data], timeout=15, interval=0.1,
               desc="model listed")
    msg = c.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == EXPECTED_TEXT
    assert_no_key_upstream(m)
    with c.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
        assert "".join(s.text_stream) == EXPECTED_TEXT
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(o, ctx, key="sk-wrong-key-000").messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401


def test_plain_http_and_untrusted_certificates_are_refused(stack):
    o, _, _ = stack
    with pytest.raises(httpx.HTTPError):
        httpx.get(o.base + "/internal/health", verify=ssl.create_default_context(), timeout=2.0)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{o.port}/internal/health", timeout=2.0)
