"""The host scheduler: which request goes to which slot, what to prefill this round.

Per host round (``Engine.step``)::

    1. take newly submitted requests; drop cancelled ones (a running one frees its slot)
    2. prefill: admit waiting requests into free slots while the pool has blocks for
       them, and run prompt chunks (at most ``prefill_budget`` tokens while other slots
       decode, so a long prompt never stalls them for long); a request whose prompt is
       written is inserted into its slot
    3. decode: up to ``steps_per_round`` steps of every slot in one jitted while_loop
       (ended early when a slot finishes and requests wait), then read back the new
       tokens, stream them, and evict the finished requests

One request is prefilled at a time, in arrival order, so a request whose prompt starts
like an earlier one's finds that one's blocks registered (prefix sharing).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import numpy as np

from jaxgen.engine.blocks import Allocation, BlockManager
from jaxgen.engine.handle import Handle
from jaxgen.engine.requests import Prepared


@dataclasses.dataclass
class Running:
    """A request that holds a slot (prefilling, then decoding)."""

    handle: Handle
    prepared: Prepared
    alloc: Allocation
    slot: int
    written: int          # prompt slots whose keys/values are in the cache
    cur: int = 0          # the slot cursor (host mirror, once inserted)

    @property
    def target(self) -> int:
        """Prompt slots the prefill writes (all but the last prompt token)."""
        return len(self.prepared.ids) - 1


@dataclasses.dataclass
class Chunk:
    """One prefill call: ``ids[start : start + n]`` of ``running``'s prompt."""

    running: Running
    start: int
    n: int


class Scheduler:
    """Slots, the waiting queue and the block pool (no device work: `Engine` does it)."""

    def __init__(self, slots: int, blocks: BlockManager, *, max_blocks: int, chunk: int,
                 budget: int):
        self.slots: list[Running | None] = [None] * slots
        self.waiting: deque[tuple[Handle, Prepared]] = deque()
        self.prefilling: Running | None = None
        self.blocks, self.chunk, self.budget = blocks, chunk, budget
        self.table = np.zeros((slots, max_blocks), np.int32)
        self.rejected: list[tuple[Handle, str]] = []

    def live(self) -> list[Running]:
        """Requests decoding in a slot."""
        return [r for r in self.slots if r is not None and r is not self.prefilling]

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.live())

    def cancelled(self) -> tuple[list[Handle], list[Running]]:
        """Remove cancelled requests: ``(waiting handles, running requests)``."""
        dropped = [h for h, _ in self.waiting if h.cancelled]
        self.waiting = deque((h, p) for h, p in self.waiting if not h.cancelled)
        gone = [r for r in self.slots if r is not None and r.handle.cancelled]
        for r in gone:
            if r is self.prefilling:
                self.prefilling = None
            self.evict(r)
        return dropped, gone

    def evict(self, r: Running) -> None:
        """Free ``r``'s slot and blocks."""
        self.blocks.release(r.alloc)
        self.slots[r.slot] = None
        self.table[r.slot] = 0

    def _admit(self) -> Running | None:
        """The next waiting request in a free slot, if the pool has blocks for it now.
        A request the empty pool cannot hold goes to ``rejected``."""
        free = [i for i, r in enumerate(self.slots) if r is None]
        while free and self.waiting:
            handle, prep = self.waiting[0]
            alloc = self.blocks.allocate(prep.ids, prep.total)
            if alloc is not None:
                self.waiting.popleft()
                r = Running(handle=handle, prepared=prep, alloc=alloc, slot=free[0],
                            written=alloc.cached * self.blocks.block_size)
                self.slots[r.slot] = r
                return r
            if self.live() or self.prefilling is not None:
                return None                     # wait for running requests to free blocks
            self.waiting.popleft()
            need = self.blocks.blocks_for(prep.total)
            self.rejected.append((handle, f"the request needs {need} cache blocks of "
                                          f"{self.blocks.block_size} slots; the pool has "
                                          f"{len(self.blocks.refs) - 1} (raise num_blocks)"))
        return None

    def prefill_plan(self) -> list[Chunk | Running]:
        """This round's prefill work, in order: chunks to run and requests to insert
        (their prompt written). Unlimited budget while no slot decodes."""
        budget = self.budget if self.live() else 1 << 62
        plan: list[Chunk | Running] = []
        spent = 0
        while spent < budget:
            r = self.prefilling or self._admit()
            if r is None:
                break
            self.prefilling = r
            if r.written < r.target:
                n = min(r.target - r.written, self.chunk)
                plan.append(Chunk(running=r, start=r.written, n=n))
                r.written += n
                spent += n
                self.blocks.register(r.alloc, r.written)
            if r.written >= r.target:
                self.blocks.register(r.alloc, r.target)
                self.table[r.slot] = 0
                self.table[r.slot, :len(r.alloc.blocks)] = r.alloc.blocks
                r.cur = len(r.prepared.ids)
                plan.append(r)
                self.prefilling = None
        return plan

    def row_table(self, r: Running) -> np.ndarray:
        """``[1, max_blocks]`` block table of one request (for its prefill)."""
        row = np.zeros((1, self.table.shape[1]), np.int32)
        row[0, :len(r.alloc.blocks)] = r.alloc.blocks
        return row

    def stats(self) -> dict[str, Any]:
        return {"blocks_in_use": self.blocks.in_use, "peak_blocks": self.blocks.peak,
                "prefix_cached_tokens": self.blocks.cached_tokens,
                "waiting": len(self.waiting), "running": len(self.live())}
