"""Text encoder nodes (V3): load the Qwen3-VL encoder, encode a caption into CONDITIONING.

There is no negative prompt anywhere: the unconditional DiT takes no text (image-only pass).
"""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..model import caption as cap
from .host import folders
from .host.conditioning import make_conditioning

log = logging.getLogger("ideogram4_native")

CATEGORY = "Ideogram4 Native/conditioning"
TextEncoder = io.Custom("IDEOGRAM4_TEXT_ENCODER")
TE_FOLDER_KEYS = (folders.FOLDER_KEY, "text_encoders")
AUTO = "auto"
COMFY_TOKENIZER = "comfyui (qwen25_tokenizer)"
CAPTION_CHECKS = ("canonicalize", "strict", "warn", "off")


def _te_options() -> list[str]:
    # .gguf too: llama.cpp's Qwen3-VL language-model files (ComfyUI-GGUF users keep them here); an mmproj beside
    # them is listed and, picked, says what it is
    return folders.list_folders("text_encoder", TE_FOLDER_KEYS) + \
        folders.list_files("text_encoders", folders.WEIGHT_EXTENSIONS + (".gguf",))


def _tokenizer_options() -> list[str]:
    return [AUTO, COMFY_TOKENIZER] + folders.list_folders("tokenizer", TE_FOLDER_KEYS)


def _tokenizer_path(choice: str, source_is_folder: bool):
    if choice == AUTO:
        if source_is_folder:
            return None  # the folder's own tokenizer/ (or root) tokenizer
        choice = COMFY_TOKENIZER
    if choice == COMFY_TOKENIZER:
        from .host.bundled_tokenizer import find_bundled_tokenizer, missing_tokenizer_message

        path, searched = find_bundled_tokenizer()
        if path is None:
            raise ValueError(missing_tokenizer_message(searched, folders.list_folders("tokenizer", TE_FOLDER_KEYS)))
        return path
    folder = folders.resolve(choice, file_key=None, folder_keys=TE_FOLDER_KEYS)
    return folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder


class Ideogram4NativeTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeTextEncoderLoader",
            display_name="Ideogram4 Text Encoder Loader",
            category="Ideogram4 Native/loaders",
            description="Load the Qwen3-VL-8B text encoder (language model only, 13 tapped layers). Accepts the "
                        "official repository folder (text_encoder/ + tokenizer/; bf16, fp8 or nf4), a stock "
                        "Qwen3-VL-8B-Instruct folder, or a single file such as Comfy-Org's "
                        "qwen3vl_8b_fp8_scaled.safetensors or llama.cpp's Qwen3VL-8B-Instruct-Q4_K_M.gguf.",
            inputs=[
                io.Combo.Input("text_encoder", options=_te_options(),
                               tooltip="models/text_encoders file (e.g. qwen3vl_8b_fp8_scaled.safetensors, or a "
                                       "llama.cpp GGUF such as Qwen3VL-8B-Instruct-Q4_K_M.gguf — not its mmproj), a "
                                       "Qwen3-VL folder there, or an official repository folder 'name/' from "
                                       "models/ideogram4."),
                io.Combo.Input("tokenizer", options=_tokenizer_options(), default=AUTO,
                               tooltip="auto: the folder's own tokenizer, or ComfyUI's bundled Qwen tokenizer for a "
                                       "single file. Or pick a folder with tokenizer.json / vocab.json (e.g. the "
                                       "official tokenizer/)."),
                io.Combo.Input("dtype", options=["auto", "bf16", "fp32"], default="auto",
                               tooltip="Compute dtype. auto = bf16 (the reference's). fp8/nf4 weights stay packed."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="auto: encode on the GPU — the whole encoder when it fits, otherwise "
                                       "partially loaded with the rest streamed layer by layer (ComfyUI evicts it "
                                       "when the DiTs need the memory). cpu: always encode on the CPU (saves VRAM, "
                                       "slow for the 8B model)."),
            ],
            outputs=[TextEncoder.Output("text_encoder", display_name="text_encoder",
                                        tooltip="Ideogram 4 text encoder (model-managed).")],
        )

    @classmethod
    def execute(cls, text_encoder: str, tokenizer: str, dtype: str, device: str) -> io.NodeOutput:
        from .host.comfy_text_encoder import load_text_encoder_patcher

        source = folders.resolve(text_encoder, file_key="text_encoders", folder_keys=TE_FOLDER_KEYS)
        tok = _tokenizer_path(tokenizer, text_encoder.endswith(folders.FOLDER_SUFFIX) or source.is_dir())
        patcher = load_text_encoder_patcher(source, tokenizer=tok, dtype_choice=dtype, device_choice=device)
        info = patcher.ideogram4_info
        text = "".join(f"warning: {w}\n" for w in info["warnings"]) + (
            f"{info['source']} — {info['format']}, compute {info['dtype']}, "
            f"{patcher.model_size() / 2**30:.2f} GiB; tokenizer: {tok or 'from the folder'}") + \
            (f"\n{info['dtype_note']}" if info.get("dtype_note") else "")
        return io.NodeOutput(patcher, ui={"text": [text]})


def check_caption_text(caption: str, mode: str) -> tuple[str, list[str]]:
    """(text to encode, report lines) for a caption under ``mode`` (see the node's tooltip)."""
    if mode not in CAPTION_CHECKS:
        raise ValueError(f"caption_check {mode!r} is not one of {', '.join(CAPTION_CHECKS)}")
    if mode == "off":
        return caption, ["caption check off: encoded verbatim"]
    report = cap.check_caption(caption)
    context = "Ideogram4 Text Encode"
    if mode == "canonicalize":
        if report.errors:
            raise cap.CaptionError(report, context + " (fix the caption, or set caption_check to warn/off)")
        return report.canonical, report.summary_lines() or ["caption OK (canonical)"]
    # strict / warn encode the text verbatim: repairs and reformatting the checker found are not applied
    lines = report.summary_lines(fixed=f"not repaired (encoded verbatim, caption_check {mode})",
                                 formatted="not reformatted (encoded verbatim)")
    if mode == "strict":
        if report.strict().errors:
            raise cap.CaptionError(report, context + " (strict: the reference verifier would reject it)")
        return caption, lines or ["caption OK"]
    # warn: the reference's --warn-on-caption-issues
    for line in lines:
        log.warning("Ideogram4 caption: %s", line)
    return caption, lines or ["caption OK"]


class Ideogram4NativeTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeTextEncode",
            display_name="Ideogram4 Text Encode",
            category=CATEGORY,
            description="Encode one caption (ideally the JSON from the Caption Builder) into Ideogram 4 conditioning: "
                        "(1, L, 53248) interleaved features plus text_lengths. No negative prompt: the unconditional "
                        "model takes no text.",
            inputs=[
                TextEncoder.Input("text_encoder", tooltip="From Ideogram4 Text Encoder Loader."),
                io.String.Input("caption", multiline=True, dynamic_prompts=False, default="",
                                tooltip="The caption. Ideogram 4 is trained on JSON captions (documented schema); "
                                        "plain text is rejected unless caption_check is warn or off, and is more "
                                        "likely to produce the grey 'blocked' placeholder."),
                io.Combo.Input("caption_check", options=list(CAPTION_CHECKS), default="canonicalize",
                               tooltip="canonicalize: verify, repair unambiguous issues and encode the canonical "
                                       "minified JSON (errors stop the run). strict: encode verbatim, stop on anything "
                                       "the reference verifier flags (the reference default). warn: encode verbatim, "
                                       "report problems. off: encode verbatim, no checks."),
            ],
            outputs=[io.Conditioning.Output("conditioning", display_name="conditioning",
                                            tooltip="Positive conditioning for the Ideogram4 KSampler / Guider.")],
        )

    @classmethod
    def execute(cls, text_encoder, caption: str, caption_check: str) -> io.NodeOutput:
        from .host.comfy_text_encoder import encode

        text, lines = check_caption_text(caption, caption_check)
        features, lengths, info = encode(text_encoder, text)
        return io.NodeOutput(make_conditioning(features, lengths, [text]), ui={"text": ["\n".join(lines + [info])]})


NODES: list[type[io.ComfyNode]] = [Ideogram4NativeTextEncoderLoader, Ideogram4NativeTextEncode]
