"""The command line: generate, --json, --stream, errors, the persistent compile cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxgen import cli
from jaxgen.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt"))


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def _json(capsys, *argv):
    assert cli.main(["generate", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_output_and_stream_agree(tiny, capsys):
    out = _json(capsys, "ROMEO:", "--model", tiny, "--max-new-tokens", "12", "--json")
    assert len(out["texts"]) == 1 and len(out["ids"][0]) == out["prompt_length"] + 12
    assert out["texts"][0].startswith("ROMEO:")
    assert cli.main(["generate", "ROMEO:", "--model", tiny, "--max-new-tokens", "12",
                     "--stream"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.rstrip("\n") == out["texts"][0][len("ROMEO:"):]


def test_sampling_flags_and_return_sequences(tiny, capsys):
    out = _json(capsys, "To be", "--model", tiny, "--max-new-tokens", "5", "--do-sample",
                "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20",
                "--num-return-sequences", "3", "--seed", "3", "--json")
    assert len(out["texts"]) == 3
    again = _json(capsys, "To be", "--model", tiny, "--max-new-tokens", "5", "--do-sample",
                  "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20",
                  "--num-return-sequences", "3", "--seed", "3", "--json")
    assert again["ids"] == out["ids"]


def test_missing_and_broken_model_dirs(tmp_path):
    with pytest.raises(SystemExit, match="no config.json"):
        cli.main(["generate", "x", "--model", str(tmp_path / "nope")])
    (tmp_path / "config.json").write_text("{\"architectures\": [\"BertModel\"]}")
    with pytest.raises(SystemExit, match="cannot load"):
        cli.main(["generate", "x", "--model", str(tmp_path)])


def test_bad_flag_value_is_a_clear_error(tiny):
    with pytest.raises(SystemExit, match="top_p"):
        cli.main(["generate", "x", "--model", tiny, "--do-sample", "--top-p", "2"])


def test_console_script_uses_persistent_compile_cache(tiny, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "jaxgen.cli", "generate", "Once", "--model", tiny,
           "--max-new-tokens", "4", "--json"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    entries = list((tmp_path / "cache" / "jaxgen" / "xla").iterdir())
    assert entries, "the compile cache directory stays empty"
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(second.stdout)["ids"] == json.loads(first.stdout)["ids"]
