"""The Ideogram 4 DiT (spec §2): one single-stream transformer over ``[text ; image]`` tokens.

Numerics follow the official reference: bf16 compute with float32 output, t rounded to the
compute dtype before the sinusoid, sandwich RMSNorms, QK-norm before RoPE, scale-only tanh-gated
modulation, SwiGLU, fp32 interleaved MRoPE, a second SiLU in the final layer.  Differences that
do not change the maths: ``llm_cond_proj`` runs on text rows only, ``input_proj`` on image rows
only, and the segment mask is built once per forward and only when a batch has padding (so the
unmasked path can use fused attention).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DiTConfig
from .constants import IMAGE_POSITION_OFFSET
from ..checkpoints.ops import TorchOps
from .attention import attention_ops
from .rope import apply_rope_tables, mrope_cos_sin, rope_tables


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig, *, dtype=None, device=None, operations=TorchOps) -> None:
        super().__init__()
        e = cfg.emb_dim
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv = operations.Linear(e, 3 * e, bias=False, dtype=dtype, device=device)
        self.norm_q = operations.RMSNorm(self.head_dim, eps=cfg.norm_eps, elementwise_affine=True, dtype=dtype, device=device)
        self.norm_k = operations.RMSNorm(self.head_dim, eps=cfg.norm_eps, elementwise_affine=True, dtype=dtype, device=device)
        self.o = operations.Linear(e, e, bias=False, dtype=dtype, device=device)
        self.attention_fn = attention_ops(operations)[0]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: Optional[torch.Tensor], transformer_options: Optional[dict] = None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=2)  # rows q | k | v, heads contiguous
        q = self.norm_q(q).transpose(1, 2)
        k = self.norm_k(k).transpose(1, 2)
        v = v.transpose(1, 2)
        q = apply_rope_tables(q, cos, sin)  # cos/sin: rope_tables (B, 1, L, D)
        k = apply_rope_tables(k, cos, sin)
        return self.o(self.attention_fn(q, k, v, self.num_heads, attn_mask, transformer_options))


class FeedForward(nn.Module):
    def __init__(self, cfg: DiTConfig, *, dtype=None, device=None, operations=TorchOps) -> None:
        super().__init__()
        e, i = cfg.emb_dim, cfg.intermediate_size
        self.w1 = operations.Linear(e, i, bias=False, dtype=dtype, device=device)
        self.w2 = operations.Linear(i, e, bias=False, dtype=dtype, device=device)
        self.w3 = operations.Linear(e, i, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, *, dtype=None, device=None, operations=TorchOps) -> None:
        super().__init__()
        e = cfg.emb_dim
        kw = dict(dtype=dtype, device=device)
        self.attention = Attention(cfg, operations=operations, **kw)
        self.feed_forward = FeedForward(cfg, operations=operations, **kw)
        self.attention_norm1 = operations.RMSNorm(e, eps=cfg.norm_eps, elementwise_affine=True, **kw)
        self.attention_norm2 = operations.RMSNorm(e, eps=cfg.norm_eps, elementwise_affine=True, **kw)
        self.ffn_norm1 = operations.RMSNorm(e, eps=cfg.norm_eps, elementwise_affine=True, **kw)
        self.ffn_norm2 = operations.RMSNorm(e, eps=cfg.norm_eps, elementwise_affine=True, **kw)
        self.adaln_modulation = operations.Linear(cfg.adaln_dim, 4 * e, bias=True, **kw)

    def forward(self, h: torch.Tensor, a: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: Optional[torch.Tensor], transformer_options: Optional[dict] = None) -> torch.Tensor:
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaln_modulation(a).chunk(4, dim=-1)
        attn = self.attention(self.attention_norm1(h) * (1.0 + scale_msa), cos, sin, attn_mask, transformer_options)
        h = h + torch.tanh(gate_msa) * self.attention_norm2(attn)
        ff = self.feed_forward(self.ffn_norm1(h) * (1.0 + scale_mlp))
        return h + torch.tanh(gate_mlp) * self.ffn_norm2(ff)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, *, dtype=None, device=None, operations=TorchOps) -> None:
        super().__init__()
        self.dim = dim
        self.mlp_in = operations.Linear(dim, dim, bias=True, dtype=dtype, device=device)
        self.mlp_out = operations.Linear(dim, dim, bias=True, dtype=dtype, device=device)

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
        """[sin, cos] (sin half first) of 1e4·t against exp(-k ln(1e4)/(half-1)), float32."""
        s = 1e4 * t.to(torch.float32)
        half = dim // 2
        freq = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(1e4) / (half - 1)))
        angles = s.unsqueeze(-1) * freq
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        return F.pad(emb, (0, 1)) if dim % 2 else emb

    def forward(self, t: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        e = self.sinusoid(t, self.dim).to(compute_dtype)
        return self.mlp_out(F.silu(self.mlp_in(e)))


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig, *, dtype=None, device=None, operations=TorchOps) -> None:
        super().__init__()
        self.norm_final = operations.LayerNorm(cfg.emb_dim, eps=cfg.final_norm_eps, elementwise_affine=False,
                                               dtype=dtype, device=device)
        self.linear = operations.Linear(cfg.emb_dim, cfg.in_channels, bias=True, dtype=dtype, device=device)
        self.adaln_modulation = operations.Linear(cfg.adaln_dim, cfg.emb_dim, bias=True, dtype=dtype, device=device)

    def forward(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + self.adaln_modulation(F.silu(a))  # second SiLU: `a` is already SiLU'd
        return self.linear(self.norm_final(h) * scale)


def image_position_ids(grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """(N, 3) positions (65536, 65536 + r, 65536 + c) for row-major image tokens."""
    r = torch.arange(grid_h, device=device).view(-1, 1).expand(grid_h, grid_w).reshape(-1)
    c = torch.arange(grid_w, device=device).view(1, -1).expand(grid_h, grid_w).reshape(-1)
    return torch.stack([torch.zeros_like(r), r, c], dim=1) + IMAGE_POSITION_OFFSET


def text_position_ids(text_lengths: Sequence[int], max_len: int, device=None) -> torch.Tensor:
    """(B, L_max, 3): left padding gets 0, real token k gets (k, k, k)."""
    out = torch.zeros(len(text_lengths), max_len, 3, dtype=torch.long, device=device)
    for b, n in enumerate(text_lengths):
        k = torch.arange(n, device=device)
        out[b, max_len - n:] = k.unsqueeze(1).expand(n, 3)
    return out


def _replaced_block(replace: Callable, layer: nn.Module, index: int, h, a, cos, sin, attn_mask, transformer_options):
    """Block ``index`` through a ``patches_replace["dit"][("single_block", index)]`` function (FLUX's convention:
    ``replace(args, {"original_block": fn})`` with ``args["img"]`` the block's input — here all ``[text ; image]``
    rows — and the result's ``"img"`` its output; SkipLayerGuidanceDiT's replacement returns its input)."""
    def original_block(args: dict) -> dict:
        return {"img": layer(args["img"], args["vec"], *args["pe"], args["attn_mask"], args["transformer_options"])}

    out = replace({"img": h, "vec": a, "pe": (cos, sin), "attn_mask": attn_mask, "block_index": index,
                   "transformer_options": transformer_options}, {"original_block": original_block})
    return out["img"]


def _version(t: torch.Tensor) -> int:
    """In-place modification counter (inference tensors have none: -1, identity alone keys them)."""
    return -1 if t.is_inference() else t._version


class Ideogram4DiT(nn.Module):
    """Ideogram 4 flow-matching transformer (conditional or unconditional weights; same class).

    ``image_only=True`` builds the model without ``llm_cond_norm``/``llm_cond_proj`` (245M parameters,
    ≈0.49 GB in bf16): the unconditional model only ever runs the image-only pass, where those layers
    cannot influence the output (spec §2.9.6).
    """

    def __init__(self, cfg: DiTConfig, *, dtype=None, device=None, operations=TorchOps, image_only: bool = False) -> None:
        super().__init__()
        self.config = cfg
        self.image_only = image_only
        kw = dict(dtype=dtype, device=device)
        e = cfg.emb_dim
        self.input_proj = operations.Linear(cfg.in_channels, e, bias=True, **kw)
        if not image_only:
            self.llm_cond_norm = operations.RMSNorm(cfg.llm_features_dim, eps=cfg.llm_norm_eps, elementwise_affine=True, **kw)
            self.llm_cond_proj = operations.Linear(cfg.llm_features_dim, e, bias=True, **kw)
        self.t_embedding = TimestepEmbedding(e, operations=operations, **kw)
        self.adaln_proj = operations.Linear(e, cfg.adaln_dim, bias=True, **kw)
        self.embed_image_indicator = operations.Embedding(2, e, **kw)
        self.layers = nn.ModuleList(TransformerBlock(cfg, operations=operations, **kw) for _ in range(cfg.num_layers))
        self.final_layer = FinalLayer(cfg, operations=operations, **kw)
        self.attention_mask_fn = attention_ops(operations)[1]
        self._run_cache: Optional[dict] = None
        # Called with this model once the text rows of a sampling run are cached (they are not needed again in the
        # run): a host can move ``llm_cond_norm`` / ``llm_cond_proj`` off the compute device for the rest of it.
        self.after_text_projection: Optional[Callable[["Ideogram4DiT"], None]] = None

    @contextlib.contextmanager
    def sampling_run(self):
        """Within this context, step-invariant inputs are computed once and reused by every forward.

        Cached per run (keyed by the inputs they depend on, so a changed input is recomputed; one
        lookup per forward, run eagerly under torch.compile — the block loop stays one graph): the
        text rows ``llm_cond_proj(llm_cond_norm(features))`` (keyed by the identity and version of the
        features tensor), the indicator embedding rows, the RoPE cos/sin and the attention mask.  The
        values are the ones an uncached forward computes (same ops, same order): bit-identical.
        Nested entries share the outer run's cache.
        """
        if self._run_cache is not None:
            yield self
            return
        self._run_cache = {}
        try:
            yield self
        finally:
            self._run_cache = None

    @torch.compiler.disable  # a dict lookup keyed by tensor identity: run eagerly under torch.compile
    def _memo(self, keyed: Optional[torch.Tensor], rest: tuple, build):
        """``build()`` once per run for the same ``keyed`` tensor (identity + version) and ``rest``."""
        cache = self._run_cache
        if cache is None:
            return build()
        key = (None if keyed is None else (id(keyed), _version(keyed)), *rest)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = (build(), keyed)  # holding the keyed tensor keeps its id unique
        return hit[0]

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of activations: the (dequantised) dtype of ``input_proj`` as in the reference."""
        layer = self.input_proj
        return getattr(layer, "compute_dtype", None) or layer.weight.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_features: Optional[torch.Tensor] = None, *,
                grid_hw: tuple[int, int], text_lengths: Optional[Sequence[int] | torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        """Velocity for image tokens.

        Args:
            x: (B, N, 128) image tokens, row-major over the ``grid_hw`` token grid.
            t: (B,) model time, 0 = noise, 1 = clean.
            text_features: (B, L, F) left-padded text-encoder features, or ``None`` for the
                image-only unconditional pass.
            grid_hw: token grid (gh, gw) with gh·gw = N (pixels / 16).
            text_lengths: real token count per caption when the batch is left-padded;
                ``None`` means every row of ``text_features`` is a real token.
            transformer_options: passed to the attention kernel (ComfyUI's overrides live there); its
                ``patches_replace["dit"][("single_block", i)]`` replaces block i (:func:`_replaced_block`).

        Returns:
            (B, N, 128) float32 velocity; the update is ``z ← z + v·(s − t)``.
        """
        cfg = self.config
        b, n, c = x.shape
        gh, gw = grid_hw
        if gh * gw != n:
            raise ValueError(f"grid_hw {grid_hw} has {gh * gw} tokens but x has {n}")
        if c != cfg.in_channels:
            raise ValueError(f"x has {c} channels per token, the model expects {cfg.in_channels}")
        cd = self.compute_dtype
        device = x.device

        # Time: rounded to the compute dtype (bf16) before the sinusoid, as the reference does.
        t_cd = t.to(device=device, dtype=cd).reshape(b)
        t_cond = self.t_embedding(t_cd, cd).unsqueeze(1)  # (B, 1, E)
        a = F.silu(self.adaln_proj(t_cond))  # (B, 1, adaln_dim)

        h_img = self.input_proj(x.to(cd))

        lengths = None
        if text_features is not None:
            if self.image_only:
                raise ValueError("this DiT was loaded image_only (as the unconditional model) and has no text "
                                 "projection; pass text_features=None or load it with image_only=False")
            if text_features.ndim != 3 or text_features.shape[0] != b or text_features.shape[2] != cfg.llm_features_dim:
                raise ValueError(f"text_features must be (B={b}, L, {cfg.llm_features_dim}); got {tuple(text_features.shape)}")
            lengths = tuple(self._lengths(text_lengths, b, text_features.shape[1]))
        emb, h_txt, cos, sin, attn_mask = self._memo(
            text_features, (lengths, b, gh, gw, device, cd),
            lambda: self._step_invariants(text_features, lengths, b, gh, gw, device, cd, transformer_options))
        if h_txt is None:
            h = h_img + emb[1]
            n_txt = 0
        else:
            h = torch.cat([h_txt, h_img + emb[1]], dim=1)
            n_txt = h_txt.shape[1]

        blocks = ((transformer_options or {}).get("patches_replace") or {}).get("dit") or {}
        for i, layer in enumerate(self.layers):
            replace = blocks.get(("single_block", i)) if blocks else None
            if replace is None:
                h = layer(h, a, cos, sin, attn_mask, transformer_options)
            else:
                h = _replaced_block(replace, layer, i, h, a, cos, sin, attn_mask, transformer_options)
        out = self.final_layer(h[:, n_txt:], a)
        return out.to(torch.float32)

    @functools.cached_property
    def replaceable_blocks(self) -> frozenset:
        """The ``transformer_options["patches_replace"]["dit"]`` keys this DiT runs: one per transformer block
        (single-stream, as FLUX's single blocks); built once (the model call checks against it every step)."""
        return frozenset(("single_block", i) for i in range(len(self.layers)))

    def _step_invariants(self, text_features, lengths, b: int, gh: int, gw: int, device, cd, transformer_options=None):
        """What every step of a run shares: indicator rows, text rows, RoPE tables, attention mask (in the form
        of the kernel ``transformer_options`` leads to; they are the same for every step of a run)."""
        # Indicator rows through the module (so offloaded / cast-on-the-fly weights work): row 0 is used by
        # text and padding rows, row 1 by image rows.
        emb = self.embed_image_indicator(torch.arange(2, device=device)).to(cd)
        h_txt = None
        n_txt = 0
        if text_features is not None:
            h_txt = self._text_rows(text_features, lengths, device, cd) + emb[0]
            n_txt = text_features.shape[1]
            if self._run_cache is not None and self.after_text_projection is not None:
                self.after_text_projection(self)
        return (emb, h_txt, *self._positions(b, gh, gw, n_txt, lengths, device, cd, transformer_options))

    def _real_rows(self, lengths, n_txt: int, device) -> torch.Tensor:
        """(B, L) bool: which text rows are real tokens (left padding is False)."""
        starts = torch.tensor([n_txt - v for v in lengths], device=device)
        return torch.arange(n_txt, device=device).unsqueeze(0) >= starts.unsqueeze(1)

    def _text_rows(self, text_features, lengths, device, cd) -> torch.Tensor:
        m_txt = self._real_rows(lengths, text_features.shape[1], device).to(cd).unsqueeze(-1)  # (B, L, 1)
        feats = text_features.to(device=device, dtype=cd) * m_txt
        return self.llm_cond_proj(self.llm_cond_norm(feats)) * m_txt

    def _positions(self, b: int, gh: int, gw: int, n_txt: int, lengths, device, cd, transformer_options=None):
        """RoPE cos/sin in the compute dtype and the attention mask in the kernel's form (or None)."""
        cfg = self.config
        n = gh * gw
        img_pos = image_position_ids(gh, gw, device).unsqueeze(0).expand(b, n, 3)
        attn_mask = None
        if lengths is None:
            position_ids = img_pos
        else:
            position_ids = torch.cat([text_position_ids(lengths, n_txt, device), img_pos], dim=1)
            if min(lengths) != n_txt:  # padding present: block padding from real tokens
                real = self._real_rows(lengths, n_txt, device)
                seg = torch.cat([torch.where(real, 1, -1), torch.ones(b, n, dtype=torch.long, device=device)], dim=1)
                attn_mask = self.attention_mask_fn((seg.unsqueeze(2) == seg.unsqueeze(1)).unsqueeze(1), cd,
                                                   transformer_options)
        cos, sin = mrope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, cd)
        return (*rope_tables(cos.to(cd), sin.to(cd)), attn_mask)

    @staticmethod
    def _lengths(text_lengths, batch: int, max_len: int) -> list[int]:
        if text_lengths is None:
            return [max_len] * batch
        lengths = [int(v) for v in (text_lengths.tolist() if torch.is_tensor(text_lengths) else text_lengths)]
        if len(lengths) != batch:
            raise ValueError(f"text_lengths has {len(lengths)} entries for a batch of {batch}")
        for i, v in enumerate(lengths):
            if not 1 <= v <= max_len:
                raise ValueError(f"text_lengths[{i}] = {v} is outside 1..{max_len} (the padded text length)")
        return lengths
