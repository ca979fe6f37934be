"""Ideogram 4 caption schema facts: key orders, limits and the JSON Schema (spec §6.1/§6.3).

Pure data plus the ``jsonschema`` validator built from it; the checking logic is in
``model/caption.py`` and the builders in ``model/caption_builders.py``.
"""

from __future__ import annotations

import jsonschema

# --------------------------------------------------------------------------- #
# Schema facts (spec 6.1 / 6.3, reference CaptionVerifier).
# --------------------------------------------------------------------------- #

TOP_LEVEL_ORDER = ("high_level_description", "style_description", "compositional_deconstruction")
STYLE_ORDER_PHOTO = ("aesthetics", "lighting", "photo", "medium", "color_palette")
STYLE_ORDER_ART = ("aesthetics", "lighting", "medium", "art_style", "color_palette")
COMPOSITION_ORDER = ("background", "elements")
ELEMENT_ORDER = {
    "obj": ("type", "bbox", "desc", "color_palette"),
    "text": ("type", "bbox", "text", "desc", "color_palette"),
}
ELEMENT_TYPES = ("obj", "text")
BBOX_MIN, BBOX_MAX = 0, 1000
STYLE_PALETTE_MAX = 16
ELEMENT_PALETTE_MAX = 5
DIALECTS = ("auto", "documented", "magic_prompt")

#: Inputs the reference verifier accepts but we reject, with the reason.
STRICTER_THAN_REFERENCE = {
    "non_string_text_fields": "desc, text, aesthetics, lighting, photo, medium and art_style must be strings "
    "(the reference only type-checks high_level_description and background)",
    "boolean_bbox": "true/false are not bbox integers (the reference accepts them because bool is an int "
    "subclass in Python)",
    "lone_surrogate": "unpaired UTF-16 surrogates (\\ud800-\\udfff) are not valid Unicode text",
    "nan_infinity": "NaN / Infinity are not JSON (Python's json module accepts them)",
}

HEX_COLOR_RULE = "an uppercase #RRGGBB hex colour"
BBOX_RULE = f"exactly 4 integers [y_min, x_min, y_max, x_max] in {BBOX_MIN}..{BBOX_MAX}"


def _string(rule: str = "a string") -> dict:
    return {"type": "string", "description": rule}


def _palette(max_colors: int) -> dict:
    return {
        "type": "array",
        "maxItems": max_colors,
        "description": f"a list of at most {max_colors} uppercase #RRGGBB colours",
        "items": {
            "type": "string",
            "minLength": 7,
            "maxLength": 7,
            "pattern": "^#[0-9A-F]{6}$",
            "description": HEX_COLOR_RULE,
        },
    }


_ELEMENT_SCHEMA = {
    "type": "object",
    "description": "an element object",
    "required": ["type", "desc"],
    "properties": {
        "type": {"enum": list(ELEMENT_TYPES), "description": "'obj' or 'text'"},
        "bbox": {
            "type": "array",
            "minItems": 4,
            "maxItems": 4,
            "description": BBOX_RULE,
            "items": {
                "type": "integer",
                "minimum": BBOX_MIN,
                "maximum": BBOX_MAX,
                "description": f"an integer in {BBOX_MIN}..{BBOX_MAX}",
            },
        },
        "text": _string("a string (the literal characters to render)"),
        "desc": _string(),
        "color_palette": _palette(ELEMENT_PALETTE_MAX),
    },
    "additionalProperties": False,
    "if": {"properties": {"type": {"const": "text"}}, "required": ["type"]},
    "then": {"required": ["text"]},
}

#: The caption schema (structure and types). Key order, photo xor art_style,
#: bbox min <= max and "text only on text elements" are checked in code.
CAPTION_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Ideogram 4 caption (documented dialect)",
    "type": "object",
    "description": "a JSON object",
    "required": ["compositional_deconstruction"],
    "properties": {
        "high_level_description": _string(),
        "style_description": {
            "type": "object",
            "description": "an object",
            "required": ["aesthetics", "lighting", "medium"],
            "properties": {
                "aesthetics": _string(),
                "lighting": _string(),
                "photo": _string(),
                "medium": _string(),
                "art_style": _string(),
                "color_palette": _palette(STYLE_PALETTE_MAX),
            },
            "additionalProperties": False,
        },
        "compositional_deconstruction": {
            "type": "object",
            "description": "an object",
            "required": list(COMPOSITION_ORDER),
            "properties": {
                "background": _string(),
                "elements": {"type": "array", "description": "a list of elements", "items": _ELEMENT_SCHEMA},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

VALIDATOR = jsonschema.Draft202012Validator(CAPTION_SCHEMA)
