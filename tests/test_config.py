"""GenerationConfig: field parity, effective defaults, validation, JSON with transformers."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxgen.config import (
    _RULES,
    BEAM_ONLY,
    DEFAULT_MAX_NEW_TOKENS,
    ENCODER_DECODER_ONLY,
    NEUTRAL,
    SAMPLING_ONLY,
    SUPPORTED,
    GenerationConfig,
    GenerationConfigWarning,
)

transformers = pytest.importorskip("transformers")
TFConfig = transformers.GenerationConfig

FIELDS = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}
JAXGEN_ONLY = {"presence_penalty", "frequency_penalty", "logit_bias"}
TF_METADATA = {"transformers_version", "_from_model_config"}
TF_DEFAULTS = TFConfig._get_default_generation_params()

# Fields transformers leaves at None that generate() still reads with a fixed meaning
# (not listed in _get_default_generation_params): our default is that meaning.
NONE_MEANS: dict[str, Any] = {
    # read as truthy flags: `if generation_config.output_scores`, `... is True`, etc.
    **dict.fromkeys(
        ["use_mtp", "renormalize_logits", "token_healing", "output_attentions",
         "output_hidden_states", "output_logits", "is_assistant", "disable_compile",
         "low_memory"],
        False,
    ),
    # utils.py: `max_matching_ngram_size=generation_config.max_matching_ngram_size or 2`
    "max_matching_ngram_size": 2,
}  # fmt: skip


def tf_fields() -> set[str]:
    return {k for k in TFConfig().__dict__ if not k.startswith("_")} - TF_METADATA


def tf_effective(name: str, value: Any) -> Any:
    """The value transformers' generate() uses for a stored ``value``."""
    if value is None and name != "max_length":  # None max_length: 20 *new* tokens, as ours
        return TF_DEFAULTS.get(name, NONE_MEANS.get(name))
    return value


def jsonable(value: Any) -> Any:
    if isinstance(value, dict) and any(isinstance(k, tuple) for k in value):
        value = [[list(k), v] for k, v in value.items()]  # sequence_bias in memory
    return json.loads(json.dumps(value))


def assert_tf_equal(ours: GenerationConfig, theirs: Any) -> None:
    """Every field: transformers' effective value equals ours (JSON-normalised)."""
    mine = ours.to_dict()
    for name in tf_fields():
        got = tf_effective(name, getattr(theirs, name))
        assert jsonable(got) == jsonable(mine[name]), name
    for name in JAXGEN_ONLY & set(ours.to_dict(diff=True)):
        # transformers keeps unknown keys as plain attributes
        assert jsonable(getattr(theirs, name)) == jsonable(mine[name]), name


# ---- fields and defaults ---------------------------------------------------------------


def test_every_transformers_field_exists():
    assert tf_fields() - set(FIELDS) == set()
    assert set(FIELDS) - tf_fields() == JAXGEN_ONLY


def test_defaults_are_the_ones_generate_uses():
    for name, value in TF_DEFAULTS.items():
        if name == "max_length":  # None: 20 *new* tokens, see test_lengths_*
            assert FIELDS[name] is None and value == DEFAULT_MAX_NEW_TOKENS
            continue
        assert FIELDS[name] == value and type(FIELDS[name]) is type(value), name
    for name in tf_fields() - set(TF_DEFAULTS):
        assert FIELDS[name] == NONE_MEANS.get(name), name
    assert TF_DEFAULTS["max_length"] == DEFAULT_MAX_NEW_TOKENS  # we keep it as "20 new"
    g = GenerationConfig()
    assert (g.top_k, g.temperature, g.top_p, g.num_beams, g.num_return_sequences) == (
        50, 1.0, 1.0, 1, 1)  # fmt: skip
    assert g.do_sample is False and g.use_cache is True and g.early_stopping is False
    assert g.max_length is None and g.max_new_token_count(5) == 20


def test_support_tables_cover_every_field_once():
    assert SUPPORTED.isdisjoint(NEUTRAL)
    assert SUPPORTED | set(NEUTRAL) == set(FIELDS)
    assert set(_RULES) == set(FIELDS)  # every field has a value rule
    for name, (allowed, feature) in NEUTRAL.items():
        assert any(FIELDS[name] == a for a in allowed), name
        assert feature
    assert (SAMPLING_ONLY | BEAM_ONLY | ENCODER_DECODER_ONLY) <= set(FIELDS)
    GenerationConfig().validate(vocab_size=10)


def test_frozen_keyword_only_and_hashable():
    g = GenerationConfig(eos_token_id=[1, 2], stop_strings=["a"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.top_k = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        GenerationConfig(20)  # type: ignore[misc]
    assert g.eos_token_id == (1, 2) and hash(g) == hash(g.replace())


def test_repr_shows_only_changes():
    assert repr(GenerationConfig(top_k=3)) == "GenerationConfig(top_k=3)"


# ---- length rules ---------------------------------------------------------------------


def test_length_precedence():
    assert GenerationConfig().effective_max_length(7) == 27
    assert GenerationConfig().effective_max_length(7, max_position_embeddings=16) == 16
    assert GenerationConfig(max_length=12).effective_max_length(7) == 12
    assert GenerationConfig(max_length=12).max_new_token_count(7) == 5
    both = GenerationConfig(max_length=12, max_new_tokens=3)
    assert both.effective_max_length(7) == 10 and both.max_new_token_count(7) == 3
    assert GenerationConfig(max_new_tokens=3).max_new_token_count(100) == 3
    with pytest.raises(ValueError, match="max_length"):
        GenerationConfig(max_length=7).effective_max_length(7)
    with pytest.raises(ValueError, match="max_length"):
        GenerationConfig().effective_max_length(16, max_position_embeddings=16)


@pytest.fixture(scope="module")
def tiny_gpt2():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    def make(**kw):
        cfg = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, **kw)
        return transformers.GPT2LMHeadModel(cfg).eval()

    ids = torch.randint(0, 64, (2, 7))
    return make, ids


LENGTH_CASES = [
    ({}, 1024),
    ({}, 16),
    ({"max_length": 20}, 1024),
    ({"max_length": 12, "max_new_tokens": 3}, 1024),
    ({"max_new_tokens": 4}, 1024),
]


@pytest.mark.parametrize("kwargs, n_positions", LENGTH_CASES)
def test_lengths_match_transformers_generate(tiny_gpt2, kwargs, n_positions):
    # bos/eos 50256 lie outside the 64-token vocabulary: no early stop
    make, ids = tiny_gpt2
    model = make(n_positions=n_positions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(ids, **kwargs)
    ours = GenerationConfig(**kwargs).effective_max_length(
        ids.shape[1], max_position_embeddings=n_positions)  # fmt: skip
    assert out.shape[1] == ours
    if not kwargs and n_positions == 1024:
        assert out.shape[1] - ids.shape[1] == 20  # transformers 5: 20 *new* tokens


def test_eos_token_ids():
    assert GenerationConfig().eos_token_ids() == ()
    assert GenerationConfig(eos_token_id=2).eos_token_ids() == (2,)
    assert GenerationConfig(eos_token_id=[2, 7]).eos_token_ids() == (2, 7)
    assert GenerationConfig(eos_token_id=np.array([3, 4])).eos_token_ids() == (3, 4)


# ---- validation: bad values -----------------------------------------------------------

S = {"do_sample": True}
BAD: list[tuple[dict[str, Any], str]] = [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"max_new_tokens": 5.0}, "max_new_tokens"),
    ({"max_length": 0}, "max_length"),
    ({"min_length": -1}, "min_length"),
    ({"min_new_tokens": -1, "eos_token_id": 1}, "min_new_tokens"),
    ({"early_stopping": "always"}, "early_stopping"),
    ({"early_stopping": 1}, "early_stopping"),
    ({"do_sample": "yes"}, "do_sample"),
    ({"do_sample": 1}, "do_sample"),
    ({**S, "temperature": 0.0}, "temperature"),
    ({**S, "temperature": -0.5}, "temperature"),
    ({**S, "temperature": "0.7"}, "temperature"),
    ({**S, "temperature": float("nan")}, "temperature"),
    ({**S, "temperature": True}, "temperature"),
    ({**S, "top_k": -1}, "top_k"),
    ({**S, "top_k": 2.5}, "top_k"),
    ({**S, "top_p": 1.5}, "top_p"),
    ({**S, "top_p": -0.1}, "top_p"),
    ({**S, "min_p": 1.1}, "min_p"),
    ({**S, "min_p": -0.1}, "min_p"),
    ({**S, "typical_p": 0.0}, "typical_p"),
    ({**S, "typical_p": 1.2}, "typical_p"),
    ({**S, "top_h": 0.0}, "top_h"),
    ({**S, "epsilon_cutoff": 1.0}, "epsilon_cutoff"),
    ({**S, "epsilon_cutoff": -0.1}, "epsilon_cutoff"),
    ({**S, "eta_cutoff": 1.0}, "eta_cutoff"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"encoder_repetition_penalty": 0}, "encoder_repetition_penalty"),
    ({"length_penalty": "long"}, "length_penalty"),
    ({"length_penalty": float("inf")}, "length_penalty"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"num_beams": 0}, "num_beams"),
    ({"num_return_sequences": 0}, "num_return_sequences"),
    ({"num_return_sequences": 2}, "num_return_sequences"),  # greedy
    ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
    ({"num_beams": 4, "num_beam_groups": 3}, "num_beam_groups"),
    ({"num_beams": 4, "num_beam_groups": 2, "do_sample": True}, "num_beam_groups"),
    ({"diversity_penalty": -1.0}, "diversity_penalty"),
    ({"eos_token_id": -1}, "eos_token_id"),
    ({"eos_token_id": []}, "eos_token_id"),
    ({"eos_token_id": "2"}, "eos_token_id"),
    ({"bos_token_id": 1.0}, "bos_token_id"),
    ({"pad_token_id": "0"}, "pad_token_id"),
    ({"bad_words_ids": [1, 2]}, "bad_words_ids"),
    ({"bad_words_ids": [[]]}, "bad_words_ids"),
    ({"suppress_tokens": [3], "forced_eos_token_id": 3}, "forced_eos_token_id"),
    ({"exponential_decay_length_penalty": (5,)}, "exponential_decay_length_penalty"),
    ({"max_time": 0}, "max_time"),
    ({"stop_strings": ""}, "stop_strings"),
    ({"stop_strings": [1]}, "stop_strings"),
    ({"cache_implementation": "fast"}, "cache_implementation"),
    ({"num_assistant_tokens_schedule": "sometimes"}, "num_assistant_tokens_schedule"),
    ({"assistant_ensemble_weight": 1.0}, "assistant_ensemble_weight"),
    ({"speculation_type": "medusa"}, "speculation_type"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": "x"}, "frequency_penalty"),
    ({"logit_bias": {1: 200.0}}, "logit_bias"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias"),
    ({"output_scores": 1}, "output_scores"),
    ({"use_cache": None, "return_dict_in_generate": "yes"}, "return_dict_in_generate"),
]


@pytest.mark.parametrize("kwargs, field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_values_raise_naming_the_field(kwargs, field):
    cfg = GenerationConfig(**kwargs)
    with pytest.raises(ValueError, match=rf"GenerationConfig\.{field}\b.*allowed"):
        cfg.validate(strict=True)


@pytest.mark.parametrize("kwargs, field", [b for b in BAD if "do_sample" not in b[0]
                                           or b[1] == "num_beam_groups"])  # fmt: skip
def test_bad_values_raise_even_when_lenient(kwargs, field):
    with pytest.raises(ValueError, match=rf"GenerationConfig\.{field}\b"):
        GenerationConfig(**kwargs).validate(strict=False)


VOCAB_CASES = [
    ({"eos_token_id": 10}, "eos_token_id"),
    ({"eos_token_id": [1, 12]}, "eos_token_id"),
    ({"pad_token_id": 10}, "pad_token_id"),
    ({"bos_token_id": 99}, "bos_token_id"),
    ({"suppress_tokens": [10]}, "suppress_tokens"),
    ({"logit_bias": {10: 1.0}}, "logit_bias"),
]


@pytest.mark.parametrize("kwargs, field", VOCAB_CASES)
def test_token_ids_must_fit_the_vocabulary(kwargs, field):
    with pytest.raises(ValueError, match=rf"GenerationConfig\.{field}\b.*\[0, 10\)"):
        GenerationConfig(**kwargs).validate(vocab_size=10)


def test_token_ids_inside_the_vocabulary_pass():
    GenerationConfig(eos_token_id=[1, 99], pad_token_id=0, bos_token_id=99).validate(
        vocab_size=100)  # fmt: skip


def test_all_problems_are_listed_together():
    cfg = GenerationConfig(do_sample=True, top_p=2.0, top_k=-1, penalty_alpha=0.6)
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert all(n in str(err.value) for n in ("top_p", "top_k", "penalty_alpha"))


# ---- validation: unsupported features -----------------------------------------------

# A valid, non-neutral value for every unsupported field (extra settings in "with").
UNSUPPORTED_VALUES: dict[str, tuple[Any, dict[str, Any]]] = {
    "use_mtp": (True, {}),
    "use_cache": (False, {}),
    "cache_implementation": ("quantized", {}),
    "cache_config": ({"nbits": 4}, {}),
    "max_cache_len": (128, {}),
    "decoder_start_token_id": (0, {}),
    "is_assistant": (True, {}),
    "assistant_lookbehind": (5, {}),
    "target_lookbehind": (5, {}),
    "assistant_ensemble_weight": (0.5, {}),
    "speculation_type": ("dflash", {}),
    "compile_config": (object(), {}),
    "disable_compile": (True, {}),
    "continuous_batching_config": ({"block_size": 16}, {}),
    "low_memory": (True, {}),
    "prefill_chunk_size": (64, {}),
}


def test_every_unsupported_field_has_a_test_value():
    assert set(UNSUPPORTED_VALUES) == set(NEUTRAL)


@pytest.mark.parametrize("field", sorted(NEUTRAL))
def test_unsupported_fields_raise_naming_the_field(field):
    value, extra = UNSUPPORTED_VALUES[field]
    cfg = GenerationConfig(**{field: value, **extra})
    with pytest.raises(ValueError) as err:
        cfg.validate(strict=True)
    msg = str(err.value)
    assert f"GenerationConfig.{field}=" in msg and "allowed:" in msg
    assert "is invalid" not in msg  # the value itself is fine
    if field in BEAM_ONLY or field in ENCODER_DECODER_ONLY:
        assert "has no effect" in msg
    else:
        assert "is not supported by jaxgen yet" in msg


def test_unsupported_message_format():
    with pytest.raises(ValueError) as err:
        GenerationConfig(prefill_chunk_size=64).validate()
    assert str(err.value) == (
        "GenerationConfig.prefill_chunk_size=64 (chunked prefill) is not supported by "
        "jaxgen yet; allowed: None"
    )


def test_unsupported_raises_even_when_lenient():
    with pytest.raises(ValueError, match="prefill_chunk_size"):
        GenerationConfig(prefill_chunk_size=64).validate(strict=False)
    with pytest.raises(ValueError, match="use_mtp"):
        GenerationConfig(use_mtp=True).validate(strict=False)


def test_neutral_values_of_unsupported_fields_pass():
    GenerationConfig(guidance_scale=1.0, cache_implementation="static", use_cache=True,
                     num_beams=1, repetition_penalty=1.0).validate()  # fmt: skip


# ---- strict vs lenient ----------------------------------------------------------------


def warned_fields(cfg: GenerationConfig) -> set[str]:
    """Fields named by the warnings of ``cfg.validate(strict=False)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg.validate(strict=False)
    assert all(issubclass(w.category, GenerationConfigWarning) for w in caught)
    return {str(w.message).split("=")[0].removeprefix("GenerationConfig.") for w in caught}


def test_sampling_knobs_with_greedy_strict_raises_lenient_warns():
    model_file = GenerationConfig(temperature=0.6, top_p=0.9, top_k=20, do_sample=False)
    with pytest.raises(ValueError, match="temperature.*do_sample=True"):
        model_file.validate()
    assert warned_fields(model_file) == {"temperature", "top_p", "top_k"}
    # unused sampling knobs are not range-checked when lenient (transformers never reads them)
    assert warned_fields(GenerationConfig(temperature=0.0, typical_p=0.5)) == {
        "temperature", "typical_p"}  # fmt: skip
    model_file.replace(do_sample=True).validate()


@pytest.mark.parametrize(
    "kwargs, field",
    [({"early_stopping": True}, "early_stopping"), ({"length_penalty": 0.5}, "length_penalty"),
     ({"min_new_tokens": 2}, "min_new_tokens"), ({"output_scores": True}, "output_scores"),
     ({"pad_token_id": -1}, "pad_token_id"), ({"decoder_start_token_id": 0},
                                              "decoder_start_token_id")],
)  # fmt: skip
def test_no_effect_settings(kwargs, field):
    cfg = GenerationConfig(**kwargs)
    with pytest.raises(ValueError, match=rf"GenerationConfig\.{field}\b"):
        cfg.validate()
    with pytest.warns(GenerationConfigWarning, match=rf"GenerationConfig\.{field}\b"):
        cfg.validate(strict=False)


# ---- types ----------------------------------------------------------------------------


def test_numpy_scalars_and_ints_are_accepted_and_normalised():
    cfg = GenerationConfig(do_sample=np.bool_(True), temperature=np.float32(0.5),
                           top_k=np.int64(5), top_p=1, max_new_tokens=np.int32(3),
                           eos_token_id=[np.int64(2)])  # fmt: skip
    cfg.validate(vocab_size=10)
    assert type(cfg.temperature) is float and type(cfg.top_k) is int
    assert cfg.do_sample is True and cfg.eos_token_id == (2,) and type(cfg.eos_token_id[0]) is int
    json.dumps(cfg.to_dict())


def test_none_means_default():
    assert GenerationConfig(top_k=None, do_sample=None, temperature=None) == GenerationConfig()
    assert GenerationConfig(top_k=3).replace(top_k=None).top_k == 50


def test_unknown_names_are_type_errors_with_a_suggestion():
    with pytest.raises(TypeError, match=r"'top_pp' \(did you mean 'top_p'\?\)"):
        GenerationConfig().replace(top_pp=0.9)
    with pytest.raises(TypeError, match=r"'max_new_token' \(did you mean 'max_new_tokens'\?\)"):
        GenerationConfig(max_new_token=3)


# ---- dict / JSON ----------------------------------------------------------------------


def test_from_dict_drops_metadata_and_rejects_unknown_keys():
    d = {"transformers_version": "5.24.0", "_from_model_config": True, "do_sample": True}
    assert GenerationConfig.from_dict(d) == GenerationConfig(do_sample=True)
    with pytest.raises(ValueError, match=r"'chat_format'.*'temprature' \(did you mean"):
        GenerationConfig.from_dict({"temprature": 0.5, "chat_format": "chatml"})
    with pytest.warns(GenerationConfigWarning, match="chat_format"):
        cfg = GenerationConfig.from_dict({"chat_format": "chatml", "top_k": 3}, unknown="warn")
    assert cfg == GenerationConfig(top_k=3)


def test_transformers_full_dict_loads_as_defaults():
    assert GenerationConfig.from_dict(TFConfig().to_dict()) == GenerationConfig()


def test_save_writes_only_changes(tmp_path):
    GenerationConfig().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {}
    GenerationConfig(max_new_tokens=5).save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path) == GenerationConfig(max_new_tokens=5)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(do_sample=True, top_p=3.0).save_pretrained(tmp_path)


RICH = dict(
    max_new_tokens=12, min_new_tokens=2, do_sample=True, temperature=0.7, top_k=10, top_p=0.9,
    min_p=0.05, num_return_sequences=3, output_scores=True, return_dict_in_generate=True,
    pad_token_id=0, bos_token_id=1, eos_token_id=[2, 3], repetition_penalty=1.2,
    no_repeat_ngram_size=3, bad_words_ids=[[4, 5], [6]], suppress_tokens=[7],
    stop_strings=["\n\n", "END"], sequence_bias={(8, 9): -2.0}, max_time=3.0,
    exponential_decay_length_penalty=(5, 1.1), guidance_scale=1.5,
    cache_implementation="static", renormalize_logits=True,
)  # fmt: skip


def test_saved_json_reads_back_in_transformers(tmp_path):
    ours = GenerationConfig(**RICH, presence_penalty=0.5, logit_bias={5: -100.0})
    ours.save_pretrained(tmp_path)
    theirs = TFConfig.from_pretrained(tmp_path)
    assert_tf_equal(ours, theirs)
    assert GenerationConfig.from_pretrained(tmp_path) == ours


def test_transformers_json_reads_back_in_jaxgen(tmp_path):
    theirs = TFConfig(**RICH)
    theirs.save_pretrained(tmp_path)
    ours = GenerationConfig.from_pretrained(tmp_path / "generation_config.json")
    assert ours == GenerationConfig(**RICH)
    assert_tf_equal(ours, theirs)


def test_model_generation_config_reads_back_in_jaxgen(tmp_path, tiny_gpt2):
    make, _ = tiny_gpt2
    make().generation_config.save_pretrained(tmp_path)
    ours = GenerationConfig.from_pretrained(tmp_path)
    assert ours == GenerationConfig(bos_token_id=50256, eos_token_id=50256)
    ours.validate()


# ---- hypothesis: valid configs --------------------------------------------------------

VOCAB = 32


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    token = st.integers(0, VOCAB - 1)
    if draw(st.booleans()):
        kw["eos_token_id"] = draw(token | st.lists(token, min_size=1, max_size=3))
    for name in ("pad_token_id", "bos_token_id"):
        if draw(st.booleans()):
            kw[name] = draw(token)
    length = draw(st.sampled_from(["none", "max_length", "max_new_tokens"]))
    if length != "none":
        kw[length] = draw(st.integers(1, 4096))
    if "eos_token_id" in kw:
        minimum = draw(st.sampled_from(["none", "min_length", "min_new_tokens"]))
        if minimum != "none":
            kw[minimum] = draw(st.integers(0, 64))
    if draw(st.booleans()):
        kw["do_sample"] = True
        unit = st.floats(0, 1, allow_nan=False)
        kw["temperature"] = draw(st.floats(1e-3, 10, allow_nan=False) | st.integers(1, 3))
        kw["top_k"] = draw(st.integers(0, 1000))
        kw["top_p"] = draw(unit)
        kw["min_p"] = draw(st.none() | unit)
        kw["num_return_sequences"] = draw(st.integers(1, 8))
    else:
        kw["do_sample"] = draw(st.just(False) | st.none())
    if draw(st.booleans()):
        kw["return_dict_in_generate"] = True
        kw["output_scores"] = draw(st.booleans())
    return kw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs())
def test_valid_configs_validate_and_round_trip(kw):
    cfg = GenerationConfig(**kw)
    cfg.validate(vocab_size=VOCAB)
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg
    assert GenerationConfig.from_dict(json.loads(json.dumps(cfg.to_dict(diff=True)))) == cfg
    assert hash(cfg) == hash(GenerationConfig(**kw))


@settings(max_examples=40, deadline=None)
@given(valid_configs())
def test_valid_configs_round_trip_through_transformers(kw):
    cfg = GenerationConfig(**kw)
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)
        theirs = TFConfig.from_pretrained(d)
        assert_tf_equal(cfg, theirs)
        theirs.save_pretrained(d)
        assert GenerationConfig.from_pretrained(d) == cfg


# ---- real-world generation_config.json shapes -----------------------------------------

LLAMA3 = {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
          "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.42.3"}  # fmt: skip
QWEN25 = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
          "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.7,
          "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"}  # fmt: skip
GEMMA2 = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
          "cache_implementation": "hybrid", "_from_model_config": True}  # fmt: skip


def test_real_model_files():
    GenerationConfig.from_dict(LLAMA3).validate(vocab_size=128256)
    GenerationConfig.from_dict(GEMMA2).validate(vocab_size=256000)
    GenerationConfig.from_dict(QWEN25).validate(vocab_size=151936)  # repetition penalty too
    # greedy override of a sampling model file: strict flags the unused knobs
    greedy = GenerationConfig.from_dict(LLAMA3).replace(do_sample=False)
    assert warned_fields(greedy) == {"temperature", "top_p"}


def test_save_drops_compile_config(tmp_path):
    GenerationConfig(compile_config=object(), top_k=3).save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path) == GenerationConfig(top_k=3)


def test_length_pairs_that_transformers_honours_both_are_valid():
    # max_new_tokens wins over max_length; min_length and min_new_tokens both apply
    GenerationConfig(max_length=50, max_new_tokens=5).validate()
    GenerationConfig(min_length=3, min_new_tokens=2, eos_token_id=0).validate()


# ---- the model's config merged with the caller's arguments ------------------------------

def test_merged_drops_inherited_settings_without_effect_quietly():
    model = GenerationConfig.from_dict(LLAMA3)
    greedy = model.merged({"do_sample": False})
    assert (greedy.temperature, greedy.top_p, greedy.do_sample) == (1.0, 1.0, False)
    assert greedy.eos_token_id == model.eos_token_id and greedy.bos_token_id == 128000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        greedy.validate(vocab_size=128256, strict=False)
        greedy.validate(vocab_size=128256, strict=True)
    assert model.merged({}) == model and model.merged({"top_p": 0.5}).temperature == 0.6


def test_merged_keeps_what_the_caller_passed():
    model = GenerationConfig.from_dict(LLAMA3)
    cfg = model.merged({"temperature": 0.5, "do_sample": False})
    assert cfg.temperature == 0.5 and cfg.top_p == 1.0
    with pytest.raises(ValueError, match="temperature"):
        cfg.validate(strict=True)
    with pytest.raises(TypeError, match="top_pp"):
        model.merged({"top_pp": 0.5})


@pytest.mark.parametrize("inherited,overrides,reset", [
    ({"num_beams": 4, "length_penalty": 2.0, "early_stopping": True}, {"num_beams": 1},
     {"length_penalty", "early_stopping"}),
    ({"output_scores": True, "return_dict_in_generate": True},
     {"return_dict_in_generate": False}, {"output_scores"}),
    ({"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5},
     {"num_beam_groups": 1}, {"diversity_penalty"}),
    ({"min_length": 5, "min_new_tokens": 2, "eos_token_id": 3}, {"eos_token_id": None},
     {"min_length", "min_new_tokens"}),
    ({"do_sample": True, "top_k": 5, "typical_p": 0.5, "min_p": 0.1}, {"do_sample": False},
     {"top_k", "typical_p", "min_p"}),
])
def test_merged_applies_every_no_effect_rule(inherited, overrides, reset):
    model = GenerationConfig(**inherited)
    cfg = model.merged(overrides)
    assert {n for n in inherited if getattr(cfg, n) != getattr(model, n)} - set(
        overrides) == reset
    assert all(getattr(cfg, n) == FIELDS[n] for n in reset)
    assert warned_fields(cfg) == set()


def test_bundled_model_called_greedy_does_not_warn():
    """The bundled model samples (temperature 0.8, top_p 0.95); a greedy call on it gets
    greedy tokens and no 'has no effect' warning."""
    import jaxgen

    lm = jaxgen.load()
    assert lm.generation_config.do_sample and lm.generation_config.temperature != 1.0
    inputs = lm.tokenizer(["To be", "Once upon a time"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenerationConfigWarning)
        got = lm.generate(**inputs, do_sample=False, max_new_tokens=6)
    greedy = GenerationConfig(max_new_tokens=6, eos_token_id=lm.generation_config.eos_token_id,
                              pad_token_id=lm.generation_config.pad_token_id)
    want = jaxgen.generate(lm.model, lm.params, inputs["input_ids"],
                           attention_mask=inputs["attention_mask"], config=greedy)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # the caller's own temperature is kept, so it is reported (an error, or the warning
    # of the non-strict model-config path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenerationConfigWarning)
        with pytest.raises((ValueError, GenerationConfigWarning), match="temperature"):
            lm.generate(**inputs, temperature=0.5, do_sample=False, max_new_tokens=6)
