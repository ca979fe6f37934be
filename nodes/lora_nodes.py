"""LoRA node (V3): Ideogram4 LoRA Loader — any trainer's LoRA onto the conditional and/or unconditional DiT."""

from __future__ import annotations

from comfy_api.latest import io

from .host import folders

CATEGORY = "Ideogram4 Native/loaders"
TARGETS = ("conditional", "unconditional", "both")


class Ideogram4NativeLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeLoraLoader",
            display_name="Ideogram4 LoRA Loader",
            category=CATEGORY,
            description="Apply a LoRA (diffusers/PEFT, ai-toolkit, kohya / musubi-tuner, OneTrainer, SimpleTuner, "
                        "ComfyUI keys; LoRA, LoHa, LoKr, DoRA) to the Ideogram 4 DiTs, on every checkpoint format "
                        "(fp8 / nf4 layers get the patch on their decoded weight when they run). Every key of the "
                        "file must map, otherwise the node fails and names the keys. Chain several for stacking.",
            inputs=[
                io.Model.Input("model", tooltip="Conditional DiT from the Ideogram4 Model Loader."),
                io.Model.Input("unconditional_model", optional=True,
                               tooltip="Unconditional DiT; needed for target unconditional / both."),
                io.Combo.Input("lora_name", options=folders.list_files("loras"), tooltip="A file in models/loras."),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Multiplier of the LoRA's effect (0 = models unchanged)."),
                io.Combo.Input("target", options=list(TARGETS), default="conditional",
                               tooltip="conditional (usual for style / subject LoRAs: guidance then pushes "
                                       "toward the LoRA), unconditional, or both (keeps the LoRA's effect out of "
                                       "the guidance difference)."),
            ],
            outputs=[io.Model.Output("model", display_name="model"),
                     io.Model.Output("unconditional_model", display_name="unconditional_model")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, target: str, unconditional_model=None) -> io.NodeOutput:
        from .host.lora import load_lora_onto

        path = folders.resolve(lora_name, file_key="loras", folder_keys=())
        cond, uncond, lines = load_lora_onto(model, unconditional_model, path, strength, target, lora_name)
        return io.NodeOutput(cond, uncond, ui={"text": ["\n".join(lines)]})


class Ideogram4NativeUnconditionalFromLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeUnconditionalFromLora",
            display_name="Ideogram4 Unconditional From LoRA",
            category=CATEGORY,
            description="Build the unconditional model as the conditional base + an unconditional LoRA (published by "
                        "ai-toolkit, musubi-tuner, OneTrainer, SimpleTuner, diffusers trainers): CFG with one base in "
                        "memory instead of two. The unconditional pass stays image-only; LoRAs added to the "
                        "conditional model afterwards do not act in it.",
            inputs=[
                io.Model.Input("model", tooltip="Conditional DiT from the Ideogram4 Model Loader."),
                io.Combo.Input("lora_name", options=folders.list_files("loras"),
                               tooltip="The unconditional LoRA (trained on the conditional weights), models/loras."),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01),
            ],
            outputs=[io.Model.Output("unconditional_model", display_name="unconditional_model")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float) -> io.NodeOutput:
        from .host.lora import unconditional_from_lora

        path = folders.resolve(lora_name, file_key="loras", folder_keys=())
        uncond, lines = unconditional_from_lora(model, path, strength, lora_name)
        return io.NodeOutput(uncond, ui={"text": ["\n".join(lines)]})


NODES: list[type[io.ComfyNode]] = [Ideogram4NativeLoraLoader, Ideogram4NativeUnconditionalFromLora]
