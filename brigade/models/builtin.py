"""Built-in GPT-2-shaped models, built with ``onnx.helper`` and seeded random weights.

They exist so the fleet runs, is tested and is benchmarked with nothing downloaded. The graph follows
Hugging Face Optimum's "decoder with past" layout (one ``model.onnx`` for prefill and decode), so the
engine serves them exactly as it serves a user's ``optimum-cli export onnx --task text-generation-with-past``
directory. Weights go to ``model.onnx_data`` (Optimum's external-data layout), written tensor by tensor so
the 500 MB model never sits in memory twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper

from brigade.models.specs import GENERATOR_VERSION, BuiltinSpec
from brigade.models.tokenizer import EOS_TOKEN, printable_mask, write_tokenizer_files

OPSET = 20  # LayerNormalization (17) and Gelu with approximate="tanh" (20)
MASKED_BIAS = -1e9  # attention to padding and the future; finite so softmax stays NaN-free
LOGITS_TO_KEEP = "logits_to_keep"
DATA_FILE = "model.onnx_data"
EMBEDDING_SCALE = 0.1
_ALIGN = 4096  # page-aligned offsets let ONNX Runtime map the weights instead of copying them


class _Weights:
    """Draws seeded weights and appends them to the external data file as they are made."""

    def __init__(self, data: BinaryIO, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.data = data
        self.initializers: list[TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        offset = -(-self.data.tell() // _ALIGN) * _ALIGN
        self.data.seek(offset)
        self.data.write(array.tobytes())
        tensor = TensorProto(name=name, dims=array.shape, data_type=TensorProto.FLOAT)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        return name

    def normal(self, name: str, shape: tuple[int, ...], std: float) -> str:
        return self.add(name, self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def const(self, name: str, shape: tuple[int, ...], value: float) -> str:
        return self.add(name, np.full(shape, value, dtype=np.float32))


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.small: list[TensorProto] = []  # shape constants, kept inline
        self._n = 0

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._n += 1
        name = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=f"n{self._n}_{op_type}", **attrs))
        return name

    def ints(self, name: str, values: list[int]) -> str:
        self.small.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name

    def scalar(self, name: str, value: float) -> str:
        self.small.append(helper.make_tensor(name, TensorProto.FLOAT, [], [value]))
        return name


def _attention_bias(g: _Graph) -> str:
    """Additive mask [batch, 1, seq, past+seq]: 0 where a query may look (causal and not padding)."""
    seq = g.op("Squeeze", g.op("Shape", "input_ids", start=1, end=2))
    total = g.op("Squeeze", g.op("Shape", "attention_mask", start=1, end=2))
    one, zero = g.ints("one", [1]), g.ints("zero", [0])
    one_s, zero_s = g.op("Squeeze", one), g.op("Squeeze", zero)
    past = g.op("Sub", total, seq)
    q_pos = g.op("Unsqueeze", g.op("Range", past, total, one_s), one)  # [seq, 1]
    k_pos = g.op("Unsqueeze", g.op("Range", zero_s, total, one_s), zero)  # [1, total]
    causal = g.op("LessOrEqual", k_pos, q_pos)  # [seq, total]
    keep = g.op("Unsqueeze", g.op("Cast", "attention_mask", to=TensorProto.BOOL), g.ints("axes12", [1, 2]))
    allowed = g.op("And", causal, keep)  # [batch, 1, seq, total]
    return g.op("Where", allowed, g.scalar("open", 0.0), g.scalar("shut", MASKED_BIAS))


def _block(g: _Graph, w: _Weights, spec: BuiltinSpec, i: int, h: str, bias: str) -> str:
    d, heads = spec.n_embd, spec.n_head
    hd = d // heads
    out_std = 1.0 / np.sqrt(2.0 * spec.n_layer)  # GPT-2's residual scaling keeps the stream from growing
    p = f"h.{i}."
    a = g.op("LayerNormalization", h, w.const(p + "ln_1.weight", (d,), 1.0), w.const(p + "ln_1.bias", (d,), 0.0))
    qkv = g.op("MatMul", a, w.normal(p + "attn.c_attn.weight", (d, 3 * d), 1.0 / np.sqrt(d)))
    qkv = g.op("Add", qkv, w.const(p + "attn.c_attn.bias", (3 * d,), 0.0))
    q, k, v = (f"{p}q", f"{p}k", f"{p}v")
    g.nodes.append(helper.make_node("Split", [qkv, g.ints(p + "split", [d, d, d])], [q, k, v], axis=2))
    split_heads = g.ints(p + "heads_shape", [0, 0, heads, hd])
    q, k, v = (g.op("Transpose", g.op("Reshape", t, split_heads), perm=[0, 2, 1, 3]) for t in (q, k, v))
    k = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, out=f"present.{i}.key")
    v = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, out=f"present.{i}.value")
    q = g.op("Mul", q, g.scalar(p + "scale", 1.0 / float(np.sqrt(hd))))
    scores = g.op("Add", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), bias)
    ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
    ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), g.ints(p + "merge_shape", [0, 0, d]))
    o = g.op("MatMul", ctx, w.normal(p + "attn.c_proj.weight", (d, d), out_std / np.sqrt(d)))
    h = g.op("Add", h, g.op("Add", o, w.const(p + "attn.c_proj.bias", (d,), 0.0)))
    m = g.op("LayerNormalization", h, w.const(p + "ln_2.weight", (d,), 1.0), w.const(p + "ln_2.bias", (d,), 0.0))
    f = g.op("MatMul", m, w.normal(p + "mlp.c_fc.weight", (d, 4 * d), 1.0 / np.sqrt(d)))
    f = g.op("Gelu", g.op("Add", f, w.const(p + "mlp.c_fc.bias", (4 * d,), 0.0)), approximate="tanh")
    o = g.op("MatMul", f, w.normal(p + "mlp.c_proj.weight", (4 * d, d), out_std / np.sqrt(4 * d)))
    return g.op("Add", h, g.op("Add", o, w.const(p + "mlp.c_proj.bias", (d,), 0.0)))


def _io(spec: BuiltinSpec, vocab: int) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    hd = spec.n_embd // spec.n_head
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
    ]
    inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, i64, []))
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "logits_length", vocab])]
    for i in range(spec.n_layer):
        for kind in ("key", "value"):
            past: list[str | int] = ["batch_size", spec.n_head, "past_sequence_length", hd]
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, past))
            present: list[str | int] = ["batch_size", spec.n_head, "total_sequence_length", hd]
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32, present))
    return inputs, outputs


def _keep_last(g: _Graph, h: str) -> str:
    """Only the last ``logits_to_keep`` positions go through the LM head (0, the default, keeps all).

    As transformers' ``logits_to_keep``: a prefill needs one position's logits, and the head over every
    prompt position is a sixth of GPT-2 small's prefill compute. The input has a default (an initializer
    of the same name), so a consumer that does not know it still gets Optimum's full logits.
    """
    seq = g.op("Shape", h, start=1, end=2)
    n = g.op("Unsqueeze", LOGITS_TO_KEEP, g.ints("keep_axes", [0]))
    count = g.op("Where", g.op("Equal", n, g.ints("keep_all", [0])), seq, g.op("Min", n, seq))
    return g.op("Slice", h, g.op("Neg", count), g.ints("slice_end", [2**62]), g.ints("slice_axes", [1]))


def build_graph(spec: BuiltinSpec, *, vocab: int, data: BinaryIO) -> onnx.ModelProto:
    """The whole decoder; weights are appended to ``data`` as they are drawn."""
    d = spec.n_embd
    w, g = _Weights(data, spec.seed), _Graph()
    emb_std = 2.5 / np.sqrt(d)  # the tied LM head then gives logits with std ≈ 2.5: peaked, not one-hot
    wte = w.normal("wte.weight", (vocab, d), emb_std)
    wpe = w.normal("wpe.weight", (spec.n_positions, d), emb_std / 2)
    # The input side of the tied embedding is scaled down: with random weights, an unscaled copy of the
    # current token dominates the residual stream and the tied head then repeats it forever.
    tokens = g.op("Mul", g.op("Gather", wte, "input_ids"), g.scalar("embedding_scale", EMBEDDING_SCALE))
    h = g.op("Add", tokens, g.op("Gather", wpe, "position_ids"))
    bias = _attention_bias(g)
    for i in range(spec.n_layer):
        h = _block(g, w, spec, i, h, bias)
    h = g.op("LayerNormalization", h, w.const("ln_f.weight", (d,), 1.0), w.const("ln_f.bias", (d,), 0.0))
    h = _keep_last(g, h)
    g.op("MatMul", h, g.op("Transpose", wte, perm=[1, 0]), out="logits")  # tied LM head, as GPT-2
    inputs, outputs = _io(spec, vocab)
    keep_default = helper.make_tensor(LOGITS_TO_KEEP, TensorProto.INT64, [], [0])
    initializers = [*w.initializers, *g.small, keep_default]
    graph = helper.make_graph(g.nodes, f"brigade-{spec.name}", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="brigade")
    model.ir_version = 9  # readable by every ONNX Runtime since 1.16
    return model


def _config(spec: BuiltinSpec, *, vocab: int, eos_id: int) -> dict[str, object]:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": spec.n_layer,
        "n_head": spec.n_head,
        "n_embd": spec.n_embd,
        "n_positions": spec.n_positions,
        "n_ctx": spec.n_positions,
        "n_inner": None,
        "vocab_size": vocab,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": "float32",
        "brigade_builtin": {"name": spec.name, "seed": spec.seed, "generator_version": GENERATOR_VERSION},
    }


def write_model(spec: BuiltinSpec, directory: Path) -> None:
    """Write a complete model directory: model.onnx (+ data), config.json and the tokenizer files."""
    tok = write_tokenizer_files(directory, model_max_length=spec.n_positions)
    vocab = spec.vocab_size or tok.get_vocab_size()
    eos_id = tok.token_to_id(EOS_TOKEN)
    if eos_id is None:
        raise RuntimeError(f"the built-in tokenizer lost its {EOS_TOKEN} token")
    with (directory / DATA_FILE).open("wb") as data:
        model = build_graph(spec, vocab=vocab, data=data)
    onnx.save_model(model, str(directory / "model.onnx"))
    config = _config(spec, vocab=vocab, eos_id=eos_id)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # Random weights would emit lone UTF-8 continuation bytes and control characters; suppressing them
    # (Hugging Face's generation_config field, honoured by the engine) keeps demo output readable.
    printable = printable_mask(tok, tok.get_vocab_size())
    suppress = [i for i, ok in enumerate(printable) if not ok and i != eos_id]
    generation = {"bos_token_id": eos_id, "eos_token_id": eos_id, "suppress_tokens": suppress}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
