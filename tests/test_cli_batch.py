"""``jaxgen generate --input/--output`` (a JSON-lines file through the engine, resumed
when the output exists) and the flags derived from GenerationConfig's field table."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import jaxgen
from jaxgen import cli
from jaxgen.cli_flags import config_fields, config_overrides
from jaxgen.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny checkpoint, its generation_config sampling (as many models' do)."""
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")
    gen = json.loads((path / "generation_config.json").read_text())
    gen.update(do_sample=True, temperature=0.9, top_k=20, max_new_tokens=6)
    (path / "generation_config.json").write_text(json.dumps(gen))
    return str(path)


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def _args(*argv):
    return cli._parser().parse_args(["generate", "x", *argv])


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_config_field_has_a_flag():
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    dests = {a.dest for a in sub._actions}
    names = {f.name for f in dataclasses.fields(jaxgen.GenerationConfig)}
    assert names <= dests and {n for n, _, _ in config_fields()} == names


def test_flag_values_parse_to_config_values():
    kw = config_overrides(_args(
        "--repetition-penalty", "1.2", "--min-p", "0.05", "--stop-string", "a",
        "--stop-string", "b", "--no-sample", "--eos-token-id", "2", "--eos-token-id", "7",
        "--early-stopping", "never", "--sequence-bias", "[[[1, 2], -1.5]]",
        "--logit-bias", '{"5": 2.0}', "--suppress-tokens", "3", "--pad-token-id", "4",
        "--dola-layers", "low", "--max-new-tokens", "9", "--output-scores"))
    assert kw == {"repetition_penalty": 1.2, "min_p": 0.05, "stop_strings": ["a", "b"],
                  "do_sample": False, "eos_token_id": [2, 7], "early_stopping": "never",
                  "sequence_bias": [[[1, 2], -1.5]], "logit_bias": {"5": 2.0},
                  "suppress_tokens": [3], "pad_token_id": 4, "dola_layers": "low",
                  "max_new_tokens": 9, "output_scores": True}
    cfg = jaxgen.GenerationConfig(**kw)
    assert cfg.sequence_bias == {(1, 2): -1.5} and cfg.logit_bias == {5: 2.0}
    assert cfg.eos_token_id == (2, 7) and cfg.stop_strings == ("a", "b")
    assert config_overrides(_args("--eos-token-id", "3")) == {"eos_token_id": 3}
    assert config_overrides(_args("--do-sample")) == {"do_sample": True}
    assert config_overrides(_args()) == {}


def test_bad_values_get_the_config_errors(tiny):
    with pytest.raises(SystemExit, match="repetition_penalty"):
        cli.main(["generate", "x", "--model", tiny, "--repetition-penalty", "0"])
    with pytest.raises(SystemExit, match="min_p"):
        cli.main(["generate", "x", "--model", tiny, "--min-p", "2"])
    with pytest.raises(SystemExit, match="prompt or --input"):
        cli.main(["generate", "--model", tiny])


def test_no_sample_and_config_file(tiny, tmp_path, capsys):
    lm = jaxgen.load(tiny)
    greedy = lm.generate(**lm.tokenizer(["To be"]), do_sample=False, max_new_tokens=6)
    assert cli.main(["generate", "To be", "--model", tiny, "--no-sample", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == greedy.tolist()
    (tmp_path / "gen.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 6}))
    assert cli.main(["generate", "To be", "--model", tiny, "--config",
                     str(tmp_path / "gen.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == greedy.tolist()
    with pytest.raises(SystemExit, match="temperature"):              # strict, as in Python
        (tmp_path / "bad.json").write_text(json.dumps({"temperature": 0.5}))
        cli.main(["generate", "x", "--model", tiny, "--config", str(tmp_path / "bad.json")])


def test_jsonl_run_resume_and_errors(tiny, tmp_path, capsys):
    lm = jaxgen.load(tiny)
    requests = [{"prompt": "To be", "id": "a"},
                {"prompt": "Once upon", "max_new_tokens": 4, "do_sample": False},
                {"input_ids": [5, 6, 7], "seed": 11},
                {"prompt": "x", "temprature": 0.3},
                "not json",
                {"messages": [{"role": "user", "content": "hi"}]},
                {"prompt": "ROMEO:", "stop_strings": ["o"], "repetition_penalty": 1.3}]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in requests[:5]))
    argv = ["generate", "--model", tiny, "--input", str(src), "--output", str(out),
            "--max-slots", "2", "--no-progress", "--seed", "1"]
    assert cli.main(argv) == 0
    got = {r["index"]: r for r in _lines(out)}
    assert sorted(got) == [0, 1, 2, 3, 4] and got[0]["id"] == "a"
    assert "temprature" in got[3]["error"] and got[3]["error"].startswith("line 4")
    assert "not JSON" in got[4]["error"]
    assert got[1]["finish_reason"] == "length" and len(got[1]["tokens"]) == 4
    ids = lm.tokenizer(["Once upon"])
    want = lm.generate(**ids, max_new_tokens=4, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert got[1]["tokens"] == want.tolist() and got[1]["text"]
    sampled = lm.generate(input_ids=np.asarray([[5, 6, 7]]), rng=11)[0, 3:]
    assert got[2]["tokens"] == sampled.tolist() and "text" not in got[2]
    first = lm.generate(**lm.tokenizer(["To be"]), rng=1)           # seed + line index 0
    assert got[0]["tokens"] == first[0, len(lm.tokenizer.encode("To be")):].tolist()
    # resume: the same file again writes nothing; new lines are added
    assert cli.main(argv) == 0
    assert len(_lines(out)) == 5 and "0 requests" in capsys.readouterr().err
    with src.open("a") as f:
        f.write("\n" + "\n".join(json.dumps(r) for r in requests[5:]))
    assert cli.main(argv) == 0
    got = {r["index"]: r for r in _lines(out)}
    assert sorted(got) == list(range(7)) and len(_lines(out)) == 7
    assert "chat template" in got[5]["error"]
    assert got[6]["finish_reason"] in ("stop", "length", "eos")
