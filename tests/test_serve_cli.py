"""``jaxgen serve`` as a process: it starts, answers /health, and on SIGTERM finishes the
streaming request in flight, then exits 0 (all bounded by timeouts)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import openai
import pytest

from tests.real_models import smollm2_gguf
from tests.test_serve import free_port


@pytest.mark.slow
def test_serve_cli_drains_on_sigterm(tmp_path):
    """SmolLM2-135M (about 30 ms a token here): the 100-token stream is still running when
    SIGTERM arrives, on any machine (the bundled model finished it before uvicorn's
    shutdown looked at the connections)."""
    model = smollm2_gguf()
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "jaxgen.cli", "serve", "--port", str(port),
                             "--max-slots", "2", "--max-length", "256", "--model", str(model),
                             "--model-name", "tiny"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert json.load(r)["status"] == "ok"
                    break
            except OSError:
                time.sleep(0.2)
        client = openai.OpenAI(api_key="unused", base_url=f"http://127.0.0.1:{port}/v1",
                               max_retries=0, timeout=120)
        stream = client.completions.create(model="tiny", prompt="Once upon a time",
                                           max_tokens=100,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True})
        chunks = [next(iter(stream))]                       # the request is in flight ...
        proc.send_signal(signal.SIGTERM)                    # ... when the server is told to go
        reader = threading.Thread(target=lambda: chunks.extend(stream))
        reader.start()
        reader.join(timeout=120)
        assert not reader.is_alive()
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
    assert chunks[-1].usage.completion_tokens == 100
    assert "Waiting for connections to close" in (tmp_path / "serve.log").read_text()  # drained
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
