"""Packaging checks: the systemd unit passes `systemd-analyze verify`, the config's JSON Schema
(`olla config schema`) accepts every shipped example and rejects unknown keys, `olla config
example` is the shipped example, docker-compose.yaml validates against the Compose
specification's schema (shipped in the docker-compose 1.x PyPI package), completions and the
man page generate, `olla healthcheck` tells a live daemon from a dead one, and (only with
OLLA_TEST_DOCKER=1, on a machine with a container runtime) the image builds and the compose
stack's olla turns healthy.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import REPO_ROOT, mock_backend

EXAMPLES = sorted((REPO_ROOT / "config").glob("*.yaml"))
UNIT = REPO_ROOT / "contrib" / "systemd" / "olla.service"
COMPOSE = REPO_ROOT / "docker-compose.yaml"


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)


@pytest.fixture(scope="module")
def config_schema(olla_bin) -> dict:
    out = run([olla_bin, "config", "schema"])
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


def errors_of(schema: dict, doc) -> list[str]:
    v = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def test_systemd_unit_passes_systemd_analyze_verify(olla_bin, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: apt-get install systemd (.ci/run does)"
    text = UNIT.read_text()
    for line in ("ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "DynamicUser=yes",
                 "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert line in text.splitlines(), f"{line!r} missing from {UNIT}"
    # verify checks that ExecStart's binary exists: point it at the one just built.
    unit = tmp_path / "olla.service"
    unit.write_text(text.replace("/usr/local/bin/olla", olla_bin))
    out = run([analyze, "verify", "--man=no", str(unit)])
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    # The check can fail: a misspelt setting is reported.
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    out = run([analyze, "verify", "--man=no", str(bad)])
    assert "sometimes" in out.stdout + out.stderr


def test_json_schema_accepts_every_shipped_example(config_schema, olla_bin):
    assert len(EXAMPLES) >= 3, EXAMPLES
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        assert errors_of(config_schema, doc) == [], path
        out = run([olla_bin, "--validate-config", "--config", str(path)])
        assert out.returncode == 0, f"{path}: {out.stdout}{out.stderr}"


def test_json_schema_rejects_unknown_keys_and_bad_values(config_schema, olla_bin, tmp_path):
    base = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    cases = {
        "top-level key": lambda d: d.update({"servre": {"port": 1}}),
        "nested key": lambda d: d["server"].update({"prot": 1}),
        "endpoint key": lambda d: d["discovery"]["static"]["endpoints"][0].update({"urls": "x"}),
        "dashboard key": lambda d: d["dashboard"]["access_policy"].update({"allowed_ips": []}),
        "duration without a unit": lambda d: d["server"].update({"shutdown_timeout": "10"}),
        "wrong type": lambda d: d["server"].update({"port": "eighty"}),
    }
    for name, change in cases.items():
        doc = copy.deepcopy(base)
        change(doc)
        assert errors_of(config_schema, doc), f"schema accepted a config with a bad {name}"
        # olla itself refuses the same file.
        path = tmp_path / "bad.yaml"
        path.write_text(json.dumps(doc))
        out = run([olla_bin, "--validate-config", "--config", str(path)])
        assert out.returncode != 0, f"olla accepted a config with a bad {name}"
    # Durations the daemon accepts are accepted by the schema.
    for d in ("30s", "500ms", "1h30m", "1.5s", "0", 0, "24h", "0s"):
        doc = copy.deepcopy(base)
        doc["server"]["shutdown_timeout"] = d
        assert errors_of(config_schema, doc) == [], d


def test_config_example_prints_the_shipped_example(olla_bin):
    out = run([olla_bin, "config", "example"])
    assert out.returncode == 0
    assert out.stdout == (REPO_ROOT / "config" / "config.yaml").read_text()


def test_compose_file_validates_against_the_compose_specification():
    spec_pkg = importlib.util.find_spec("compose")
    assert spec_pkg is not None, "docker-compose (schema only) missing: run tests/real/setup.sh"
    spec_path = Path(list(spec_pkg.submodule_search_locations)[0]) / "config" / "compose_spec.json"
    spec = json.loads(spec_path.read_text())
    validator = jsonschema.Draft201909Validator(spec)
    doc = yaml.safe_load(COMPOSE.read_text())
    errors = [e.message for e in validator.iter_errors(doc)]
    assert errors == [], errors
    services = doc["services"]
    assert {"olla", "ollama-1", "ollama-2", "openwebui"} <= set(services)
    assert services["openwebui"]["environment"]["OLLAMA_BASE_URL"].startswith("http://olla:40114/olla/")
    mount = services["olla"]["volumes"][0].split(":")
    assert (REPO_ROOT / mount[0]).is_file() and mount[1] == "/etc/olla/config.yaml"
    # The config it mounts names the two Ollama services.
    cfg = yaml.safe_load((REPO_ROOT / mount[0]).read_text())
    urls = {e["url"] for e in cfg["discovery"]["static"]["endpoints"]}
    assert urls == {"http://ollama-1:11434", "http://ollama-2:11434"}
    # The check can fail.
    broken = copy.deepcopy(doc)
    broken["services"]["olla"]["ports"] = "40114"
    assert list(validator.iter_errors(broken))


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2, "multi-stage"
    assert "USER olla" in text
    assert 'HEALTHCHECK' in text and '"healthcheck"' in text
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "target/" in ignored and ".git/" in ignored


def test_completions_and_man_page_generate(olla_bin, tmp_path):
    bash = run([olla_bin, "completions", "bash"])
    assert bash.returncode == 0 and "_olla" in bash.stdout
    script = tmp_path / "olla.bash"
    script.write_text(bash.stdout)
    syntax = run(["bash", "-n", str(script)])
    assert syntax.returncode == 0, syntax.stderr
    # Completing `olla con` offers the config and ctl commands.
    probe = run(["bash", "-c", f'source {script}; COMP_WORDS=(olla con); COMP_CWORD=1; _olla olla con olla; echo "${{COMPREPLY[@]}}"'])
    assert "config" in probe.stdout.split(), probe.stdout + probe.stderr
    for shell, marker in (("zsh", "#compdef olla"), ("fish", "complete -c olla")):
        out = run([olla_bin, "completions", shell])
        assert out.returncode == 0 and marker in out.stdout, shell
    man = run([olla_bin, "man"])
    assert man.returncode == 0 and ".TH olla 1" in man.stdout and "healthcheck" in man.stdout
    if shutil.which("man"):
        page = tmp_path / "olla.1"
        page.write_text(man.stdout)
        rendered = run(["man", "-l", str(page)], env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"})
        assert rendered.returncode == 0 and "olla" in rendered.stdout


def test_healthcheck_command_tells_a_live_daemon_from_a_dead_one(olla_bin, olla, olla_mock):
    m = olla_mock("hc")
    o = olla([mock_backend(m, "openai")])
    url = o.url("/internal/health")
    assert run([olla_bin, "healthcheck", "--url", url]).returncode == 0
    # Without --url it reads host and port from the config.
    assert run([olla_bin, "--config", str(o.config_path), "healthcheck"]).returncode == 0
    o.stop()
    dead = run([olla_bin, "healthcheck", "--url", url, "--timeout", "2s"])
    assert dead.returncode == 1 and "olla healthcheck:" in dead.stderr


@pytest.mark.skipif(os.environ.get("OLLA_TEST_DOCKER") != "1",
                    reason="container smoke test: set OLLA_TEST_DOCKER=1 on a machine with a Docker daemon")
def test_image_builds_and_the_compose_stack_turns_healthy():
    assert run(["docker", "info"]).returncode == 0, "OLLA_TEST_DOCKER=1 but `docker info` fails"
    build = run(["docker", "build", "-t", "olla:test", str(REPO_ROOT)], timeout=3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    project = ["docker", "compose", "-f", str(COMPOSE), "-p", "olla-smoke"]
    try:
        up = run([*project, "up", "-d", "--wait", "olla"], timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        ps = run([*project, "ps", "--format", "json", "olla"])
        assert '"healthy"' in ps.stdout.lower() or "healthy" in ps.stdout.lower(), ps.stdout
    finally:
        run([*project, "down", "-v"], timeout=300)
