"""A model directory's memory shape, read from its files without loading the model.

The capacity plan runs before the ONNX Runtime session exists, so that a model which cannot fit fails the
worker before it allocates anything. The graph's declared inputs are the authority on the KV cache, because
they are what the engine will feed: one ``past_key_values.N.key``/``.value`` pair per layer, shaped
``[batch, kv_heads, past, head_dim]``, of the graph's element type. Where an export leaves a dimension symbolic,
``config.json`` fills it in (the same keys the engine reads). The weights are sized as they lie on disk: the
graph file plus every external data file its initializers point at (Optimum's ``model.onnx_data``), and not the
other graphs an Optimum export leaves beside it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brigade.models.registry import model_file
from consumer.gpu.capacity import ModelShape

if TYPE_CHECKING:
    import onnx

_PAST = re.compile(r"^past_key_values\.(\d+)\.key$")
_HEAD_KEYS = ("num_key_value_heads", "num_attention_heads", "n_head")


def _config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _declared(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def _head_dim(config: dict[str, Any]) -> int | None:
    if isinstance(config.get("head_dim"), int):
        return int(config["head_dim"])
    for width, heads in (("hidden_size", "num_attention_heads"), ("n_embd", "n_head")):
        if isinstance(config.get(width), int) and isinstance(config.get(heads), int):
            return int(config[width]) // int(config[heads])
    return None


def _weight_bytes(path: Path, graph: onnx.GraphProto) -> int:
    """The graph file and the external data files its initializers name, each counted once."""
    from onnx import TensorProto

    locations = {
        entry.value
        for tensor in graph.initializer
        if tensor.data_location == TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    sizes = [(path.parent / str(location)).stat().st_size for location in sorted(locations)]
    return path.stat().st_size + sum(sizes)


def read_model_shape(model_dir: Path) -> ModelShape:
    """Layers, KV heads, head dim and KV dtype from the graph's inputs (config.json where symbolic), weight bytes."""
    # imported here: onnx (ml_dtypes) costs ~0.6 s of import, and only a worker bound to a GPU plans its memory
    import onnx
    from onnx import helper

    path = model_file(model_dir)
    graph = onnx.load(str(path), load_external_data=False).graph
    past = {int(m[1]): i for i in graph.input if (m := _PAST.match(i.name))}
    if not past:
        raise ValueError(
            f"{path} has no past_key_values.N.key inputs: export it with "
            "`optimum-cli export onnx --task text-generation-with-past`"
        )
    first = past[min(past)].type.tensor_type
    config = _config(model_dir)
    dims = list(first.shape.dim)
    heads = _declared(dims[1]) if len(dims) == 4 else None
    head_dim = _declared(dims[3]) if len(dims) == 4 else None
    heads = heads or next((int(config[k]) for k in _HEAD_KEYS if isinstance(config.get(k), int)), None)
    head_dim = head_dim or _head_dim(config)
    if heads is None or head_dim is None:
        raise ValueError(f"{path}: the KV cache shape is symbolic and config.json does not give heads and head_dim")
    return ModelShape(
        n_layer=len(past),
        n_head=heads,
        head_dim=head_dim,
        dtype_bytes=helper.tensor_dtype_to_np_dtype(first.elem_type).itemsize,
        weight_bytes=_weight_bytes(path, graph),
    )
