"""Loader nodes: the two DiTs and the FLUX.2 VAE decoder (V3). Thin adapters over model/ and comfy glue."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from comfy_api.latest import io

from .host import folders
from .host.sampler_settings import FROM_LORA_MARK

log = logging.getLogger("ideogram4_native")

CATEGORY = "Ideogram4 Native/loaders"
AUTO = "auto"
NONE = "none"  # CFG-distilled single-branch checkpoint: no unconditional model, guidance 1
NO_UNCONDITIONAL = "none (from a LoRA)"
DIFFUSION_KEYS = ("diffusion_models",)
FOLDER_KEYS_DIT = (folders.FOLDER_KEY, "diffusion_models")
FOLDER_KEYS_VAE = (folders.FOLDER_KEY, "vae")

Vae = io.Custom("IDEOGRAM4_VAE")


def _dit_options() -> list[str]:
    listed = folders.list_folders("transformer", FOLDER_KEYS_DIT)
    return listed + folders.list_files("diffusion_models", folders.DIT_EXTENSIONS, hide_under=listed)


def _vae_options() -> list[str]:
    return folders.list_folders("vae", FOLDER_KEYS_VAE) + folders.list_files("vae")


def _source(name: str, role: str):
    """(path, component) for a combo value; folders supply ``transformer/`` or ``unconditional_transformer/``."""
    path = folders.resolve(name, file_key="diffusion_models", folder_keys=FOLDER_KEYS_DIT)
    component = "transformer" if role == "conditional" else "unconditional_transformer"
    return path, component


def _same_checkpoint(a: Path, a_component: str, b: Path, b_component: str) -> bool:
    """Whether two picks load the same weights: the files each resolves to (a folder supplies a different component
    per role — or, a bare transformer folder without ``unconditional_transformer/``, its own weights for both)."""
    from ..model.checkpoints.reader import resolve_checkpoint_files

    try:
        files_a, files_b = resolve_checkpoint_files(a, a_component), resolve_checkpoint_files(b, b_component)
    except ValueError:  # the loader reports a pick that resolves to nothing
        return False
    def identities(files):
        return {(st.st_dev, st.st_ino) for st in map(os.stat, files)}

    return identities(files_a) == identities(files_b)


def _says_unconditional(path: Path) -> bool:
    return "uncond" in path.name.lower()


def conditional_name_warnings(cond_name: str, cond_path: Path) -> list[str]:
    """A warning when the conditional pick is named like an unconditional checkpoint (whatever ``unconditional`` is)."""
    if not cond_path.is_dir() and _says_unconditional(cond_path):
        return [f"conditional = {cond_name!r} is named like an unconditional checkpoint; check that the "
                "conditional and unconditional inputs are not swapped"]
    return []


def check_conditional(path: Path, component: str) -> None:
    """The conditional pick checked from its headers before anything is paired with it, so a file that is not an
    Ideogram 4 DiT (or is truncated, misses shards or keys) is reported as such rather than as a missing partner."""
    from ..model.dit import inspect_transformer

    try:
        inspect_transformer(path, component)
    except ValueError as exc:
        raise ValueError(f"conditional model: {exc}") from exc


def pair_warnings(cond_name: str, cond_path: Path, cond_component: str, uncond_name: str, uncond_path: Path,
                  uncond_component: str) -> list[str]:
    """ValueError when both roles load the same weights; warnings when a file's name says the other role."""
    if _same_checkpoint(cond_path, cond_component, uncond_path, uncond_component):
        hint = ("a bare transformer folder holds one model: pick the unconditional model's own folder or file "
                "as unconditional" if cond_path.is_dir() else
                "pick the unconditional file (e.g. ideogram4_unconditional_fp8_scaled.safetensors) as unconditional, "
                "or leave it on auto")
        raise ValueError(f"conditional and unconditional are the same checkpoint ({cond_name!r}): guidance "
                         f"v = g·v_cond + (1 − g)·v_uncond would then do nothing. {hint[0].upper() + hint[1:]}")
    warnings = conditional_name_warnings(cond_name, cond_path)
    if not uncond_path.is_dir() and not _says_unconditional(uncond_path):
        shown = uncond_path.name if uncond_name == AUTO else uncond_name
        warnings.append(f"unconditional = {shown!r} is not named like an unconditional checkpoint (Comfy-Org: "
                        "ideogram4_unconditional_fp8_scaled.safetensors); check that it is not a conditional one")
    return warnings


def auto_unconditional_file(conditional: str) -> str:
    """The file ``unconditional = auto`` pairs with a conditional single file, or a ValueError listing the names tried."""
    match = folders.auto_unconditional(conditional, folders.list_files("diffusion_models", folders.DIT_EXTENSIONS))
    if match is None:
        tried = ", ".join(folders.unconditional_candidates(conditional)) or "no name (none can be derived)"
        raise ValueError(f"unconditional = auto found no unconditional file for {conditional!r} in the "
                         f"diffusion_models folders (looked for {tried}); choose the unconditional file explicitly")
    return match


class Ideogram4NativeModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        options = _dit_options()
        return io.Schema(
            node_id="Ideogram4NativeModelLoader",
            display_name="Ideogram4 Model Loader",
            category=CATEGORY,
            description="Load the conditional and the unconditional Ideogram 4 DiTs (both are needed every step). "
                        "Formats: official bf16/fp32, diffusers split q/k/v, official fp8 (per-row), ComfyUI "
                        "fp8_scaled / nvfp4 / mxfp8 / int8 (convrot) and mixed files, GGUF (.gguf), bitsandbytes "
                        "nf4. Files come from models/diffusion_models (a sharded .safetensors.index.json is one "
                        "entry); whole Hugging Face repositories (ending in '/') from models/ideogram4/<name>/.",
            inputs=[
                io.Combo.Input("conditional", options=options,
                               tooltip="Conditional DiT: a single file (e.g. ideogram4_fp8_scaled.safetensors) or an "
                                       "official repository folder 'name/' (uses its transformer/ and "
                                       "unconditional_transformer/)."),
                io.Combo.Input("unconditional", options=[AUTO, NONE, NO_UNCONDITIONAL] + options, default=AUTO,
                               tooltip="Unconditional DiT (separate weights, image-only pass). auto: the same "
                                       "folder's unconditional_transformer/, or the file named like the conditional "
                                       "one with 'unconditional' (ideogram4_unconditional_fp8_scaled.safetensors). "
                                       "none: a CFG-distilled single-branch checkpoint — the samplers then run the "
                                       "conditional pass only and require guidance 1. "
                                       "none (from a LoRA): load only the conditional model and build the "
                                       "unconditional one with Ideogram4 Unconditional From LoRA (one base in memory)."),
                io.Combo.Input("weight_dtype", options=["auto", "bf16", "fp32"], default="auto",
                               tooltip="Compute dtype; unquantised weights are stored in it. auto = bf16 (the "
                                       "reference's numerics; fp32 only on GPUs without bf16). fp32 doubles the "
                                       "memory of bf16 files. fp8/nf4 weights stay packed and are decoded per layer."),
            ],
            outputs=[
                io.Model.Output("model", display_name="model",
                                tooltip="Conditional DiT (ModelPatcher; plugs into model management)."),
                io.Model.Output("unconditional_model", display_name="unconditional_model",
                                tooltip="Unconditional DiT (ModelPatcher)."),
            ],
        )

    @classmethod
    def execute(cls, conditional: str, unconditional: str, weight_dtype: str) -> io.NodeOutput:
        from .host.comfy_model import load_model_patcher, plan_pair

        cond_path, cond_component = _source(conditional, "conditional")
        check_conditional(cond_path, cond_component)
        if unconditional == NO_UNCONDITIONAL:
            return cls._conditional_only(conditional, cond_path, cond_component, weight_dtype)
        if unconditional == NONE:
            uncond_path = uncond_component = None
        elif unconditional == AUTO:
            if conditional.endswith(folders.FOLDER_SUFFIX):
                if not (cond_path / "unconditional_transformer").is_dir():
                    raise ValueError(f"unconditional = auto: {conditional!r} has no unconditional_transformer/ "
                                     "(a bare transformer folder); choose the unconditional model explicitly, or "
                                     "'none' for a CFG-distilled single-branch checkpoint")
                uncond_path, uncond_component = cond_path, "unconditional_transformer"
            else:
                uncond_path, uncond_component = _source(auto_unconditional_file(conditional), "unconditional")
        else:
            uncond_path, uncond_component = _source(unconditional, "unconditional")
        warnings = conditional_name_warnings(conditional, cond_path) if uncond_path is None else \
            pair_warnings(conditional, cond_path, cond_component, unconditional, uncond_path, uncond_component)
        try:
            cond = load_model_patcher(cond_path, component=cond_component, weight_dtype=weight_dtype)
        except ValueError as exc:
            raise ValueError(f"conditional model: {exc}") from exc
        uncond = None
        try:
            if uncond_path is not None:
                uncond = load_model_patcher(uncond_path, component=uncond_component, weight_dtype=weight_dtype,
                                            image_only=True)
        except ValueError as exc:
            raise ValueError(f"unconditional model: {exc}") from exc
        lines = [] if uncond is not None else ["unconditional: none — single-branch (CFG-distilled) model: the "
                                               "samplers run the conditional pass only and require guidance 1"]
        for role, p in (("conditional", cond), ("unconditional", uncond)):
            if p is None:
                continue
            info = p.ideogram4_info
            lines.append(f"{role}: {info['source']} [{info['component']}] — {info['format']}, compute "
                         f"{info['dtype']}, {p.model_size() / 2**30:.2f} GiB")
        lines += [n for n in [cond.ideogram4_info.get("dtype_note")] if n]
        for line in warnings:
            log.warning("Ideogram4 Model Loader: %s", line)
        lines[:0] = [f"warning: {line}" for line in warnings]
        plan = plan_pair(cond, uncond, batch=1, n_img=4096, n_txt=512)
        lines.append("expected at 1024×1024, batch 1 (decided again when sampling):")
        lines.append(plan.summary())
        return io.NodeOutput(cond, uncond, ui={"text": ["\n".join(lines)]})

    @classmethod
    def _conditional_only(cls, name: str, path, component: str, weight_dtype: str) -> io.NodeOutput:
        from .host.comfy_model import load_model_patcher

        warnings = conditional_name_warnings(name, path)
        for line in warnings:
            log.warning("Ideogram4 Model Loader: %s", line)
        try:
            cond = load_model_patcher(path, component=component, weight_dtype=weight_dtype)
        except ValueError as exc:
            raise ValueError(f"conditional model: {exc}") from exc
        setattr(cond.model, FROM_LORA_MARK, True)  # a sampler without the unconditional model then names the node
        info = cond.ideogram4_info
        lines = [f"warning: {line}" for line in warnings] + [
            f"conditional: {info['source']} [{info['component']}] — {info['format']}, compute {info['dtype']}, "
            f"{cond.model_size() / 2**30:.2f} GiB", *[n for n in [info.get("dtype_note")] if n],
            "unconditional: none — build it from this base with Ideogram4 Unconditional From LoRA (shares these "
            "weights: one base in memory)"]
        text = "\n".join(lines)
        return io.NodeOutput(cond, None, ui={"text": [text]})


class Ideogram4NativeVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeVAELoader",
            display_name="Ideogram4 VAE Loader",
            category=CATEGORY,
            description="Load the FLUX.2 VAE decoder for the reference decode (flux2-vae.safetensors in BFL naming, "
                        "or an official repository's vae/ in diffusers naming). Decoding uses the reference latent "
                        "statistics, not the file's BatchNorm buffers.",
            inputs=[
                io.Combo.Input("vae_name", options=_vae_options(),
                               tooltip="models/vae file (e.g. flux2-vae.safetensors) or an official repository "
                                       "folder 'name/' (uses its vae/)."),
                io.Combo.Input("dtype", options=["auto", "bf16", "fp32"], default="auto",
                               tooltip="Decoder compute dtype. auto = bf16, as the reference decodes; fp32 is "
                                       "slightly different from the reference pixels."),
            ],
            outputs=[Vae.Output("vae", display_name="vae",
                                tooltip="Ideogram 4 VAE decoder (model-managed) for Ideogram4 VAE Decode.")],
        )

    @classmethod
    def execute(cls, vae_name: str, dtype: str) -> io.NodeOutput:
        from .host.comfy_vae import load_vae_patcher

        path = folders.resolve(vae_name, file_key="vae", folder_keys=FOLDER_KEYS_VAE)
        patcher = load_vae_patcher(path, dtype)
        info = patcher.ideogram4_info
        text = f"{info['source']} — {info['format']}, compute {info['dtype']}, {patcher.model_size() / 2**20:.1f} MiB" + \
            (f"\n{info['dtype_note']}" if info.get("dtype_note") else "")
        return io.NodeOutput(patcher, ui={"text": [text]})


NODES: list[type[io.ComfyNode]] = [Ideogram4NativeModelLoader, Ideogram4NativeVAELoader]
