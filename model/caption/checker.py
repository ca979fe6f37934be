"""Ideogram 4 caption JSON: validation, normalisation and canonical form (the model's input contract).

Pure Python (no torch, no ComfyUI). The rules are those of the reference
``CaptionVerifier`` (spec section 6.3); structure and types are checked with a
JSON Schema (draft 2020-12, via ``jsonschema``), the rest (key order,
``photo`` xor ``art_style``, bbox min <= max, the raw-text ``\\uXXXX`` check) in
plain code below.

A check never raises for any input text. It returns a :class:`CaptionReport`:

* ``errors``      problems we cannot repair without guessing; each names the
                  JSON path, the value and the rule.
* ``fixes``       repairs of things the reference verifier flags but whose
                  meaning is unambiguous (key order, lowercase hex, integral
                  float bbox values, ``ensure_ascii`` escapes, ...).
* ``formatting``  canonicalisation the reference verifier does *not* flag
                  (whitespace, top-level key order, dropped duplicate keys).
* ``warnings``    advice that changes nothing (missing high-level description,
                  empty strings, zero-area boxes, duplicate keys, ...).

Contract: text the reference verifier accepts gets no errors and no fixes;
text it flags gets errors or fixes naming the same JSON path. Deliberate
divergences (we are stricter) are listed in ``STRICTER_THAN_REFERENCE``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import jsonschema

from .schema import (
    BBOX_MAX,
    BBOX_MIN,
    COMPOSITION_ORDER,
    DIALECTS,
    ELEMENT_ORDER,
    STYLE_ORDER_ART,
    STYLE_ORDER_PHOTO,
    TOP_LEVEL_ORDER,
    HEX_COLOR_RULE,
    VALIDATOR,
)

# --------------------------------------------------------------------------- #
# Report types.
# --------------------------------------------------------------------------- #


#: The module name our exception types report (see :class:`CaptionError`).
ERROR_MODULE = "ideogram4_native"


@dataclass
class CaptionReport:
    """Outcome of :func:`check_caption`."""

    errors: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    formatting: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    canonical: str | None = None
    data: dict | None = None
    #: The magic-prompt ``aspect_ratio`` value that was dropped, if any.
    aspect_ratio: Any = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def strict(self) -> "CaptionReport":
        """Treat every fix as an error (only captions the reference verifier accepts as they are pass)."""
        self.errors = self.errors + [f"strict: {m}" for m in self.fixes]
        if self.errors:
            self.canonical = self.data = None
        return self

    def summary_lines(self, fixed: str = "fixed", formatted: str = "format") -> list[str]:
        """Human-readable lines for a node's UI (errors first); ``fixed`` / ``formatted`` label the repairs (a caller
        that encodes the text verbatim says they were not applied)."""
        lines = [f"error: {m}" for m in self.errors]
        lines += [f"{fixed}: {m}" for m in self.fixes]
        lines += [f"{formatted}: {m}" for m in self.formatting]
        lines += [f"warning: {m}" for m in self.warnings]
        return lines


class CaptionError(ValueError):
    """A caption with problems; ``report`` carries every one of them.

    ComfyUI shows an error's type as ``module.qualname`` (``execution.full_type_name``), and it
    imports the pack under a module name made of its folder path; a fixed public module name keeps
    the type readable (``ideogram4_native.CaptionError``) wherever the pack is installed.
    """

    __module__ = ERROR_MODULE

    def __init__(self, report: CaptionReport, context: str = "Ideogram 4 caption"):
        self.report = report
        count = len(report.errors)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{context}: {count} {noun}:"] + [f"  - {m}" for m in report.errors]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- #
# Small helpers.
# --------------------------------------------------------------------------- #

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEX6_ANY_CASE = re.compile(r"#[0-9a-fA-F]{6}")
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_SURROGATE = re.compile("[\ud800-\udfff]")
_FENCED_BLOCK = re.compile(r"```[^\n`]*\n(.*?)\n?[ \t]*```", re.DOTALL)
_WHOLE_FENCE = re.compile(r"```[^\n`{\[]*\n?(.*?)\s*(?:```)?", re.DOTALL)


def json_path(parts: Iterable[Any]) -> str:
    """``['a', 0, 'b c']`` -> ``$.a[0]["b c"]``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}"
        else:
            out += "[" + json.dumps(part, ensure_ascii=False) + "]"
    return out


def show_value(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of a value for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_KEY_RANK = {key: rank for rank, key in enumerate(
    TOP_LEVEL_ORDER + ("aspect_ratio",) + STYLE_ORDER_PHOTO + ("art_style",) + COMPOSITION_ORDER
    + ELEMENT_ORDER["text"]
)}


def _path_sort_key(parts: Sequence[Any]) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, _KEY_RANK.get(p, 99), p) for p in parts)


def reordered(obj: dict, order: Sequence[str]) -> dict:
    """Known keys in ``order``, unknown ones after them in their original order."""
    known = [k for k in order if k in obj]
    extra = [k for k in obj if k not in order]
    return {k: obj[k] for k in known + extra}


def _known_order_differs(obj: dict, order: Sequence[str]) -> bool:
    return [k for k in obj if k in order] != [k for k in order if k in obj]


def strip_code_fences(text: str) -> tuple[str, str | None]:
    """Remove a Markdown code fence around JSON. Returns (text, fix message or None).

    Handles a fence around the whole text (```json ... ```) and, for text that is
    not JSON itself, the first fenced block inside chatty LLM output.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        match = _WHOLE_FENCE.fullmatch(stripped)
        body = match.group(1) if match else stripped.lstrip("`")
        return body.strip(), "$: removed the surrounding ``` code fence"
    if not stripped.startswith(("{", "[")):
        match = _FENCED_BLOCK.search(stripped)
        if match:
            outside = len(stripped) - len(match.group(0))
            return match.group(1).strip(), (
                f"$: used the JSON inside the ``` code fence and ignored {outside} characters of text around it"
            )
    return text, None


def _escape_issue(raw: str) -> list[str] | None:
    """The reference's raw-text rule: non-ASCII \\uXXXX escapes and no literal non-ASCII.

    Returns the escapes found (the rule fires) or None.
    """
    found = [m.group(0) for m in _ESCAPE.finditer(raw) if int(m.group(1), 16) >= 0x80]
    if not found or any(ord(c) > 0x7F for c in raw):
        return None
    return found


# --------------------------------------------------------------------------- #
# Parsing.
# --------------------------------------------------------------------------- #


class _Parsed:
    def __init__(self) -> None:
        # id -> (the object, kept alive so its id is not reused; its duplicate keys)
        self.duplicates: dict[int, tuple[dict, list[str]]] = {}

    def pairs_hook(self, pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            dups = []
            for key, _ in pairs:
                if key in seen and key not in dups:
                    dups.append(key)
                seen.add(key)
            self.duplicates[id(obj)] = (obj, dups)
        return obj


def reject_nan_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


CURLY_QUOTES = "\u201c\u201d\u2018\u2019"


def json_error_hint(text: str, exc: json.JSONDecodeError) -> str:
    """What a JSON syntax error usually means in a caption typed into a widget (empty, plain text, a line break
    or tab inside a string, word-processor quotes)."""
    if not text.strip():
        return " — the caption is empty (connect the Caption Builder, or type a JSON caption)"
    if not text.strip().startswith(("{", "[")):
        return (" — a caption is a JSON object; plain-text prompts are not captions "
                "(use the Caption Builder or Magic Prompt node)")
    if exc.msg.startswith("Invalid control character"):
        return " — a line break or tab inside a JSON string must be written as \\n or \\t"
    if any(q in text for q in CURLY_QUOTES):
        return " — the text has curly quotes (\u201c \u201d \u2018 \u2019, e.g. pasted from a word processor); JSON needs straight \" quotes"
    return ""


def _parse(text: str, report: CaptionReport) -> tuple[bool, Any, _Parsed]:
    parsed = _Parsed()
    try:
        value = json.loads(text, object_pairs_hook=parsed.pairs_hook, parse_constant=reject_nan_constant)
    except json.JSONDecodeError as exc:
        report.errors.append(f"$: invalid JSON: {exc}{json_error_hint(text, exc)}")
        return False, None, parsed
    except RecursionError:
        report.errors.append("$: invalid JSON: nested too deeply")
        return False, None, parsed
    except ValueError as exc:  # NaN/Infinity, integers with too many digits
        report.errors.append(f"$: invalid JSON: {exc}")
        return False, None, parsed
    return True, value, parsed


def _walk(value: Any):
    """Yield (path parts, value) for every node, iteratively (deep input is safe)."""
    stack: list[tuple[tuple, Any]] = [((), value)]
    while stack:
        parts, node = stack.pop()
        yield parts, node
        if isinstance(node, dict):
            stack.extend((parts + (k,), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((parts + (i,), v) for i, v in reversed(list(enumerate(node))))


# --------------------------------------------------------------------------- #
# Normalisation (meaning-preserving repairs, recorded as fixes).
# --------------------------------------------------------------------------- #


def element_order(element: dict) -> tuple[str, ...] | None:
    """Canonical key order for an element of a known ``type`` (None for a missing or invalid type)."""
    kind = element.get("type")
    return ELEMENT_ORDER.get(kind) if isinstance(kind, str) else None


class _Normaliser:
    def __init__(self, report: CaptionReport, dialect: str, drop_bboxes: bool = False) -> None:
        self.report = report
        self.dialect = dialect
        self.drop_bboxes = drop_bboxes
        self.dropped_bboxes = 0
        #: Errors found while normalising, and the paths they fully explain
        #: (schema errors at or below those paths are redundant).
        self.errors: list[tuple[tuple, str]] = []
        self.explained: set[tuple] = set()

    def fix(self, parts: Sequence[Any], message: str) -> None:
        self.report.fixes.append(f"{json_path(parts)}: {message}")

    def caption(self, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "aspect_ratio" in data and self.dialect != "documented":
            self.report.aspect_ratio = data["aspect_ratio"]
            self.fix(("aspect_ratio",), f"dropped the magic-prompt key (value {show_value(data['aspect_ratio'])}); "
                     "the image size comes from width/height, not from the caption")
            data = {k: v for k, v in data.items() if k != "aspect_ratio"}
        if _known_order_differs(data, TOP_LEVEL_ORDER):
            self.report.formatting.append("$: top-level keys put in canonical order "
                                          "(high_level_description, style_description, compositional_deconstruction)")
        data = reordered(data, TOP_LEVEL_ORDER)
        if isinstance(data.get("style_description"), dict):
            data["style_description"] = self.style(data["style_description"], ("style_description",))
        if isinstance(data.get("compositional_deconstruction"), dict):
            data["compositional_deconstruction"] = self.composition(
                data["compositional_deconstruction"], ("compositional_deconstruction",))
        return data

    def style(self, style: dict, parts: tuple) -> dict:
        style = self.british_palette(style, parts)
        has_photo, has_art = "photo" in style, "art_style" in style
        if has_photo != has_art:
            style = self.reorder(style, STYLE_ORDER_PHOTO if has_photo else STYLE_ORDER_ART, parts)
        if isinstance(style.get("color_palette"), list):
            self.palette(style["color_palette"], parts + ("color_palette",))
        return style

    def composition(self, comp: dict, parts: tuple) -> dict:
        if _known_order_differs(comp, COMPOSITION_ORDER):
            self.fix(parts, "keys reordered to background, elements")
            comp = reordered(comp, COMPOSITION_ORDER)
        elements = comp.get("elements")
        if isinstance(elements, list):
            comp["elements"] = [
                self.element(e, parts + ("elements", i)) if isinstance(e, dict) else e
                for i, e in enumerate(elements)
            ]
        return comp

    def element(self, element: dict, parts: tuple) -> dict:
        if self.drop_bboxes and "bbox" in element:
            element = {k: v for k, v in element.items() if k != "bbox"}
            self.dropped_bboxes += 1
        element = self.british_palette(element, parts)
        order = element_order(element)
        if order:
            element = self.reorder(element, order, parts)
        if isinstance(element.get("bbox"), list):
            self.bbox(element["bbox"], parts + ("bbox",))
        if isinstance(element.get("color_palette"), list):
            self.palette(element["color_palette"], parts + ("color_palette",))
        return element

    def reorder(self, obj: dict, order: Sequence[str], parts: tuple) -> dict:
        """``obj`` with its known keys in ``order``, reporting the change as a fix."""
        if not _known_order_differs(obj, order):
            return obj
        was = ", ".join(k for k in obj if k in order)
        self.fix(parts, f"keys reordered to {', '.join(k for k in order if k in obj)} (was {was})")
        return reordered(obj, order)

    def british_palette(self, obj: dict, parts: tuple) -> dict:
        if "colour_palette" in obj and "color_palette" not in obj:
            self.fix(parts, "renamed 'colour_palette' to 'color_palette'")
            return {("color_palette" if k == "colour_palette" else k): v for k, v in obj.items()}
        return obj

    def palette(self, palette: list, parts: tuple) -> None:
        for i, color in enumerate(palette):
            if isinstance(color, str) and _HEX6_ANY_CASE.fullmatch(color) and color != color.upper():
                palette[i] = color.upper()
                self.fix(parts + (i,), f"{color} -> {palette[i]} (hex digits must be uppercase)")

    def bbox(self, bbox: list, parts: tuple) -> None:
        numbers = [v for v in bbox if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if (len(numbers) == len(bbox) and any(isinstance(v, float) and not v.is_integer() for v in numbers)
                and all(0 <= v <= 1 for v in numbers)):
            scaled = [int(math.floor(v * 1000 + 0.5)) for v in numbers]
            self.errors.append((parts, f"{json_path(parts)}: got {show_value(bbox)}, which looks like 0..1 fractions; "
                                       f"expected integers in {BBOX_MIN}..{BBOX_MAX} (multiply by 1000: {scaled})"))
            self.explained.add(parts)
            return
        changed = []
        for i, value in enumerate(bbox):
            if isinstance(value, float) and math.isfinite(value):
                rounded = int(math.floor(value + 0.5))
                verb = "" if value.is_integer() else "rounded "
                bbox[i] = rounded
                changed.append(f"[{i}] {value!r} -> {verb}{rounded}")
        if changed:
            self.fix(parts, "bbox values must be integers: " + ", ".join(changed))


# --------------------------------------------------------------------------- #
# Rules.
# --------------------------------------------------------------------------- #

_UNKNOWN_KEY_HINTS = {
    "aspect_ratio": "the magic-prompt key; check with dialect 'auto' or 'magic_prompt' to drop it",
    "colour_palette": "use only 'color_palette'",
    "canvas": "not part of the schema; image size comes from width/height",
    "layout": "not part of the schema; put boxes in elements[*].bbox",
}


def _schema_error_message(err: jsonschema.ValidationError) -> tuple[tuple, str]:
    parts = tuple(err.absolute_path)
    path = json_path(parts)
    inst = err.instance
    rule = err.schema.get("description") if isinstance(err.schema, dict) else None
    kind = err.validator
    if kind == "required":
        missing = [k for k in err.validator_value if k not in inst]
        text = ", ".join(f"'{k}'" for k in missing)
        hint = ""
        if "text" in missing and inst.get("type") == "text":
            hint = " (text elements carry the literal characters in 'text')"
        elif missing == ["elements"]:
            hint = " (use [] for no elements)"
        return parts, f"{path}: missing required key {text}{hint}"
    if kind == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        lines = []
        for key in inst:
            if key not in allowed:
                hint = _UNKNOWN_KEY_HINTS.get(key, "not in the caption schema")
                lines.append(f"'{key}' ({hint})")
        return parts, f"{path}: unknown key {', '.join(lines)}; allowed here: {', '.join(allowed)}"
    if kind == "type":
        return parts, f"{path}: got {show_value(inst)} ({json_type_name(inst)}); expected {rule or err.validator_value}"
    if kind in ("maxItems", "minItems") and isinstance(inst, list):
        return parts, f"{path}: got {len(inst)} entries {show_value(inst)}; expected {rule}"
    if kind in ("pattern", "minLength", "maxLength") and rule == HEX_COLOR_RULE:
        suggestion = _hex_suggestion(inst)
        return parts, f"{path}: got {show_value(inst)}; expected {rule}{suggestion}"
    return parts, f"{path}: got {show_value(inst)}; expected {rule or err.message}"


def _hex_suggestion(value: str) -> str:
    body = value.strip().lstrip("#")
    if re.fullmatch(r"[0-9a-fA-F]{3}", body):
        full = "#" + "".join(c * 2 for c in body.upper())
        return f" (shorthand colours are not allowed; did you mean '{full}'?)"
    if re.fullmatch(r"[0-9a-fA-F]{6}", body):
        return f" (did you mean '#{body.upper()}'?)"
    return ""


def _rule_errors(data: dict) -> list[tuple[tuple, str]]:
    """Rules the schema does not express."""
    out: list[tuple[tuple, str]] = []
    style = data.get("style_description")
    if isinstance(style, dict):
        parts = ("style_description",)
        has_photo, has_art = "photo" in style, "art_style" in style
        if has_photo and has_art:
            out.append((parts, f"{json_path(parts)}: has both 'photo' and 'art_style'; "
                               "expected exactly one ('photo' for photographs, 'art_style' otherwise)"))
        elif not has_photo and not has_art:
            out.append((parts, f"{json_path(parts)}: needs exactly one of 'photo' (photographs) "
                               "or 'art_style' (everything else)"))
    comp = data.get("compositional_deconstruction")
    elements = comp.get("elements") if isinstance(comp, dict) else None
    if isinstance(elements, list):
        for i, element in enumerate(elements):
            if not isinstance(element, dict):
                continue
            parts = ("compositional_deconstruction", "elements", i)
            if element.get("type") == "obj" and "text" in element:
                out.append((parts, f"{json_path(parts)}: key 'text' is only allowed on text elements "
                                   "(this one has type 'obj'; use type 'text' or move the words into 'desc')"))
            out.extend(_bbox_order_errors(element.get("bbox"), parts + ("bbox",)))
    return out


def _bbox_order_errors(bbox: Any, parts: tuple) -> list[tuple[tuple, str]]:
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in bbox)):
        return []
    y_min, x_min, y_max, x_max = bbox
    out = []
    if y_min > y_max:
        out.append((parts, f"{json_path(parts)}: y_min {y_min} > y_max {y_max}; expected "
                           "[y_min, x_min, y_max, x_max] with y_min <= y_max"))
    if x_min > x_max:
        out.append((parts, f"{json_path(parts)}: x_min {x_min} > x_max {x_max}; expected "
                           "[y_min, x_min, y_max, x_max] with x_min <= x_max"))
    return out


def _surrogate_errors(data: Any) -> list[tuple[tuple, str]]:
    out = []
    for parts, node in _walk(data):
        if isinstance(node, str) and _SURROGATE.search(node):
            char = _SURROGATE.search(node).group(0)
            out.append((parts, f"{json_path(parts)}: contains an unpaired surrogate \\u{ord(char):04x}; "
                               "expected valid Unicode text"))
        if isinstance(node, dict):
            for key in node:
                if _SURROGATE.search(key):
                    out.append((parts, f"{json_path(parts)}: a key contains an unpaired surrogate; "
                                       "expected valid Unicode text"))
    return out


def _literal_escape_errors(data: Any) -> list[tuple[tuple, str]]:
    """Strings holding a literal backslash-u sequence, which the raw-text rule misreads."""
    out = []
    for parts, node in _walk(data):
        if isinstance(node, str):
            match = next((m for m in _ESCAPE.finditer(node) if int(m.group(1), 16) >= 0x80), None)
            if match:
                out.append((parts, f"{json_path(parts)}: contains the literal characters {match.group(0)!s} "
                                   "(a backslash, 'u' and hex digits), which the verifier reads as an "
                                   "ensure_ascii escape; write the character itself or drop the backslash"))
    return out


def _advice(data: dict) -> list[str]:
    out = []
    if "high_level_description" not in data:
        out.append("$: no high_level_description (optional, but strongly recommended)")
    elif not data["high_level_description"].strip():
        out.append("$.high_level_description: empty (strongly recommended to describe the image)")
    style = data.get("style_description")
    if style:
        medium = style.get("medium", "")
        if "photo" in style and medium != "photograph":
            out.append(f"$.style_description.medium: {show_value(medium)} with 'photo'; "
                       "documented photo captions use medium 'photograph'")
        if "art_style" in style and medium == "photograph":
            out.append("$.style_description.medium: 'photograph' with 'art_style'; "
                       "photographs use 'photo' instead of 'art_style'")
        for key in ("aesthetics", "lighting", "medium", "photo", "art_style"):
            if key in style and not style[key].strip():
                out.append(f"$.style_description.{key}: empty")
    comp = data["compositional_deconstruction"]
    if not comp["background"].strip():
        out.append("$.compositional_deconstruction.background: empty")
    for i, element in enumerate(comp["elements"]):
        path = f"$.compositional_deconstruction.elements[{i}]"
        for key in ("text", "desc"):
            if key in element and not element[key].strip():
                out.append(f"{path}.{key}: empty")
        bbox = element.get("bbox")
        if bbox and (bbox[0] == bbox[2] or bbox[1] == bbox[3]):
            out.append(f"{path}.bbox: {show_value(bbox)} has zero area")
    return out


def _duplicate_warnings(data: Any, parsed: _Parsed) -> list[str]:
    if not parsed.duplicates:
        return []
    out = []
    for parts, node in _walk(data):
        entry = parsed.duplicates.get(id(node)) if isinstance(node, dict) else None
        if entry and entry[0] is node:
            keys = ", ".join(f"'{k}'" for k in entry[1])
            out.append(f"{json_path(parts)}: duplicate key {keys}; the last value was kept")
    return out


def _sorted_unique(items: list[tuple[tuple, str]]) -> list[str]:
    seen: set[str] = set()
    out = []
    for _, message in sorted(items, key=lambda item: _path_sort_key(item[0])):
        if message not in seen:
            seen.add(message)
            out.append(message)
    return out


# --------------------------------------------------------------------------- #
# Public API.
# --------------------------------------------------------------------------- #


def check_caption(text: Any, *, dialect: str = "auto", drop_bboxes: bool = False) -> CaptionReport:
    """Validate and canonicalise caption text. Never raises for any ``text``.

    ``dialect``: ``"auto"`` (accept both), ``"documented"`` (``aspect_ratio`` is
    an error) or ``"magic_prompt"`` (``aspect_ratio`` is expected and dropped).
    ``drop_bboxes``: remove every element's ``bbox`` (reported as a fix), for
    layout-free Magic Prompt output.
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect {dialect!r} is not one of {', '.join(DIALECTS)}")
    report = CaptionReport()
    if not isinstance(text, str):
        report.errors.append(f"$: expected caption text (a string), got {type(text).__name__}")
        return report
    try:
        _check_text(text, dialect, report, drop_bboxes)
    except RecursionError:  # pathological nesting inside a known field
        report.errors.append("$: caption is nested too deeply")
    if report.errors:
        report.canonical = report.data = None
    return report


def _check_text(text: str, dialect: str, report: CaptionReport, drop_bboxes: bool = False) -> None:
    raw = text
    if raw.startswith("\ufeff"):
        raw = raw[1:]
        report.formatting.append("$: removed a byte-order mark")
    raw, fence_fix = strip_code_fences(raw)
    if fence_fix:
        report.fixes.append(fence_fix)

    escapes = _escape_issue(raw)
    escape_fix = None
    if escapes:
        examples = ", ".join(sorted(set(escapes))[:3])
        escape_fix = (f"$: {len(escapes)} \\uXXXX escape(s) of non-ASCII characters (e.g. {examples}) written as "
                      "literal UTF-8 (the text was serialised with ensure_ascii=True)")
        report.fixes.append(escape_fix)

    ok, data, parsed = _parse(raw, report)
    if not ok:
        return
    try:
        as_is = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError):
        as_is = None

    report.warnings.extend(_duplicate_warnings(data, parsed))
    normaliser = _Normaliser(report, dialect, drop_bboxes)
    data = normaliser.caption(data)
    if normaliser.dropped_bboxes:
        report.fixes.append(f"$.compositional_deconstruction.elements: removed {normaliser.dropped_bboxes} "
                            "bbox(es) (keep_bboxes is off)")

    problems = list(normaliser.errors)
    schema_errors = list(VALIDATOR.iter_errors(data))
    # a value of the wrong type gets that one message, not also its range's (Infinity is a number, not an integer)
    mistyped = {tuple(e.absolute_path) for e in schema_errors if e.validator == "type"}
    for error in schema_errors:
        parts = tuple(error.absolute_path)
        if error.validator != "type" and parts in mistyped:
            continue
        if not any(parts[: len(p)] == p for p in normaliser.explained):
            problems.append(_schema_error_message(error))
    if isinstance(data, dict):
        problems += _rule_errors(data)
    problems += _surrogate_errors(data)
    report.errors.extend(_sorted_unique(problems))
    if report.errors:
        return

    canonical = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if _escape_issue(canonical):
        if escape_fix:
            report.fixes.remove(escape_fix)
        report.errors.extend(_sorted_unique(_literal_escape_errors(data)) or [
            "$: the canonical text still contains \\uXXXX sequences; write the characters themselves"])
        return
    if not escapes and _ESCAPE.search(raw) and as_is is not None and as_is != raw:
        report.formatting.append("$: \\uXXXX escapes written as literal characters")
    if as_is != raw:
        report.formatting.append("$: re-serialised as minified canonical JSON (whitespace or escaping differed)")
    report.warnings.extend(_advice(data))
    report.canonical = canonical
    report.data = data


def require_caption(text: Any, *, dialect: str = "auto", context: str = "Ideogram 4 caption") -> str:
    """The canonical caption string, or :class:`CaptionError` listing every problem."""
    report = check_caption(text, dialect=dialect)
    if report.errors:
        raise CaptionError(report, context)
    return report.canonical
