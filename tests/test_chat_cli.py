"""``jaxgen chat`` in a real terminal (tmux: type keys, read the pane), on the real
SmolLM2-135M-Instruct GGUF; and ``ChatSession`` keeping the conversation."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.real_models import smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class Pane:
    """A detached tmux session running one command."""

    def __init__(self, command: str, name: str):
        self.tmux = shutil.which("tmux")
        if self.tmux is None:
            pytest.fail("tmux is needed for the terminal test (apt-get install tmux)")
        self.name = name
        env = f"PYTHONPATH={shlex.quote(str(ROOT))} JAX_PLATFORMS=cpu"
        subprocess.run([self.tmux, "new-session", "-d", "-s", name, "-x", "160", "-y", "48",
                        f"env {env} {command}"], check=True)

    def text(self) -> str:
        out = subprocess.run([self.tmux, "capture-pane", "-p", "-J", "-S", "-200", "-t",
                              self.name], capture_output=True, text=True)
        return out.stdout

    def alive(self) -> bool:
        return subprocess.run([self.tmux, "has-session", "-t", self.name],
                              capture_output=True).returncode == 0

    def send(self, *keys: str) -> None:
        subprocess.run([self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def wait(self, ok, what: str, timeout: float = 240.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ok():
                return
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}; the pane shows:\n{self.text()}")

    def close(self) -> None:
        subprocess.run([self.tmux, "kill-session", "-t", self.name], capture_output=True)


def test_chat_in_a_terminal():
    model = smollm2_gguf()
    cmd = (f"{shlex.quote(sys.executable)} -m jaxgen.cli chat --model {shlex.quote(str(model))}"
           " --greedy --max-new-tokens 24 --system 'You are a concise assistant.'")
    pane = Pane(cmd, f"jaxgen-chat-{os.getpid()}")
    try:
        pane.wait(lambda: "/exit" in pane.text(), "the chat banner")
        pane.send("What is the capital of France?", "Enter")
        pane.wait(lambda: "Paris" in pane.text(), "the first reply")
        pane.send("And of Italy?", "Enter")                 # the conversation is kept
        pane.wait(lambda: "Rome" in pane.text(), "the second reply")
        pane.send("/reset", "Enter")
        pane.wait(lambda: "(conversation cleared)" in pane.text(), "/reset")
        pane.send("/exit", "Enter")
        pane.wait(lambda: not pane.alive(), "the program to exit", timeout=30)
    finally:
        pane.close()


def test_chat_session_keeps_the_conversation():
    import jaxgen

    lm = jaxgen.load(smollm2_gguf())
    chat = jaxgen.ChatSession(lm, system="You are a concise assistant.", do_sample=False,
                              max_new_tokens=24)
    assert "Paris" in chat.send("What is the capital of France?")
    assert "Rome" in chat.send("And of Italy?")
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user",
                                                   "assistant"]
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "You are a concise assistant."}]
    with pytest.raises(ValueError, match="chat template"):
        jaxgen.ChatSession(jaxgen.load())               # the bundled model has none
