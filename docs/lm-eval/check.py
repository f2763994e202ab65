"""lm-eval's logged loglikelihoods against the engine's own for the same tokens, recomputed without a cache.

python docs/lm-eval/check.py /tmp/lm-eval-out/builtin__tiny/samples_brigade_mc_*.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from consumer.engine.logprobs import log_softmax
from consumer.engine.onnx_engine import OnnxEngine, load_engine
from schemas.settings import Settings


def next_logits(engine: OnnxEngine, ids: list[int]) -> np.ndarray:
    layout, n = engine.layout, len(ids)
    feeds = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, n), dtype=np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None, :],
    } | {name: np.zeros((1, layout.kv_heads, 0, layout.head_dim), np.float32) for name in layout.past_names}
    logits: np.ndarray = engine.session.run(["logits"], feeds)[0][0, -1, : engine.sampled_vocab]
    logits[engine.suppress_ids] = -np.inf
    return logits


def main(path: str) -> None:
    engine = load_engine(Settings(model="builtin:tiny", device="cpu"))
    worst, count = 0.0, 0
    for line in Path(path).read_text().splitlines():
        sample = json.loads(line)
        for args, (resp,) in zip(sample["arguments"].values(), sample["resps"], strict=True):
            # lm-eval tokenizes the context and the continuation apart, without special tokens
            context = engine.tokenizer.encode(args["arg_0"], add_special_tokens=False).ids
            target = engine.tokenizer.encode(args["arg_1"], add_special_tokens=False).ids
            own = sum(float(log_softmax(next_logits(engine, context + target[:i]))[t]) for i, t in enumerate(target))
            worst, count = max(worst, abs(own - float(resp[0]))), count + 1
    print(f"{count} loglikelihoods; the largest difference from the engine's own: {worst:.3g}")


if __name__ == "__main__":
    main(sys.argv[1])
