"""``te_packed_golden.safetensors``: reference text features of packed captions (tests/test_text_encoder_packed.py).

* model: ``mk.packed_golden_text_config()`` (seed 0, 36 layers, real vocabulary) written in the official bf16 layout
  by ``mk.write_layout("official_bf16", ...)``; tokenizer + model from the reference's ``_load_qwen3_vl``
  (AutoModel) in bf16 and in float32; the reference's own taps;
* a bare ``Ideogram4Pipeline`` with the default ``Ideogram4PipelineConfig``; per ``PACKED_GOLDEN_CASES`` entry:
  ``_build_inputs([caption], h, w)`` -> ``_encode_text`` -> rows ``[0, :max_text_tokens]``;
* bf16 rows stored as bf16 (every row for <= 256 tokens, every 8th otherwise) + SHA-256 of ALL rows' bf16 bytes;
  float32 rows (every 4th) of case 2; a case whose caption repeats an earlier case's and gives bit-identical rows and
  token ids is stored once (metadata ``same_caption_as``), each case keeps its own SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch

from .common import reference_module
from .text_encoder import bare_pipeline, load, local_hub

FILENAME = "te_packed_golden.safetensors"
FP32_CASE, FP32_STEP = 2, 4


def digest(rows: torch.Tensor) -> str:
    """As the test: SHA-256 of the rows' bf16 bytes."""
    return hashlib.sha256(rows.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()).hexdigest()


def _run_case(pipe, caption: str, height: int, width: int):
    inputs = pipe._build_inputs([caption], height=height, width=width)
    n = inputs["max_text_tokens"]
    feats = pipe._encode_text(inputs["token_ids"], inputs["text_position_ids"], inputs["indicator"])
    return inputs["token_ids"][0, :n].clone(), feats[0, :n].clone(), inputs["num_image_tokens"]


def record() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    pipe_mod = reference_module("pipeline_ideogram4", "the packed text-encoder golden")
    from tools import make_test_text_encoder as mk

    text = mk.packed_golden_text_config()
    cases = list(mk.PACKED_GOLDEN_CASES)
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    same_caption_as: dict[str, int] = {}
    with local_hub(pipe_mod), tempfile.TemporaryDirectory() as tmp:
        folder = mk.write_layout("official_bf16", Path(tmp), text=text,
                                 vision=mk.tiny_vision_config(text["hidden_size"]))

        tokenizer, model = load(pipe_mod, folder, torch.bfloat16)
        assert len(model.language_model.layers) == 36
        pipe = bare_pipeline(pipe_mod, tokenizer, model)
        taps = tuple(pipe_mod.QWEN3_VL_ACTIVATION_LAYERS)
        results = {}
        for case, (objects, height, width) in enumerate(cases):
            ids, rows, n_img = _run_case(pipe, mk.golden_caption(objects), height, width)
            assert torch.equal(rows.to(torch.bfloat16).float(), rows), "bf16 run's output is not bf16 values"
            step = 1 if ids.numel() <= 256 else 8
            results[case] = (ids, rows)
            meta[f"sha256_{case}"] = digest(rows)
            meta[f"row_step_{case}"] = str(step)
            earlier = [c for c in range(case) if cases[c][0] == objects and c not in same_caption_as]
            shared = next((c for c in earlier if torch.equal(results[c][0], ids) and torch.equal(results[c][1], rows)),
                          None)
            if earlier and shared is None:
                print(f"  te_packed: case {case}: the same caption as case {earlier[0]} gave OTHER rows: stored apart")
            if shared is not None:
                same_caption_as[str(case)] = shared
            else:
                out[f"bf16_{case}"] = rows[::step].to(torch.bfloat16)
                out[f"token_ids_{case}"] = ids
            print(f"  te_packed: case {case}: {ids.numel()} tokens, {n_img} image tokens ({height}x{width}), "
                  f"row step {step}" + (f", = case {shared}" if shared is not None else ""), flush=True)
        del model, pipe

        tokenizer, model = load(pipe_mod, folder, torch.float32)
        pipe = bare_pipeline(pipe_mod, tokenizer, model)
        objects, height, width = cases[FP32_CASE]
        ids, rows, _ = _run_case(pipe, mk.golden_caption(objects), height, width)
        assert torch.equal(ids, results[FP32_CASE][0])
        out[f"fp32_{FP32_CASE}"] = rows[::FP32_STEP].to(torch.float32)
        del model, pipe

    meta.update({"cases": json.dumps([list(c) for c in cases]), "text_config": json.dumps(text),
                 "taps": json.dumps(list(taps)), "same_caption_as": json.dumps(same_caption_as)})
    return out, meta
