"""What a decoder-with-past graph declares about its KV cache: the past and present tensors' names, their shape
and type, and the optional inputs the engine feeds (position ids, Optimum's cache branch, logits_to_keep)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_DTYPES: dict[str, type[np.generic]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_LOGITS_TO_KEEP = ("logits_to_keep", "num_logits_to_keep")


@dataclass(frozen=True, slots=True)
class KvLayout:
    """The cache tensors as the graph declares them: [batch, kv_heads, past, head_dim] each."""

    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    kv_heads: int
    head_dim: int
    dtype: type[np.generic]
    has_position_ids: bool
    has_cache_branch: bool  # Optimum's older merged decoder switches prefill/decode with use_cache_branch
    logits_to_keep: str | None  # transformers' logits_to_keep as an optional input: LM head on the last position only

    @property
    def batch_inputs(self) -> frozenset[str]:
        return frozenset(("input_ids", "attention_mask", "position_ids", *self.past_names))


def _dim(declared: object, config: dict[str, Any], keys: tuple[str, ...]) -> int:
    if isinstance(declared, int):
        return declared
    for key in keys:
        if isinstance(config.get(key), int):
            return int(config[key])
    raise ValueError(f"the KV cache shape is symbolic and config.json has none of {keys}")


def kv_layout(session: ort.InferenceSession, config: dict[str, Any]) -> KvLayout:
    inputs = {i.name: i for i in session.get_inputs()}
    optional = {i.name for i in session.get_overridable_initializers()} | set(inputs)
    past = sorted((n for n in inputs if _PAST.match(n)), key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
    if not past or "input_ids" not in inputs or "attention_mask" not in inputs:
        raise ValueError(
            "the model is not a decoder with past: export it with "
            "`optimum-cli export onnx --task text-generation-with-past`"
        )
    first = inputs[past[0]]
    heads_cfg = config.copy()
    if "hidden_size" in config and "num_attention_heads" in config:
        heads_cfg.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
    if "n_embd" in config and "n_head" in config:
        heads_cfg.setdefault("head_dim", config["n_embd"] // config["n_head"])
    return KvLayout(
        past_names=tuple(past),
        present_names=tuple(n.replace("past_key_values", "present") for n in past),
        kv_heads=_dim(first.shape[1], heads_cfg, ("num_key_value_heads", "num_attention_heads", "n_head")),
        head_dim=_dim(first.shape[3], heads_cfg, ("head_dim",)),
        dtype=_DTYPES.get(first.type, np.float32),
        has_position_ids="position_ids" in inputs,
        has_cache_branch="use_cache_branch" in inputs,
        logits_to_keep=next((n for n in _LOGITS_TO_KEEP if n in optional), None),
    )
