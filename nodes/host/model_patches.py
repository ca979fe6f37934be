"""Which of a MODEL's patches (``model_options``) a sampling path applies, and a clear error for the rest.

ComfyUI's patch nodes put their effect in the patcher's ``model_options``: CFG hooks (RescaleCFG, CFGNorm,
APG…), a denoise-mask function (Differential Diffusion), block / attention patches (SkipLayerGuidanceDiT,
PerturbedAttentionGuidance…), RoPE options (ScaleROPE), sampler wrappers (caches), object patches
(ModelSamplingSD3's shift, ModelComputeDtype).  A path that does not apply one must say so rather than
sample as if it were not there:

* :func:`model_level_problems` — what the DiT itself cannot apply (checked on every model call, whichever
  sampler runs it): ``transformer_options`` ``patches`` / ``patches_replace`` / ``rope_options``, and a
  compute-dtype object patch;
* :func:`sampler_level_problems` — what the pack's own samplers do not apply, per path: the Ideogram4
  KSampler runs the reference loop (no CFG hooks, no sampler wrappers, its own schedule and inpainting); the
  Ideogram4 Guider applies the CFG hooks and the sampler wrappers of the model it is given, but not those of
  the unconditional model or batch functions;
* :func:`require_applied` — the ``ValueError`` naming every problem found on both models.
"""

from __future__ import annotations

from typing import Collection, Optional

from .model_call import pass_options

# model_options key → (what it is, nodes that set it)
CFG_HOOKS = {
    "sampler_cfg_function": ("a CFG function", "RescaleCFG, PerpNeg, RenormCFG"),
    "sampler_post_cfg_function": ("post-CFG functions", "CFGNorm, CFGZeroStar, Mahiro, SkipLayerGuidanceDiT"),
    "sampler_pre_cfg_function": ("pre-CFG functions", "APG, TCFG, FreSca"),
}
BATCH_FUNCTION = ("sampler_calc_cond_batch_function", "a batch function for the model calls (e.g. "
                  "SkipLayerGuidanceDiTSimple)")
DENOISE_MASK = ("denoise_mask_function", "a denoise-mask function", "DifferentialDiffusion")
# wrapper types the pack's samplers never reach (the Guider runs outer_sample / sampler_sample / predict_noise
# wrappers of its own model through ComfyUI's CFGGuider; both DiTs run apply_model and diffusion_model wrappers)
SAMPLER_WRAPPERS = ("outer_sample", "prepare_sampling", "sampler_sample", "predict_noise", "calc_cond_batch")
GUIDER_RUNS = ("outer_sample", "prepare_sampling", "sampler_sample", "predict_noise")
# post-CFG functions that re-run the model with a UNet self-attention patch: no sampler can apply them to this DiT
# (its model call refuses the patch), so they are named as such instead of being sent to the Guider
UNET_ATTENTION_GUIDANCE = {"comfy_extras.nodes_pag": "PerturbedAttentionGuidance",
                           "comfy_extras.nodes_sag": "SelfAttentionGuidance"}
SHIFT = "a sampling shift (ModelSamplingSD3 / AuraFlow / Flux)"
USE_GUIDER = ("sample with SamplerCustomAdvanced + Ideogram4 Guider (applies CFG hooks and denoise-mask functions of "
              "the model connected to it; the result is then not reference-exact), or remove the node")


def _non_empty(value) -> bool:
    if isinstance(value, dict):
        return any(_non_empty(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return len(value) > 0
    return value is not None


def model_level_problems(transformer_options: dict, honoured_blocks: Collection = (), *, manual_cast_dtype=None,
                         control=None) -> list[str]:
    """What the DiT does not apply: of ``transformer_options`` (``honoured_blocks``: the ``patches_replace["dit"]``
    keys it does run), a compute dtype set on the model (ModelComputeDtype's object patch), a ControlNet."""
    problems = []
    if manual_cast_dtype is not None:
        problems.append(f"a compute dtype ({manual_cast_dtype}, ModelComputeDtype): set the Model Loader's dtype "
                        f"instead")
    if control is not None:
        problems.append(CONDITIONING_PROPERTIES["control"])
    patches = transformer_options.get("patches") or {}
    for name in sorted(k for k, v in patches.items() if _non_empty(v)):
        problems.append(f"a model patch {name!r} ({len(patches[name])}; e.g. from an attention or block patch node)")
    for name, table in sorted((transformer_options.get("patches_replace") or {}).items()):
        keys = [k for k in (table or {}) if not (name == "dit" and k in honoured_blocks)]
        if keys:
            shown = ", ".join(str(k) for k in keys[:4]) + (" …" if len(keys) > 4 else "")
            problems.append(f"a {name!r} replacement patch for {shown} (this DiT has single-stream blocks only, "
                            f"('single_block', 0…{_last_block(honoured_blocks)}): for SkipLayerGuidanceDiT clear "
                            f"double_layers and list single_layers)" if name == "dit" else
                            f"a {name!r} replacement patch for {shown} (a UNet-style attention patch, e.g. "
                            f"PerturbedAttentionGuidance)")
    if _non_empty(transformer_options.get("rope_options")):
        problems.append("RoPE options (ScaleROPE)")
    return problems


def _last_block(honoured) -> str:
    idx = [k[1] for k in honoured if isinstance(k, tuple) and len(k) == 2]
    return str(max(idx)) if idx else "?"


def object_patch_problems(object_patches: dict, *, path: str, sigmas_read_model: bool = True) -> list[str]:
    """Object patches the path does not use: a ``model_sampling`` patch (a shift) is used only by a scheduler that
    reads the model — in a SamplerCustomAdvanced graph (``path`` "guider") whose sigmas do not come from Ideogram4
    Sigmas (``sigmas_read_model``).  ComfyUI sets every object patch on the model; the pack reads the patched
    diffusion model and its layers' switches (TorchCompileModel, Fast FP8); a compute dtype is a model-level problem
    (:func:`model_level_problems`)."""
    if "model_sampling" not in object_patches:
        return []
    if path == "ksampler":
        return [f"{SHIFT}: the Ideogram4 KSampler runs the reference schedule — set its mu / std (or preset) instead"]
    if not sigmas_read_model:
        return [f"carries {SHIFT}, but the sigmas come from Ideogram4 Sigmas, which reads no model, so the shift "
                "would not be used — set Ideogram4 Sigmas' mu / std (or preset) instead, or make the sigmas with a "
                "scheduler that reads the shifted model (BasicScheduler on the conditional model; the result is then "
                "not the reference schedule)"]
    return []


def _unet_guidance(fn) -> Optional[str]:
    """The UNet-only guidance node a post-CFG function comes from (PerturbedAttentionGuidance…), or None."""
    return UNET_ATTENTION_GUIDANCE.get(getattr(fn, "__module__", ""))


def unet_attention_guidance(model_options: dict) -> list[str]:
    """The UNet-only guidance nodes among ``model_options``' post-CFG functions (refused on every sampler)."""
    found = {name for f in model_options.get("sampler_post_cfg_function") or [] if (name := _unet_guidance(f))}
    return [f"{name} (it re-runs a UNet's self-attention blocks; this DiT has none)" for name in sorted(found)]


def _cfg_hooks(model_options: dict, key: str) -> list:
    """The CFG hooks of ``key`` a Guider could run (UNet-only guidance is refused by :func:`unet_attention_guidance`)."""
    hooks = model_options.get(key)
    if key == "sampler_post_cfg_function":
        return [f for f in hooks or [] if _unet_guidance(f) is None]
    return hooks


def sampler_level_problems(model_options: dict, wrappers: dict, object_patches: dict, *, path: str,
                           runs_hooks: bool, sigmas_read_model: bool = True) -> list[str]:
    """What ``path`` (``"ksampler"``: the Ideogram4 KSampler; ``"guider"``: the Ideogram4 Guider) does not apply of a
    model's options.  ``runs_hooks``: this is the model whose CFG hooks and sampler wrappers the path runs (the
    Guider's conditional model); ``sigmas_read_model``: the Guider's sigmas come from a scheduler that reads the
    model (not Ideogram4 Sigmas)."""
    problems = []
    for key, (what, nodes) in CFG_HOOKS.items():
        if _non_empty(_cfg_hooks(model_options, key)) and not runs_hooks:
            problems.append(f"{what} (e.g. {nodes})")
    if model_options.get(BATCH_FUNCTION[0]) is not None:
        problems.append(BATCH_FUNCTION[1])
    if (path == "ksampler" or not runs_hooks) and model_options.get(DENOISE_MASK[0]) is not None:
        problems.append(f"{DENOISE_MASK[1]} (e.g. {DENOISE_MASK[2]}; the KSampler's own inpainting uses the "
                        f"latent's noise_mask)")
    run = GUIDER_RUNS if runs_hooks else ()
    for kind in SAMPLER_WRAPPERS:
        if kind not in run and _non_empty(wrappers.get(kind)):
            problems.append(f"{kind} wrappers ({', '.join(str(k) for k in wrappers[kind])})")
    problems += object_patch_problems(object_patches, path=path, sigmas_read_model=sigmas_read_model)
    return problems


# conditioning properties (set by core nodes on the CONDITIONING) the pack's samplers do not apply: they take the
# caption's features only; ComfyUI's own samplers apply area / mask / strength / timestep range / hooks themselves
CONDITIONING_PROPERTIES = {
    "hooks": "hooks (Cond Set Props / Set Hooks: hook LoRAs, scheduled weights)",
    "control": "a ControlNet (Apply ControlNet: this DiT has no ControlNet inputs)",
    "area": "an area (ConditioningSetArea)",
    "mask": "a mask (ConditioningSetMask)",
    "gligen": "GLIGEN boxes (use the Caption Builder's boxes)",
}


def conditioning_problems(conditioning, what: str = "positive") -> list[str]:
    """What a CONDITIONING carries besides the caption's features that the pack's samplers would not apply."""
    problems = []
    for entry in conditioning or []:
        extra = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) else {}
        problems += [f"{what}: {desc}" for key, desc in CONDITIONING_PROPERTIES.items() if extra.get(key) is not None]
        if float(extra.get("strength", 1.0)) != 1.0:
            problems.append(f"{what}: a strength of {extra['strength']} (ConditioningSetAreaStrength…)")
        if float(extra.get("start_percent", 0.0)) != 0.0 or float(extra.get("end_percent", 1.0)) != 1.0:
            problems.append(f"{what}: a timestep range (ConditioningSetTimestepRange)")
    return problems


def patcher_problems(patcher, *, path: str, runs_hooks: bool, sigmas_read_model: bool = True) -> list[str]:
    """:func:`sampler_level_problems` and :func:`model_level_problems` of a ModelPatcher."""
    options = getattr(patcher, "model_options", {}) or {}
    wrappers = pass_options(patcher).get("wrappers", {})  # the patcher's and its transformer_options' (as they run)
    object_patches = getattr(patcher, "object_patches", {}) or {}
    hooks = ["weight hooks (hook LoRAs / Set Model Hooks)"] if getattr(patcher, "hook_patches", None) else []
    return hooks + (sampler_level_problems(options, wrappers, object_patches, path=path, runs_hooks=runs_hooks,
                                           sigmas_read_model=sigmas_read_model)
                    + model_level_problems(options.get("transformer_options", {}),
                                           getattr(getattr(patcher, "model", None), "replaceable_blocks", ()),
                                           manual_cast_dtype=object_patches.get("manual_cast_dtype")))


COMPILE_KEY = "torch.compile"  # comfy_api.torch_helpers' key for TorchCompileModel's APPLY_MODEL wrapper
MODEL_CALL_WRAPPERS = ("apply_model", "diffusion_model")  # the wrapper types every Ideogram 4 path runs


def applied_wrappers_note(patchers: dict) -> Optional[str]:
    """One report line naming the model-call wrappers the sampling ran ({"conditional": patcher, …}; None skipped):
    TorchCompileModel's compile with its backend, any other wrapper by its key.  None when there are none."""
    parts = []
    for role, patcher in patchers.items():
        if patcher is None:
            continue
        wrappers = pass_options(patcher).get("wrappers") or {}
        for kind in MODEL_CALL_WRAPPERS:
            for key in (k for k, fns in (wrappers.get(kind) or {}).items() if fns):
                if key != COMPILE_KEY:
                    parts.append(f"{role} model: {kind} wrapper {key!r}")
                    continue
                backend = ((patcher.model_options or {}).get("torch_compile_kwargs") or {}).get("backend", "?")
                parts.append(f"{role} model compiled (TorchCompileModel, backend {backend}; the first step compiles"
                             + ("; inductor's fused kernels round differently from eager in bf16: not bit-exact)"
                                if backend == "inductor" else ")"))
    return "host wrappers: " + "; ".join(parts) if parts else None


def require_applied(patchers: dict, *, path: str, hooks_of: Optional[str] = None, conditioning=None,
                    sigmas_read_model: bool = True) -> None:
    """``ValueError`` naming every patch of ``patchers`` ({"conditional": patcher, …}; None entries skipped) and every
    property of ``conditioning`` (the positive CONDITIONING) that ``path`` does not apply; ``hooks_of``: the role whose
    CFG hooks and sampler wrappers the path runs; ``sigmas_read_model``: see :func:`sampler_level_problems`."""
    found = conditioning_problems(conditioning)
    nowhere = []
    for role, patcher in patchers.items():
        if patcher is None:
            continue
        for problem in patcher_problems(patcher, path=path, runs_hooks=role == hooks_of,
                                        sigmas_read_model=sigmas_read_model):
            found.append(f"{role} model: {problem}")
        nowhere += [f"{role} model: {p}" for p in unet_attention_guidance(getattr(patcher, "model_options", {}) or {})]
    if not found and not nowhere:
        return
    where = "the Ideogram4 KSampler" if path == "ksampler" else "the Ideogram4 Guider"
    advice = (USE_GUIDER if path == "ksampler" else
              "connect the patch node to the conditional model (the Guider's first input) where it is a CFG "
              "hook, or remove the node")
    parts = []
    if found:
        parts.append(f"{where} would not apply these patches: " + "; ".join(found) + f". To use them: {advice}.")
    if nowhere:
        parts.append("No Ideogram 4 sampler can apply " + "; ".join(nowhere) + ": remove the node.")
    raise ValueError(" ".join(parts) + " Patches that this DiT cannot apply (block / attention / RoPE patches) are "
                     "refused on every sampler.")


def check_model_call(transformer_options: dict, honoured_blocks: Collection = (), *, manual_cast_dtype=None,
                     control=None) -> None:
    """The model-call check (every sampler): a ``ValueError`` for what the DiT cannot apply."""
    problems = model_level_problems(transformer_options, honoured_blocks, manual_cast_dtype=manual_cast_dtype,
                                    control=control)
    if problems:
        raise ValueError("the Ideogram 4 DiT cannot apply " + "; ".join(problems)
                         + ": remove the node that adds it")
