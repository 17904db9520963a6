"""`bridgekeeper serve` on a fresh directory: generated credentials, echo backend, clean stop."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:  # type: ignore[type-arg]
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, resp.read()


def _environment() -> dict[str, str]:
    """This environment without what would configure the gateway."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "OPENAI_", "BRIDGEKEEPER_", "CLAUDE_"))
    }


def test_first_start_prints_credentials_and_echo_answers_both_dialects(tmp_path: Path) -> None:
    env = _environment()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("bk-"):
                break
        text = "\n".join(lines)
        assert "echo backend" in text
        assert "Admin user: admin  password: " in text
        base = next(w for w in lines[0].split() if w.startswith("http://"))
        key = lines[-1]
        assert key.startswith("bk-")
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(base + "/health", timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ok"
        status, body = _post(
            base + "/v1/messages",
            {
                "model": "claude-anything",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
            },
            {"x-api-key": key},
        )
        assert status == 200 and json.loads(body)["content"][0]["text"] == "echo: hi"
        status, body = _post(
            base + "/v1/chat/completions",
            {
                "model": "gpt-anything",
                "stream": True,
                "messages": [{"role": "user", "content": "yo"}],
            },
            {"Authorization": f"Bearer {key}"},
        )
        assert status == 200 and body.endswith(b"data: [DONE]\n\n") and b'"content":"yo"' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == 0
    with sqlite3.connect(tmp_path / "bridgekeeper.db") as db:
        statuses = [r[0] for r in db.execute("select status from usage_events order by id")]
    assert statuses == ["ok", "ok"]


def test_serve_on_a_port_in_use_stops_before_writing_its_config(tmp_path: Path) -> None:
    """A second `serve` of a running gateway's database must not write its file into it
    (the running server would take the change at once)."""
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    (tmp_path / "bk.toml").write_text(
        '[server]\ndatabase_url = "sqlite:///bk.db"\n\n'
        '[[upstreams]]\nname = "new"\nkind = "echo"\n\n'
        '[[models]]\nname = "m"\nupstream = "new"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGEKEEPER_",))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "app", "serve", "--config", "bk.toml", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        busy.close()
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "in use" in done.stderr.lower()
    with sqlite3.connect(tmp_path / "bk.db") as db:
        assert db.execute("select count(*) from upstreams").fetchone() == (0,)
        assert db.execute("select count(*) from model_routes").fetchone() == (0,)
        assert db.execute("select count(*) from admin_users").fetchone() == (0,)


def _banner(tmp_path: Path, env: dict[str, str]) -> str:
    """What `serve` prints up to the dashboard line, then stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Dashboard:"):
                break
        return "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def test_the_echo_banner_goes_once_the_dashboard_has_an_upstream(tmp_path: Path) -> None:
    import asyncio

    from app.db import upstreams_admin
    from app.db.engine import Database

    env = _environment()
    assert "the built-in echo backend answers every model" in _banner(tmp_path, env)

    async def add_upstream() -> None:
        db = Database(f"sqlite:///{tmp_path / 'bridgekeeper.db'}")
        try:
            async with db.session() as session, session.begin():
                fields = upstreams_admin.UpstreamFields(
                    name="local", kind="openai", base_url="http://127.0.0.1:9/v1"
                )
                await upstreams_admin.create_upstream(session, fields)
        finally:
            await db.close()

    asyncio.run(add_upstream())
    banner = _banner(tmp_path, env)
    assert "Bridgekeeper listening on" in banner and "echo" not in banner
