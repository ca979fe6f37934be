"""Caption serialisation and builders used by the Caption Builder/Element nodes and the editor."""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .checker import (
    CaptionReport,
    _duplicate_warnings,
    _Parsed,
    json_error_hint,
    json_type_name,
    reject_nan_constant,
    reordered,
    show_value,
    check_caption,
    element_order,
)
from .schema import (
    COMPOSITION_ORDER,
    ELEMENT_ORDER,
    STYLE_ORDER_ART,
    STYLE_ORDER_PHOTO,
    TOP_LEVEL_ORDER,
)

def canonical_order(caption: dict) -> dict:
    """A copy of ``caption`` with every object's keys in canonical schema order.

    Unknown keys are kept after the known ones. Does not validate.
    """
    out = reordered(dict(caption), TOP_LEVEL_ORDER)
    style = out.get("style_description")
    if isinstance(style, dict):
        order = STYLE_ORDER_ART if "art_style" in style and "photo" not in style else STYLE_ORDER_PHOTO
        out["style_description"] = reordered(style, order)
    comp = out.get("compositional_deconstruction")
    if isinstance(comp, dict):
        comp = reordered(comp, COMPOSITION_ORDER)
        if isinstance(comp.get("elements"), list):
            comp["elements"] = [
                reordered(e, element_order(e) or ELEMENT_ORDER["text"])
                if isinstance(e, dict) else e
                for e in comp["elements"]
            ]
        out["compositional_deconstruction"] = comp
    return out


def canonical_json(caption: dict) -> str:
    """Canonical serialisation (spec 6.4): canonical key order, minified, literal UTF-8."""
    return json.dumps(canonical_order(caption), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def pretty_json(caption: dict) -> str:
    """Indented form for display only (never feed this to the model)."""
    return json.dumps(canonical_order(caption), indent=2, ensure_ascii=False)


_PALETTE_SPLIT = re.compile(r"[\s,;]+")


def parse_palette(text: str | None, notes: list | None = None, field: str = "color_palette") -> list[str]:
    """Parse a palette widget: ``"#ff0000, #00FF00"``, one per line, or a JSON list.

    Well-formed colours (with or without ``#``, any case) become ``#RRGGBB``
    uppercase (each rewrite is added to ``notes``); anything else is kept verbatim so validation can name it.
    """
    if not text:
        return []
    tokens = _PALETTE_SPLIT.split(text.strip().strip("[]"))
    colors = []
    for token in tokens:
        token = token.strip().strip("\"'")
        if not token:
            continue
        body = token[1:] if token.startswith("#") else token
        color = "#" + body.upper() if re.fullmatch(r"[0-9a-fA-F]{6}", body) else token
        if color != token and notes is not None:
            notes.append(f"{field}: {token!r} written as {color!r}")
        colors.append(color)
    return colors


def build_element(kind: str, desc: str, *, text: str | None = None, bbox: Sequence[int] | None = None,
                  palette: Sequence[str] | None = None) -> dict:
    """One element in canonical key order. ``text`` is used for text elements only."""
    element: dict[str, Any] = {"type": kind}
    if bbox is not None:
        element["bbox"] = list(bbox)
    if kind == "text":
        element["text"] = "" if text is None else text
    element["desc"] = desc
    if palette:
        element["color_palette"] = list(palette)
    return element


def build_style(mode: str, *, aesthetics: str, lighting: str, medium: str, value: str,
                palette: Sequence[str] | None = None) -> dict | None:
    """``style_description`` for ``mode`` 'photo' / 'art_style'; None for 'none'."""
    if mode == "none":
        return None
    if mode == "photo":
        style = {"aesthetics": aesthetics, "lighting": lighting, "photo": value, "medium": medium}
    elif mode == "art_style":
        style = {"aesthetics": aesthetics, "lighting": lighting, "medium": medium, "art_style": value}
    else:
        raise ValueError(f"style_mode {mode!r} is not one of photo, art_style, none")
    if palette:
        style["color_palette"] = list(palette)
    return style


def build_caption(high_level_description: str | None, style: dict | None, background: str,
                  elements: Sequence[dict], palette: Sequence[str] | None = None) -> dict:
    """Assemble a caption dict in canonical order (does not validate).

    ``palette`` is the global palette; it lives in ``style_description`` and so
    needs a ``style`` (ValueError otherwise).
    """
    caption: dict[str, Any] = {}
    if high_level_description and high_level_description.strip():
        caption["high_level_description"] = high_level_description
    if palette:
        if style is None:
            raise ValueError("color_palette needs a style (style_mode 'photo' or 'art_style'): "
                             "the global palette lives in style_description")
        style = {**style, "color_palette": list(palette)}
    if style is not None:
        caption["style_description"] = style
    caption["compositional_deconstruction"] = {"background": background, "elements": list(elements)}
    return canonical_order(caption)


def parse_layout(text: str | None, warnings: list | None = None) -> tuple[list, list[str]]:
    """Parse the Caption Builder's ``layout`` widget (a JSON list of elements).

    Returns (elements, errors); element contents are validated with the caption.  Duplicate keys (the last
    value is kept, as for a pasted caption) are added to ``warnings``.
    """
    if text is None or not text.strip():
        return [], []
    parsed = _Parsed()
    try:
        value = json.loads(text, object_pairs_hook=parsed.pairs_hook, parse_constant=reject_nan_constant)
    except json.JSONDecodeError as exc:
        return [], [f"layout: invalid JSON: {exc}{json_error_hint(text, exc)}; expected a JSON list of element objects"]
    except (ValueError, RecursionError) as exc:
        return [], [f"layout: invalid JSON: {exc}; expected a JSON list of element objects"]
    if not isinstance(value, list):
        return [], [f"layout: got {show_value(value)} ({json_type_name(value)}); expected a JSON list of element objects"]
    if warnings is not None:
        warnings += [m.replace("$", "layout", 1) for m in _duplicate_warnings(value, parsed)]
    return value, []


_ELEMENT_PATH = re.compile(r"^\$\.compositional_deconstruction\.elements\[(\d+)\]")


def _name_element_source(message: str, layout_count: int) -> str:
    """Append where an element came from: ``(layout[2])`` or ``(elements input[0])``."""
    match = _ELEMENT_PATH.match(message)
    if not match:
        return message
    index = int(match.group(1))
    source = f"layout[{index}]" if index < layout_count else f"elements input[{index - layout_count}]"
    return f"{message} ({source})"


def compose_caption(*, high_level_description: str, style_mode: str, aesthetics: str, lighting: str,
                    medium: str, style_value: str, color_palette: str, background: str, layout: str,
                    extra_elements: Sequence[dict] | None = None) -> CaptionReport:
    """Everything the Caption Builder node does, as one testable function.

    Elements are the ``layout`` list followed by ``extra_elements`` (the
    Element chain). Returns the report of the assembled caption; builder-level
    problems (bad layout JSON, palette without a style) are added to its errors.
    """
    errors: list[str] = []
    notes: list[str] = []
    layout_elements, layout_errors = parse_layout(layout, notes)
    errors += layout_errors
    palette = parse_palette(color_palette, notes)
    if style_mode not in ("photo", "art_style", "none"):
        errors.append(f"style_mode: got {style_mode!r}; expected photo, art_style or none")
        style_mode, palette = "none", []  # the mode's error covers the palette, which needs a style
    if palette and style_mode == "none":
        errors.append("color_palette: a global palette needs style_mode 'photo' or 'art_style' "
                      "(it lives in style_description); clear it or pick a style")
        palette = []
    unused = [name for name, v in (("aesthetics", aesthetics), ("lighting", lighting), ("medium", medium),
                                   ("style_value", style_value)) if (v or "").strip()]
    if style_mode == "none" and unused:
        notes.append(f"style_mode none: {', '.join(unused)} not used (no style_description is written); pick "
                     "photo or art_style to use them")
    if style_mode != "none" and not palette and not any((v or "").strip() for v in (aesthetics, lighting, style_value)):
        dropped = f" (medium {medium.strip()!r} alone is not a style)" if (medium or "").strip() else ""
        notes.append(f"style_mode {style_mode}: aesthetics, lighting and style_value are empty, so no "
                     f"style_description is written{dropped}; fill them in, or set style_mode to none")
        style_mode = "none"
    style = build_style(style_mode, aesthetics=aesthetics, lighting=lighting, medium=medium, value=style_value)
    elements = list(layout_elements) + list(extra_elements or [])
    caption = build_caption(high_level_description, style, background, elements, palette)
    try:
        text = canonical_json(caption)
    except (TypeError, ValueError) as exc:
        report = CaptionReport(errors=errors + [f"$: cannot serialise caption: {exc}"])
        return report
    report = check_caption(text, dialect="documented")
    report.errors = [_name_element_source(m, len(layout_elements)) for m in report.errors]
    report.fixes = [_name_element_source(m, len(layout_elements)) for m in report.fixes]
    report.warnings[:0] = notes
    if errors:
        report.errors[:0] = errors
        report.canonical = report.data = None
    return report


def check_element(element: dict) -> list[str]:
    """Errors for one element on its own (paths start at ``element``)."""
    wrapper = {"compositional_deconstruction": {"background": "", "elements": [element]}}
    try:
        text = json.dumps(wrapper, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return [f"element: cannot serialise: {exc}"]
    prefix = "$.compositional_deconstruction.elements[0]"
    return [m.replace(prefix, "element", 1) for m in check_caption(text, dialect="documented").errors]
