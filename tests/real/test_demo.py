"""`olla demo`, the first minute: every command and snippet it prints runs as pasted. The curl
lines run in bash against the running demo; the Python snippet runs with the real openai SDK
from the test venv; the printed dashboard address serves the dashboard.
"""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import REPO_ROOT, ManagedProcess, free_port, http_get, wait_until


class Demo(ManagedProcess):
    name = "olla demo"


def printed(demo: Demo) -> str:
    return demo.logs().split("===== ", 1)[-1]


def test_every_printed_command_and_snippet_runs_as_pasted(olla_bin, tmp_path):
    demo = Demo(tmp_path / "demo.log")
    port = free_port()
    demo._spawn([olla_bin, "demo", "--port", str(port)], cwd=tmp_path)
    try:
        wait_until(lambda: "Ctrl-C to stop." in demo.logs() or not demo.is_running(), timeout=30,
                   desc="the demo's instructions")
        assert demo.is_running(), demo.log_tail()
        text = printed(demo)
        lines = text.splitlines()
        base = f"http://127.0.0.1:{port}"
        # Wait until the demo's backends are routable (the printed lines assume a ready demo).
        wait_until(lambda: b"healthy" in http_get(base + "/internal/status/endpoints")[1], timeout=20)
        wait_until(lambda: b"llama3.2:3b" in http_get(base + "/olla/models")[1], timeout=20)

        dash = [l for l in lines if l.startswith("dashboard: ")]
        assert dash == [f"dashboard: {base}/internal/ui/"], lines
        status, body = http_get(dash[0].split(" ", 1)[1])
        assert status == 200 and b"<title>olla dashboard</title>" in body

        curls = [l for l in lines if l.startswith("curl ")]
        assert len(curls) >= 4, lines
        for cmd in curls:
            out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, f"{cmd}\n{out.stderr}"
            assert out.stdout.strip(), f"{cmd} printed nothing"
            assert '"error"' not in out.stdout[:200], f"{cmd}\n{out.stdout[:500]}"

        start = lines.index("python (pip install openai):") + 1
        end = lines.index("", start)
        snippet = "\n".join(lines[start:end])
        assert "\n    if ch.choices:" in snippet
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60,
                             cwd=REPO_ROOT)
        assert out.returncode == 0, f"{snippet}\n{out.stderr}"
        assert len(out.stdout.strip()) > 10, out.stdout
    finally:
        demo.stop()
    assert demo.proc.returncode == 0, demo.log_tail()
