"""Several JAX processes, one generation: start-up with timeouts, and agreement checks.

Every process runs the same program (JAX's multi-controller model)::

    from jaxgen import distributed, sharding
    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=i, timeout=60)
    mesh = sharding.make_mesh((2, 4))                # spans every process's devices
    lm = jaxgen.load("path/to/hf_dir", mesh=mesh)    # each host reads its own shards
    seqs = lm.generate(**lm.tokenizer(my_rows), max_new_tokens=50)   # my rows back

When the parameters' mesh spans processes, ``generate`` and ``stream`` take either each
process's own rows (numpy: process ``p`` holds block ``p`` of the global batch, every
process the same number of rows; it gets its own rows back) or the global batch (a
``jax.Array`` from `jaxgen.sharding.global_batch`; every process gets the global result).
Before anything compiles, every process checks (`agree`) that all of them passed the
same ``GenerationConfig``, strategy, model, row count, processor chain and seed, and
that none of them failed validation; otherwise each raises the same clear ValueError
instead of waiting in a collective for a peer that will never come.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jaxtyping import Int

from jaxgen.decoding.output import host

MESSAGE_BYTES = 512  # room for another process's error message in the `agree` gather


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: Any = None,
               timeout: int = 120, heartbeat_timeout: int = 100, shutdown_timeout: int = 60,
               cpu_collectives: str | None = "gloo") -> None:
    """``jax.distributed.initialize`` with every timeout set (seconds), before any JAX work.

    Arguments as jax's (None: detected on TPU pods / SLURM). ``cpu_collectives``: CPU
    cross-process collectives (``jax_cpu_collectives_implementation``; "gloo" runs on any
    machine, e.g. several processes on 127.0.0.1). A process other than 0 first waits up
    to ``timeout`` for the coordinator's port and raises TimeoutError if it never opens;
    the coordinator waits up to ``timeout`` for the others, then JAX ends the process
    (its message says DEADLINE_EXCEEDED; ours, printed first, says what was missing).
    """
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_address is not None and process_id not in (None, 0):
        wait_for_coordinator(coordinator_address, timeout, process_id, num_processes)
    watchdog = None
    if process_id == 0 and (num_processes or 1) > 1:
        watchdog = threading.Timer(0.9 * timeout, _report_missing,
                                   (coordinator_address, num_processes, timeout))
        watchdog.daemon = True
        watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=local_device_ids,
                                   initialization_timeout=int(timeout),
                                   heartbeat_timeout_seconds=int(heartbeat_timeout),
                                   shutdown_timeout_seconds=int(shutdown_timeout))
    finally:
        if watchdog is not None:
            watchdog.cancel()


def wait_for_coordinator(address: str, timeout: float, process_id: Any = None,
                         num_processes: Any = None) -> None:
    """Return once ``host:port`` accepts TCP connections; TimeoutError after ``timeout``."""
    hostname, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((hostname.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"process {process_id} of {num_processes} could not reach the JAX "
                    f"coordinator at {address} within {timeout:g} s ({e}); start process 0 "
                    f"first, check the address and port, or raise timeout=") from None
            time.sleep(0.2)


def _report_missing(address: Any, num_processes: Any, timeout: float) -> None:
    print(f"jaxgen.distributed: process 0 at {address} is still waiting for the other "
          f"{num_processes - 1} process(es) of {num_processes} to connect; JAX ends this "
          f"process at initialization_timeout={timeout:g} s", file=sys.stderr, flush=True)


def spans_processes(mesh: Any) -> bool:
    """Whether ``mesh`` holds devices of other processes (then collectives are needed)."""
    if mesh is None or jax.process_count() == 1:
        return False
    me = jax.process_index()
    return any(d.process_index != me for d in np.asarray(mesh.devices).flat)


# ------------------------------------------------------------------------- agreement


def digest(value: Any) -> int:
    """A hash of ``value`` that is the same in every process (int32): arrays by their
    bytes, other values by ``repr`` with memory addresses removed."""
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype,
                                                             jax.dtypes.prng_key):
        value = jax.random.key_data(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        a = host(value)
        data = repr((a.shape, str(a.dtype))).encode() + np.ascontiguousarray(a).tobytes()
    else:
        data = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value)).encode()
    return int(np.frombuffer(hashlib.sha256(data).digest()[:4], np.int32)[0])


def agree(parts: Mapping[str, Any] | None, error: BaseException | None = None) -> None:
    """Raise the same ValueError on every process unless all of them passed without
    ``error`` and with equal ``parts`` (``{name: value}``, the same names everywhere).

    Two small ``process_allgather`` calls; every process must call this together.
    """
    status = np.zeros(MESSAGE_BYTES + 1, np.uint8)
    if error is not None:
        msg = f"{type(error).__name__}: {error}".encode()[:MESSAGE_BYTES]
        status[0], status[1:1 + len(msg)] = 1, np.frombuffer(msg, np.uint8)
    everyone = np.asarray(_allgather(status))
    failed = [p for p in range(len(everyone)) if everyone[p, 0]]
    if failed:
        if error is not None:
            raise error
        p = failed[0]
        msg = bytes(everyone[p, 1:]).rstrip(b"\0").decode(errors="replace")
        raise ValueError(f"process {p} of {len(everyone)} failed: {msg}")
    names = list(parts or {})
    mine = np.asarray([digest(parts[n]) for n in names], np.int32)
    table = np.asarray(_allgather(mine))                # [processes, parts]
    differ = [(n, int(np.nonzero(table[:, i] != table[0, i])[0][0]))
              for i, n in enumerate(names) if (table[:, i] != table[0, i]).any()]
    if differ:
        what = ", ".join(f"{n} (process {p} vs process 0)" for n, p in differ[:8])
        raise ValueError(f"the processes did not pass the same arguments: {what} differ; "
                         f"every process must pass the same GenerationConfig, strategy, "
                         f"model, processors, seed and number of rows")


def _allgather(x: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x)


# ----------------------------------------------------------------------- rows of a host


@dataclasses.dataclass(frozen=True)
class Hosts:
    """A generation whose mesh spans processes: ``local`` when each process passed its
    own rows (block ``index`` of ``count``), else every process passed the global batch."""

    local: bool
    index: int
    count: int

    def own(self, x: Any) -> Any:
        """This process's rows of a global host result (arrays, tuples and dicts of them:
        an array's leading axis is prompt-major, so its block ``index`` of ``count``)."""
        if not self.local:
            return x
        if isinstance(x, np.ndarray) and x.ndim and x.shape[0] % self.count == 0:
            n = x.shape[0] // self.count
            return x[self.index * n:(self.index + 1) * n]
        if isinstance(x, (tuple, list)):
            return type(x)(self.own(v) for v in x)
        if isinstance(x, dict):
            return {k: self.own(v) for k, v in x.items()}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.replace(x, **{f.name: self.own(getattr(x, f.name))
                                             for f in dataclasses.fields(x) if f.init})
        return x

    def seconds(self, elapsed: float) -> float:
        """The largest ``elapsed`` of all processes (one decision for ``max_time``)."""
        return float(np.max(_allgather(np.asarray([elapsed], np.float32))))


def gather_rows(ids: Int[np.ndarray, "rows width"], mask: Int[np.ndarray, "rows width"],
                pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Every process's rows, left-padded (``pad``, mask 0) to the widest, in process
    order: ``[rows * processes, max width]`` on every process."""
    width = int(np.max(_allgather(np.asarray([ids.shape[1]], np.int32))))
    extra = width - ids.shape[1]
    ids = np.concatenate([np.full((len(ids), extra), pad, ids.dtype), ids], 1)
    mask = np.concatenate([np.zeros((len(mask), extra), mask.dtype), mask], 1)
    both = _allgather(np.stack([ids, mask.astype(ids.dtype)]))   # [processes, 2, rows, w]
    both = np.asarray(both).transpose(1, 0, 2, 3).reshape(2, -1, width)
    return both[0], both[1].astype(mask.dtype)


def request_parts(request: Any, local: bool) -> dict[str, Any]:
    """What must be equal on every process for one generation (see `agree`)."""
    cfg = request.config
    parts: dict[str, Any] = {f"GenerationConfig.{f.name}": getattr(cfg, f.name)
                             for f in dataclasses.fields(cfg)}
    rows = request.input_ids.shape[0] if local else request.input_ids.shape
    parts.update({"mode": "rows per process" if local else "global batch",
                  "input_ids rows": rows, "strategy": request.strategy,
                  "model": request.model, "rng": request.rng,
                  "processors": jax.tree.structure(request.knobs)})
    return parts


def prepare(prepare_fn: Callable[..., Any], input_ids: Any, attention_mask: Any,
            **kwargs: Any) -> Any:
    """``prepare_fn(input_ids, attention_mask, **kwargs)`` (a `Request`) on a mesh that
    spans processes: validated here, `agree`d with every process, then built for the
    global batch (each process's rows gathered when it passed its own)."""
    local = not isinstance(input_ids, jax.Array) or input_ids.is_fully_addressable
    if not local:  # the global batch: the same numpy copy on every process
        input_ids = host(input_ids)
        attention_mask = None if attention_mask is None else host(attention_mask)
    request, error = None, None
    try:
        request = prepare_fn(input_ids, attention_mask, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised by agree, on every process
        error = e
    agree(None if request is None else request_parts(request, local), error)
    if local:
        repeat, pad = request.strategy.rows_per_prompt(request.config), int(request.knobs.pad)
        ids, mask = (x[::repeat, request.start:] for x in (request.input_ids,
                                                            request.attention_mask))
        ids, mask = gather_rows(ids, mask, pad)
        if kwargs.get("negative_prompt_ids") is not None:
            neg = np.asarray(kwargs["negative_prompt_ids"])
            neg_mask = kwargs.get("negative_prompt_attention_mask")
            kwargs["negative_prompt_ids"], kwargs["negative_prompt_attention_mask"] = \
                gather_rows(neg, np.ones_like(neg) if neg_mask is None else
                            np.asarray(neg_mask), pad)
        request = prepare_fn(ids, mask, **kwargs)
    request.hosts = Hosts(local=local, index=jax.process_index(), count=jax.process_count())
    return request
