"""Every model family and rope variant against transformers 5, on tiny random checkpoints
written by transformers in the test: teacher-forced logits within 1e-4, greedy and beam
tokens equal to ``generate``, and for each feature a switch-off that changes the tokens
(so the comparison can fail)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxgen
from jaxgen.models import load_checkpoint, logits, save_checkpoint
from jaxgen.models.checkpoint import model_from_hf_config
from tests.stubs import left_padded_prompts
from tests.test_models import _hf_logits as hf_logits

VOCAB, EOS, PAD = 97, 2, 1  # PAD 1: transformers fills beams with eos for pad 0
# initializer_range 0.3: sharp enough attention that positions (rope, windows) matter
_S = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
          num_key_value_heads=2, bos_token_id=1, eos_token_id=EOS, pad_token_id=0,
          initializer_range=0.3)
_LONGROPE = dict(rope_type="longrope", rope_theta=100.0, partial_rotary_factor=0.5,
                 short_factor=[1.0, 1.5], long_factor=[4.0, 9.0])


def _scaling(**kw: Any) -> Callable[[Any], dict[str, Any]]:
    """An off-switch changing fields of the config's rope_scaling."""
    return lambda c: dict(rope_scaling=dataclasses.replace(c.rope_scaling, **kw))


@dataclasses.dataclass(frozen=True)
class Case:
    """A transformers model to build, and the features to switch off one at a time."""

    make: Callable[[], transformers.PreTrainedModel]
    off: dict[str, Callable[[Any], dict[str, Any]]]


def _llama(**kw: Any) -> Callable[[], transformers.PreTrainedModel]:
    return lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **_S, num_hidden_layers=2, **kw))


CASES = {
    "qwen3": Case(lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **_S, num_hidden_layers=2, head_dim=16, attention_bias=True)),
        {"qk_norm": lambda c: dict(qk_norm=None)}),
    "gemma2": Case(lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        **_S, num_hidden_layers=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=12,
        attn_logit_softcapping=1.0, final_logit_softcapping=0.7)),
        {"attn_softcap": lambda c: dict(attn_logit_softcapping=None),
         "final_softcap": lambda c: dict(final_logit_softcapping=None),
         "sliding_window": lambda c: dict(sliding_window=None),
         "query_pre_attn_scalar": lambda c: dict(query_pre_attn_scalar=None),
         "embed_scale": lambda c: dict(embed_scale=False),
         "sandwich_norms": lambda c: dict(layout="pre")}),
    "gemma3": Case(lambda: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **{**_S, "initializer_range": 0.1}, num_hidden_layers=6, head_dim=8, sliding_window=4,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 100.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}})),
        {"qk_norm": lambda c: dict(qk_norm=None),
         "local_rope": lambda c: dict(local_rope_theta=None),
         "sliding_window": lambda c: dict(sliding_window=None),
         "linear_rope": lambda c: dict(rope_scaling=None)}),
    "phi3": Case(lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **_S, num_hidden_layers=2, max_position_embeddings=32,
        original_max_position_embeddings=8, rope_parameters=_LONGROPE)),
        {"long_factor": lambda c: _scaling(long_factor=c.rope_scaling.short_factor)(c),
         "partial_rotary": lambda c: dict(partial_rotary_factor=1.0, **_scaling(
             short_factor=c.rope_scaling.short_factor * 2,
             long_factor=c.rope_scaling.long_factor * 2)(c))}),
    "phi3_window": Case(lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **_S, num_hidden_layers=2, sliding_window=4)),
        {"sliding_window": lambda c: dict(sliding_window=None)}),
    "olmo2": Case(lambda: transformers.Olmo2ForCausalLM(transformers.Olmo2Config(
        **_S, num_hidden_layers=2)), {"qk_norm": lambda c: dict(qk_norm=None)}),
    "smollm3": Case(lambda: transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(
        **_S, num_hidden_layers=4, rope_parameters={"rope_type": "default",
                                                    "rope_theta": 100.0})),
        {"no_rope_layers": lambda c: dict(no_rope_layers=(1, 1, 1, 1))}),
    "llama3": Case(_llama(rope_parameters=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8, rope_theta=500.0)),
        {"llama3_rope": lambda c: dict(rope_scaling=None)}),
    "linear": Case(_llama(rope_parameters=dict(rope_type="linear", factor=4.0,
                                               rope_theta=500.0)),
                   {"linear_rope": lambda c: dict(rope_scaling=None)}),
    "dynamic": Case(_llama(max_position_embeddings=8, rope_parameters=dict(
        rope_type="dynamic", factor=4.0, rope_theta=100.0)),
        {"dynamic_rope": lambda c: dict(rope_scaling=None)}),
    "longrope_llama": Case(_llama(max_position_embeddings=32, rope_parameters=dict(
        rope_type="longrope", rope_theta=100.0, short_factor=[1.0, 1.2, 1.5, 2.0],
        long_factor=[3.0, 5.0, 9.0, 20.0], original_max_position_embeddings=8)),
        {"long_factor": lambda c: _scaling(long_factor=c.rope_scaling.short_factor)(c)}),
    "qwen2_yarn": Case(lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **_S, num_hidden_layers=2, rope_parameters=dict(
            rope_type="yarn", factor=8.0, original_max_position_embeddings=8,
            rope_theta=500.0))), {"yarn_rope": lambda c: dict(rope_scaling=None)}),
    "qwen2_window": Case(lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **_S, num_hidden_layers=2, use_sliding_window=True, sliding_window=4,
        max_window_layers=1)), {"sliding_window": lambda c: dict(sliding_window=None)}),
    "mistral": Case(lambda: transformers.MistralForCausalLM(transformers.MistralConfig(
        **_S, num_hidden_layers=2, head_dim=16, sliding_window=4)),
        {"sliding_window": lambda c: dict(sliding_window=None)}),
}


def _randomize(model: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    with torch.no_grad():  # random norms and biases, so that every parameter matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _reset_rope(hf: transformers.PreTrainedModel) -> None:
    """Undo transformers' dynamic-rope growth from an earlier call (it is stateful)."""
    for m in hf.modules():
        if hasattr(m, "original_inv_freq") and hasattr(m, "max_seq_len_cached"):
            m.register_buffer("inv_freq", m.original_inv_freq.clone(), persistent=False)
            m.max_seq_len_cached = m.original_max_seq_len


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    """(case name, transformers model, our model, our params)."""
    torch.manual_seed(0)
    hf = _randomize(CASES[request.param].make())
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    model, params, _ = load_checkpoint(path)
    return request.param, hf, model, params


def _hf_logits(hf, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    _reset_rope(hf)
    return hf_logits(hf, ids, mask)


def _hf_generate(hf, ids: np.ndarray, mask: np.ndarray, **kw: Any) -> np.ndarray:
    _reset_rope(hf)
    with torch.inference_mode():
        return hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                           do_sample=False, pad_token_id=PAD, eos_token_id=EOS, **kw).numpy()


def _ours(model, params, ids, mask, **kw: Any) -> np.ndarray:
    return np.asarray(jaxgen.generate(model, params, ids, mask, pad_token_id=PAD,
                                      eos_token_id=EOS, **kw))


PROMPT = left_padded_prompts(seed=3, lengths=(6, 3), vocab=VOCAB)  # + 10 new: past 8 and 4


def test_teacher_forced_logits_match(pair):
    _, hf, model, params = pair
    ids, mask = left_padded_prompts(seed=4, lengths=(12, 7, 2), vocab=VOCAB)
    ours = np.asarray(logits(model, params, ids, mask))
    np.testing.assert_allclose(ours[mask == 1], _hf_logits(hf, ids, mask)[mask == 1],
                               atol=1e-4, rtol=0)


def test_greedy_matches_generate(pair):
    _, hf, model, params = pair
    ids, mask = PROMPT
    expected = _hf_generate(hf, ids, mask, max_new_tokens=10)
    np.testing.assert_array_equal(_ours(model, params, ids, mask, max_new_tokens=10), expected)


def test_beam_matches_generate(pair):
    _, hf, model, params = pair
    ids, mask = PROMPT
    expected = _hf_generate(hf, ids, mask, max_new_tokens=8, num_beams=3)
    got = _ours(model, params, ids, mask, max_new_tokens=8, num_beams=3)
    np.testing.assert_array_equal(got, expected)


def test_each_feature_changes_the_tokens(pair):
    """With any one feature switched off, greedy (or, for a monotonic one like the final
    soft-capping, beam) decoding leaves transformers' tokens."""
    name, hf, model, params = pair
    ids, mask = PROMPT
    greedy, beam = dict(max_new_tokens=10), dict(max_new_tokens=8, num_beams=3)
    expected = {"greedy": _hf_generate(hf, ids, mask, **greedy)}
    for feature, switch in CASES[name].off.items():
        off = type(model)(dataclasses.replace(model.config, **switch(model.config)), model.dtype)
        if (_ours(off, params, ids, mask, **greedy) != expected["greedy"]).any():
            continue
        if "beam" not in expected:
            expected["beam"] = _hf_generate(hf, ids, mask, **beam)
        got = _ours(off, params, ids, mask, **beam)
        assert (got != expected["beam"]).any(), f"{name}: switching off {feature} changed nothing"


# ------------------------------------------------------------ hidden states / attentions


@pytest.mark.parametrize("name", ["gemma3", "olmo2", "qwen2_window", "gpt2"])
def test_hidden_states_and_attentions_match(name, tmp_path):
    """``outputs=("hidden_states", "attentions")`` == transformers' output_hidden_states /
    output_attentions (eager attention), ring-buffered sliding layers included."""
    if name == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    else:
        hf = CASES[name].make()
    hf = _randomize(hf)
    hf.set_attn_implementation("eager")
    hf.save_pretrained(tmp_path)
    model, params, _ = load_checkpoint(tmp_path)
    ids, mask = left_padded_prompts(seed=5, lengths=(9, 5), vocab=VOCAB)
    out, extras = jaxgen.models.forward(model, params, ids, mask,
                                        outputs=("hidden_states", "attentions"))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0)),
                 output_hidden_states=True, output_attentions=True)
    rows = mask == 1
    assert len(extras["hidden_states"]) == len(ref.hidden_states) == hf.config.num_hidden_layers + 1
    for ours, theirs in zip(extras["hidden_states"], ref.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(ours)[rows], theirs.numpy()[rows], atol=1e-4)
    assert len(extras["attentions"]) == len(ref.attentions)
    for ours, theirs in zip(extras["attentions"], ref.attentions, strict=True):
        ours, theirs = np.asarray(ours).transpose(0, 2, 1, 3), theirs.numpy().transpose(0, 2, 1, 3)
        np.testing.assert_allclose(ours[rows], theirs[rows], atol=1e-4)  # [b, t, heads, t]
    np.testing.assert_allclose(np.asarray(model.head(params, extras["hidden_states"][-1],
                                                     norm=False)), np.asarray(out), atol=1e-5)


def test_outputs_off_is_the_plain_call_and_head_exits_early():
    """``outputs=()`` returns ``(logits, cache)`` equal to the call with outputs; ``head``
    turns an early layer's hidden state into logits (final norm, lm_head, soft-capping)."""
    model = jaxgen.models.Decoder(jaxgen.models.Gemma3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
        final_logit_softcapping=0.5))
    params = model.init_params(jax.random.key(0))
    ids = np.random.RandomState(0).randint(0, VOCAB, (2, 6))
    pos, mask = np.broadcast_to(np.arange(6), (2, 6)), np.ones((2, 6), np.int32)
    out, _, extras = model.apply(params, ids, pos, model.init_cache(2, 6), mask,
                                 outputs=("hidden_states",))
    plain = model.apply(params, ids, pos, model.init_cache(2, 6), mask)
    assert len(plain) == 2
    np.testing.assert_array_equal(np.asarray(plain[0]), np.asarray(out))
    early = np.asarray(model.head(params, extras["hidden_states"][1]))
    assert early.shape == out.shape and np.abs(early).max() <= 0.5 and not np.allclose(early, out)
    with pytest.raises(ValueError, match="unknown outputs"):
        model.apply(params, ids, pos, model.init_cache(2, 6), mask, outputs=("logits",))


def test_layers_run_under_a_scan_over_stacked_weights():
    """(a): `decoder_layer` with a traced slot, scanned over stacked layer weights, gives
    the forward pass's logits (the path a later lax.scan refactor takes)."""
    from jax import lax

    from jaxgen.models.decoder import decoder_layer, head, layer_specs

    model = jaxgen.models.Llama(jaxgen.models.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2))
    c, params = model.config, model.init_params(jax.random.key(0))
    ids = np.random.RandomState(0).randint(0, VOCAB, (2, 5))
    mask, pos = np.ones((2, 5), np.int32), np.broadcast_to(np.arange(5), (2, 5))
    spec = layer_specs(c)[0]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[params[f"layers_{i}"] for i in range(3)])

    @jax.jit
    def scanned(params, stacked):
        cache, rope = model.init_cache(2, 5), spec.rope.tables(pos, jnp.float32)
        visible = cache.visibility(mask, pos, 5, None)

        def body(carry, xs):
            x, cache = carry
            x, cache, _ = decoder_layer(c, dataclasses.replace(spec, slot=xs[1]), xs[0], x,
                                        rope, cache, visible)
            return (x, cache), None

        x = jnp.take(params["embed_tokens"]["embedding"], ids, axis=0)
        (x, _), _ = lax.scan(body, (x, cache), (stacked, jnp.arange(3)))
        return head(c, params, x)

    np.testing.assert_allclose(np.asarray(scanned(params, stacked)),
                               np.asarray(logits(model, params, ids)), atol=1e-5)


# ------------------------------------------------------------------- loading and saving


def test_gemma3_conditional_generation_loads_its_text_model(tmp_path):
    """A Gemma3ForConditionalGeneration checkpoint: text_config unwrapped, the
    model.language_model. prefix renamed, the vision tower skipped; same text logits."""
    text = dict(**_S, num_hidden_layers=6, head_dim=8, sliding_window=4)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    hf = _randomize(transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4)))
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [
        "Gemma3ForConditionalGeneration"]
    model, params, _ = load_checkpoint(tmp_path)
    assert isinstance(model.config, jaxgen.models.Gemma3Config)
    ids, mask = left_padded_prompts(seed=6, lengths=(8, 5), vocab=VOCAB)
    np.testing.assert_allclose(np.asarray(logits(model, params, ids, mask))[mask == 1],
                               _hf_logits(hf, ids, mask)[mask == 1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["phi3", "gemma3", "smollm3", "qwen3", "olmo2", "gemma2"])
def test_save_round_trip_loads_in_transformers(name, tmp_path):
    """save_checkpoint writes what transformers loads as the same model (Phi-3's q|k|v and
    gate|up fused again)."""
    hf = _randomize(CASES[name].make())
    hf.save_pretrained(tmp_path / "hf")
    model, params, _ = load_checkpoint(tmp_path / "hf")
    save_checkpoint(model, params, tmp_path / "ours")
    model2, params2, _ = load_checkpoint(tmp_path / "ours")
    assert model2 == model
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids, mask = left_padded_prompts(seed=7, lengths=(10, 4), vocab=VOCAB)
    np.testing.assert_allclose(_hf_logits(again, ids, mask)[mask == 1],
                               _hf_logits(hf, ids, mask)[mask == 1], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_family_has_partition_rules(name):
    """Every parameter matches a rule: q/k/v and gate/up split by column (kv heads over
    the model axis, as the cache), o/down by row, norms replicated."""
    from jax.sharding import AbstractMesh
    from jax.sharding import PartitionSpec as P

    from jaxgen import sharding as S

    config = CASES[name].make().config.to_dict()
    model = model_from_hf_config(config)
    mesh = AbstractMesh((1, 2), ("data", "model"))
    rules = S.rules_for(model, mesh)
    params = jax.eval_shape(model.init_params, jax.random.key(0))
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = S._path_str(path)
        assert any(re.search(p, path) for p, _ in rules), f"no rule for {path}"
        spec = S.spec_for(path, leaf.shape, mesh, rules)
        if path.endswith(("k_proj/kernel", "v_proj/kernel", "gate_proj/kernel")):
            assert spec == P(None, "model"), path
        if path.endswith(("o_proj/kernel", "down_proj/kernel")):
            assert spec == P("model", None), path
        if "norm" in path:
            assert spec == P(), path
    S.check_model(model, mesh)
    with pytest.raises(ValueError, match="num_key_value_heads=2"):
        S.check_model(model, AbstractMesh((1, 4), ("data", "model")))
