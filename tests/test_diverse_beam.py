"""Diverse (group) beam search against a plain-Python port of transformers 4.x's
``_group_beam_search`` + ``BeamSearchScorer`` + ``HammingDiversityLogitsProcessor``."""

from __future__ import annotations

import numpy as np
import pytest

import jaxgen
from tests.stubs import TableLM, table_params

V = 12


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class Hyps:
    """4.x BeamHypotheses."""

    def __init__(self, n, lp, early, max_length):
        self.n, self.lp, self.early, self.max_length = n, lp, early, max_length
        self.beams, self.worst = [], 1e9

    def add(self, hyp, sum_logprobs, generated_len):
        score = sum_logprobs / (generated_len ** self.lp)
        if len(self.beams) < self.n or score > self.worst:
            self.beams.append((score, hyp))
            if len(self.beams) > self.n:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best, cur_len, prompt_len):
        if len(self.beams) < self.n:
            return False
        if self.early is True:
            return True
        if self.early == "never" and self.lp > 0.0:
            high = best / (self.max_length - prompt_len) ** self.lp
        else:
            high = best / (cur_len - prompt_len) ** self.lp
        return self.worst >= high


def reference(table, pos_bias, ids, mask, *, num_beams, groups, penalty, max_new, eos, pad,
              lp=1.0, early=False, nrs=1):
    """transformers 4.x group beam search on the stub model, in numpy float32."""
    b, w = ids.shape
    s = num_beams // groups
    max_length = w + max_new
    seqs = np.repeat(ids, num_beams, 0).astype(np.int64)
    pos = np.repeat(np.maximum(mask.cumsum(1) - 1, 0)[:, -1], num_beams)
    beam_scores = np.full((b, num_beams), -1e9, np.float32)
    beam_scores[:, ::s] = 0
    beam_scores = beam_scores.reshape(-1)
    hyps = [Hyps(s, lp, early, max_length) for _ in range(b * groups)]
    done = [False] * (b * groups)
    n_keep = max(2, 1 + len(eos)) * s
    while True:
        logits = (table[seqs[:, -1]] + pos_bias[pos]).astype(np.float32)
        cur = np.zeros(b * num_beams, np.int64)
        reorder = np.zeros(b * num_beams, np.int64)
        for g in range(groups):
            lo = g * s
            idx = [bi * num_beams + j for bi in range(b) for j in range(lo, lo + s)]
            sc = _log_softmax(logits[idx])
            if g > 0:
                for bi in range(b):
                    prev = cur[bi * num_beams: bi * num_beams + lo]
                    freq = np.bincount(prev, minlength=V).astype(np.float32)
                    sc[bi * s:(bi + 1) * s] -= np.float32(penalty) * freq
            tot = (sc + beam_scores[idx][:, None]).reshape(b, s * V)
            order = np.argsort(-tot, axis=1, kind="stable")[:, :n_keep]
            top = np.take_along_axis(tot, order, 1)
            nxt_beam, nxt_tok = order // V, order % V
            group_ids = seqs[idx]
            new_scores = np.zeros((b, s), np.float32)
            new_tok = np.zeros((b, s), np.int64)
            new_idx = np.zeros((b, s), np.int64)
            cur_len = seqs.shape[1] + 1
            for bi in range(b):
                bg = bi * groups + g
                if done[bg]:
                    new_tok[bi] = pad
                    continue
                k = 0
                for rank in range(n_keep):
                    tok, score, src = nxt_tok[bi, rank], top[bi, rank], nxt_beam[bi, rank]
                    row = bi * s + src
                    if tok in eos:
                        if rank >= s:
                            continue
                        hyps[bg].add(group_ids[row], score, cur_len - w)
                    else:
                        new_scores[bi, k], new_tok[bi, k], new_idx[bi, k] = score, tok, row
                        k += 1
                    if k == s:
                        break
                done[bg] = done[bg] or hyps[bg].is_done(top[bi].max(), cur_len, w)
            beam_scores[idx] = new_scores.reshape(-1)
            flat = new_idx.reshape(-1)
            seqs[idx] = group_ids[flat]
            cur[idx] = new_tok.reshape(-1)
            reorder[idx] = num_beams * (flat // s) + lo + flat % s
        seqs = np.concatenate([seqs, cur[:, None]], 1)
        pos = pos[reorder] + 1
        if all(done) or seqs.shape[1] >= max_length:
            break
    # finalize
    for bg, h in enumerate(hyps):
        if done[bg]:
            continue
        for j in range(s):
            row = bg * s + j
            h.add(seqs[row], beam_scores[row], seqs.shape[1] - w)
    best, best_scores = [], []
    for bi in range(b):
        cands = [x for h in hyps[bi * groups:(bi + 1) * groups] for x in h.beams]
        ranked = sorted(cands, key=lambda x: x[0])
        for _ in range(nrs):
            score, hyp = ranked.pop()
            best.append(hyp)
            best_scores.append(score)
    lengths = [len(h) for h in best]
    width = min(max(lengths) + 1, max_length)
    out = np.full((len(best), width), pad, np.int64)
    for i, h in enumerate(best):
        out[i, :len(h)] = h
        if len(h) < width:
            out[i, len(h)] = eos[0]
    return out, np.asarray(best_scores, np.float32)


@pytest.fixture(scope="module")
def stub():
    rs = np.random.RandomState(0)
    table = (rs.randn(V, V) * 2).astype(np.float32)
    pos_bias = (rs.randn(64, V) * 0.5).astype(np.float32)
    return table, pos_bias


CASES = [
    dict(num_beams=4, groups=2, penalty=1.5, max_new=6, eos=[11]),
    dict(num_beams=6, groups=3, penalty=0.7, max_new=8, eos=[11, 3], nrs=3),
    dict(num_beams=4, groups=4, penalty=5.0, max_new=5, eos=[11], lp=2.0, early=True),
    dict(num_beams=4, groups=2, penalty=0.5, max_new=7, eos=[4, 9], lp=0.6, early="never",
         nrs=4),
    dict(num_beams=2, groups=2, penalty=0.0, max_new=6, eos=[5]),
]


@pytest.mark.parametrize("case", CASES)
def test_group_beam_search_matches_4x_semantics(stub, case):
    table, pos_bias = stub
    ids = np.array([[0, 1, 2, 6], [0, 0, 7, 8], [5, 6, 7, 10]])
    mask = (np.arange(4)[None, :] >= np.array([[1], [2], [0]])).astype(np.int64)
    pad = 0
    ref, ref_scores = reference(table, pos_bias, ids, mask, pad=pad, **case)
    out = jaxgen.generate(
        TableLM(vocab_size=V), table_params(table, pos_bias=pos_bias), ids, mask,
        num_beams=case["num_beams"], num_beam_groups=case["groups"],
        diversity_penalty=case["penalty"], max_new_tokens=case["max_new"],
        eos_token_id=case["eos"], pad_token_id=pad, length_penalty=case.get("lp", 1.0),
        early_stopping=case.get("early", False),
        num_return_sequences=case.get("nrs", 1), return_dict_in_generate=True,
        output_scores=True)
    np.testing.assert_array_equal(out.sequences, ref)
    np.testing.assert_allclose(out.sequences_scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_large_diversity_penalty_gives_groups_different_first_tokens(stub):
    table, pos_bias = stub
    ids = np.array([[3, 4]])
    kw = dict(num_beams=4, num_beam_groups=4, max_new_tokens=3, eos_token_id=None,
              pad_token_id=0, num_return_sequences=4)
    model, params = TableLM(vocab_size=V), table_params(table, pos_bias=pos_bias)
    same = jaxgen.generate(model, params, ids, diversity_penalty=0.0, **kw)
    diverse = jaxgen.generate(model, params, ids, diversity_penalty=100.0, **kw)
    assert len(set(same[:, 2].tolist())) == 1          # every group finds the same beam
    assert len(set(diverse[:, 2].tolist())) == 4       # every group starts differently


def test_diverse_beam_search_validation():
    model, params = TableLM(vocab_size=V), table_params(np.zeros((V, V), np.float32))
    with pytest.raises(ValueError, match="num_beam_groups"):
        jaxgen.generate(model, params, np.array([[1]]), num_beams=4, num_beam_groups=3,
                        diversity_penalty=1.0)
    with pytest.raises(ValueError, match="num_beam_groups"):
        jaxgen.generate(model, params, np.array([[1]]), num_beams=4, num_beam_groups=2,
                        do_sample=True, diversity_penalty=1.0)
    with pytest.raises(ValueError, match="diversity_penalty"):
        jaxgen.generate(model, params, np.array([[1]]), num_beams=4, diversity_penalty=1.0)
