"""The caption contract: JSON schema, the reference-compatible checker, builders and Magic Prompt (no torch)."""

from .checker import CaptionError, CaptionReport, check_caption, element_order, require_caption, strip_code_fences
from .builders import (build_caption, build_element, build_style, canonical_json, compose_caption, parse_layout,
                       parse_palette, pretty_json)

__all__ = ["CaptionError", "CaptionReport", "check_caption", "element_order", "require_caption", "strip_code_fences",
           "build_caption", "build_element", "build_style", "canonical_json", "compose_caption", "parse_layout",
           "parse_palette", "pretty_json"]
