"""``te_golden.safetensors``: the reference's Qwen3-VL text features per checkpoint layout (tests/test_text_encoder.py).

* the tiny model/tokenizer folders come from ``tools.make_test_text_encoder`` (seed 0, 5 layers);
* ``QWEN3_VL_ACTIVATION_LAYERS`` patched to (0, 1, 3); ``hf_hub_download`` patched to read the local folder (a
  missing file raises ``EntryNotFoundError``, so the single-file fallback is taken);
* model + tokenizer from the reference's ``_load_qwen3_vl`` (bf16 -> AutoModel, fp8 -> _load_fp8_text_encoder,
  nf4 -> transformers + bitsandbytes Linear4bit with ``support_avx512bf16_for_cpu = False`` and
  ``bnb.matmul_4bit`` = ``dequantize_4bit`` -> bf16 ``F.linear``, the reference's CPU nf4 compute);
* each caption alone -> ``_build_inputs([caption], 256, 256)`` -> ``_encode_text`` -> rows ``[0, :max_text_tokens]``,
  left-padded into one (2, L, F) tensor; bf16 runs stored as bf16 (lossless), plus one float32 run.

:func:`local_hub` and :func:`bare_pipeline` are shared with :mod:`.text_encoder_packed`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import torch

from .common import patched, reference_module

FILENAME = "te_golden.safetensors"
TAPS = (0, 1, 3)
CAPTIONS = ["a cat", '{"subject": "The red fox", "n": 2}']
RUNS = (("official_bf16", torch.bfloat16), ("official_bf16", torch.float32),
        ("official_fp8", torch.bfloat16), ("official_nf4", torch.bfloat16))
RECIPE = "reference _tokenize+_build_inputs(256x256, one caption per call)+_encode_text, text rows only"


def local_hub(pipe_mod):
    """Context: the reference's ``hf_hub_download`` reads ``<repo_id>/<filename>`` from disk, never the network."""
    from huggingface_hub.errors import EntryNotFoundError

    def local_hf_hub_download(repo_id, filename, **_):
        path = Path(repo_id) / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not found in {repo_id}")
        return str(path)

    return patched(pipe_mod, hf_hub_download=local_hf_hub_download)


def bare_pipeline(pipe_mod, tokenizer, model):
    """An ``Ideogram4Pipeline`` holding only the text encoder (``object.__new__``, default config)."""
    pipe = object.__new__(pipe_mod.Ideogram4Pipeline)
    pipe.text_encoder, pipe.text_tokenizer = model, tokenizer
    pipe.config = pipe_mod.Ideogram4PipelineConfig()
    pipe.device, pipe.dtype = torch.device("cpu"), model.dtype
    return pipe


def load(pipe_mod, folder: Path, dtype: torch.dtype):
    """Tokenizer + model through the reference's ``_load_qwen3_vl`` (official HF layout)."""
    return pipe_mod._load_qwen3_vl(str(folder), torch.device("cpu"), dtype,
                                   tokenizer_subfolder="tokenizer", text_encoder_subfolder="text_encoder")


def _bnb_cpu_matmul():
    """Context: the reference's CPU nf4 compute, dequantise the 4-bit weight then a plain ``F.linear``."""
    import bitsandbytes as bnb
    import torch.nn.functional as F
    from bitsandbytes.functional import dequantize_4bit

    def matmul_4bit(A, B, quant_state, out=None, bias=None):
        result = F.linear(A, dequantize_4bit(B, quant_state).to(A.dtype), bias)
        if out is not None:
            out.copy_(result)
            return out
        return result

    return patched(bnb, matmul_4bit=matmul_4bit)


def _disable_bnb_cpu_repack(model) -> int:
    import bitsandbytes as bnb

    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def record() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import transformers

    pipe_mod = reference_module("pipeline_ideogram4", "the text-encoder golden")
    from tools import make_test_text_encoder as mk

    text, vision = mk.tiny_text_config(), mk.tiny_vision_config()
    out: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(local_hub(pipe_mod))
        stack.enter_context(patched(pipe_mod, QWEN3_VL_ACTIVATION_LAYERS=TAPS))
        stack.enter_context(_bnb_cpu_matmul())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for layout in sorted({layout for layout, _ in RUNS}):
            mk.write_layout(layout, tmp, text=text, vision=vision, seed=0)
        token_ids = lengths = None
        for layout, dtype in RUNS:
            tokenizer, model = load(pipe_mod, tmp / layout, dtype)
            if layout == "official_nf4":
                print(f"  te: {_disable_bnb_cpu_repack(model)} Linear4bit: support_avx512bf16_for_cpu = False")
            pipe = bare_pipeline(pipe_mod, tokenizer, model)
            rows, ids = [], []
            for caption in CAPTIONS:
                inputs = pipe._build_inputs([caption], height=256, width=256)
                n = inputs["max_text_tokens"]
                assert inputs["num_image_tokens"] == 256
                feats = pipe._encode_text(inputs["token_ids"], inputs["text_position_ids"], inputs["indicator"])
                rows.append(feats[0, :n])
                ids.append(inputs["token_ids"][0, :n])
            length = max(r.shape[0] for r in rows)
            feats = torch.zeros(len(CAPTIONS), length, rows[0].shape[1], dtype=torch.float32)
            tok = torch.zeros(len(CAPTIONS), length, dtype=torch.long)
            for b, (r, i) in enumerate(zip(rows, ids)):
                feats[b, length - r.shape[0]:] = r
                tok[b, length - i.shape[0]:] = i
            if token_ids is None:
                token_ids, lengths = tok, torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
            assert torch.equal(tok, token_ids), f"{layout}: other token ids"
            tag = "fp32" if dtype == torch.float32 else "bf16"
            if dtype == torch.bfloat16:
                assert torch.equal(feats.to(torch.bfloat16).float(), feats), "bf16 run's output is not bf16 values"
                feats = feats.to(torch.bfloat16)
            out[f"features_{layout}_{tag}"] = feats
            print(f"  te: features_{layout}_{tag} {tuple(feats.shape)} max |x| {feats.float().abs().max().item():.4g}")
            del model, pipe
    lm, _ = mk.tiny_weights(text, vision, 0)
    out["lengths"], out["token_ids"] = lengths, token_ids
    out["weights_checksum"] = torch.tensor([float(sum(v.double().sum() for v in lm.values())),
                                            float(sum(v.double().abs().sum() for v in lm.values()))],
                                           dtype=torch.float64)
    meta = {"seed": "0", "taps": json.dumps(list(TAPS)), "layers": str(text["num_hidden_layers"]),
            "captions": json.dumps(CAPTIONS), "transformers": transformers.__version__, "recipe": RECIPE}
    return out, meta
