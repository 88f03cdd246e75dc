"""A JSON-lines file of requests through the engine (``jaxgen generate --input``).

Input, one JSON object per line::

    {"prompt": "Once upon a time", "max_new_tokens": 64, "temperature": 0.7, "seed": 3}
    {"messages": [{"role": "user", "content": "Hi"}], "id": "q2"}
    {"input_ids": [1, 2, 3]}

One of ``prompt`` / ``messages`` (rendered with the tokenizer's chat template) /
``input_ids``; an optional ``id`` copied to the output; any other key is a per-request
setting (GenerationConfig fields and ``seed``, default ``seed + line index``) on top of
the command line's. Output, one line per request as it finishes::

    {"index": 0, "id": ..., "text": "...", "tokens": [...], "finish_reason": "length"}
    {"index": 4, "finish_reason": "error", "error": "request 4: ..."}

An existing output file is resumed: lines whose ``index`` it already holds are skipped,
new results are appended (a truncated last line is ignored).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxgen.engine.batch import result_dict, run_requests
from jaxgen.engine.handle import Result

_PROMPT_KEYS = ("prompt", "messages", "input_ids")


def read_done(path: Path) -> set[int]:
    """Indices already in an output file."""
    done: set[int] = set()
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(int(json.loads(line)["index"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return done


def parse_line(line: str, index: int, seed: int) -> tuple[Any, dict[str, Any], Any]:
    """``(prompt, per-request fields with seed, id)`` of one input line (ValueError when
    it is not a request)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {index + 1} is not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"line {index + 1} must be a JSON object, got {type(obj).__name__}")
    found = [k for k in _PROMPT_KEYS if k in obj]
    if len(found) != 1:
        raise ValueError(f"line {index + 1} needs exactly one of {list(_PROMPT_KEYS)}, got "
                         f"{found or 'none'}")
    fields = {k: v for k, v in obj.items() if k not in (*_PROMPT_KEYS, "id")}
    fields.setdefault("seed", seed + index)
    return obj[found[0]], fields, obj.get("id")


def run_jsonl(lm: Any, input_path: str | Path, output_path: str | Path, *, config: Any = None,
              seed: int = 0, max_slots: int | None = None, progress: bool = True,
              **defaults: Any) -> dict[str, int]:
    """Run every request of ``input_path`` not yet in ``output_path`` (see the module
    docstring); returns ``{"done": n, "skipped": n, "errors": n}``."""
    out_path = Path(output_path)
    done = read_done(out_path)
    lines = [ln for ln in Path(input_path).read_text(encoding="utf-8").splitlines()
             if ln.strip()]
    pending, prompts, configs, ids = [], [], [], []
    counts = {"done": 0, "skipped": len(done & set(range(len(lines)))), "errors": 0}
    with out_path.open("a", encoding="utf-8") as out:
        def write(index: int, result: Result, rid: Any = None) -> None:
            record = {"index": index, **({"id": rid} if rid is not None else {}),
                      **result_dict(result)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            counts["done"] += 1
            counts["errors"] += result.finish_reason == "error"

        for i, line in enumerate(lines):
            if i in done:
                continue
            try:
                prompt, fields, rid = parse_line(line, i, seed)
            except ValueError as e:
                write(i, Result(tokens=[], text=None, finish_reason="error", error=str(e)))
                continue
            pending.append(i)
            prompts.append(prompt)
            configs.append(fields)
            ids.append(rid)
        if prompts:
            run_requests(lm, prompts, config, configs=configs, max_slots=max_slots,
                         progress=progress, on_result=lambda j, r: write(pending[j], r, ids[j]),
                         labels=[f"line {i + 1}" for i in pending], **defaults)
    return counts
