"""Caption nodes (V3). Thin adapters: the logic lives in model/caption.py and model/magic_prompt.py."""

from __future__ import annotations

from comfy_api.latest import io

from ..model import caption as cap
from ..model.caption import builders
from ..model.caption import magic_prompt as mp

CATEGORY = "Ideogram4 Native/caption"
Elements = io.Custom("IDEOGRAM4_ELEMENTS")

_SIZE = dict(min=256, max=2048, step=16, default=1024)


def _text(id: str, tooltip: str, default: str = "", multiline: bool = False, **kw) -> io.String.Input:
    # dynamic_prompts off: "{a|b}" expansion would rewrite JSON braces.
    return io.String.Input(id, default=default, multiline=multiline, dynamic_prompts=False, tooltip=tooltip, **kw)


def _ui(report: cap.CaptionReport) -> dict:
    lines = report.summary_lines() or [f"caption OK: canonical, {len(report.canonical or '')} characters"]
    return {"text": ["\n".join(lines)]}


def _caption_outputs(report: cap.CaptionReport, node_name: str) -> io.NodeOutput:
    """(canonical caption, indented JSON) with the report as UI text; raises if the caption has errors."""
    if report.errors:
        raise cap.CaptionError(report, node_name)
    return io.NodeOutput(report.canonical, builders.pretty_json(report.data), ui=_ui(report))


class Ideogram4NativeCaptionBuilder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeCaptionBuilder",
            display_name="Ideogram4 Caption Builder",
            category=CATEGORY,
            description="Build a canonical Ideogram 4 JSON caption (documented schema). Elements come from the "
                        "layout canvas, then from the optional elements input.",
            inputs=[
                _text("high_level_description", "One or two sentences summarising the whole image. Optional but "
                      "strongly recommended.", multiline=True),
                io.Combo.Input("style_mode", options=["photo", "art_style", "none"], default="photo",
                               tooltip="photo: style_description with 'photo' (camera details). art_style: with "
                                       "'art_style' (illustration, 3D, design...). none: no style_description."),
                _text("aesthetics", "Aesthetic keywords, e.g. 'moody, cinematic, desaturated'. Ignored when "
                      "style_mode is none."),
                _text("lighting", "Lighting description, e.g. 'golden hour, rim light'. Ignored when style_mode "
                      "is none."),
                _text("medium", "Medium: photograph, illustration, 3d_render, painting, graphic_design (or your "
                      "own word). Use 'photograph' with style_mode photo.", default="photograph"),
                _text("style_value", "The 'photo' text (camera/lens, e.g. '35mm, f/1.4') for style_mode photo, or "
                      "the 'art_style' text (e.g. 'flat vector, bold outlines') for art_style."),
                _text("color_palette", "Global palette: up to 16 hex colours separated by commas, spaces or new "
                      "lines, e.g. '#1B1B2F, #E43F5A'. Needs style_mode photo or art_style."),
                _text("background", "The setting: environment, sky, floor, walls, scene-wide light. Required "
                      "(may be empty).", multiline=True),
                _text("layout", "Elements as a JSON list, written by the canvas editor: "
                      '[{"type":"obj","bbox":[y_min,x_min,y_max,x_max],"desc":"..."},'
                      '{"type":"text","bbox":[...],"text":"...","desc":"..."}]. bbox is 0-1000 ints, optional.',
                      default="[]", multiline=True),
                io.Int.Input("width", tooltip="Canvas width in pixels (sets the editor's aspect ratio; not part "
                             "of the caption). Match your latent size.", **_SIZE),
                io.Int.Input("height", tooltip="Canvas height in pixels (sets the editor's aspect ratio; not part "
                             "of the caption). Match your latent size.", **_SIZE),
                Elements.Input("elements", optional=True,
                               tooltip="Extra elements from an Ideogram4 Caption Element chain; appended after "
                                       "the layout elements."),
            ],
            outputs=[
                io.String.Output("caption", display_name="caption",
                                 tooltip="Canonical minified caption; feed this to the text encoder."),
                io.String.Output("caption_json", display_name="caption_json",
                                 tooltip="Indented copy for reading only."),
            ],
        )

    @classmethod
    def execute(cls, high_level_description: str, style_mode: str, aesthetics: str, lighting: str, medium: str,
                style_value: str, color_palette: str, background: str, layout: str, width: int, height: int,
                elements: list | None = None) -> io.NodeOutput:
        report = builders.compose_caption(
            high_level_description=high_level_description, style_mode=style_mode, aesthetics=aesthetics,
            lighting=lighting, medium=medium, style_value=style_value, color_palette=color_palette,
            background=background, layout=layout, extra_elements=elements,
        )
        return _caption_outputs(report, "Ideogram4 Caption Builder")


class Ideogram4NativeCaptionElement(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        def coord(id: str, default: int, what: str) -> io.Int.Input:
            return io.Int.Input(id, default=default, min=0, max=1000, step=1,
                                tooltip=f"{what}, 0-1000 normalised to the image (origin top-left). Used when "
                                        "use_bbox is on.")

        return io.Schema(
            node_id="Ideogram4NativeCaptionElement",
            display_name="Ideogram4 Caption Element",
            category=CATEGORY,
            description="One caption element (object or text), chained into a list for the Caption Builder.",
            inputs=[
                io.Combo.Input("type", options=["obj", "text"], default="obj",
                               tooltip="obj: a subject or object. text: words rendered in the image."),
                _text("text", "The exact characters to render (text elements only; ignored for obj). Use a new "
                      "line for a line break.", multiline=True),
                _text("desc", "Description: what it is, then colours, materials, pose; for text: typeface, "
                      "weight, colour, placement.", multiline=True),
                io.Boolean.Input("use_bbox", default=True,
                                 tooltip="Include the bounding box [y_min, x_min, y_max, x_max]. Off: the model "
                                         "places the element itself."),
                coord("y_min", 0, "Top edge"),
                coord("x_min", 0, "Left edge"),
                coord("y_max", 1000, "Bottom edge"),
                coord("x_max", 1000, "Right edge"),
                _text("color_palette", "Up to 5 hex colours for this element, e.g. '#FFFFFF, #0066FF'."),
                Elements.Input("elements", optional=True,
                               tooltip="Elements from previous Caption Element nodes; this one is appended."),
            ],
            outputs=[Elements.Output("elements", display_name="elements",
                                     tooltip="The chained list of elements.")],
        )

    @classmethod
    def execute(cls, type: str, text: str, desc: str, use_bbox: bool, y_min: int, x_min: int, y_max: int,
                x_max: int, color_palette: str, elements: list | None = None) -> io.NodeOutput:
        notes: list[str] = []
        element = builders.build_element(type, desc, text=text, bbox=[y_min, x_min, y_max, x_max] if use_bbox else None,
                                         palette=builders.parse_palette(color_palette, notes))
        errors = builders.check_element(element)
        if errors:
            raise ValueError("Ideogram4 Caption Element: " + "; ".join(errors))
        if type == "obj" and (text or "").strip():
            notes.append("text not used: an obj element renders no text (set type to text to render it)")
        ui = {"text": ["\n".join(notes)]} if notes else None
        return io.NodeOutput(list(elements or []) + [element], ui=ui)


class Ideogram4NativeCaptionFromJSON(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeCaptionFromJSON",
            display_name="Ideogram4 Caption From JSON",
            category=CATEGORY,
            description="Validate and canonicalise a pasted caption (e.g. LLM output; code fences are removed). "
                        "Reports every problem at once.",
            inputs=[
                _text("json_text", "A caption JSON object, in the documented or the magic-prompt dialect.",
                      multiline=True),
                io.Boolean.Input("strict", default=False,
                                 tooltip="Off: repair unambiguous problems (key order, lowercase hex, float "
                                         "bboxes, aspect_ratio, escapes) and report them. On: treat every repair "
                                         "as an error, so only captions the reference verifier accepts pass."),
            ],
            outputs=[
                io.String.Output("caption", display_name="caption", tooltip="Canonical minified caption."),
                io.String.Output("caption_json", display_name="caption_json",
                                 tooltip="Indented copy for reading only."),
            ],
        )

    @classmethod
    def execute(cls, json_text: str, strict: bool) -> io.NodeOutput:
        report = cap.check_caption(json_text)
        if strict:
            report.strict()
        return _caption_outputs(report, "Ideogram4 Caption From JSON")


class Ideogram4NativeMagicPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeMagicPrompt",
            display_name="Ideogram4 Magic Prompt",
            category=CATEGORY,
            description="Expand a plain-text idea into a validated caption with an LLM. Sends the prompt to the "
                        "chosen provider; API keys come from environment variables or magic_prompt_keys.json, "
                        "never from the workflow.",
            inputs=[
                _text("prompt", "Your image idea in plain words.", multiline=True),
                io.Int.Input("width", tooltip="Target image width; the aspect ratio guides the layout.", **_SIZE),
                io.Int.Input("height", tooltip="Target image height; the aspect ratio guides the layout.", **_SIZE),
                io.Combo.Input("provider", options=list(mp.PROVIDERS), default="none",
                               tooltip="none: nothing is sent (error with setup help). ideogram: Ideogram's hosted "
                                       "magic prompt (IDEOGRAM_API_KEY). openai_compatible: any chat-completions "
                                       "API (OpenRouter by default: OPENROUTER_API_KEY; Ollama, LM Studio, OpenAI "
                                       "via base_url)."),
                _text("base_url", "Empty: the configured default (OpenRouter https://openrouter.ai/api/v1, or the "
                      "Ideogram endpoint). e.g. http://localhost:11434/v1 for Ollama. Keys are only sent to their "
                      "own host."),
                _text("model", f"Chat model for openai_compatible (empty: {mp.DEFAULT_MODEL}), e.g. 'llama3.1' "
                      "for Ollama. Ignored by ideogram."),
                io.Boolean.Input("keep_bboxes", default=True,
                                 tooltip="Keep the element bounding boxes the LLM proposes (the reference strips "
                                         "them by default)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             control_after_generate=io.ControlAfterGenerate.fixed,
                             tooltip="Change to get a new expansion; sent as the chat 'seed' where supported. "
                                     "Fixed by default: re-queuing the same inputs reuses the cached caption and "
                                     "does not call the (possibly paid) API again."),
                io.Int.Input("timeout_s", default=int(mp.DEFAULT_TIMEOUT_S), min=5, max=600, advanced=True,
                             tooltip="Seconds to wait for each request."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: take the target width/height from this latent (e.g. Ideogram4 "
                                        "Empty Latent) instead of the width/height widgets."),
            ],
            outputs=[io.String.Output("caption", display_name="caption", tooltip="Canonical minified caption.")],
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, prompt: str, width: int, height: int, provider: str, base_url: str, model: str,
                keep_bboxes: bool, seed: int, timeout_s: int = int(mp.DEFAULT_TIMEOUT_S),
                latent: dict | None = None) -> io.NodeOutput:
        from .sampler_nodes import size_from_latent

        size_note = []
        if latent is not None:
            _, width, height = size_from_latent(latent)
            size_note = [f"target size {width}×{height} from the latent (width/height widgets unused)"]
        result = mp.expand(prompt, width, height, provider=provider, base_url=base_url, model=model,
                           keep_bboxes=keep_bboxes, seed=seed, timeout=float(timeout_s))
        ui = _ui(result.report)
        head = size_note + (["repaired once after validation errors"] if result.repaired else [])
        ui["text"][0] = "\n".join(head + [ui["text"][0]])
        return io.NodeOutput(result.caption, ui=ui)


NODES: list[type[io.ComfyNode]] = [
    Ideogram4NativeCaptionBuilder,
    Ideogram4NativeCaptionElement,
    Ideogram4NativeCaptionFromJSON,
    Ideogram4NativeMagicPrompt,
]
