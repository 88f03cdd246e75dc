"""Peak host memory of ``jaxgen.load``: one fresh process per (checkpoint, dtype).

    python benchmarks/load_memory.py                      # the test GGUFs, float32 and bfloat16
    python benchmarks/load_memory.py path/to/hf_dir model.gguf --dtypes bfloat16

Prints the parameters' size, the resident memory after the imports, the peak (``ru_maxrss``)
and the load time. "peak - imports" against "params" is the figure to watch: the loaders
convert tensor by tensor, so it should stay near one copy of the weights in the dtype
(plus the tokenizer and XLA's own buffers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

_CHILD = """
import os, resource, sys, time
import jax, jaxgen, jaxgen.models.gguf, jaxgen.tokenizer
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
base, start = rss(), time.perf_counter()
lm = jaxgen.load(sys.argv[1], dtype=sys.argv[2])
seconds = time.perf_counter() - start
params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(lm.params)) / 2**20
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{params:.0f} {base:.0f} {peak:.0f} {seconds:.1f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="checkpoint directories or GGUF files "
                        "(default: the real GGUFs of the tests, fetched once)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    paths = args.paths
    if not paths:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.real_models import gemma3_gguf, smollm2_gguf

        paths = [str(smollm2_gguf()), str(gemma3_gguf())]
    print(f"{'checkpoint':<40} {'dtype':<9} {'params':>7} {'imports':>8} {'peak':>6} "
          f"{'peak-imp':>9} {'load s':>7}")
    for path in paths:
        for dtype in args.dtypes:
            out = subprocess.run([sys.executable, "-c", _CHILD, path, dtype], check=True,
                                 capture_output=True, text=True).stdout.split()
            params, base, peak, seconds = (float(x) for x in out[-4:])
            print(f"{Path(path).name[:40]:<40} {dtype:<9} {params:>6.0f}M {base:>7.0f}M "
                  f"{peak:>5.0f}M {peak - base:>8.0f}M {seconds:>7.1f}")


if __name__ == "__main__":
    main()
