"""Load and save Hugging Face-layout checkpoints (config.json + safetensors).

    model, params, gen = load_checkpoint("path/to/hf_dir", dtype="bfloat16")
    save_checkpoint(model, params, "out_dir")   # transformers.AutoModelForCausalLM loads it

The model's family (`jaxgen.models.registry`) parses config.json and names the tensors:
each of our parameter paths maps one to one onto a HF tensor name (``layers_3`` <->
``layers.3``, ``kernel``/``embedding``/``scale`` <-> ``weight``, see `TensorNames`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Callable, Collection
from math import prod
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from safetensors.numpy import save_file

from jaxgen.models.base import CausalLM
from jaxgen.models.quant import is_quantized
from jaxgen.models.registry import Family, TensorNames, family_for_config, family_of

Specs = dict[tuple[str, ...], jax.ShapeDtypeStruct]


def resolve_dtype(dtype: Any) -> np.dtype:
    """None -> float32; "bfloat16", "float32", jnp.bfloat16, ... -> a floating jnp dtype."""
    if dtype is None:
        return jnp.dtype(jnp.float32)
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}") from e
    if not jnp.issubdtype(resolved, jnp.floating):
        raise ValueError(f"dtype must be a floating type, got {dtype!r}")
    return resolved


def model_from_hf_config(config: dict[str, Any], dtype: Any = None) -> CausalLM:
    """Build our model for a Hugging Face ``config.json`` dict (its family is found from
    ``architectures[0]``, else ``model_type``; ValueError listing the supported ones)."""
    family = family_for_config(config)
    return family.model(family.config_from_hf(config), resolve_dtype(dtype))


def _family(model: CausalLM) -> Family:
    family = family_of(model)
    if family is None:
        raise ValueError(f"{type(model).__name__} (config "
                         f"{type(getattr(model, 'config', None)).__name__}) belongs to no "
                         f"registered family; see jaxgen.models.registry.register")
    return family


def _param_specs(model: Any) -> Specs:
    """Our parameter paths and their shapes, without allocating anything."""
    abstract = jax.eval_shape(model.init_params, jax.random.key(0))
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    return {tuple(k.key for k in path): leaf for path, leaf in flat}


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """``{("a", "b"): x}`` -> ``{"a": {"b": x}}``."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


@dataclasses.dataclass(frozen=True)
class Slot:
    """One of our parameters, as a checkpoint stores it."""

    path: tuple[str, ...]  # our parameter path
    shape: tuple[int, ...]  # our parameter's shape
    transposed: bool  # stored as our parameter transposed (HF nn.Linear [out, in])

    @property
    def hf_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape)) if self.transposed else self.shape


def param_slots(model: CausalLM, prefix: str | None = None) -> dict[str, Slot]:
    """HF tensor name -> `Slot`, for every parameter of ``model`` (HF names with
    ``prefix``, default the family's)."""
    names = _family(model).tensors
    out = {}
    for p, spec in _param_specs(model).items():
        name, transposed = names.hf_name(p, prefix)
        out[name] = Slot(p, tuple(spec.shape), transposed)
    return out


def check_tensors(model: CausalLM, slots: dict[str, Slot], found: Collection[str],
                  unused: Collection[str], source: str) -> None:
    """ValueError naming the first of ``slots`` not in ``found`` (with its expected shape);
    a warning listing ``unused`` tensors of the checkpoint (buffers and tied heads aside)."""
    missing = [n for n in slots if n not in found]
    if missing:
        raise ValueError(f"checkpoint {source!r} is missing tensor {missing[0]!r} (expected "
                         f"shape {slots[missing[0]].hf_shape}); {len(missing)} missing in all")
    _warn_unused(model, _family(model).tensors, set(unused))


def check_shape(name: str, expected: tuple[int, ...], found: tuple[int, ...]) -> None:
    if tuple(found) != tuple(expected):
        raise ValueError(f"tensor {name!r} has the wrong shape: expected {tuple(expected)}, "
                         f"found {tuple(found)}")


BLOCK_ELEMENTS = 1 << 22  # rows of about this many elements are read and placed at a time


def place(read: Callable[[int, int], np.ndarray], slot: Slot, dtype: Any) -> jax.Array:
    """Our parameter from ``read(start, stop)``, which gives HF rows ``start:stop`` as numpy.

    The rows go to the device as read and are cast (and transposed) there. A tensor of more
    than two blocks (`BLOCK_ELEMENTS`) is read a block of rows at a time into a device
    buffer updated in place, so the host never holds a whole float32 copy of it.
    """
    rows = slot.hf_shape[0] if slot.hf_shape else 1
    block = max(1, BLOCK_ELEMENTS // max(1, prod(slot.hf_shape[1:])))
    if len(slot.shape) < 2 or rows <= 2 * block:
        return _convert(jax.device_put(read(0, rows)), jnp.dtype(dtype), slot.transposed)
    out = jnp.zeros(slot.shape, dtype)
    for start in range(0, rows, block):
        start = min(start, rows - block)  # the last block ends at the end: one shape
        out = _write_rows(out, jax.device_put(read(start, start + block)), start,
                          slot.transposed)
    return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _convert(x: jax.Array, dtype: Any, transposed: bool) -> jax.Array:
    x = x.astype(dtype)
    return x.T if transposed else x


@functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
def _write_rows(out: jax.Array, rows: jax.Array, start: jax.Array, transposed: bool
                ) -> jax.Array:
    """``out`` with HF ``rows`` written from row ``start`` (our column when transposed)."""
    rows = rows.astype(out.dtype)
    starts = [0] * out.ndim
    starts[1 if transposed else 0] = start
    return lax.dynamic_update_slice(out, rows.T if transposed else rows, starts)


# ---------------------------------------------------------------------------- reading

Reader = Callable[[int, int], np.ndarray]  # (start, stop) -> rows start:stop of a tensor
Window = Callable[[tuple[slice, ...]], np.ndarray]  # HF-layout slices -> that window
Placer = Callable[[Slot, Window], jax.Array]  # one parameter, placed from its windows
# model -> (the model the placed params are for, its Placer); see `jaxgen.placement`
Placement = Callable[[CausalLM], tuple[CausalLM, Placer]]


def window_reader(read: Reader, offset: int, shape: tuple[int, ...]) -> Window:
    """``window(slices)`` of the HF tensor ``shape`` held from row ``offset`` on by
    ``read``: the reader's own ``window`` when it has one (safetensors: only the
    window's bytes are read), else its rows a block at a time, the other axes sliced."""
    own = getattr(read, "window", None)
    block = max(1, BLOCK_ELEMENTS // max(1, prod(shape[1:])))

    def window(index: tuple[slice, ...]) -> np.ndarray:
        rows, rest = index[0], index[1:]
        if own is not None:
            return own(slice(rows.start + offset, rows.stop + offset), *rest)
        return np.concatenate([read(offset + a, offset + min(a + block, rows.stop))
                               [(slice(None), *rest)]
                               for a in range(rows.start, rows.stop, block)])

    return window


def read_params(model: CausalLM, stored: dict[str, tuple[tuple[int, ...], Reader]],
                source: str, label: Callable[[str], str] = str,
                placer: Placer | None = None) -> dict[str, Any]:
    """Our parameters from ``stored`` HF-named tensors ``{name: (shape, reader)}``: found
    by the family's `TensorNames.sources` (aliases, parts of fused tensors), checked (a
    missing tensor or a wrong shape raises ValueError naming ``label(name)``; unused
    tensors warn), and placed block by block (`place`), or by ``placer`` from a window
    reader of each tensor (`window_reader`; a mesh: `jaxgen.placement.Placement`)."""
    names = _family(model).tensors
    slots = param_slots(model, names.prefix_of(stored))
    src, unused = names.sources({n: s.hf_shape[0] if s.hf_shape else 1
                                 for n, s in slots.items()}, stored)
    check_tensors(model, slots, src, unused, source)
    flat = {}
    for name, slot in slots.items():
        s = src[name]
        shape, read = stored[s.name]
        check_shape(label(s.name), (s.rows, *slot.hf_shape[1:]), shape)
        if placer is not None:
            flat[slot.path] = placer(slot, window_reader(read, s.start, shape))
            continue
        flat[slot.path] = place(lambda a, b, r=read, o=s.start: r(o + a, o + b), slot,
                                model.dtype)
    return unflatten(flat)


_ST_DTYPES = {"F64": jnp.float64, "F32": jnp.float32, "F16": jnp.float16,
              "BF16": jnp.bfloat16, "F8_E4M3": jnp.float8_e4m3fn, "F8_E5M2": jnp.float8_e5m2,
              "I64": jnp.int64, "I32": jnp.int32, "I16": jnp.int16, "I8": jnp.int8,
              "U8": jnp.uint8, "BOOL": jnp.bool_}


def _safetensors(file: Path) -> dict[str, tuple[tuple[int, ...], Reader]]:
    """The tensors of one safetensors file, read with plain reads: a memory map (what
    ``safe_open`` uses) keeps the pages it touched in the process's resident memory, which
    doubled the peak (1.13 GB above the imports for SmolLM2's 538 MB float32 file,
    0.61 GB without)."""
    with open(file, "rb") as f:
        (n,) = np.frombuffer(f.read(8), "<u8")
        header = json.loads(f.read(int(n)))
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"tensor {name!r} in {file} has dtype {info['dtype']}, which is "
                             f"not supported; supported: {sorted(_ST_DTYPES)}")
        shape, dtype = tuple(info["shape"]), jnp.dtype(_ST_DTYPES[info["dtype"]])
        out[name] = (shape, _Stored(file, 8 + int(n) + info["data_offsets"][0], shape, dtype))
    return out


@dataclasses.dataclass(frozen=True)
class _Stored:
    """One tensor of a safetensors file: ``(start, stop)`` rows, or any 2-D ``window``."""

    file: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return _read_rows(self.file, self.offset, self.shape, self.dtype, start, stop)

    def window(self, rows: slice, cols: slice | None = None) -> np.ndarray:
        """Rows ``rows`` and columns ``cols``, reading only their bytes (a column window
        is one read per row)."""
        if cols is None or len(self.shape) != 2 or (cols.start, cols.stop) == (0, self.shape[1]):
            rows_read = self(rows.start, rows.stop)
            return rows_read if cols is None else rows_read[:, cols]
        item, width = self.dtype.itemsize, cols.stop - cols.start
        out = np.empty((rows.stop - rows.start, width), self.dtype)
        raw = out.view(np.uint8).reshape(len(out), width * item)
        with open(self.file, "rb") as f:
            for i, r in enumerate(range(rows.start, rows.stop)):
                f.seek(self.offset + (r * self.shape[1] + cols.start) * item)
                if f.readinto(raw[i]) != width * item:
                    raise ValueError(f"{self.file}: truncated safetensors file")
        return out


def _read_rows(file: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, start: int,
               stop: int) -> np.ndarray:
    row = prod(shape[1:]) * dtype.itemsize
    with open(file, "rb") as f:
        f.seek(offset + start * row)
        raw = f.read((stop - start) * row)
    if len(raw) != (stop - start) * row:
        raise ValueError(f"{file}: truncated safetensors file")
    return np.frombuffer(raw, dtype).reshape((stop - start, *shape[1:]) if shape else ())


def _tensor_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint (single file or sharded index)."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / file for file in dict.fromkeys(weight_map.values())]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def load_checkpoint(path: str | os.PathLike, dtype: Any = None,
                    placement: Placement | None = None
                    ) -> tuple[CausalLM, dict[str, Any], dict[str, Any] | None]:
    """Load a Hugging Face directory: ``(model, params, generation_config dict or None)``.

    ``dtype``: None (float32), "float32", "bfloat16", or a jnp dtype; parameters, the
    activations and the KV cache use it. Tensors are converted one at a time (a large one
    a block of rows at a time, see `place`), so the peak host memory is about the
    parameters in ``dtype``. Raises FileNotFoundError for a missing directory or
    config.json, ValueError for an unsupported architecture, a missing tensor or a tensor
    of the wrong shape (naming the tensor, the expected and the found shape).
    ``placement``: parameters placed by it instead (e.g. on a mesh, each process reading
    only its shards: `jaxgen.placement.placement`); the model returned is its model.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in checkpoint directory {str(path)!r}")
    model = model_from_hf_config(json.loads(config_file.read_text()), dtype)
    stored = {name: t for file in _tensor_files(path) for name, t in _safetensors(file).items()}
    placed_model, placer = (model, None) if placement is None else placement(model)
    params = read_params(model, stored, str(path), placer=placer)
    model = placed_model
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else None
    return model, params, gen


def _warn_unused(model: Any, tensors: TensorNames, unused: set[str]) -> None:
    if getattr(model.config, "tie_word_embeddings", False):
        unused.discard(f"{tensors.head}.weight")
    unused = {n for n in unused if not n.endswith(tensors.ignored)}
    if unused:
        warnings.warn(f"checkpoint tensors not used by {type(model).__name__}: "
                      f"{sorted(unused)[:10]}{' ...' if len(unused) > 10 else ''}", stacklevel=3)


# ---------------------------------------------------------------------------- writing


def save_checkpoint(model: CausalLM, params: dict[str, Any], path: str | os.PathLike,
                    generation_config: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ ``generation_config.json`` if given)
    in Hugging Face layout, in the model's dtype; tied lm_heads are not written."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if is_quantized(params):
        raise ValueError("save_checkpoint writes float weights; these params are int8 "
                         "(quantize='int8'): save the float model instead")
    if getattr(model, "scan_layers", False):  # stacked layers: write Hugging Face's layout
        params, model = model.unstack_params(params), model.with_scan(False)
    names = _family(model).tensors
    specs = _param_specs(model)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    got = {tuple(k.key for k in p): leaf for p, leaf in flat}
    if set(got) != set(specs):
        raise ValueError(f"params do not match the model: missing "
                         f"{sorted(set(specs) - set(got))[:5]}, unexpected "
                         f"{sorted(set(got) - set(specs))[:5]}")
    tensors = {}
    for p, spec in specs.items():
        array = np.asarray(jax.device_get(got[p]))
        if array.shape != spec.shape:
            raise ValueError(f"param {'/'.join(p)} has shape {array.shape}, expected {spec.shape}")
        name, transpose = names.hf_name(p)
        tensors[name] = np.ascontiguousarray(array.T if transpose else array)
    tensors = names.to_stored(tensors)  # e.g. fused q|k|v (`TensorNames.to_stored`)
    config = model.config.to_hf()
    config["dtype"] = str(model.dtype)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    if generation_config is not None:
        (path / "generation_config.json").write_text(json.dumps(generation_config, indent=2)
                                                     + "\n")
