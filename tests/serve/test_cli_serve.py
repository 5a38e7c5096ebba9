"""`anekit serve` as a user runs it: a subprocess on 127.0.0.1 (port 0: the system picks a free one,
the command prints the URL), answered by the official `openai` client, stopped with SIGINT (Ctrl-C)
or SIGTERM: exit status 0 and no traceback, within a generous timeout."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading

import openai
import pytest
from serve_helpers import TIMEOUT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a subprocess is POSIX")


def start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "anekit", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_url(process: subprocess.Popen) -> str:
    """The base URL from the line `serving NAME at http://HOST:PORT/v1 ...` (read in a thread, so a
    server that never prints fails the test instead of hanging it)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            process.kill()
            pytest.fail(f"anekit serve printed no URL within {TIMEOUT} s; stderr: {process.stderr.read()}")
        found = re.search(r"serving (\S+) at (http://\S+/v1)", line)
        if found:
            return found.group(2)


def interrupt(process: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str]:
    process.send_signal(sig)
    try:
        code = process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"anekit serve did not stop within {TIMEOUT} s of SIGINT")
    return code, process.stderr.read()


def test_serve_answers_the_openai_client_and_stops_cleanly_on_ctrl_c(tiny_model_dir):
    process = start(str(tiny_model_dir), "--port", "0", "--backend", "reference", "--queue-size", "2")
    try:
        url = wait_for_url(process)
        assert url.startswith("http://127.0.0.1:")
        api = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=TIMEOUT)
        (listed,) = api.models.list().data
        assert listed.id == tiny_model_dir.name  # the directory's name, by default
        done = api.completions.create(model=listed.id, prompt="Hello", max_tokens=4, temperature=0)
        assert done.usage.completion_tokens >= 1 and done.choices[0].finish_reason in ("stop", "length")
        streamed = api.chat.completions.create(
            model=listed.id,
            messages=[{"role": "user", "content": "Hi"}],
            max_completion_tokens=4,
            temperature=0,
            stream=True,
        )
        assert [c for c in streamed][-1].choices[0].finish_reason in ("stop", "length")
    finally:
        code, stderr = interrupt(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr and "server stopped" in stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_with_a_stream_open_exits_0(tiny_model_dir, sig):
    process = start(str(tiny_model_dir), "--port", "0", "--backend", "reference", "--model-name", "tiny")
    try:
        api = openai.OpenAI(base_url=wait_for_url(process), api_key="x", max_retries=0, timeout=TIMEOUT)
        stream = api.completions.create(model="tiny", prompt="A", max_tokens=100, temperature=0, stream=True)
        next(iter(stream))  # decoding has begun
    finally:
        code, stderr = interrupt(process, sig)
    assert code == 0, stderr
    assert "Traceback" not in stderr and "server stopped" in stderr


def test_serve_refuses_a_missing_model_and_a_busy_port(tmp_path, tiny_model_dir):
    missing = subprocess.run(
        [sys.executable, "-m", "anekit", "serve", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "anekit", "serve", str(tiny_model_dir), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "Traceback" not in busy.stderr
