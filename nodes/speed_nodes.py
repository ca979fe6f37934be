"""Speed node (V3): Ideogram4 Fast FP8 Matmul — the opt-in, not reference-exact fp8 tensor-core matmul."""

from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "Ideogram4 Native/advanced"


class Ideogram4NativeFastFP8(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeFastFP8",
            display_name="Ideogram4 Fast FP8 Matmul (not exact)",
            category=CATEGORY,
            description="Run the fp8 layers of official fp8 / ComfyUI fp8_scaled models as fp8 × fp8 tensor-core "
                        "matmuls (torch._scaled_mm, CUDA sm89+: RTX 40xx, L40, H100…) with per-token activation "
                        "scales instead of decoding the weight to bf16. Faster, but NOT reference-exact: the node "
                        "shows the deviation it measured. Without this node the exact path runs.",
            inputs=[
                io.Model.Input("model", tooltip="Conditional DiT (fp8 checkpoint) from the Ideogram4 Model Loader."),
                io.Model.Input("unconditional_model", optional=True,
                               tooltip="Unconditional DiT (fp8); switched too when connected."),
            ],
            outputs=[io.Model.Output("model", display_name="model"),
                     io.Model.Output("unconditional_model", display_name="unconditional_model",
                                     tooltip="The unconditional DiT with the fast path (or None if not connected).")],
        )

    @classmethod
    def execute(cls, model, unconditional_model=None) -> io.NodeOutput:
        from .host.fast_fp8 import with_fast_fp8

        cond, line = with_fast_fp8(model, "model")
        lines = [line]
        uncond = None
        if unconditional_model is not None:
            uncond, line = with_fast_fp8(unconditional_model, "unconditional_model")
            lines.append(line)
        return io.NodeOutput(cond, uncond, ui={"text": ["\n".join(lines)]})


NODES: list[type[io.ComfyNode]] = [Ideogram4NativeFastFP8]
