"""The Ideogram 4 DiT as a ComfyUI model: operations, model config, BaseModel, ModelPatcher, loading.

ComfyUI-specific glue only; the maths is ``model.dit.Ideogram4DiT``.

* :class:`ComfyOps` — the ``operations`` namespace the DiT is built with: ComfyUI's cast-aware
  layers (``comfy.ops.disable_weight_init``: the weights are stored in the compute dtype, so no
  manual cast is needed when resident), plus a :class:`ComfyQuantizedLinear` that is both our
  ``QuantizedLinear`` (packed fp8 / nf4 storage, one decode entry point) and a
  ``comfy.ops.CastWeightBiasOp``.  Under partial loading ComfyUI sets ``comfy_cast_weights`` on
  layers that stay in system RAM; their forward then moves the *packed* storage to the compute
  device and dequantises there, so streaming costs packed bytes, and ``module_size`` /
  ``model_size`` count packed bytes (storage is registered as parameters/buffers).  Every forward
  calls ``comfy.ops.run_every_op()``, ComfyUI's per-op interrupt check.
* :class:`Ideogram4NativeConfig` / :class:`Ideogram4NativeModel` — a ``supported_models_base.BASE``
  (flow, ``multiplier = shift = 1`` → ``ModelSamplingDiscreteFlow`` + ``CONST``: σ = timestep,
  Flux2 128-channel latent format) and a ``model_base.BaseModel`` whose ``apply_model`` follows
  ComfyUI's convention: x is a (B, 128, gh, gw) Flux2-layout latent, the model time is
  ``t = 1 − σ`` and the model output is the negated velocity (``denoised = x + σ·v``).
* :func:`load_model_patcher` — any supported checkpoint → a plain ``ModelPatcher`` (not the
  dynamic-VRAM patcher: our packed layers use the classic lowvram path).
* :func:`load_pair` — applies ``nodes.host.memory_policy.plan_memory`` through ``load_models_gpu``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.supported_models_base

from ...model.vae import latents as lat
from ...model.dit import TEXT_PROJECTION_MODULES, load_transformer
from ...model.dit.lora_keys import comfy_key_map
from ...model.text_encoder import qwen_rms_norm
from ...model.checkpoints import QuantizedLinear, gguf_fused, nf4_fused
from ...model.checkpoints.nf4 import bitsandbytes_decodes
from ...model.checkpoints.packed_linear import decode_notes
from ...model.checkpoints.fp8_matmul import FP8_SCHEMES, fp8_linear
from ...sampling import sigma_from_time
from . import comfy_attention, lora_branch, staging_ring
from . import memory_policy as mp
from .dtype_flags import flag_dtype, flag_note
from .lora_patching import (Ideogram4ModelPatcher, RolePatched, clear_dead_roles, computing_dit,
                            install_key_map_hook)
from .conditioning import feature_width_problem, rows_problem
from .model_patches import check_model_call
from .text_projection_release import text_projection_hook
from .offload import system_ram_budget

install_key_map_hook()

log = logging.getLogger("ideogram4_native")

IMAGE_MODEL_ID = "ideogram4_native"
DTYPE_CHOICES = ("auto", "bf16", "fp32")


# --------------------------------------------------------------------------- operations

class _EagerInit:
    """Makes ComfyUI build real (meta) parameters even when dynamic VRAM ("aimdo") is on.

    With aimdo ComfyUI's Linear/Embedding leave ``weight = None`` until its own state-dict
    loader runs; our loader assigns tensors directly, so it needs the parameters to exist.
    Overriding ``_load_from_state_dict`` is ComfyUI's documented opt-out.
    """

    def _load_from_state_dict(self, *args, **kwargs):
        return torch.nn.Module._load_from_state_dict(self, *args, **kwargs)


def upload_streamed(tensors, device):
    """(offload stream, ``tensors`` on ``device``): a streamed layer's tensors through ComfyUI's offload path (its
    offload stream, ``non_blocking`` copies, staged in the pinned ring on CUDA so they overlap compute), ready to
    use.  Hand the stream and the first and last uploads to ``comfy.ops.uncast_bias_weight`` once the layer is done,
    so the stream reuses their memory only then."""
    stream = mm.get_offload_stream(device)
    non_blocking = mm.device_supports_non_blocking(device)
    ring = staging_ring.ring_for(device)
    moved = [staging_ring.upload(t, device, stream, non_blocking, mm.cast_to, ring) for t in tensors]
    mm.sync_stream(device, stream)
    return stream, moved


class ComfyQuantizedLinear(RolePatched, QuantizedLinear, comfy.ops.CastWeightBiasOp):
    """Packed fp8 / nf4 Linear that ComfyUI can offload, stream and patch.

    Weight patches (LoRA…) are never merged into the packed storage: a streamed layer gets ComfyUI's
    own ``LowVramPatch`` in ``weight_function``; a resident one gets the same patch as
    run-time patch (``role_patches``, set by :class:`nodes.host.lora_patching.Ideogram4ModelPatcher`),
    applied on each call (plain LoRAs as a low-rank side branch: ``lora_branch``).
    """

    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs) -> torch.Tensor:
        """ComfyUI's ``convert_<leaf>`` hook for the stored weight (``model_patcher.get_key_weight``): the decoded
        weight.  ComfyUI calls it on a weight this model hands out for merging (``get_key_patches``: ModelMergeSimple,
        ModelMergeSubtract…) after casting the packed storage to a float dtype, which alone means nothing; the
        decode reads this layer's storage and scales, on ``weight``'s device, in its dtype."""
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        return self.dequantized_weight(dtype, weight.device)

    def _functions(self, leaf: str) -> list:
        """ComfyUI's ``weight_function`` / ``bias_function`` plus this pass's run-time patch of ``leaf``."""
        functions = list(getattr(self, f"{leaf}_function"))
        patch = self.role_patch(leaf)
        if patch is not None and not any(getattr(f, "is_lowvram_patch", False) for f in functions):
            functions.insert(0, patch)  # ComfyUI's streamed-layer patch already holds the same patches
        return functions

    def forward_comfy_cast_weights(self, x: torch.Tensor) -> torch.Tensor:
        # Streamed (or patched) layer: the packed storage and scales take ComfyUI's offload path (an
        # offload stream, non_blocking copies), then they are decoded on the compute device.
        stream, moved = upload_streamed((*self.storage(), self.bias), x.device)
        # plain LoRAs run as a low-rank side branch (no weight-sized merge per call); other patches are merged
        functions, terms = lora_branch.split_functions(self._functions("weight"))
        bias_functions = self._functions("bias")
        if self.fast_fp8 and self.scheme in FP8_SCHEMES and not functions and not bias_functions:
            weight = bias = None
            out = fp8_linear(x, moved[0], moved[1], moved[-1])  # opt-in fast fp8 matmul, not reference-exact
        else:
            weight = self.decode(tuple(moved[:-1]), x.dtype)
            for fn in functions:
                weight = fn(weight)
            bias = moved[-1]
            if bias is not None:
                bias = bias.to(dtype=x.dtype, copy=bool(bias_functions))
                for fn in bias_functions:
                    bias = fn(bias)
            out = F.linear(x, weight, bias)
        out = lora_branch.add_side_branches(out, x, terms)
        # the copies' memory may be reused by the next copy on that stream only once this layer is done
        comfy.ops.uncast_bias_weight(self, moved[0] if weight is None else weight, moved[-1] if bias is None else bias,
                                     (stream, moved[0], moved[-1]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comfy.ops.run_every_op()
        if self.comfy_cast_weights or self.weight_function or self.bias_function or self.role_patches:
            return self.forward_comfy_cast_weights(x)
        return super().forward(x)


class ComfyTextRMSNorm(torch.nn.Module, comfy.ops.CastWeightBiasOp):
    """Qwen3-VL RMSNorm (``model.ops.qwen_rms_norm``) whose weight ComfyUI can offload and stream.

    transformers' own norm has no ``comfy_cast_weights``: a partial load that left it in system RAM
    would feed a CPU weight to a GPU activation.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype), requires_grad=False)
        self.bias = None  # read by comfy.ops.cast_bias_weight
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comfy.ops.run_every_op()
        if self.comfy_cast_weights or self.weight_function:
            with comfy.ops.CastBiasWeightContext(self, x, offloadable=True, dtype=self.weight.dtype) as (weight, _):
                return qwen_rms_norm(x, weight, self.variance_epsilon)
        return qwen_rms_norm(x, self.weight, self.variance_epsilon)


class ComfyOps:
    """``operations`` namespace for ``model.load_transformer`` (see ``model/ops.py``)."""

    class Linear(_EagerInit, RolePatched, comfy.ops.disable_weight_init.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # run-time patches exist only on a base shared with an unconditional view (see lora_patching)
            w_patch, b_patch = (self.role_patch("weight"), self.role_patch("bias")) if self.role_patches else (None, None)
            if w_patch is None and b_patch is None:
                return super().forward(x)
            comfy.ops.run_every_op()
            functions, terms = lora_branch.split_functions(([w_patch] if w_patch is not None else [])
                                                           + list(self.weight_function))
            bias_functions = ([b_patch] if b_patch is not None else []) + list(self.bias_function)
            device, stream, moved = x.device, None, (self.weight, self.bias)
            if self.comfy_cast_weights:  # streamed: ComfyUI's offload path, as core's layers and the packed ones take
                stream, moved = upload_streamed(moved, device)
            # a copy only where a patch writes into the weight and it is still the stored one (a merge works in place)
            weight = moved[0].to(device=device, dtype=x.dtype, copy=bool(functions) and moved[0] is self.weight)
            for fn in functions:
                weight = fn(weight)
            bias = None if moved[1] is None else moved[1].to(device=device, dtype=x.dtype,
                                                             copy=bool(bias_functions) and moved[1] is self.bias)
            for fn in bias_functions if bias is not None else ():
                bias = fn(bias)
            out = lora_branch.add_side_branches(F.linear(x, weight, bias), x, terms)
            # the uploads' memory may be reused by the next copy on that stream only once this layer is done
            comfy.ops.uncast_bias_weight(self, weight, bias, (stream, moved[0], moved[1]))
            return out

    class RMSNorm(comfy.ops.disable_weight_init.RMSNorm):
        pass

    class LayerNorm(comfy.ops.disable_weight_init.LayerNorm):
        pass

    class Embedding(_EagerInit, comfy.ops.disable_weight_init.Embedding):
        pass

    QuantizedLinear = ComfyQuantizedLinear
    TextRMSNorm = ComfyTextRMSNorm
    attention = staticmethod(comfy_attention.attention)  # ComfyUI's attention dispatcher + overrides
    attention_mask = staticmethod(comfy_attention.attention_mask)


# --------------------------------------------------------------------------- model config / BaseModel

class Ideogram4NativeConfig(comfy.supported_models_base.BASE):
    unet_config = {"image_model": IMAGE_MODEL_ID, "disable_unet_model_creation": True}
    unet_extra_config = {}
    sampling_settings = {"multiplier": 1.0, "shift": 1.0}  # flow/CONST, σ = timestep = 1 − t
    latent_format = comfy.latent_formats.Flux2
    memory_usage_factor = 11.6  # core's figure for this architecture (only used by core heuristics)
    supported_inference_dtypes = [torch.bfloat16, torch.float32]


class TextLengthsCond(comfy.conds.CONDRegular):
    """Real token counts of the rows of ``cross_attn``, kept as a host-side tuple (reading a device tensor back each
    step would be a sync), batched exactly like the features: tiled then cut to the batch as
    ``comfy.utils.repeat_to_batch_size`` does, and joined when ComfyUI concatenates conditionings."""

    def process_cond(self, batch_size, **kwargs):
        n = len(self.cond)
        return self._copy_with((self.cond * -(-batch_size // n))[:batch_size])

    def can_concat(self, other):
        return True  # the features' own cond decides whether rows are concatenated

    def concat(self, others):
        return tuple(self.cond) + tuple(v for other in others for v in other.cond)

    def size(self):
        return [len(self.cond)]


# A wrapper that swaps ``diffusion_model`` for another model's (TorchCompileModel's APPLY_MODEL wrapper when a guider
# hands one model's options to the other model's pass, as core's Dual Model CFG Guider does) would run the wrong weights
ANOTHER_MODELS_DIT = ("this model's pass would run another model's DiT: an APPLY_MODEL wrapper from the other model "
                      "(TorchCompileModel) swapped it in — core's Dual Model CFG Guider hands the conditional model's "
                      "options to both passes. Sample with SamplerCustomAdvanced + Ideogram4 Guider, which runs each "
                      "pass with its own model's options (TorchCompileModel on each model), or remove TorchCompileModel")


class Ideogram4NativeModel(comfy.model_base.BaseModel):
    """ComfyUI model wrapper around an ``Ideogram4DiT`` (conditional or unconditional weights).

    Conditioning: ``cross_attn`` (B, L, 53248) left-padded text features and ``text_lengths``;
    no ``cross_attn`` ⇒ the image-only unconditional pass.  Extra keyword arguments understood by
    ``apply_model``: ``ideogram4_time`` — the exact model time (B,) to use instead of ``1 − σ``
    (the reference's float32 t values are not recoverable from float32 σ), and
    ``ideogram4_velocity=True`` — return the velocity v instead of the denoised latent.
    """

    def __init__(self, model_config: Ideogram4NativeConfig, dit: torch.nn.Module, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = dit
        self._own_dit = (dit,)  # a tuple: not registered as a submodule
        mm.archive_model_dtypes(self.diffusion_model)

    # ComfyUI asks the model for its dtype in many places; ours is the compute dtype.
    def get_dtype(self):
        return self.diffusion_model.compute_dtype

    def lora_key_map(self) -> dict:
        """Every LoRA spelling of this DiT's modules → model key (read by comfy.lora.model_lora_keys_unet)."""
        return comfy_key_map(self.diffusion_model.config)

    def extra_conds(self, **kwargs):
        out = {}
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
            lengths = kwargs.get("text_lengths", None)
            if lengths is not None:  # a host-side tuple: never moved to the device, read without a sync
                out["text_lengths"] = TextLengthsCond(tuple(int(v) for v in lengths))
        return out

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        b, _, gh, gw = x.shape
        time = kwargs.get("ideogram4_time", None)
        if time is None:
            time = sigma_from_time(sigma)  # t = 1 − σ (the map is its own inverse)
        time = time.to(device=x.device, dtype=torch.float32).reshape(-1)
        if time.numel() != b:
            time = time[:1].expand(b)
        lengths = kwargs.get("text_lengths", None)
        feats = c_crossattn
        if feats is not None:
            # another text encoder's features (core's samplers and guiders come here without the nodes' check)
            problem = feature_width_problem(int(feats.shape[-1]), self.diffusion_model.config.llm_features_dim)
            if problem:
                raise ValueError(problem)
            feats = feats.to(device=x.device)
            if lengths is not None:
                lengths = [int(v) for v in (lengths.reshape(-1).tolist() if torch.is_tensor(lengths) else lengths)]
                if len(lengths) != b and b % len(lengths) == 0:  # ComfyUI repeated / batched equal conds
                    lengths = lengths * (b // len(lengths))
                problem = rows_problem(int(feats.shape[1]), lengths)
                if problem:
                    raise ValueError(problem)
        running = getattr(self.diffusion_model, "_orig_mod", self.diffusion_model)  # a torch.compile'd module's own
        if running is not self._own_dit[0]:
            raise ValueError(ANOTHER_MODELS_DIT)
        clear_dead_roles(computing_dit(self.diffusion_model))  # patches of views dropped since the last call
        check_model_call(transformer_options, self.replaceable_blocks, manual_cast_dtype=self.manual_cast_dtype,
                         control=control)
        # DIFFUSION_MODEL wrappers (caches…) see the diffusion model's call in ComfyUI's convention, as core models
        # give it: the latent x, σ, the context, a mask, transformer_options; the output −v
        out = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._diffusion_model_call, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(x, sigma, feats, None, transformer_options, ideogram4_time=time, text_lengths=lengths)
        if kwargs.get("ideogram4_velocity", False):
            return -out
        # ComfyUI's flow model output is ε − x0 = −v; CONST: denoised = x − σ·out.
        return self.model_sampling.calculate_denoised(sigma, out, x)

    @property
    def replaceable_blocks(self) -> frozenset:
        """The ``patches_replace["dit"]`` keys the layers that run honour (a view's: its base's)."""
        return computing_dit(self.diffusion_model).replaceable_blocks

    def _diffusion_model_call(self, x, sigma, context, attention_mask, transformer_options, *, ideogram4_time,
                              text_lengths=None):
        """The DiT on ComfyUI's layout: (B, 128, gh, gw) latent in, −v (ComfyUI's flow output) out."""
        gh, gw = x.shape[-2:]
        v = self.diffusion_model(lat.comfy_to_tokens(x.to(torch.float32)), ideogram4_time, context, grid_hw=(gh, gw),
                                 text_lengths=text_lengths, transformer_options=transformer_options)
        return -lat.tokens_to_comfy(v, gh, gw)

    def extra_conds_shapes(self, **kwargs):
        cross_attn = kwargs.get("cross_attn", None)
        return {"ideogram4_text": list(cross_attn.shape)} if cross_attn is not None else {}

    def memory_required(self, input_shape, cond_shapes={}):
        # Peak of one pass with batch input_shape[0] (ComfyUI asks for 2·B — a CFG batch — and for B;
        # our two passes run on two models, so the B figure is the real one, the 2·B one only
        # makes ComfyUI evict more).
        b = max(1, int(input_shape[0]))
        n_img = int(input_shape[-1] * input_shape[-2])
        n_txt = max((int(s[1]) for s in cond_shapes.get("ideogram4_text", [])), default=0)
        return activation_estimate(self.diffusion_model, b, n_img, n_txt, self.current_device(),
                                   merged_layers(*self._patchers_of_this_base()))

    def _patchers_of_this_base(self) -> list:
        """The patcher running this model and the unconditional models of its guider that run on the same layers
        (an unconditional-from-LoRA view of this base): their run-time patches all act on these layers."""
        patcher = self.current_patcher
        if patcher is None:
            return []
        extra = getattr(patcher, "get_additional_models_with_key", lambda key: [])("ideogram4_unconditional")
        return [patcher] + [p for p in extra if computing_dit(dit_of(p)) is computing_dit(self.diffusion_model)]

    def current_device(self):
        patcher = self.current_patcher
        return patcher.load_device if patcher is not None else None


# --------------------------------------------------------------------------- loading

def resolve_dtype(choice: str, load_device, kind: str = "unet") -> torch.dtype:
    """The compute dtype of a loader's dtype widget; ``auto`` follows ComfyUI's precision flag for ``kind``
    (``dtype_flags``) where it names bf16 or fp32."""
    if choice not in DTYPE_CHOICES:
        raise ValueError(f"weight_dtype {choice!r} is not one of {DTYPE_CHOICES}")
    if choice == "fp32":
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    flagged = flag_dtype(kind)
    if flagged is not None:
        return flagged
    # auto: the reference computes in bf16; fall back to fp32 only on GPUs without bf16.
    if mm.is_device_cpu(load_device) or mm.should_use_bf16(load_device):
        return torch.bfloat16
    log.warning("Ideogram4: %s has no usable bf16; computing in fp32 (slower, slightly different numerics)",
                load_device)
    return torch.float32


def load_model_patcher(source: str | Path, *, component: str = "transformer", weight_dtype: str = "auto",
                       image_only: bool = False) -> comfy.model_patcher.ModelPatcher:
    """Load one DiT (any supported format) and wrap it for ComfyUI model management."""
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    dtype = resolve_dtype(weight_dtype, load_device)
    dit = load_transformer(source, device=offload_device, dtype=dtype, component=component, operations=ComfyOps,
                           image_only=image_only)
    config = Ideogram4NativeConfig(dict(Ideogram4NativeConfig.unet_config))
    config.set_inference_dtype(dtype, None)
    model = Ideogram4NativeModel(config, dit, device=offload_device)
    if not image_only:  # once a run's text rows are cached, the text projection leaves VRAM
        dit.after_text_projection = text_projection_hook(model)
    patcher = Ideogram4ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    patcher.ideogram4_info = {"source": str(source), "component": component,
                              "format": getattr(dit, "checkpoint_format", "?"), "dtype": str(dtype).replace("torch.", ""),
                              "dtype_note": flag_note("unet", weight_dtype)}
    return patcher


def is_ideogram4(patcher) -> bool:
    return isinstance(getattr(patcher, "model", None), Ideogram4NativeModel)


def require_ideogram4(patcher, what: str):
    if not is_ideogram4(patcher):
        kind = type(getattr(patcher, "model", patcher)).__name__
        raise ValueError(f"{what} must come from the Ideogram4 Native Model Loader (got a {kind}); core "
                         "UNETLoader models use ComfyUI's own Ideogram 4 code, not this pack's")
    return patcher


def dit_of(patcher) -> torch.nn.Module:
    return patcher.model.diffusion_model


# --------------------------------------------------------------------------- memory

def _decode_kind(module: torch.nn.Module, device, dtype: torch.dtype) -> str:
    """``memory_policy.decode_temp_bytes`` kind of a Linear decoded to ``dtype`` on ``device`` (a GGUF or nf4
    layer's compiled decode is asked for — compiled and probed there once — since it needs no float32
    intermediate nor chunk temporaries)."""
    if not isinstance(module, QuantizedLinear):
        return "linear"
    if device is not None and module.scheme == "gguf" and \
            gguf_fused.fused_decoder(device, module.options["qtype"], dtype)[0] is not None:
        return "compiled"
    if device is not None and module.scheme == "nf4" and not bitsandbytes_decodes(torch.device(device).type) and \
            nf4_fused.fused_decoder(device, dtype)[0] is not None:
        return "compiled"
    return "fp8" if module.scheme.startswith("fp8") else "nf4" if module.scheme == "nf4" else "packed"


def dequant_temp_bytes(dit: torch.nn.Module, device, merged: frozenset = frozenset()) -> tuple[int, int]:
    """(block stage, text stage): the largest temporary a single Linear needs when its weight is decoded or cast on
    the fly, among the blocks' layers and among the text projection's (which runs once, before the blocks).
    ``merged``: names of the layers whose run-time patch is merged into the decoded weight on every call
    (:func:`merged_layers`)."""
    from ...model.checkpoints.nf4 import NF4_CHUNK_TEMP_BYTES

    cuda = device is not None and torch.device(device).type == "cuda"
    text = {id(m) for name in TEXT_PROJECTION_MODULES if hasattr(dit, name) for m in getattr(dit, name).modules()}
    stages = ([], [])
    for name, m in dit.named_modules():
        if isinstance(m, (QuantizedLinear, torch.nn.Linear)):
            kind = _decode_kind(m, device, dit.compute_dtype)
            stages[id(m) in text].append((kind, m.in_features * m.out_features, name in merged))
    return tuple(mp.decode_temp_bytes(layers, act_bytes=torch.finfo(dit.compute_dtype).bits // 8,
                                      nf4_kernel=cuda and bitsandbytes_decodes("cuda"),
                                      nf4_chunk_temp=NF4_CHUNK_TEMP_BYTES) for layers in stages)


def decode_note(*patchers) -> str | None:
    """The report line on how the exact path decodes the fp8, nf4 and GGUF layers of ``patchers`` (None skipped) on
    their load device (``model.checkpoints.fp8_fused`` / ``nf4`` / ``gguf_fused``: a compiled kernel or the eager ops);
    None when none of them has such layers."""
    notes = []
    for patcher in patchers:
        dit = computing_dit(dit_of(patcher)) if patcher is not None else None
        if dit is not None:
            notes += [n for n in decode_notes(dit, torch.device(patcher.load_device), dit.compute_dtype)
                      if n not in notes]
    return "; ".join(notes) or None


def merged_layers(*patchers) -> frozenset:
    """The layers any of ``patchers`` (None ignored) merges a weight patch into on every call (see
    ``Ideogram4ModelPatcher.merged_layers``)."""
    out = frozenset()
    for patcher in patchers:
        own = getattr(patcher, "merged_layers", None)
        if callable(own):
            out |= own()
    return out


def activation_estimate(dit: torch.nn.Module, batch: int, n_img: int, n_txt: int, device=None,
                        merged: frozenset = frozenset()) -> int:
    dit = computing_dit(dit)
    cfg = dit.config
    act = torch.finfo(dit.compute_dtype).bits // 8
    flash = device is None or torch.device(device).type == "cuda"
    blocks, text = dequant_temp_bytes(dit, device, merged)
    return mp.activation_bytes(batch, n_img, n_txt, emb_dim=cfg.emb_dim, intermediate=cfg.intermediate_size,
                               num_heads=cfg.num_heads, llm_features_dim=cfg.llm_features_dim, act_bytes=act,
                               dequant_bytes=blocks, text_dequant_bytes=text, flash_attention=flash)


def memory_constants(device) -> mp.ComfyMemoryConstants:
    if mm.is_device_cpu(device):
        state = "disabled"
    else:
        state = mm.vram_state.name.lower().replace("_vram", "")
    return mp.ComfyMemoryConstants(extra_reserved=int(mm.extra_reserved_memory()),
                                   minimum_inference=int(mm.minimum_inference_memory()),
                                   min_weight_ratio=float(mm.MIN_WEIGHT_MEMORY_RATIO), vram_state=state)


def available_memory(device) -> int:
    """Free memory on ``device`` plus what ComfyUI could free by unloading every loaded model."""
    if mm.is_device_cpu(device):
        return int(mm.get_total_memory(device))
    loaded = sum(lm.model_loaded_memory() for lm in mm.current_loaded_models
                 if lm.device == device and lm.model is not None)
    return int(mm.get_free_memory(device)) + int(loaded)


def text_projection_bytes(dit: torch.nn.Module) -> int:
    """Bytes of ``llm_cond_norm`` + ``llm_cond_proj`` (0 for an image-only model)."""
    return sum(mm.module_size(getattr(dit, name)) for name in TEXT_PROJECTION_MODULES if hasattr(dit, name))


def plan_pair(cond, uncond, *, batch: int, n_img: int, n_txt: int) -> mp.MemoryPlan:
    """``uncond=None``: a CFG-distilled single-branch model (the conditional model alone)."""
    device = cond.load_device
    shared = uncond is not None and computing_dit(dit_of(uncond)) is dit_of(cond)  # unconditional = this base + a LoRA
    merged = merged_layers(cond, uncond) if shared else merged_layers(cond)  # a shared base: both patchers' layers
    act = max([activation_estimate(dit_of(cond), batch, n_img, n_txt, device, merged)]
              + ([activation_estimate(dit_of(uncond), batch, n_img, 0, device, merged if shared
                                      else merged_layers(uncond))] if uncond is not None else []))
    models = [mp.ModelSize("conditional", int(cond.model_size()))]
    if uncond is not None:
        models.append(mp.ModelSize("unconditional (shares the conditional weights; LoRA only)" if shared
                                   else "unconditional", int(uncond.model_size())))
    plan = mp.plan_memory(models, available_memory(device), act, memory_constants(device))
    text = text_projection_bytes(dit_of(cond))
    if plan.mode != "cpu" and text:
        plan = dataclasses.replace(plan, notes=plan.notes + (
            f"the text projection ({mp.gib(text)}) leaves VRAM after the first step of each run (unless a LoRA "
            f"patches it)",))
    patchers = {"conditional": cond, **({"unconditional": uncond} if uncond is not None else {})}
    return system_ram_budget(plan, patchers, act)


def load_pair(cond, uncond, *, batch: int, n_img: int, n_txt: int) -> mp.MemoryPlan:
    """Load both DiTs for one sampling run as :func:`memory_policy.plan_memory` decides."""
    plan = plan_pair(cond, uncond, batch=batch, n_img=n_img, n_txt=n_txt)
    for warning in plan.ram.warnings() if plan.ram else ():
        log.warning("Ideogram4: %s", warning)
    mm.load_models_gpu([p for p in (cond, uncond) if p is not None], memory_required=plan.memory_required,
                       minimum_memory_required=plan.minimum_memory_required, force_full_load=plan.force_full_load)
    log.info("Ideogram4 %s", plan.summary().replace("\n", " |"))
    return plan


def loaded_summary(patchers: Sequence, names: Sequence[str]) -> str:
    parts = [f"{n} {mp.gib(p.loaded_size())}/{mp.gib(p.model_size())} on {p.load_device}"
             for p, n in zip(patchers, names) if p is not None]
    return "loaded: " + ", ".join(parts)
