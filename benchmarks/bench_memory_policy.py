"""The DiT-pair memory policy inside ComfyUI's real model management, on a simulated card (CPU only).

Both Ideogram 4 DiTs run at every step.  This script measures what the pack's policy (load the
pair together once per run; what does not fit is streamed layer by layer) copies per step, and
what loading one model at a time (``load_models_gpu([model])`` before each pass, ComfyUI's
default for a single-model sampler) would copy — on cards of several sizes, without a GPU:

* ComfyUI is imported with ``--cpu`` and then told that the CPU is a card ("cpu:0", NORMAL_VRAM)
  whose free memory is ``card − Σ loaded weights``.  Every decision — eviction
  (``free_memory``), the low-VRAM budget of ``load_models_gpu``, which layers ``ModelPatcher.load``
  keeps and which it streams — is ComfyUI's own code; only the free-memory figure is simulated.
* "Copied to the card" is counted, not timed: bytes a load adds to a model's resident weights,
  plus the bytes of every layer that runs with ``comfy_cast_weights`` (streamed) — packed fp8/nf4
  sizes for quantised layers.
* The sampler is the KSampler node's runner (``run_reference_sampler``); its latent is compared
  with the one from a card where both models fit.

Cards are given as the weight budget left after ComfyUI's activation reserve, as a fraction of
the pair's size (1.0 = both just fit).  The models are random checkpoints in the official layout
written by ``tools/make_test_checkpoints.py`` and loaded by the pack's loader.

    python benchmarks/bench_memory_policy.py --comfyui ~/ComfyUI
    python benchmarks/bench_memory_policy.py --comfyui ~/ComfyUI --format fp8 --layers 8 --budgets 1.2,0.75,0.3
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ideogram4_native_bench"
MiB = 1024 ** 2


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"),
                    help="ComfyUI checkout (default: $COMFYUI_PATH)")
    ap.add_argument("--format", choices=("bf16", "fp8", "comfy_fp8_scaled", "nf4"), default="bf16")
    ap.add_argument("--layers", type=int, default=6, help="DiT layers (width 512; default 6)")
    ap.add_argument("--budgets", default="1.5,0.9,0.5,0.2,0",
                    help="weight budgets as fractions of the pair's size (default 1.5,0.9,0.5,0.2,0)")
    ap.add_argument("--steps", default="3,6", help="two step counts: loads per run must not grow with steps")
    ap.add_argument("--size", type=int, default=256, help="square image size in pixels")
    ap.add_argument("--lowvram", action="store_true", help="simulate --lowvram instead of the normal VRAM state")
    ap.add_argument("--text-encoder", action="store_true",
                    help="also encode a caption with the Text Encode node's code on a card that fits the encoder and "
                         "on one that fits half of it (tiny 36-layer Qwen3-VL)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    return ap.parse_args(argv)


def import_pack(comfyui: Path):
    if comfyui is None or not (comfyui / "comfy").is_dir():
        sys.exit("--comfyui (or $COMFYUI_PATH) must point at a ComfyUI checkout")
    sys.path.insert(0, str(comfyui))
    sys.path.append(str(ROOT))  # tools.make_test_checkpoints
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.model_management  # noqa: F401

    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = pack
    spec.loader.exec_module(pack)


class SimulatedCard:
    """Makes ComfyUI treat the CPU as a card with ``size`` bytes (set per run)."""

    def __init__(self, lowvram: bool):
        import torch

        import comfy.model_management as mm

        self.mm = mm
        self.device = torch.device("cpu", 0)  # != torch.device("cpu"): ComfyUI's eviction path runs
        self.size = 0
        mm.get_torch_device = lambda: self.device
        mm.text_encoder_device = lambda: self.device
        mm.is_device_cpu = lambda device: False
        mm.vram_state = mm.VRAMState.LOW_VRAM if lowvram else mm.VRAMState.NORMAL_VRAM
        mm.MIN_WEIGHT_MEMORY_RATIO = 0.0  # NVIDIA's value
        mm.get_free_memory = self.free

    def resident(self) -> int:
        models = {id(lm.model): lm.model for lm in self.mm.current_loaded_models
                  if lm.model is not None and lm.device == self.device}  # count each model once
        return sum(m.loaded_size() for m in models.values())

    def free(self, dev=None, torch_free_too=False):
        free = max(0, self.size - self.resident())
        return (free, free) if torch_free_too else free


class CopyCounter:
    """Bytes moved onto the card: load growth of the models + weights of every streamed layer call."""

    def __init__(self):
        import torch

        import comfy.model_patcher

        self.loads = 0
        self.loaded_bytes = 0
        self.streamed_bytes = 0
        counter = self
        original = comfy.model_patcher.ModelPatcher.load

        def load(patcher, *args, **kwargs):
            before = patcher.loaded_size()
            out = original(patcher, *args, **kwargs)
            counter.loads += 1
            counter.loaded_bytes += max(0, patcher.loaded_size() - before)
            return out

        def pre_hook(module, _args):
            if getattr(module, "comfy_cast_weights", False):
                counter.streamed_bytes += own_bytes(module)

        comfy.model_patcher.ModelPatcher.load = load
        self._restore = lambda: setattr(comfy.model_patcher.ModelPatcher, "load", original)
        self._hook = torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)

    def close(self):
        self._restore()
        self._hook.remove()

    @property
    def copied(self) -> int:
        return self.loaded_bytes + self.streamed_bytes


def own_bytes(module) -> int:
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return sum(t.numel() * t.element_size() for t in tensors)


PER_RUN_LAYERS = ("llm_cond_norm", "llm_cond_proj", "embed_image_indicator")


def per_run_streamed_bytes(patcher) -> int:
    """Bytes of the non-resident layers the DiT runs once per sampling run (not once per step)."""
    dit = patcher.model.diffusion_model
    return sum(own_bytes(m) for name, m in dit.named_modules()
               if name.split(".")[0] in PER_RUN_LAYERS and getattr(m, "comfy_cast_weights", False))


def streamed_layer_bytes(patcher) -> int:
    """Bytes of the layers ComfyUI left cast-on-the-fly (not resident: copied each time they run)."""
    return sum(own_bytes(m) for m in patcher.model.modules() if getattr(m, "comfy_cast_weights", False))


def castable_bytes(patcher) -> int:
    """Bytes of the layers ComfyUI can stream (those with ``comfy_cast_weights``)."""
    return sum(own_bytes(m) for m in patcher.model.modules() if hasattr(m, "comfy_cast_weights"))


def text_encoder_cards(card: SimulatedCard) -> list[dict]:
    """Encode one caption through ``nodes.host.comfy_text_encoder.encode`` on a roomy and a tight card."""
    import torch

    import comfy.model_management as mm

    te = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_text_encoder")
    from tools.make_test_text_encoder import tiny_text_config, write_layout

    caption = '{"subject": "a red fox in the snow", "style": "flat"}'
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_layout("official_bf16", Path(tmp), text=tiny_text_config(num_layers=36))
        patcher = te.load_text_encoder_patcher(folder, tokenizer=None, dtype_choice="bf16")
        encoder = te.encoder_of(patcher)
        size = patcher.model_size()
        reserve = card.mm.minimum_inference_memory()
        for fraction in (2.0, 0.5):
            mm.unload_all_models()
            card.size = max(reserve, te.activation_bytes(encoder, 64) + card.mm.extra_reserved_memory()) + int(
                fraction * size)
            importlib.import_module(f"{PACKAGE}.model.text_encoder").clear_cache()  # both cards really encode
            feats, lengths, info = te.encode(patcher, caption)
            rows.append({"budget_fraction": fraction, "info": info, "resident": int(patcher.loaded_size()),
                         "size": int(size), "features": feats})
            print(f"text encoder, budget {fraction:.1f} × its {size / MiB:.1f} MiB: {info}")
    first = rows[0].pop("features")
    for row in rows[1:]:
        row["features_equal"] = bool(torch.equal(row.pop("features"), first))
    mm.unload_all_models()
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    import_pack(args.comfyui)
    import torch

    import comfy.model_management as mm

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    cm = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_model")
    cs = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_sampling")
    cond_mod = importlib.import_module(f"{PACKAGE}.nodes.host.conditioning")
    sampling = importlib.import_module(f"{PACKAGE}.sampling")
    from tools.make_test_checkpoints import convert, random_state_dict, tiny_config, write_file

    card = SimulatedCard(args.lowvram)
    cfg = tiny_config(num_layers=args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_file(convert(random_state_dict(cfg, seed), args.format), Path(tmp) / f"dit{seed}.safetensors",
                            args.format) for seed in (0, 1)]
        # as the loader node does: bf16 compute, the unconditional model without its text projection
        cond = cm.load_model_patcher(paths[0], weight_dtype="bf16")
        uncond = cm.load_model_patcher(paths[1], weight_dtype="bf16", image_only=True)
    pair = cond.model_size() + uncond.model_size()
    castable = {id(p): castable_bytes(p) for p in (cond, uncond)}
    largest_layer = max(own_bytes(m) for p in (cond, uncond) for m in p.model.modules())
    n_txt = 24
    feats = torch.randn(1, n_txt, cfg.llm_features_dim, generator=torch.Generator().manual_seed(0))
    positive = cond_mod.make_conditioning(feats, [n_txt])
    step_counts = [int(s) for s in args.steps.split(",")]
    size = args.size
    gh = gw = size // 16
    print(f"simulated card on the CPU | {args.format}, {args.layers} layers: 2 × {cond.model_size() / MiB:.1f} MiB"
          f" | {size}² | {'LOW' if args.lowvram else 'NORMAL'}_VRAM")
    mm.unload_all_models()
    card.size = 1 << 50
    reserve = cm.plan_pair(cond, uncond, batch=1, n_img=gh * gw, n_txt=n_txt).reserve
    results = {"format": args.format, "layers": args.layers, "pair_bytes": pair, "reserve": reserve,
               "castable_bytes": sum(castable.values()), "largest_layer_bytes": largest_layer, "cards": []}
    reference = None
    for fraction in [float(b) for b in args.budgets.split(",")]:
        mm.unload_all_models()
        card.size = reserve + int(fraction * pair)
        row = {"budget_fraction": fraction, "card_bytes": card.size,
               "plan_streamed_per_step": cm.plan_pair(cond, uncond, batch=1, n_img=gh * gw, n_txt=n_txt).streamed_per_step}
        for steps in step_counts:
            settings = sampling.custom_settings(steps, 0.5, 1.0, 7.0)
            mm.unload_all_models()
            counter = CopyCounter()
            try:
                latent, info = cs.run_reference_sampler(cond, uncond, positive, settings, width=size, height=size,
                                                         batch=1, seed=0)
            finally:
                counter.close()
            row[f"loads_{steps}"] = counter.loads
            row[f"copied_{steps}"] = counter.copied
            row[f"streamed_{steps}"] = counter.streamed_bytes
            row["plan"] = next(line for line in info if line.startswith("memory:")).splitlines()[0]
            row["resident"] = [int(cond.loaded_size()), int(uncond.loaded_size())]
            if steps == step_counts[-1]:
                reference = latent if reference is None else reference
                row["latent_equal_to_first_card"] = bool(torch.equal(latent, reference))
        lo, hi = step_counts[0], step_counts[-1]
        row["streamed_per_step"] = (row[f"streamed_{hi}"] - row[f"streamed_{lo}"]) / (hi - lo)
        # ComfyUI's own bookkeeping buffers (model_sampling) count in model_size but are never streamed
        # Layers used only once per run (the DiT's per-run cache: text projection, indicator rows) are not
        # streamed again at later steps.
        row["per_run_streamed_bytes"] = sum(per_run_streamed_bytes(p) for p in (cond, uncond))
        # the layers left cast-on-the-fly after the run (streamed at every step), less the per-run ones
        row["expected_streamed_per_step"] = sum(streamed_layer_bytes(p) for p in (cond, uncond)) - \
            row["per_run_streamed_bytes"]

        # One model at a time: load_models_gpu([model]) before each pass, as a single-model sampler would.
        mm.unload_all_models()
        x = torch.randn(1, 128, gh, gw, generator=torch.Generator().manual_seed(1))
        sigma = torch.tensor([0.5])
        counter = CopyCounter()
        try:
            per_step = []
            for _ in range(hi):
                before = counter.copied
                mm.load_models_gpu([cond])
                cond.model.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([n_txt]),
                                       ideogram4_velocity=True)
                mm.load_models_gpu([uncond])
                uncond.model.apply_model(x, sigma, ideogram4_velocity=True)
                per_step.append(counter.copied - before)
        finally:
            counter.close()
        row["alternating_copied_per_step"] = per_step[-1]
        row["alternating_loads"] = counter.loads
        results["cards"].append(row)
        print(f"budget {fraction:4.2f} × pair (card {card.size / MiB:7.1f} MiB): {row['plan']}\n"
              f"    pack: loads per run {row[f'loads_{lo}']} ({lo} steps) / {row[f'loads_{hi}']} ({hi} steps), "
              f"resident {sum(row['resident']) / MiB:.1f} MiB, streamed per step {row['streamed_per_step'] / MiB:.1f} MiB"
              f" (non-resident weights {row['expected_streamed_per_step'] / MiB:.1f} MiB, plan "
              f"{row['plan_streamed_per_step'] / MiB:.1f} MiB), latent equal to the first "
              f"card: {row['latent_equal_to_first_card']}\n"
              f"    one model at a time: {row['alternating_copied_per_step'] / MiB:.1f} MiB copied per step, "
              f"{row['alternating_loads']} loads in {hi} steps")
    mm.unload_all_models()
    if args.text_encoder:
        results["text_encoder"] = text_encoder_cards(card)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
