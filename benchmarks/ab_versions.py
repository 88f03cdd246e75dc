"""Two checkouts of jaxgen, the same benchmark, interleaved in one run: A B A B ...

    git worktree add ../before <commit>
    python benchmarks/ab_versions.py --before ../before --rounds 3

Each round runs ``bench_generate.py`` and ``bench_speculative.py`` of each checkout as a
fresh process (``PYTHONPATH`` set to that checkout), so both see the same machine state,
and parses the Markdown rows they print. Reported per row: the median tok/s of each
version over the rounds and their ratio (after / before).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {  # script -> (extra args, row-name columns, tok/s columns)
    "bench_generate.py": (["--no-write"], 1, {"jaxgen tok/s": 1}),
    "bench_speculative.py": ([], 2, {"greedy tok/s": 2, "speculative tok/s": 3}),
}


def run(root: Path, script: str, args: list[str]) -> list[list[str]]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, str(root / "benchmarks" / script), *args],
                         cwd=root / "benchmarks", env=env, capture_output=True, text=True,
                         check=True).stdout
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    return rows[1:]                                    # drop the header row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the other checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="repeats inside each benchmark")
    args = ap.parse_args()
    roots = {"before": args.before.resolve(), "after": HERE.parent}
    figures: dict[tuple[str, str, int], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for r in range(args.rounds):
        for script, (extra, name_cols, cols) in BENCHES.items():
            for version, root in roots.items():
                print(f"round {r + 1}: {script} ({version})", file=sys.stderr, flush=True)
                rows = run(root, script, [*extra, "--repeats", str(args.repeats)])
                for i, row in enumerate(rows):
                    for col, idx in cols.items():
                        name = ", batch ".join(row[:name_cols])
                        figures[(script, f"{name} ({col})", i)][version].append(
                            float(row[idx]))
    print("| benchmark row | before tok/s | after tok/s | after / before |")
    print("|---|---:|---:|---:|")
    for (script, name, _), by in sorted(figures.items(), key=lambda x: (x[0][0], x[0][2])):
        b, a = statistics.median(by["before"]), statistics.median(by["after"])
        print(f"| {script}: {name} | {b:.1f} | {a:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
