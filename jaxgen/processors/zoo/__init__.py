"""JAX versions of the logits-processor-zoo processors (NVIDIA, transformers flavour).

Same class names without the ``LogitsProcessor`` suffix and the same constructor
arguments, minus ``batch_size``: batch support comes from per-row state arrays (every
state leaf has the rows as leading axis, so beam search can reorder it)::

    from jaxgen import processors as P
    P.zoo.GenLength(tok, boost_factor=1.0, p=2, complete_sentences=False)
    P.zoo.ForceLastPhrase("Thanks for asking.", tok)
    P.zoo.MultipleChoice(tok, choices=["1", "2", "3", "4"])

The tokenizer (a ``jaxgen.Tokenizer`` or a transformers tokenizer) is only read at
construction: phrases, choices and string-derived token sets (new-line tokens,
sentence ends) become ``-1``-padded int32 arrays of power-of-two length, and numbers
become fixed-dtype array leaves, so changing a boost, a count or a time never
recompiles. Nothing loops over rows or positions and nothing talks to the host.

Differences shared by every processor (each class lists its own):

- No ``batch_size`` and no "new generation" detection: ``init`` builds the state at
  prefill, so one object serves any number of ``generate`` calls (the original must be
  re-created before every call).
- The prompt is the row's real prompt (attention mask 1); the original also sees the
  left padding of ``input_ids``.
- Wall-clock time is ``ctx.elapsed``: seconds since generation began, set by the host
  driver between chunks of steps (resolution = one chunk; these processors set
  ``uses_clock`` so ``generate`` drives the loop in chunks). "Time is up" is
  ``elapsed >= limit`` (the original: ``time.time() - start > limit``, with ``start``
  at the first processor call).
- Forcing tokens keeps the zoo's ``enforce_tokens`` arithmetic (forced scores shifted so
  their minimum becomes the row maximum, all others set to the row minimum): a shift,
  not a mask, so under sampling a forced token is as likely as the row's score range
  makes it, as in the original. Two fixes: a forced token whose score is ``-inf``
  (banned by an earlier processor) gets the row maximum instead of NaN, and in a flat
  row (maximum == minimum) the other tokens become ``-inf`` so the forced token wins
  (the original leaves a tie there).
- ``text_to_token`` errors are ``ValueError`` (the original raises ``Exception``).

Modules: ``boost`` (GenLength, CiteFromPrompt, MultipleChoice, MaxTime), ``phrases``
(ForceLastPhrase, TriggerPhrase, PreventHallucination), ``common`` (shared helpers).
"""

from jaxgen.processors.zoo.boost import CiteFromPrompt, GenLength, MaxTime, MultipleChoice
from jaxgen.processors.zoo.common import PhraseState, PromptState
from jaxgen.processors.zoo.phrases import ForceLastPhrase, PreventHallucination, TriggerPhrase

__all__ = ["CiteFromPrompt", "ForceLastPhrase", "GenLength", "MaxTime", "MultipleChoice",
           "PhraseState", "PreventHallucination", "PromptState", "TriggerPhrase"]
