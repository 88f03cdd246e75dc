"""How much a draft proposes per pass: transformers' heuristic schedule
(``num_assistant_tokens_schedule``), the confidence stop (``assistant_confidence_threshold``)
and the model's own first layers as its draft (``assistant_early_exit``).

Greedy outputs stay plain greedy; the draft statistics equal a per-row reference of
transformers' rules on stub models with known logits, and the number of target passes
equals transformers' own assisted decoding at batch 1 on a tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest

import jaxgen
from tests.stubs import TableLM, left_padded_prompts, table_params

V = 24
RS = np.random.RandomState(3)
TARGET = (RS.randn(V, V) * 3).astype(np.float32)
POS = (RS.randn(64, V) * 0.5).astype(np.float32)
_half = TARGET.copy()
_half[V // 2:] = RS.randn(V - V // 2, V) * 3       # agrees with the target on half the tokens
DRAFTS = {"same": TARGET, "half": _half, "never": -TARGET}
MODEL = TableLM(vocab_size=V)
LENGTHS = (3, 7, 5, 1)
NEW = 20


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def reference(prompt: list[int], draft: np.ndarray, k: int, heuristic: bool,
              threshold: float) -> tuple[list[int], int, int, int]:
    """transformers' assisted greedy decoding for one row of a `TableLM`:
    ``(new tokens, target passes, candidates drafted, final budget)``."""
    seq, budget, passes, drafted = list(prompt), k, 0, 0

    def target(i):                                # next token after slot i
        return int(np.argmax(TARGET[seq[i]] + POS[i]))

    seq.append(target(len(seq) - 1))              # the prefill's token
    while len(seq) - len(prompt) < NEW:
        limit = max(0, min(budget, NEW - (len(seq) - len(prompt)) - 1))
        cands, last = [], seq[-1]
        while len(cands) < limit:
            logits = draft[last] + POS[len(seq) - 1 + len(cands)]
            tok = int(np.argmax(logits))
            cands.append(tok)
            last = tok
            if _softmax(logits)[tok] < threshold:
                break
        accepted = 0
        for tok in cands:
            if target(len(seq) - 1) != tok:
                break
            seq.append(tok)
            accepted += 1
        seq.append(target(len(seq) - 1))
        passes, drafted = passes + 1, drafted + len(cands)
        if heuristic:
            budget = min(budget + 2, k) if accepted == len(cands) else max(budget - 1, 1)
    return seq[len(prompt):len(prompt) + NEW], passes, drafted, budget


def _gen(draft: str, **kw):
    ids, mask = left_padded_prompts(seed=2, lengths=LENGTHS, vocab=V)
    return jaxgen.generate(MODEL, table_params(TARGET, pos_bias=POS), ids, mask,
                           max_new_tokens=NEW, pad_token_id=0, eos_token_id=None,
                           assistant_model=(MODEL, table_params(DRAFTS[draft], pos_bias=POS)),
                           return_dict_in_generate=True, **kw), ids, mask


CASES = [("half", "heuristic", 0.0), ("half", "heuristic", 0.6), ("half", "constant", 0.6),
         ("never", "heuristic_transient", 0.0), ("same", "heuristic", 0.9),
         ("same", "constant", 0.4)]


@pytest.mark.parametrize(("draft", "schedule", "threshold"), CASES)
def test_draft_statistics_follow_transformers_rules(draft, schedule, threshold):
    k = 6
    out, ids, mask = _gen(draft, num_assistant_tokens=k, num_assistant_tokens_schedule=schedule,
                          assistant_confidence_threshold=threshold)
    spec = out.speculative
    passes = []
    for r in range(len(LENGTHS)):
        prompt = [int(t) for t, m in zip(ids[r], mask[r], strict=True) if m]
        tokens, n, drafted, budget = reference(prompt, DRAFTS[draft], k,
                                               schedule != "constant", threshold)
        np.testing.assert_array_equal(out.sequences[r, ids.shape[1]:], tokens)
        assert spec["draft_tokens"][r] == drafted, r
        assert spec["num_assistant_tokens"][r] == budget, r
        passes.append(n)
    assert spec["target_passes"] == max(passes)


def test_schedule_and_threshold_cut_drafting_where_it_fails():
    """The rules change the work, not the tokens: a draft that is never right drafts
    less under the heuristic (its budget falls to 1; the last passes, with fewer tokens
    left than the budget, raise it again), a perfect draft is cut by a threshold of 1."""
    kw = dict(num_assistant_tokens=6, assistant_confidence_threshold=0.0)
    plain = _gen("never", **kw)[0]
    heur = _gen("never", **kw, num_assistant_tokens_schedule="heuristic")[0]
    np.testing.assert_array_equal(heur.sequences, plain.sequences)
    assert (heur.speculative["num_assistant_tokens"] < 6).all()
    assert heur.speculative["draft_tokens"].sum() < plain.speculative["draft_tokens"].sum() / 2
    sure = _gen("same", num_assistant_tokens=6, assistant_confidence_threshold=0.0)[0]
    unsure = _gen("same", num_assistant_tokens=6, assistant_confidence_threshold=1.0)[0]
    np.testing.assert_array_equal(sure.sequences, unsure.sequences)
    assert (unsure.speculative["draft_tokens"] <= unsure.speculative["target_passes"]).all()
    assert sure.speculative["mean_tokens_per_pass"] > 2 * unsure.speculative[
        "mean_tokens_per_pass"]


def test_threshold_is_a_traced_number(count_compiles):
    """Changing the threshold does not recompile."""
    _gen("half", num_assistant_tokens=5, assistant_confidence_threshold=0.3)
    with count_compiles() as c:
        for t in (0.1, 0.5, 0.8):
            _gen("half", num_assistant_tokens=5, assistant_confidence_threshold=t)
    assert c.count == 0


# ---------------------------------------------------------------- assistant_early_exit


def _hf_passes(hf, ids, **kw) -> tuple[np.ndarray, int]:
    """transformers' sequences and target forward passes (calls of the last layer,
    which no early-exit draft reaches) after the prefill."""
    import torch

    calls = []
    hook = hf.model.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            seqs = hf.generate(torch.tensor(ids), attention_mask=torch.ones_like(
                torch.tensor(ids)), do_sample=False, pad_token_id=0, **kw)
    finally:
        hook.remove()
    return seqs.numpy(), len(calls) - 1


@pytest.mark.parametrize(("schedule", "threshold"),
                         [("constant", 0.4), ("heuristic", 0.0), ("heuristic_transient", 0.05)])
def test_early_exit_equals_transformers(checkpoints, monkeypatch, schedule, threshold):
    """Batch 1 (transformers' assisted decoding takes one row): same tokens as plain
    greedy and as transformers, and as many target passes as transformers makes."""
    from transformers.generation import candidate_generator

    # transformers tunes the threshold from an ROC curve when scikit-learn is installed;
    # jaxgen keeps it fixed
    monkeypatch.setattr(candidate_generator, "is_sklearn_available", lambda: False)
    hf, lm = checkpoints["llama"]
    ids = left_padded_prompts(seed=5, lengths=(6,))[0]
    k, new = 4, 24
    for name, value in (("num_assistant_tokens", k), ("num_assistant_tokens_schedule", schedule),
                        ("assistant_confidence_threshold", threshold)):
        monkeypatch.setattr(hf.generation_config, name, value)   # the assistant's settings
    want, hf_passes = _hf_passes(hf, ids, max_new_tokens=new, assistant_early_exit=1)
    out = lm.generate(ids, max_new_tokens=new, pad_token_id=0, assistant_early_exit=1,
                      num_assistant_tokens=k, num_assistant_tokens_schedule=schedule,
                      assistant_confidence_threshold=threshold, return_dict_in_generate=True)
    np.testing.assert_array_equal(out.sequences, want)
    np.testing.assert_array_equal(out.sequences, lm.generate(ids, max_new_tokens=new,
                                                             pad_token_id=0))
    assert out.speculative["target_passes"] == hf_passes
    assert hf_passes < new - 1                     # the draft's tokens were accepted


def test_early_exit_greedy_equals_plain_greedy_on_both_families(checkpoints):
    for name in ("gpt2", "llama"):
        _, lm = checkpoints[name]
        ids, mask = left_padded_prompts(seed=4)
        kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=15, pad_token_id=1)
        np.testing.assert_array_equal(
            lm.generate(**kw, assistant_early_exit=1, num_assistant_tokens=3),
            lm.generate(**kw), err_msg=name)


def test_early_exit_bad_settings_are_named(checkpoints):
    _, lm = checkpoints["llama"]
    ids = left_padded_prompts(seed=4)[0]
    with pytest.raises(ValueError, match=r"assistant_early_exit=3 .*allowed: 1\.\.2"):
        lm.generate(ids, max_new_tokens=4, assistant_early_exit=3)
    with pytest.raises(ValueError, match="assistant_model or GenerationConfig.assistant_early"):
        lm.generate(ids, max_new_tokens=4, assistant_early_exit=1, assistant_model=lm)
    with pytest.raises(ValueError, match="assistant_early_exit works with greedy"):
        lm.generate(ids, max_new_tokens=4, assistant_early_exit=1, num_beams=2)
    with pytest.raises(ValueError, match="assistant_early_exit"):
        lm.generate(ids, max_new_tokens=4, assistant_early_exit=0)
