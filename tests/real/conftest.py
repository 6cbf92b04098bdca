"""Fixtures for tests against real backends (llama.cpp ``llama-server``) and real clients.

Set up once with ``bash tests/real/setup.sh`` (see README.md). Reusable API:

Helpers (importable: ``from conftest import wait_until, free_port, ...``):
    free_port() -> int                      a free TCP port on 127.0.0.1
    free_ports(n) -> list[int]              n distinct free ports
    wait_until(pred, timeout, interval)     poll pred() until truthy; returns its value or raises TimeoutError
    http_get(url, timeout) -> (status, body)  plain GET, never raises on HTTP status
    backend_for(server, name, priority=100, **extra) -> dict   an Olla static endpoint for a llama server
    mock_backend(mock, type, priority=100, **extra) -> dict    an Olla static endpoint for an olla-mock
    to_yaml(obj) -> str                     tiny YAML emitter (dict/list/str/int/float/bool/None)

Fixtures:
    llama_servers   list of 2 LlamaServer (healthy at the start of every test; killed ones are restarted)
                    .url .port .name .alias .log_path  .kill() .restart() .stop() .healthy() .is_running() .log_tail()
    olla            factory: olla(backends, overrides=None, extra_args=(), env=None, health_timeout=30)
                    -> OllaProcess with .base .port .config_path .config .url(path) .stop() .kill()
                    .is_running() .logs() .log_tail(); every olla started is stopped at teardown
    olla_bin        path of the olla binary (env OLLA_BIN, default <repo>/target/debug/olla)
    olla_mock       factory: olla_mock(name, models=("mock-model",), tokens=16, token_delay_ms=20,
                    ttft_ms=None, fault=None, extra_args=()) -> MockBackend (`olla-mock --port 0`; the
                    port is read from its "listening on" line) with .url .port .name .models
                    .stats() .last_request(); every mock started is stopped at teardown
    mock_bin        path of the olla-mock binary (env OLLA_MOCK_BIN, default <repo>/target/debug/olla-mock)
    llama_env       dict with OLLA_TEST_LLAMA_SERVER, OLLA_TEST_MODEL
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("OLLA_TEST_CACHE") or Path.home() / ".cache" / "olla-test")

LLAMA_ALIAS = "smollm2"
LLAMA_ARGS = ("-c", "2048", "-np", "2", "-t", "1")
HEALTH_TIMEOUT = 60.0  # generous: the machine has 2 cores and may be busy building


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all sockets held open until every port is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(
    pred: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    desc: Optional[str] = None,
) -> Any:
    """Call pred() every `interval` s until it returns a truthy value; return that value.

    Exceptions from pred count as "not yet". On deadline raise TimeoutError naming `desc`
    and the last exception or value seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = pred()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
            last = e
        if time.monotonic() >= deadline:
            what = desc or getattr(pred, "__name__", "condition")
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET url; return (status, body) for any HTTP status. Connection errors raise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _set_pdeathsig() -> None:
    """In the child: die with SIGKILL if the test process dies (Linux), so nothing leaks."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def _load_env_sh() -> None:
    """Fill OLLA_TEST_* from $CACHE/env.sh when the caller did not source it."""
    env_sh = CACHE / "env.sh"
    if not env_sh.is_file():
        return
    for line in env_sh.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export ") or "=" not in line:
            continue
        key, _, val = line[len("export "):].partition("=")
        os.environ.setdefault(key.strip(), val.strip().strip("'\""))


# --------------------------------------------------------------------------- processes


class ManagedProcess:
    """A child process with its output in a log file; stop() is always safe to call."""

    name: str = "process"

    def __init__(self, log_path: Path):
        self.log_path = Path(log_path)
        self.proc: Optional[subprocess.Popen] = None

    def _spawn(self, argv: list[str], cwd: Optional[Path] = None, env: Optional[dict] = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(cwd) if cwd else None,
                env=env,
                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            )

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap (abrupt death, as in a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; reaps the process."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-n:])


class LlamaServer(ManagedProcess):
    """One llama.cpp llama-server on 127.0.0.1:port serving SmolLM2 as model `smollm2`."""

    def __init__(self, binary: str, model: str, port: int, name: str, log_dir: Path,
                 alias: str = LLAMA_ALIAS, extra_args: Iterable[str] = ()):
        super().__init__(Path(log_dir) / f"{name}.log")
        self.binary = binary
        self.model = model
        self.port = port
        self.name = name
        self.alias = alias
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, "-m", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                *LLAMA_ARGS, "--alias", self.alias, *self.extra_args]

    def start(self, timeout: float = HEALTH_TIMEOUT) -> "LlamaServer":
        if self.is_running():
            raise RuntimeError(f"{self.name} already running (pid {self.pid})")
        self._spawn(self.argv())
        self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        try:
            return self.is_running() and http_get(self.url + "/health", timeout=1.0)[0] == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        _wait_ok(self, self.url + "/health", timeout)

    def restart(self, timeout: float = HEALTH_TIMEOUT) -> "LlamaServer":
        """Start again on the same port (killing it first if it still runs) and wait healthy."""
        self.kill()
        return self.start(timeout)

    def __repr__(self) -> str:
        return f"<LlamaServer {self.name} {self.url} pid={self.pid}>"


class OllaProcess(ManagedProcess):
    """The olla daemon under test, started as `OLLA_BIN -c CONFIG`."""

    name = "olla"

    def __init__(self, binary: str, config: dict, workdir: Path,
                 extra_args: Iterable[str] = (), env: Optional[dict] = None):
        super().__init__(Path(workdir) / "olla.log")
        self.binary = binary
        self.config = config
        self.workdir = Path(workdir)
        self.config_path = self.workdir / "config.yaml"
        self.port = int(config["server"]["port"])
        self.extra_args = list(extra_args)
        self.env = env

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "") -> str:
        return self.base + path

    def start(self, timeout: float = 30.0) -> "OllaProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_yaml(self.config))
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")  # plain-text log file (olla colours its log otherwise)
        if self.env:
            env.update(self.env)
        self._spawn([self.binary, "-c", str(self.config_path), *self.extra_args], cwd=self.workdir, env=env)
        _wait_ok(self, self.base + "/internal/health", timeout)
        return self

    def __repr__(self) -> str:
        return f"<OllaProcess {self.base} pid={self.pid}>"


class MockBackend(ManagedProcess):
    """One `olla-mock` process on 127.0.0.1 with `--port 0`; the port comes from its stdout line
    `olla-mock <name> listening on http://HOST:PORT` (stdout goes to the log file)."""

    LISTEN_RE = re.compile(r"^olla-mock (\S+) listening on (http://[^\s]+?):(\d+)\s*$", re.M)

    def __init__(self, binary: str, name: str, log_dir: Path, models: Iterable[str] = ("mock-model",),
                 tokens: int = 16, token_delay_ms: int = 20, ttft_ms: Optional[int] = None,
                 fault: Optional[str] = None, extra_args: Iterable[str] = ()):
        super().__init__(Path(log_dir) / f"mock-{name}.log")
        self.binary = binary
        self.name = name
        self.models = list(models)
        self.tokens = tokens
        self.token_delay_ms = token_delay_ms
        self.ttft_ms = ttft_ms
        self.fault = fault
        self.extra_args = list(extra_args)
        self.port: Optional[int] = None
        self.host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        a = [self.binary, "--host", "127.0.0.1", "--port", "0", "--name", self.name,
             "--models", ",".join(self.models), "--tokens", str(self.tokens),
             "--token-delay-ms", str(self.token_delay_ms)]
        if self.ttft_ms is not None:
            a += ["--ttft-ms", str(self.ttft_ms)]
        if self.fault is not None:
            a += ["--fault", self.fault]
        return a + self.extra_args

    def start(self, timeout: float = 15.0) -> "MockBackend":
        if self.is_running():
            raise RuntimeError(f"mock {self.name} already running (pid {self.pid})")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn(self.argv())

        def listening():
            if not self.is_running():
                return "exited"
            m = self.LISTEN_RE.search(self.logs()[offset:])
            return m or None

        try:
            m = wait_until(listening, timeout=timeout, interval=0.02, desc=f"olla-mock {self.name} listening line")
        except TimeoutError as e:
            raise RuntimeError(f"{e}\n--- {self.log_path} (tail) ---\n{self.log_tail()}") from None
        if m == "exited":
            raise RuntimeError(f"olla-mock {self.name} exited with code {self.proc.returncode}\n"
                               f"--- {self.log_path} (tail) ---\n{self.log_tail()}")
        self.host = m.group(2)[len("http://"):].strip("[]")
        self.port = int(m.group(3))
        _wait_ok(self, self.url + "/health", timeout)
        return self

    def _get_json(self, path: str) -> Any:
        status, body = http_get(self.url + path)
        return json.loads(body) if status == 200 else None

    def stats(self) -> dict:
        """GET /_mock/stats: requests, completed, cancelled, in_flight, by_path."""
        return self._get_json("/_mock/stats")

    def last_request(self) -> Optional[dict]:
        """GET /_mock/last: method, path, query, headers [[k, v]...], body; None if none yet."""
        return self._get_json("/_mock/last")

    def __repr__(self) -> str:
        return f"<MockBackend {self.name} {self.url if self.port else '(not started)'} pid={self.pid}>"


def _wait_ok(p: ManagedProcess, url: str, timeout: float) -> None:
    """Poll url until 200 with a deadline; fail fast (with the log tail) if the process dies."""

    def ready():
        if not p.is_running():
            return "exited"
        try:
            return http_get(url, timeout=1.0)[0] == 200
        except OSError:
            return False

    try:
        result = wait_until(ready, timeout=timeout, interval=0.05, desc=f"{p.name}: GET {url} -> 200")
    except TimeoutError as e:
        raise RuntimeError(f"{e}\n--- {p.log_path} (tail) ---\n{p.log_tail()}") from None
    if result == "exited":
        code = p.proc.returncode if p.proc else None
        raise RuntimeError(
            f"{p.name} exited with code {code} before GET {url} answered 200\n"
            f"--- {p.log_path} (tail) ---\n{p.log_tail()}"
        )


# --------------------------------------------------------------------------- olla config


def backend_for(server: LlamaServer, name: Optional[str] = None, priority: int = 100, **extra) -> dict:
    """An Olla static endpoint entry for a llama server (type llamacpp, 1s health checks)."""
    d = {
        "name": name or server.name,
        "url": server.url,
        "type": "llamacpp",
        "priority": priority,
        "check_interval": "1s",
        "check_timeout": "1s",
    }
    d.update(extra)
    return d


def mock_backend(mock: "MockBackend", kind: str, priority: int = 100, **extra) -> dict:
    """An Olla static endpoint entry for an olla-mock of type `kind` (500ms health checks)."""
    d = {
        "name": mock.name,
        "url": mock.url,
        "type": kind,
        "priority": priority,
        "check_interval": "500ms",
        "check_timeout": "1s",
    }
    d.update(extra)
    return d


def olla_config(backends: list[dict], port: int, overrides: Optional[dict] = None) -> dict:
    cfg = {
        "server": {"host": "127.0.0.1", "port": port},
        "proxy": {"load_balancer": "priority"},
        "discovery": {
            "model_discovery": {"enabled": True, "interval": "5m"},
            "static": {"endpoints": list(backends)},
        },
        "logging": {"level": "info", "format": "text"},
    }
    if overrides:
        _deep_merge(cfg, overrides)
    return cfg


def _deep_merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def _yaml_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid YAML double-quoted scalar
    raise TypeError(f"cannot write {type(v).__name__} to YAML: {v!r}")


def _yaml_lines(obj: Any, ind: int, out: list[str]) -> None:
    pad = "  " * ind
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                _yaml_lines(v, ind + 1, out)
            elif isinstance(v, dict):
                out.append(f"{pad}{k}: {{}}")
            elif isinstance(v, list):
                out.append(f"{pad}{k}: []")
            else:
                out.append(f"{pad}{k}: {_yaml_scalar(v)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub: list[str] = []
                _yaml_lines(item, ind + 1, sub)
                sub[0] = f"{pad}- {sub[0].lstrip()}"
                out.extend(sub)
            else:
                empty = "{}" if isinstance(item, dict) else "[]"
                out.append(f"{pad}- {empty if isinstance(item, (dict, list)) else _yaml_scalar(item)}")
    else:
        out.append(f"{pad}{_yaml_scalar(obj)}")


def to_yaml(obj: Any) -> str:
    out: list[str] = []
    _yaml_lines(obj, 0, out)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def llama_env() -> dict:
    _load_env_sh()
    missing = [k for k in ("OLLA_TEST_LLAMA_SERVER", "OLLA_TEST_MODEL") if not os.environ.get(k)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run `bash tests/real/setup.sh` "
                    f"and `. {CACHE}/env.sh` first", pytrace=False)
    env = {k: os.environ[k] for k in ("OLLA_TEST_LLAMA_SERVER", "OLLA_TEST_MODEL")}
    for k, path in env.items():
        if not Path(path).is_file():
            pytest.fail(f"{k}={path} does not exist: re-run `bash tests/real/setup.sh`", pytrace=False)
    return env


@pytest.fixture(scope="session")
def _llama_pool(llama_env, tmp_path_factory):
    """Two llama-servers for the whole session; always stopped at the end."""
    log_dir = tmp_path_factory.mktemp("llama")
    servers: list[LlamaServer] = []
    try:
        for name, port in zip(("llama-a", "llama-b"), free_ports(2)):
            s = LlamaServer(llama_env["OLLA_TEST_LLAMA_SERVER"], llama_env["OLLA_TEST_MODEL"],
                            port, name, log_dir)
            servers.append(s)
            s._spawn(s.argv())  # start both, then wait for both (they load in parallel)
        for s in servers:
            s.wait_healthy()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def llama_servers(_llama_pool) -> list[LlamaServer]:
    """Two healthy llama-servers (llama-a, llama-b). A test may kill()/restart() them freely:
    any that is down or unhealthy at the start of the next test is restarted on its port."""
    for s in _llama_pool:
        if not s.healthy():
            s.restart()
    return list(_llama_pool)


@pytest.fixture(scope="session")
def olla_bin() -> str:
    path = Path(os.environ.get("OLLA_BIN") or REPO_ROOT / "target" / "debug" / "olla")
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"olla binary not found at {path}: run `cargo build` (or set OLLA_BIN)", pytrace=False)
    return str(path)


@pytest.fixture
def olla(olla_bin, tmp_path):
    """Factory: olla(backends, overrides=None, extra_args=(), env=None, health_timeout=30.0).

    Writes <tmp>/olla-N/config.yaml (Olla YAML; server on 127.0.0.1:<free port>), starts
    `OLLA_BIN -c config.yaml`, waits for GET /internal/health == 200 and returns an OllaProcess.
    Every olla started is stopped at teardown (SIGTERM, SIGKILL after 5 s).
    """
    started: list[OllaProcess] = []

    def start(backends: list[dict], overrides: Optional[dict] = None, extra_args: Iterable[str] = (),
              env: Optional[dict] = None, health_timeout: float = 30.0) -> OllaProcess:
        cfg = olla_config(backends, free_port(), overrides)
        p = OllaProcess(olla_bin, cfg, tmp_path / f"olla-{len(started)}", extra_args, env)
        started.append(p)
        return p.start(health_timeout)

    try:
        yield start
    finally:
        for p in started:
            p.stop(grace=5.0)


@pytest.fixture(scope="session")
def mock_bin() -> str:
    path = Path(os.environ.get("OLLA_MOCK_BIN") or REPO_ROOT / "target" / "debug" / "olla-mock")
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"olla-mock binary not found at {path}: run `cargo build` (or set OLLA_MOCK_BIN)",
                    pytrace=False)
    return str(path)


@pytest.fixture
def olla_mock(mock_bin, tmp_path):
    """Factory: olla_mock(name, models=("mock-model",), tokens=16, token_delay_ms=20, ttft_ms=None,
    fault=None, extra_args=()) -> a started MockBackend. Every mock started is stopped at teardown."""
    started: list[MockBackend] = []

    def start(name: str, models: Iterable[str] = ("mock-model",), tokens: int = 16, token_delay_ms: int = 20,
              ttft_ms: Optional[int] = None, fault: Optional[str] = None,
              extra_args: Iterable[str] = ()) -> MockBackend:
        m = MockBackend(mock_bin, name, tmp_path / "mocks", models, tokens, token_delay_ms, ttft_ms, fault,
                        extra_args)
        started.append(m)
        return m.start()

    try:
        yield start
    finally:
        for m in started:
            m.stop(grace=5.0)
