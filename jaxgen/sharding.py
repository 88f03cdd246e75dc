"""Mesh helpers and parameter partition rules: sharded generation with plain ``jax.jit``.

Sharding is data, not code paths: a ``Mesh`` with a ``data`` axis (batch rows) and a
``model`` axis (attention heads, MLP hidden units, optionally the vocabulary), plus a
list of ``(regex, PartitionSpec)`` rules matched against each parameter's ``/``-joined
path. The decoding code is unchanged: jit propagates the shardings of the parameters
and of the prompt arrays (placed over ``data``) to the KV cache and the decode state.

Example (8 simulated CPU devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
set before jax is imported)::

    mesh = jaxgen.sharding.make_mesh((2, 4))            # ("data", "model"), Auto axes
    lm = jaxgen.load("path/to/hf_dir", mesh=mesh)        # params placed by the rules
    lm.generate(**inputs, max_new_tokens=20)             # same tokens as one device

Megatron-style tensor parallelism per block: q/k/v and gate/up kernels ``[in, out]`` are
split column-wise (``P(None, "model")``, whole heads per device), o/down row-wise
(``P("model", None)``), so each block needs one all-reduce after its row-parallel
projection and no weight ever moves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen.decoding.output import host
from jaxgen.models.gpt2 import GPT2_RULES  # noqa: F401  (public names, kept importable here)
from jaxgen.models.llama import LLAMA_RULES  # noqa: F401
from jaxgen.models.registry import family_of

Rules = Sequence[tuple[str, P]]


def rules_for(model: Any, mesh: Mesh | None = None) -> list[tuple[str, P]]:
    """The default partition rules of a jaxgen model: its family's (`jaxgen.models.registry`).

    With a ``mesh`` whose ``model`` axis does not divide the vocabulary (e.g. GPT-2's
    50257), the family's vocabulary rules (embedding, output head) replicate instead.
    """
    family = family_of(model)
    if family is None or not family.rules:
        raise ValueError(f"no default partition rules for {type(model).__name__}; pass "
                         f"rules=[(regex, PartitionSpec), ...] to shard_params")
    rules = list(family.rules)
    if mesh is not None and model.vocab_size % mesh.shape.get("model", 1):
        rules = [(r, P() if r in family.vocab_rules else s) for r, s in rules]
    return rules


def make_mesh(shape: Sequence[int], axes: Sequence[str] = ("data", "model"),
              devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh of ``shape`` over ``devices`` (default ``jax.devices()``) with Auto axes.

    jax 0.10's ``jax.make_mesh`` defaults to Explicit axes, under which unmodified model
    code fails (e.g. on the embedding gather); Auto axes let jit propagate shardings.
    """
    shape, axes = tuple(int(s) for s in shape), tuple(axes)
    if len(shape) != len(axes):
        raise ValueError(f"mesh shape {shape} and axes {axes} differ in length")
    devices = list(jax.devices() if devices is None else devices)
    n = math.prod(shape)
    if n != len(devices):
        raise ValueError(f"mesh shape {shape} needs {n} devices, {len(devices)} available "
                         f"(simulate CPU devices with XLA_FLAGS="
                         f"--xla_force_host_platform_device_count={n})")
    return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes),
                         devices=devices)


def auto_axes(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis made Auto (the same devices and names)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def _path_str(path: Sequence[Any]) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _axis_size(mesh: Mesh, entry: Any) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def spec_for(name: str, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """The PartitionSpec of parameter ``name`` (first matching rule; none: replicated).

    Raises ValueError if a sharded dimension is not divisible by its mesh axis size.
    """
    spec = next((s for pattern, s in rules if re.search(pattern, name)), P())
    if len(spec) > len(shape):
        raise ValueError(f"partition rule {spec} for parameter {name!r} has more entries "
                         f"than its shape {tuple(shape)}")
    for dim, entry in zip(shape, spec, strict=False):
        if entry is None:
            continue
        for axis in (entry if isinstance(entry, tuple) else (entry,)):
            if axis not in mesh.shape:
                raise ValueError(f"partition rule {spec} for parameter {name!r} names mesh "
                                 f"axis {axis!r}; the mesh has {tuple(mesh.axis_names)}")
        size = _axis_size(mesh, entry)
        if dim % size:
            raise ValueError(f"parameter {name!r} of shape {tuple(shape)} cannot be split "
                             f"over mesh axis {entry!r} of size {size}: {dim} is not "
                             f"divisible by {size}")
    return spec


def param_specs(params: Any, mesh: Mesh, rules: Rules) -> Any:
    """A pytree of PartitionSpecs matching ``params``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: spec_for(_path_str(path), np.shape(x), mesh, rules), params)


def shard_params(params: Any, mesh: Mesh, rules: Rules | None = None,
                 model: Any = None) -> Any:
    """Place every leaf of ``params`` on ``mesh`` with ``NamedSharding(mesh, spec)``.

    rules: ``[(regex over the '/'-joined path, PartitionSpec), ...]``, the first match
    wins, no match replicates; None uses ``rules_for(model, mesh)``. Raises ValueError
    naming the parameter when a split dimension is not divisible by its mesh axis.
    Example: ``shard_params(params, mesh, [(r"kernel$", P(None, "model"))])``.
    """
    mesh = auto_axes(mesh)
    if rules is None:
        if model is None:
            raise ValueError("shard_params needs rules=... or model=... (for rules_for)")
        rules = rules_for(model, mesh)
    specs = param_specs(params, mesh, rules)
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs)


def check_model(model: Any, mesh: Mesh) -> None:
    """ValueError if the model's kv heads (the KV cache axis split over ``model``) do not
    divide the ``model`` axis, naming the config field its family reports. Models of no
    registered family are not checked."""
    family = family_of(model)
    if family is None:
        return
    m, heads = mesh.shape.get("model", 1), family.kv_heads(model.config)
    if heads % m:
        fix = (f"use a model axis that divides {heads}" if family.kv_heads_field
               != "num_key_value_heads" else "load with jaxgen.load(path, mesh=mesh) or call "
               "jaxgen.placement.replicate_kv_heads(model, params, mesh), which repeat "
               "each kv head to fit the axis")
        raise ValueError(f"config.{family.kv_heads_field}={heads} is not divisible by the "
                         f"'model' mesh axis of size {m}: the KV cache is split by kv heads; "
                         f"{fix}")


def replicated_kv_heads(heads: int, kv: int, model_axis: int) -> int:
    """The kv heads a model keeps on a ``model`` axis of size ``model_axis``:
    ``lcm(kv, model_axis)`` (``kv`` when the axis divides it), each stored kv head repeated
    in place (`jaxgen.placement`). ValueError if the query heads do not divide the axis.

    Example: ``replicated_kv_heads(32, 8, 16) == 16`` (Llama 3 8B, each kv head twice).
    """
    _div(heads, model_axis, "num_attention_heads", "model")
    return math.lcm(kv, model_axis)


def params_mesh(params: Any) -> Mesh | None:
    """The mesh the parameters are placed on, or None (single device / unplaced)."""
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh if sharding.mesh.size > 1 else None
    return None


def check_batch(rows: int, mesh: Mesh, batch: int | None = None, repeat: int = 1,
                processes: int = 1) -> None:
    """ValueError if ``rows`` (batch * num_beams or * num_return_sequences) does not
    divide the ``data`` axis (``processes``: each passed ``batch / processes`` rows)."""
    d = mesh.shape.get("data", 1)
    if rows % d:
        what = (f"input_ids batch {batch} x {repeat} (num_beams / num_return_sequences) = "
                f"{rows} rows" if batch is not None and repeat > 1 else
                f"input_ids batch {rows}")
        if processes > 1:
            what += f" ({(batch or rows) // processes} prompts from each of {processes} processes)"
        raise ValueError(f"{what} is not divisible by the 'data' mesh axis of size {d}; "
                         f"pad the batch to a multiple of {d} or use a smaller data axis")


def shard_batch(arrays: Any, mesh: Mesh) -> Any:
    """Put each array (leading axis = batch rows) on ``mesh`` split over ``data``."""
    mesh = auto_axes(mesh)

    def put(x: Any) -> jax.Array:
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        check_batch(x.shape[0], mesh)
        spec = P("data", *([None] * (x.ndim - 1)))
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(put, arrays)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble each process's local rows into global arrays split over ``data``.

    Multi-host: every process passes its own ``[local_rows, ...]`` numpy arrays (its
    slice of the global batch, in process order, for a mesh whose ``data`` axis is split
    by process as `make_mesh` makes it); the result is one global ``jax.Array`` of
    ``[local_rows * process_count, ...]`` rows, which ``generate`` takes as the global
    batch (every process gets the global result; `jaxgen.distributed`). With one process
    it is ``shard_batch``.
    """
    mesh = auto_axes(mesh)

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        spec = P("data", *([None] * (x.ndim - 1)))
        check_batch(x.shape[0] * jax.process_count(), mesh)
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

    return jax.tree.map(put, local_batch)


def place_prompt(request: Any, params: Any) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of a ``generate`` request (`jaxgen.decoding.Request`),
    split over the ``data`` axis when ``params`` live on a multi-device mesh (else returned
    as they are).

    Raises ValueError (before anything compiles) when the rows (batch * num_beams, or
    batch * num_return_sequences) do not divide the ``data`` axis, or the model's kv heads
    do not divide the ``model`` axis.
    """
    mesh = params_mesh(params)
    if mesh is None:
        return request.input_ids, request.attention_mask
    rows = request.input_ids.shape[0]
    repeat = request.strategy.rows_per_prompt(request.config)
    hosts = getattr(request, "hosts", None)
    check_batch(rows, mesh, batch=rows // repeat, repeat=repeat,
                processes=hosts.count if hosts is not None and hosts.local else 1)
    check_model(request.model, mesh)
    rows_spec = NamedSharding(mesh, P("data", None))
    return (jax.device_put(request.input_ids, rows_spec),
            jax.device_put(request.attention_mask, rows_spec))


# ------------------------------------------------------------------ memory per device


def llama2_7b() -> Any:
    """Llama-2-7B's architecture (32 layers, d 4096, MLP 11008, 32 heads, MHA)."""
    from jaxgen.models import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)


def llama2_70b() -> Any:
    """Llama-2-70B's architecture (80 layers, d 8192, MLP 28672, 64 heads, 8 kv heads)."""
    from jaxgen.models import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                       num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8)


def llama3_8b() -> Any:
    """Llama-3-8B's architecture (32 layers, d 4096, MLP 14336, 32 heads, 8 kv heads)."""
    from jaxgen.models import LlamaConfig

    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       rope_theta=500000.0, max_position_embeddings=8192)


def _div(n: int, size: int, what: str, axis: str) -> int:
    if n % size:
        raise ValueError(f"{what}={n} is not divisible by the {axis!r} mesh axis of size {size}")
    return n // size


def memory_per_device(config: Any, *, batch: int, length: int,
                      mesh_shape: Sequence[int] = (1, 1), dtype: Any = "bfloat16",
                      shard_vocab: bool = True) -> dict[str, float]:
    """Bytes per device of a Llama-family model's parameters and KV cache under
    ``LLAMA_RULES`` on a ``(data, model)`` mesh.

    config: a ``LlamaConfig``; batch: rows decoded at once (split over ``data``);
    length: KV cache slots (prompt + new tokens); shard_vocab: False replicates the
    embedding and the output head. Parameters are replicated over ``data``; kv heads
    are repeated when the ``model`` axis exceeds them (`replicated_kv_heads`), and the
    copies are counted. Returns ``{"params_bytes", "kv_cache_bytes", "total_bytes",
    "params_gib", "kv_cache_gib", "total_gib", "kv_heads_per_device"}``.

    Example: ``memory_per_device(llama2_7b(), batch=8, length=4096)["params_gib"]`` ~ 12.55.
    """
    import jax.numpy as jnp

    c = config
    data, model = (int(s) for s in mesh_shape)
    item = jnp.dtype(dtype).itemsize
    d, hd, inter = c.hidden_size, c.head_dim, c.intermediate_size
    heads = c.num_attention_heads
    kv = replicated_kv_heads(heads, c.num_key_value_heads, model)  # with copies
    q_cols = _div(heads * hd, model, "num_attention_heads * head_dim", "model")
    kv_cols = _div(kv * hd, model, "num_key_value_heads * head_dim", "model")
    inter_local = _div(inter, model, "intermediate_size", "model")
    vocab_local = _div(c.vocab_size, model, "vocab_size", "model") if shard_vocab \
        else c.vocab_size
    layer = (d * q_cols + 2 * d * kv_cols + q_cols * d      # q, k, v, o
             + 3 * d * inter_local                          # gate, up, down
             + 2 * d)                                       # two RMSNorm scales
    if c.qkv_bias:
        layer += q_cols + 2 * kv_cols
    if c.o_bias:
        layer += d
    if c.mlp_bias:
        layer += 2 * inter_local + d
    n_params = c.num_hidden_layers * layer + vocab_local * d + d  # + embed, final norm
    if not c.tie_word_embeddings:
        n_params += d * vocab_local
    rows = _div(batch, data, "batch", "data")
    kv_local = _div(kv, model, "num_key_value_heads", "model")
    cache = 2 * c.num_hidden_layers * rows * kv_local * length * hd  # k and v
    out: dict[str, float] = {"params_bytes": n_params * item, "kv_cache_bytes": cache * item,
                             "kv_heads_per_device": kv_local}
    out["total_bytes"] = out["params_bytes"] + out["kv_cache_bytes"]
    for key in ("params", "kv_cache", "total"):
        out[f"{key}_gib"] = out[f"{key}_bytes"] / 2 ** 30
    return out


to_host = host  # a global array as numpy on every process (`jaxgen.decoding.output.host`)
