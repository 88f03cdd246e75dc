"""Host-side bookkeeping of the paged KV cache: free blocks, reference counts, prefixes.

Block 0 is the null block (idle rows write there, nobody reads it); blocks ``1 ..
blocks - 1`` are handed out. A request gets, at admission, the blocks for its prompt
and its ``max_new_tokens`` (so it never has to wait for memory once admitted, and
nothing is ever preempted); they return to the pool when it finishes.

Prefix sharing (vLLM's automatic prefix caching): every *full* block of prompt tokens
is named by a digest of all tokens up to its end (a chain of blake2b hashes). Once a
request's prefill has written such a block, the block is registered under its digest;
a later request whose prompt starts with the same tokens points its table at the same
block (reference count + 1) and skips their prefill. A registered block whose count
drops to 0 stays cached (least recently used first out) until the pool needs it.

Only blocks strictly before the prompt's last token are shared: the engine feeds that
token in the first decode step, which writes into the request's own block.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def block_digests(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """The digest of every full block of ``tokens`` (a chain: each covers the prefix)."""
    out, prev = [], b""
    ids = np.asarray(tokens, np.int64)
    for i in range(len(ids) // block_size):
        prev = hashlib.blake2b(prev + ids[i * block_size:(i + 1) * block_size].tobytes(),
                               digest_size=16).digest()
        out.append(prev)
    return out


@dataclasses.dataclass
class Allocation:
    """The blocks of one request: ``blocks[:cached]`` came from the prefix cache."""

    blocks: list[int]
    cached: int
    digests: list[bytes]          # digests of the shareable prompt blocks
    registered: int = 0           # how many of them are registered already


class BlockManager:
    """Free list, reference counts and the prefix cache of ``blocks`` blocks of
    ``block_size`` slots (see the module docstring)."""

    def __init__(self, blocks: int, block_size: int, *, prefix_caching: bool = True):
        if blocks < 2:
            raise ValueError(f"a paged cache needs at least 2 blocks (one is the null "
                             f"block), got {blocks}")
        self.block_size, self.prefix_caching = block_size, prefix_caching
        self.free = list(range(blocks - 1, 0, -1))            # pop() hands out 1 first
        self.refs = np.zeros((blocks,), np.int32)
        self.by_digest: dict[bytes, int] = {}
        self.digest_of: dict[int, bytes] = {}
        self.idle: OrderedDict[int, None] = OrderedDict()    # cached, count 0 (LRU first)
        self.peak = 0
        self.cached_tokens = 0                               # prompt slots never prefilled

    @property
    def in_use(self) -> int:
        """Blocks some request points at."""
        return int((self.refs > 0).sum())

    def blocks_for(self, slots: int) -> int:
        return -(-slots // self.block_size)

    def allocate(self, prompt: Sequence[int], slots: int) -> Allocation | None:
        """Blocks for a request of ``slots`` slots whose prompt is ``prompt`` (shared
        prefix blocks first), or None when the pool cannot hold it now."""
        shareable = max(len(prompt) - 1, 0)
        digests = block_digests(prompt[:shareable], self.block_size) \
            if self.prefix_caching else []
        hits: list[int] = []
        for d in digests:
            b = self.by_digest.get(d)
            if b is None:
                break
            hits.append(b)
        need = self.blocks_for(slots) - len(hits)
        reusable_idle = sum(1 for b in hits if self.refs[b] == 0)
        if len(self.free) + len(self.idle) - reusable_idle < need:
            return None
        for b in hits:
            self.idle.pop(b, None)
            self.refs[b] += 1
        fresh = [self._take() for _ in range(need)]
        self.peak = max(self.peak, self.in_use)
        self.cached_tokens += len(hits) * self.block_size
        return Allocation(blocks=hits + fresh, cached=len(hits), digests=digests,
                          registered=len(hits))

    def _take(self) -> int:
        if self.free:
            b = self.free.pop()
        else:                                   # evict the least recently used cached block
            b, _ = self.idle.popitem(last=False)
            del self.by_digest[self.digest_of.pop(b)]
        self.refs[b] = 1
        return b

    def register(self, alloc: Allocation, written: int) -> None:
        """Register the shareable blocks whose slots ``< written`` have been prefilled."""
        full = min(written // self.block_size, len(alloc.digests))
        for i in range(alloc.registered, full):
            d, b = alloc.digests[i], alloc.blocks[i]
            if d not in self.by_digest:
                self.by_digest[d], self.digest_of[b] = b, d
        alloc.registered = max(alloc.registered, full)

    def release(self, alloc: Allocation) -> None:
        """A request is finished: its blocks lose a reference; cached ones stay cached."""
        for b in alloc.blocks:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                if b in self.digest_of:
                    self.idle[b] = None
                else:
                    self.free.append(b)
        alloc.blocks = []
