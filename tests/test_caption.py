"""Caption JSON: rules, normalisation, canonical form, builders, agreement with the reference verifier."""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest

from model.caption import builders
from model.caption import schema
from model.caption import CaptionError, check_caption, require_caption

GOLDEN = Path(__file__).parent / "data" / "caption_golden.json"


def mini(obj, ensure_ascii=False):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=ensure_ascii)


PHOTO = {
    "high_level_description": "A golden retriever riding a skateboard down a sunny sidewalk.",
    "style_description": {
        "aesthetics": "warm, playful",
        "lighting": "bright afternoon sunlight",
        "photo": "85mm lens, eye level",
        "medium": "photograph",
        "color_palette": ["#F5C542", "#87CEEB"],
    },
    "compositional_deconstruction": {
        "background": "A suburban sidewalk lined with hedges.",
        "elements": [
            {"type": "obj", "bbox": [200, 300, 800, 900], "desc": "A golden retriever on a red skateboard."},
            {"type": "text", "bbox": [50, 100, 120, 400], "text": "Café Ünïcödé 東京", "desc": "Shop sign.",
             "color_palette": ["#FFFFFF"]},
        ],
    },
}

ART = {
    "high_level_description": "A business card.",
    "style_description": {"aesthetics": "minimal", "lighting": "even", "medium": "graphic_design",
                          "art_style": "flat vector"},
    "compositional_deconstruction": {"background": "Off-white card.", "elements": [
        {"type": "text", "text": "ACME", "desc": "Bold name."}]},
}

EL0 = "$.compositional_deconstruction.elements[0]"


def with_(base, fn):
    data = copy.deepcopy(base)
    fn(data)
    return data


def els(data):
    return data["compositional_deconstruction"]["elements"]


def only_error(text, **kw):
    report = check_caption(text, **kw)
    assert len(report.errors) == 1, report.errors
    assert report.canonical is None and report.data is None
    return report.errors[0]


# --------------------------------------------------------------------------- #
# Accepting valid captions: no errors, no fixes, unchanged.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("caption", [PHOTO, ART, {"compositional_deconstruction": {"background": "", "elements": []}}])
def test_canonical_caption_passes_untouched(caption):
    text = mini(caption)
    report = check_caption(text)
    assert report.errors == [] and report.fixes == [] and report.formatting == []
    assert report.canonical == text
    assert report.data == caption
    assert require_caption(text) == text


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(schema.CAPTION_SCHEMA)
    assert schema.CAPTION_SCHEMA["$schema"].endswith("2020-12/schema")


# --------------------------------------------------------------------------- #
# Canonical serialisation.
# --------------------------------------------------------------------------- #


def test_pretty_printed_input_is_minified_as_formatting_not_fix():
    report = check_caption(json.dumps(PHOTO, indent=2, ensure_ascii=False))
    assert report.errors == [] and report.fixes == []
    assert report.canonical == mini(PHOTO)
    assert any("minified" in m for m in report.formatting)


def test_canonical_uses_compact_separators_and_literal_utf8():
    canonical = require_caption(json.dumps(PHOTO, indent=4, ensure_ascii=False))
    assert '":' in canonical and '": ' not in canonical and '", "' not in canonical
    assert "Café Ünïcödé 東京" in canonical and "\\u" not in canonical
    assert "\n" not in canonical


def test_ensure_ascii_escapes_are_a_fix_and_become_literal():
    report = check_caption(mini(PHOTO, ensure_ascii=True))
    assert report.errors == []
    assert report.canonical == mini(PHOTO)
    assert len(report.fixes) == 1 and "ensure_ascii=True" in report.fixes[0] and "\\u00e9" in report.fixes[0]


def test_escape_rule_starts_at_u0080():
    ascii_text = mini(with_(ART, lambda d: els(d)[0].update(text="A\u0080B")), ensure_ascii=True)
    assert "\\u0080" in ascii_text
    report = check_caption(ascii_text)
    assert report.errors == [] and report.canonical == mini(with_(ART, lambda d: els(d)[0].update(text="A\u0080B")))
    assert len(report.fixes) == 1 and "(e.g. \\u0080)" in report.fixes[0]
    escaped_ascii = mini(ART).replace("ACME", "ACM\\u0045")  # an escaped ASCII letter is not the rule's case
    report = check_caption(escaped_ascii)
    assert report.errors == [] and report.fixes == [] and report.canonical == mini(ART)
    assert "$: \\uXXXX escapes written as literal characters" in report.formatting


def test_mixed_escapes_and_literals_are_only_formatting():
    text = mini(PHOTO).replace("é", "\\u00e9")  # "東京" stays literal
    report = check_caption(text)
    assert report.errors == [] and report.fixes == []
    assert report.canonical == mini(PHOTO)
    assert report.formatting


def test_top_level_key_order_is_canonicalised_as_formatting():
    shuffled = {k: PHOTO[k] for k in reversed(list(PHOTO))}
    report = check_caption(mini(shuffled))
    assert report.fixes == [] and report.errors == []
    assert list(json.loads(report.canonical)) == list(schema.TOP_LEVEL_ORDER)
    assert any("top-level" in m for m in report.formatting)


def test_nested_key_reordering_is_a_fix_with_path():
    data = with_(PHOTO, lambda d: None)
    data["style_description"] = dict(reversed(list(PHOTO["style_description"].items())))
    data["compositional_deconstruction"] = {"elements": [dict(reversed(list(e.items()))) for e in els(PHOTO)],
                                            "background": PHOTO["compositional_deconstruction"]["background"]}
    report = check_caption(mini(data))
    assert report.errors == []
    assert report.canonical == mini(PHOTO)
    joined = "\n".join(report.fixes)
    assert "$.style_description: keys reordered to aesthetics, lighting, photo, medium, color_palette" in joined
    assert "$.compositional_deconstruction: keys reordered to background, elements" in joined
    assert f"{EL0}: keys reordered to type, bbox, desc" in joined
    assert "$.compositional_deconstruction.elements[1]: keys reordered to type, bbox, text, desc, color_palette" in joined


def test_canonicalisation_is_idempotent():
    first = check_caption(json.dumps(with_(PHOTO, lambda d: els(d)[0].update(bbox=[200.0, 300, 800, 900])), indent=1))
    second = check_caption(first.canonical)
    assert second.canonical == first.canonical
    assert second.fixes == [] and second.formatting == [] and second.errors == []


def test_canonical_json_and_pretty_json_from_dicts():
    shuffled = {"compositional_deconstruction": {"elements": [{"desc": "d", "type": "obj"}], "background": "b"},
                "style_description": {"art_style": "s", "medium": "m", "lighting": "l", "aesthetics": "a"}}
    assert builders.canonical_json(shuffled) == (
        '{"style_description":{"aesthetics":"a","lighting":"l","medium":"m","art_style":"s"},'
        '"compositional_deconstruction":{"background":"b","elements":[{"type":"obj","desc":"d"}]}}')
    assert json.loads(builders.pretty_json(shuffled)) == json.loads(builders.canonical_json(shuffled))
    assert "\n  " in builders.pretty_json(shuffled)
    # the same key order, indented (json.loads keeps it)
    assert builders.pretty_json(shuffled) == json.dumps(json.loads(builders.canonical_json(shuffled)), indent=2)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        builders.canonical_json({"compositional_deconstruction": {"background": float("nan"), "elements": []}})


@pytest.mark.parametrize("style,order", [
    ({"color_palette": ["#FF0000"], "art_style": "s", "medium": "m", "aesthetics": "a"},
     ["aesthetics", "medium", "art_style", "color_palette"]),
    ({"color_palette": ["#FF0000"], "photo": "p", "medium": "m", "lighting": "l"},
     ["lighting", "photo", "medium", "color_palette"]),
    # both (an error the checker names): the photo order, art_style after the known keys
    ({"art_style": "s", "color_palette": [], "photo": "p", "medium": "m"}, ["photo", "medium", "color_palette", "art_style"]),
])
def test_canonical_order_of_a_style(style, order):
    out = builders.canonical_order({"style_description": style})
    assert list(out["style_description"]) == order


def test_canonical_order_of_an_element_of_unknown_type_is_the_text_elements():
    """Its keys in the text element's order (the fullest one), so the check's message lists them in the usual order."""
    element = {"desc": "d", "text": "T", "type": "sticker", "bbox": [0, 0, 1, 1], "x": 1}
    out = builders.canonical_order({"compositional_deconstruction": {"elements": [element, "not an object"]}})
    assert out["compositional_deconstruction"]["elements"] == [
        {"type": "sticker", "bbox": [0, 0, 1, 1], "text": "T", "desc": "d", "x": 1}, "not an object"]
    assert list(out["compositional_deconstruction"]["elements"][0]) == ["type", "bbox", "text", "desc", "x"]


# --------------------------------------------------------------------------- #
# Dialects.
# --------------------------------------------------------------------------- #

MAGIC = {"aspect_ratio": "16:9", "high_level_description": "A stall.",
         "compositional_deconstruction": {"background": "Paddies.", "elements": [
             {"type": "obj", "bbox": [300, 100, 900, 600], "desc": "Stall."}]}}


@pytest.mark.parametrize("dialect", ["auto", "magic_prompt"])
def test_magic_prompt_dialect_drops_aspect_ratio_as_fix(dialect):
    report = check_caption(mini(MAGIC), dialect=dialect)
    assert report.errors == []
    assert report.aspect_ratio == "16:9"
    assert "aspect_ratio" not in report.data
    assert report.canonical == mini({k: v for k, v in MAGIC.items() if k != "aspect_ratio"})
    assert len(report.fixes) == 1 and report.fixes[0].startswith('$.aspect_ratio: dropped') and '"16:9"' in report.fixes[0]
    assert report.data["compositional_deconstruction"]["elements"][0]["bbox"] == [300, 100, 900, 600]


def test_documented_dialect_rejects_aspect_ratio():
    error = only_error(mini(MAGIC), dialect="documented")
    assert error.startswith("$: unknown key 'aspect_ratio'") and "magic-prompt" in error


def test_unknown_dialect_is_a_programming_error():
    with pytest.raises(ValueError, match="dialect"):
        check_caption("{}", dialect="json")


# --------------------------------------------------------------------------- #
# Rules: each rejection names path, value and rule.
# --------------------------------------------------------------------------- #

REJECTIONS = [
    # (name, caption or raw text, expected substrings of the single error)
    ("root_list", [1], ["$: got [1] (list); expected a JSON object"]),
    ("missing_cd", {"high_level_description": "x"}, ["$: missing required key 'compositional_deconstruction'"]),
    ("unknown_top_key", with_(ART, lambda d: d.update(canvas={"w": 1})),
     ["$: unknown key 'canvas' (not part of the schema; image size comes from width/height); allowed here: "
      "high_level_description, style_description, compositional_deconstruction"]),
    ("hld_type", with_(ART, lambda d: d.update(high_level_description=42)),
     ["$.high_level_description: got 42 (number); expected a string"]),
    ("style_type", with_(ART, lambda d: d.update(style_description="flat")),
     ['$.style_description: got "flat" (string); expected an object']),
    ("style_type_long", with_(ART, lambda d: d.update(style_description="x" * 100)),  # values are cut to 60 chars
     ['$.style_description: got "' + "x" * 56 + '... (string); expected an object']),
    ("style_both", with_(ART, lambda d: d["style_description"].update(photo="35mm")),
     ["$.style_description: has both 'photo' and 'art_style'"]),
    ("style_neither", with_(ART, lambda d: d["style_description"].pop("art_style")),
     ["$.style_description: needs exactly one of 'photo'", "'art_style'"]),
    ("style_missing_lighting", with_(ART, lambda d: d["style_description"].pop("lighting")),
     ["$.style_description: missing required key 'lighting'"]),
    ("style_missing_all_three", with_(ART, lambda d: d.update(style_description={"art_style": "flat"})),
     ["$.style_description: missing required key 'aesthetics', 'lighting', 'medium'"]),
    ("style_unknown", with_(ART, lambda d: d["style_description"].update(mood="calm")),
     ["$.style_description: unknown key 'mood'"]),
    ("style_palette_17", with_(ART, lambda d: d["style_description"].update(color_palette=["#000000"] * 17)),
     ["$.style_description.color_palette: got 17 entries", "at most 16"]),
    ("style_palette_type", with_(ART, lambda d: d["style_description"].update(color_palette="#000000")),
     ['$.style_description.color_palette: got "#000000" (string)', "list"]),
    ("hex_shorthand", with_(ART, lambda d: d["style_description"].update(color_palette=["#FA0"])),
     ['$.style_description.color_palette[0]: got "#FA0"', "uppercase #RRGGBB", "'#FFAA00'"]),
    ("hex_no_hash", with_(ART, lambda d: d["style_description"].update(color_palette=["FFAA00"])),
     ['color_palette[0]: got "FFAA00"', "'#FFAA00'"]),
    ("hex_lowercase_no_hash", with_(ART, lambda d: d["style_description"].update(color_palette=["ffaa00"])),
     ['color_palette[0]: got "ffaa00"; expected an uppercase #RRGGBB hex colour (did you mean \'#FFAA00\'?)']),
    ("hex_seven_lowercase_digits", with_(ART, lambda d: d["style_description"].update(color_palette=["#abcdef0"])),
     ['$.style_description.color_palette[0]: got "#abcdef0"; expected an uppercase #RRGGBB hex colour']),
    ("hex_named", with_(ART, lambda d: d["style_description"].update(color_palette=["red"])),
     ['color_palette[0]: got "red"', "#RRGGBB"]),
    ("hex_trailing_newline", with_(ART, lambda d: d["style_description"].update(color_palette=["#FFAA00\n"])),
     ["color_palette[0]: got", "#RRGGBB"]),
    ("cd_type", {"compositional_deconstruction": "a dog"},
     ['$.compositional_deconstruction: got "a dog" (string); expected an object']),
    ("cd_missing_background", {"compositional_deconstruction": {"elements": []}},
     ["$.compositional_deconstruction: missing required key 'background'"]),
    ("cd_missing_elements", {"compositional_deconstruction": {"background": "b"}},
     ["$.compositional_deconstruction: missing required key 'elements' (use [] for no elements)"]),
    ("cd_background_type", {"compositional_deconstruction": {"background": ["sky"], "elements": []}},
     ['$.compositional_deconstruction.background: got ["sky"] (list); expected a string']),
    ("cd_extra_key", {"compositional_deconstruction": {"background": "b", "elements": [], "layout": "grid"}},
     ["$.compositional_deconstruction: unknown key 'layout'"]),
    ("elements_type", {"compositional_deconstruction": {"background": "b", "elements": {}}},
     ["$.compositional_deconstruction.elements: got {} (object); expected a list"]),
    ("element_type_str", {"compositional_deconstruction": {"background": "b", "elements": ["gull"]}},
     [f'{EL0}: got "gull" (string); expected an element object']),
    ("element_missing_type", {"compositional_deconstruction": {"background": "b", "elements": [{"desc": "d"}]}},
     [f"{EL0}: missing required key 'type'"]),
    ("element_bad_type", {"compositional_deconstruction": {"background": "b", "elements": [{"type": "image", "desc": "d"}]}},
     [f'{EL0}.type: got "image"; expected \'obj\' or \'text\'']),
    ("element_type_non_ascii", {"compositional_deconstruction": {"background": "b", "elements": [{"type": "tëxt", "desc": "d"}]}},
     [f'{EL0}.type: got "tëxt"; expected']),  # values are shown as written, not \u-escaped
    ("element_missing_desc", {"compositional_deconstruction": {"background": "b", "elements": [{"type": "obj"}]}},
     [f"{EL0}: missing required key 'desc'"]),
    ("text_missing_text", {"compositional_deconstruction": {"background": "b", "elements": [{"type": "text", "desc": "d"}]}},
     [f"{EL0}: missing required key 'text' (text elements carry the literal characters in 'text')"]),
    ("obj_with_text", {"compositional_deconstruction": {"background": "b", "elements": [
        {"type": "obj", "text": "HI", "desc": "d"}]}}, [f"{EL0}: key 'text' is only allowed on text elements"]),
    ("element_unknown_key", {"compositional_deconstruction": {"background": "b", "elements": [
        {"type": "obj", "label": "x", "desc": "d"}]}}, [f"{EL0}: unknown key 'label'"]),
    ("desc_type", {"compositional_deconstruction": {"background": "b", "elements": [{"type": "obj", "desc": 5}]}},
     [f"{EL0}.desc: got 5 (number); expected a string"]),
    ("element_palette_6", {"compositional_deconstruction": {"background": "b", "elements": [
        {"type": "obj", "desc": "d", "color_palette": ["#000000"] * 6}]}},
     [f"{EL0}.color_palette: got 6 entries", "at most 5"]),
]

BBOX_REJECTIONS = [
    ([100, 200, 300], [f"{EL0}.bbox: got 3 entries [100, 200, 300]; expected exactly 4 integers [y_min, x_min, y_max, x_max] in 0..1000"]),
    ([1, 2, 3, 4, 5], [f"{EL0}.bbox: got 5 entries"]),
    ({"y_min": 1}, [f'{EL0}.bbox: got {{"y_min": 1}} (object)']),
    ([0, 0, 500, 1200], [f"{EL0}.bbox[3]: got 1200; expected an integer in 0..1000"]),
    ([-1, 0, 500, 500], [f"{EL0}.bbox[0]: got -1; expected an integer in 0..1000"]),
    ([600, 0, 300, 500], [f"{EL0}.bbox: y_min 600 > y_max 300", "y_min <= y_max"]),
    ([0, 900, 300, 500], [f"{EL0}.bbox: x_min 900 > x_max 500", "x_min <= x_max"]),
    ([0, "10", 300, 500], [f'{EL0}.bbox[1]: got "10" (string); expected an integer in 0..1000']),
    ([0, True, 300, 500], [f"{EL0}.bbox[1]: got true (boolean); expected an integer"]),
    ([0, None, 300, 500], [f"{EL0}.bbox[1]: got null (null)"]),
    ([0.1, 0.2, 0.5, 1], [f"{EL0}.bbox: got [0.1, 0.2, 0.5, 1], which looks like 0..1 fractions",
                          "multiply by 1000: [100, 200, 500, 1000]"]),
    ([0, 0, 500, 1000.6], [f"{EL0}.bbox[3]: got 1001; expected an integer in 0..1000"]),
    # a 0 among the fractions still reads as fractions (not silently rounded to [0, 0, 1, 1])
    ([0, 0.25, 0.5, 1.0], [f"{EL0}.bbox: got [0, 0.25, 0.5, 1.0], which looks like 0..1 fractions",
                           "multiply by 1000: [0, 250, 500, 1000]"]),
    ([0.1234, 0.4567, 0.5, 0.9999], ["multiply by 1000: [123, 457, 500, 1000])"]),  # rounded, not truncated
]


@pytest.mark.parametrize("name,caption,expected", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rule_rejections_name_path_value_and_rule(name, caption, expected):
    error = only_error(mini(caption))
    for fragment in expected:
        assert fragment in error, (fragment, error)


@pytest.mark.parametrize("bbox,expected", BBOX_REJECTIONS, ids=[str(b) for b, _ in BBOX_REJECTIONS])
def test_bbox_rejections(bbox, expected):
    caption = {"compositional_deconstruction": {"background": "b", "elements": [{"type": "obj", "bbox": bbox, "desc": "d"}]}}
    error = only_error(mini(caption))
    for fragment in expected:
        assert fragment in error, (fragment, error)


@pytest.mark.parametrize("bbox", [[0, 0, 0, 0], [0, 0, 1000, 1000], [500, 500, 500, 500], [1, 2, 999, 1000]])
def test_bbox_accepts_edges(bbox):
    caption = {"compositional_deconstruction": {"background": "b", "elements": [{"type": "obj", "bbox": bbox, "desc": "d"}]}}
    report = check_caption(mini(caption))
    assert report.errors == [] and report.fixes == []
    assert report.data["compositional_deconstruction"]["elements"][0]["bbox"] == bbox


def test_palette_limits_accept_16_and_5():
    caption = with_(ART, lambda d: (d["style_description"].update(color_palette=[f"#{i:06X}" for i in range(16)]),
                                    els(d)[0].update(color_palette=["#ABCDEF"] * 5)))
    report = check_caption(mini(caption))
    assert report.errors == [] and report.fixes == []


def test_all_problems_reported_at_once_in_document_order():
    bad = {"style_description": {"photo": "a", "art_style": "b"},
           "compositional_deconstruction": {"background": 3, "elements": [
               {"type": "obj", "bbox": [0, 0, 5000, 10], "desc": "d"}, {"type": "text", "desc": "t"}]}}
    report = check_caption(mini(bad))
    assert len(report.errors) == 5
    paths = [e.split(":")[0] for e in report.errors]
    assert paths == ["$.style_description", "$.style_description",
                     "$.compositional_deconstruction.background",
                     f"{EL0}.bbox[2]", "$.compositional_deconstruction.elements[1]"]


def test_non_json_and_plain_text():
    assert "plain-text prompts are not captions" in only_error("a dog on a skateboard")
    assert only_error('{"compositional_deconstruction":').startswith("$: invalid JSON")
    assert "NaN is not valid JSON" in only_error('{"compositional_deconstruction":{"background":NaN,"elements":[]}}')
    assert only_error("[" * 100000).startswith("$: invalid JSON")
    assert only_error(None).startswith("$: expected caption text (a string), got NoneType")


def test_unpaired_surrogate_is_rejected():
    text = mini({"high_level_description": "é \ud800", "compositional_deconstruction": {"background": "", "elements": []}})
    assert only_error(text).startswith("$.high_level_description: contains an unpaired surrogate \\ud800")


def test_literal_backslash_u_in_text_is_rejected_with_path():
    text = mini({"compositional_deconstruction": {"background": "C:\\u00e9", "elements": []}})
    error = only_error(text)
    assert error.startswith("$.compositional_deconstruction.background: contains the literal characters \\u00e9")
    lowest = only_error(mini({"compositional_deconstruction": {"background": "C:\\u0080", "elements": []}}))
    assert lowest.startswith("$.compositional_deconstruction.background: contains the literal characters \\u0080")


def test_json_path_quotes_keys_that_are_not_identifiers():
    from model.caption.checker import json_path

    assert json_path(["a", 0, "b c", "_x1"]) == '$.a[0]["b c"]._x1'
    assert json_path(["é", "1a"]) == '$["é"]["1a"]'


# --------------------------------------------------------------------------- #
# Meaning-preserving fixes.
# --------------------------------------------------------------------------- #


def single_fix(text):
    report = check_caption(text)
    assert report.errors == [], report.errors
    assert len(report.fixes) == 1, report.fixes
    return report, report.fixes[0]


def test_fix_lowercase_hex():
    report, fix = single_fix(mini(with_(PHOTO, lambda d: d["style_description"].update(color_palette=["#f5c542", "#87CEEB"]))))
    assert fix == "$.style_description.color_palette[0]: #f5c542 -> #F5C542 (hex digits must be uppercase)"
    assert report.canonical == mini(PHOTO)


def test_fix_integral_float_bbox():
    report, fix = single_fix(mini(with_(PHOTO, lambda d: els(d)[0].update(bbox=[200.0, 300, 8e2, 900]))))
    assert fix == f"{EL0}.bbox: bbox values must be integers: [0] 200.0 -> 200, [2] 800.0 -> 800"
    assert report.canonical == mini(PHOTO)


def test_integral_floats_among_zeros_and_ones_are_a_fix_not_fractions():
    report, fix = single_fix(mini(with_(PHOTO, lambda d: els(d)[0].update(bbox=[0, 0, 1.0, 1]))))
    assert fix == f"{EL0}.bbox: bbox values must be integers: [2] 1.0 -> 1"
    assert report.data["compositional_deconstruction"]["elements"][0]["bbox"] == [0, 0, 1, 1]


def test_fix_fractional_bbox_is_rounded_half_up_and_says_so():
    report, fix = single_fix(mini(with_(PHOTO, lambda d: els(d)[0].update(bbox=[199.5, 300.4, 800.5, 900]))))
    assert fix == (f"{EL0}.bbox: bbox values must be integers: [0] 199.5 -> rounded 200, [1] 300.4 -> rounded 300, "
                   "[2] 800.5 -> rounded 801")  # half up, not half to even (800)
    assert report.data["compositional_deconstruction"]["elements"][0]["bbox"] == [200, 300, 801, 900]


def test_overflowing_bbox_number_is_an_error_not_a_crash():
    text = '{"compositional_deconstruction":{"background":"b","elements":[{"type":"obj","bbox":[0,0,500,1e999],"desc":"d"}]}}'
    report = check_caption(text)  # json reads 1e999 as inf; rounding it would raise OverflowError
    assert report.canonical is None and report.fixes == []
    assert report.errors == [f"{EL0}.bbox[3]: got Infinity (number); expected an integer in 0..1000"]


def test_fix_colour_palette_spelling_in_style_and_elements():
    data = json.loads(mini(PHOTO).replace('"color_palette"', '"colour_palette"'))
    report = check_caption(mini(data))
    assert report.errors == []
    assert report.canonical == mini(PHOTO)
    assert sorted(report.fixes) == sorted([
        "$.style_description: renamed 'colour_palette' to 'color_palette'",
        "$.compositional_deconstruction.elements[1]: renamed 'colour_palette' to 'color_palette'"])


def test_both_palette_spellings_is_an_error():
    caption = with_(ART, lambda d: d["style_description"].update(color_palette=["#000000"], colour_palette=["#FFFFFF"]))
    assert "unknown key 'colour_palette' (use only 'color_palette')" in only_error(mini(caption))


@pytest.mark.parametrize("wrapped", [
    "```json\n{}\n```", "```\n{}\n```", "```json{}```", "  ```JSON\n{}\n```  ",
    "Here is your caption:\n```json\n{}\n```\nEnjoy!",
])
def test_code_fences_are_removed_as_a_fix(wrapped):
    report = check_caption(wrapped.replace("{}", mini(ART)))
    assert report.errors == []
    assert report.canonical == mini(ART)
    assert len(report.fixes) == 1 and "code fence" in report.fixes[0]


def test_chatty_fence_fix_counts_the_ignored_text():
    text = "Here is your caption:\n```json\n" + mini(ART) + "\n```\nEnjoy!"
    report = check_caption(text)
    assert report.canonical == mini(ART)
    assert report.fixes == ["$: used the JSON inside the ``` code fence and ignored 29 characters of text around it"]
    assert len("Here is your caption:\n") + len("\nEnjoy!") == 29


def test_code_fence_inside_a_json_string_is_left_alone():
    caption = with_(ART, lambda d: els(d)[0].update(text="```\ncode\n```"))
    report = check_caption(mini(caption))
    assert report.fixes == [] and report.canonical == mini(caption)


def test_byte_order_mark_and_whitespace_are_formatting():
    report = check_caption("\ufeff\n " + mini(ART) + "\n")
    assert report.errors == [] and report.fixes == [] and report.canonical == mini(ART)
    assert len(report.formatting) == 2


def test_duplicate_keys_warn_and_keep_last():
    text = '{"compositional_deconstruction":{"background":"a","background":"b","elements":[]}}'
    report = check_caption(text)
    assert report.errors == [] and report.fixes == []
    assert report.data["compositional_deconstruction"]["background"] == "b"
    assert "$.compositional_deconstruction: duplicate key 'background'; the last value was kept" in report.warnings
    thrice = check_caption('{"compositional_deconstruction":{"background":"a","background":"b","background":"c",'
                           '"elements":[]}}')
    assert thrice.data["compositional_deconstruction"]["background"] == "c"
    assert [w for w in thrice.warnings if "duplicate" in w] == [
        "$.compositional_deconstruction: duplicate key 'background'; the last value was kept"]


def test_warnings_give_advice_without_blocking():
    text = mini({"style_description": {"aesthetics": "a", "lighting": "", "photo": "p", "medium": "illustration"},
                 "compositional_deconstruction": {"background": "", "elements": [
                     {"type": "obj", "bbox": [10, 10, 10, 500], "desc": "d"}]}})
    report = check_caption(text)
    assert report.errors == [] and report.fixes == []
    joined = "\n".join(report.warnings)
    assert "no high_level_description" in joined
    assert "$.style_description.lighting: empty" in joined
    assert "$.style_description.medium: \"illustration\" with 'photo'" in joined
    assert "$.compositional_deconstruction.background: empty" in joined
    assert f"{EL0}.bbox: [10, 10, 10, 500] has zero area" in joined


def test_advice_for_art_style_photographs_blank_fields_and_zero_width_boxes():
    text = mini({"high_level_description": "A poster.",
                 "style_description": {"aesthetics": "bold", "lighting": "  ", "medium": "photograph", "art_style": "pop"},
                 "compositional_deconstruction": {"background": "Red.", "elements": [
                     {"type": "obj", "bbox": [10, 300, 500, 300], "desc": "d"},
                     {"type": "text", "text": " ", "desc": "Caption."}]}})
    report = check_caption(text)
    assert report.errors == [] and report.fixes == []
    assert report.warnings == [
        "$.style_description.medium: 'photograph' with 'art_style'; photographs use 'photo' instead of 'art_style'",
        "$.style_description.lighting: empty",
        f"{EL0}.bbox: [10, 300, 500, 300] has zero area",
        "$.compositional_deconstruction.elements[1].text: empty"]


# --------------------------------------------------------------------------- #
# require_caption / CaptionError.
# --------------------------------------------------------------------------- #


def test_require_caption_raises_caption_error_listing_every_problem():
    bad = mini({"compositional_deconstruction": {"background": 1, "elements": [{"type": "x", "desc": "d"}]}})
    with pytest.raises(CaptionError) as info:
        require_caption(bad, context="Test node")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("Test node: 2 problems:")
    assert "$.compositional_deconstruction.background: got 1 (number)" in message
    assert f'{EL0}.type: got "x"' in message
    assert info.value.report.errors == check_caption(bad).errors
    with pytest.raises(CaptionError, match=r"^Ideogram 4 caption: 1 problem:\n  - \$: invalid JSON"):
        require_caption("{")


def test_require_caption_honours_the_dialect():
    assert require_caption(mini(MAGIC)) == mini({k: v for k, v in MAGIC.items() if k != "aspect_ratio"})
    with pytest.raises(CaptionError, match=r"unknown key 'aspect_ratio'"):
        require_caption(mini(MAGIC), dialect="documented")


def test_summary_lines_prefixes():
    report = check_caption(mini(MAGIC))
    assert report.summary_lines() == [f"fixed: {report.fixes[0]}"]


# --------------------------------------------------------------------------- #
# Builders (node and canvas-editor contract).
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("text,expected", [
    ("", []),
    (None, []),
    ("#ff0000, #00FF00", ["#FF0000", "#00FF00"]),
    ("#ff0000\n#00ff00\n\n", ["#FF0000", "#00FF00"]),
    ('["#aabbcc", "#112233"]', ["#AABBCC", "#112233"]),
    ("ff0000; 00FF00", ["#FF0000", "#00FF00"]),
    ("#fff, red", ["#fff", "red"]),  # kept verbatim so validation names them
    (", #ff0000,\n", ["#FF0000"]),  # separators at the ends
    ('["", "#aabbcc"]', ["#AABBCC"]),  # an empty string in a JSON list
])
def test_parse_palette(text, expected):
    assert builders.parse_palette(text) == expected


def test_parse_palette_notes_only_the_rewritten_colours():
    notes = []
    assert builders.parse_palette("#FF0000, ff00aa, #00ff00, red", notes, field="element color_palette") == [
        "#FF0000", "#FF00AA", "#00FF00", "red"]
    assert notes == ["element color_palette: 'ff00aa' written as '#FF00AA'",
                     "element color_palette: '#00ff00' written as '#00FF00'"]


def test_build_caption_orders_keys_and_places_palette_in_style():
    style = builders.build_style("photo", aesthetics="a", lighting="l", medium="photograph", value="35mm")
    element = builders.build_element("text", "sign", text="HI", bbox=[1, 2, 3, 4], palette=["#000000"])
    caption = builders.build_caption("A sign.", style, "wall", [element], ["#FFFFFF"])
    assert builders.canonical_json(caption) == (
        '{"high_level_description":"A sign.","style_description":{"aesthetics":"a","lighting":"l","photo":"35mm",'
        '"medium":"photograph","color_palette":["#FFFFFF"]},"compositional_deconstruction":{"background":"wall",'
        '"elements":[{"type":"text","bbox":[1,2,3,4],"text":"HI","desc":"sign","color_palette":["#000000"]}]}}')
    assert require_caption(builders.canonical_json(caption)) == builders.canonical_json(caption)


def test_build_caption_drops_a_blank_high_level_description():
    assert builders.build_caption("  \n", None, "b", []) == {
        "compositional_deconstruction": {"background": "b", "elements": []}}
    assert builders.build_caption(None, None, "b", []) == builders.build_caption("", None, "b", [])


def test_build_caption_palette_without_style_is_an_error():
    with pytest.raises(ValueError, match="color_palette needs a style"):
        builders.build_caption("x", None, "b", [], ["#FFFFFF"])


def test_build_element_obj_ignores_text_and_optional_parts():
    assert builders.build_element("obj", "d", text="ignored") == {"type": "obj", "desc": "d"}
    # the Caption Element node passes parse_palette("") == [] and text=None through unchanged
    assert builders.build_element("obj", "d", palette=[]) == {"type": "obj", "desc": "d"}
    assert builders.build_element("text", "d", text=None, palette=[]) == {"type": "text", "text": "", "desc": "d"}
    assert list(builders.build_element("obj", "d", bbox=(1, 2, 3, 4), palette=["#000000"])) == [
        "type", "bbox", "desc", "color_palette"]


def test_build_style_modes():
    assert builders.build_style("none", aesthetics="a", lighting="l", medium="m", value="v") is None
    assert list(builders.build_style("art_style", aesthetics="a", lighting="l", medium="m", value="v")) == list(schema.STYLE_ORDER_ART[:4])
    with pytest.raises(ValueError, match="style_mode"):
        builders.build_style("oil", aesthetics="a", lighting="l", medium="m", value="v")


def compose(**overrides):
    args = dict(high_level_description="A cat.", style_mode="art_style", aesthetics="cosy", lighting="soft",
                medium="illustration", style_value="watercolour", color_palette="#ff0000", background="A rug.",
                layout='[{"type":"obj","bbox":[100,100,900,900],"desc":"A cat."}]', extra_elements=None)
    args.update(overrides)
    return builders.compose_caption(**args)


def test_compose_caption_happy_path_with_layout_and_chain():
    chain = [builders.build_element("text", "Small label.", text="MIAU")]
    report = compose(extra_elements=chain)
    assert report.errors == []
    assert report.canonical == (
        '{"high_level_description":"A cat.","style_description":{"aesthetics":"cosy","lighting":"soft",'
        '"medium":"illustration","art_style":"watercolour","color_palette":["#FF0000"]},'
        '"compositional_deconstruction":{"background":"A rug.","elements":[{"type":"obj","bbox":[100,100,900,900],'
        '"desc":"A cat."},{"type":"text","text":"MIAU","desc":"Small label."}]}}')


def test_compose_caption_reports_every_problem_with_its_source():
    report = compose(style_mode="none", color_palette="#FFFFFF",
                     layout='[{"desc":"d","type":"obj","bbox":[5,0,1.0,1]}]',
                     extra_elements=[{"type": "text", "desc": "no text"}])
    assert report.canonical is None
    assert report.errors[0].startswith("color_palette: a global palette needs style_mode")
    assert report.errors[1] == (f"{EL0}.bbox: y_min 5 > y_max 1; expected [y_min, x_min, y_max, x_max] with "
                                "y_min <= y_max (layout[0])")
    assert report.errors[2].endswith("(elements input[0])")
    assert report.fixes == [f"{EL0}.bbox: bbox values must be integers: [2] 1.0 -> 1 (layout[0])"]


@pytest.mark.parametrize("layout,expected", [
    ("", None), ("   ", None), ("[]", None),
    ("{", "layout: invalid JSON"),
    ('{"type":"obj"}', "layout: got {\"type\": \"obj\"} (object); expected a JSON list of element objects"),
])
def test_compose_caption_layout_parsing(layout, expected):
    report = compose(layout=layout)
    if expected is None:
        assert report.errors == [] and report.data["compositional_deconstruction"]["elements"] == []
    else:
        assert report.errors[0].startswith(expected)
        assert report.canonical is None and report.data is None  # no caption goes out with a builder error


def test_compose_caption_rejects_an_unknown_style_mode():
    report = compose(style_mode="oil", color_palette="")
    assert report.errors == ["style_mode: got 'oil'; expected photo, art_style or none"]
    assert report.canonical is None and report.data is None
    # with a palette too: still the one error, not a second "palette needs a style" one
    assert compose(style_mode="oil", color_palette="#FF0000").errors == [
        "style_mode: got 'oil'; expected photo, art_style or none"]


def test_compose_caption_a_palette_alone_is_a_style():
    report = compose(aesthetics="", lighting="", style_value="", medium="", color_palette="#00ff00")
    # written with the schema's required keys, empty
    assert report.errors == [] and report.data["style_description"] == {
        "aesthetics": "", "lighting": "", "medium": "", "art_style": "", "color_palette": ["#00FF00"]}
    assert not any("no style_description is written" in w for w in report.warnings)


def test_compose_caption_medium_alone_is_not_a_style():
    report = compose(aesthetics="", lighting=" ", style_value="", medium="oil", color_palette="")
    assert report.errors == []
    assert "style_description" not in report.data
    assert report.warnings == ["style_mode art_style: aesthetics, lighting and style_value are empty, so no "
                               "style_description is written (medium 'oil' alone is not a style); fill them in, "
                               "or set style_mode to none"]


def test_check_element_paths_start_at_element():
    assert builders.check_element(builders.build_element("obj", "d", bbox=[0, 0, 10, 10])) == []
    errors = builders.check_element(builders.build_element("obj", "d", bbox=[0, 0, 10, 1001], palette=["#ffffff", "blue"]))
    assert errors == ["element.bbox[3]: got 1001; expected an integer in 0..1000",
                      'element.color_palette[1]: got "blue"; expected an uppercase #RRGGBB hex colour']


# --------------------------------------------------------------------------- #
# Agreement with the reference verifier (golden corpus).
# --------------------------------------------------------------------------- #


def _reference_path(message: str) -> str | None:
    """Map a reference message's location prefix to our JSON path."""
    head = message.split(":", 1)[0]
    if head == "root":
        return "$"
    if head.startswith("elements["):
        return "$.compositional_deconstruction." + head
    if head.split(".")[0].split("[")[0] in ("high_level_description", "style_description", "compositional_deconstruction"):
        return "$." + head
    return None


def _under(our_message: str, path: str) -> bool:
    return our_message.startswith(path) and our_message[len(path)] in ":.["


def _golden_cases():
    return json.loads(GOLDEN.read_text(encoding="ascii"))["cases"]


def test_golden_corpus_covers_both_verdicts_and_dialects():
    cases = _golden_cases()
    assert len(cases) >= 60
    accepted = [c for c in cases if c["reference"]["accepted"]]
    assert len(accepted) >= 15 and len(cases) - len(accepted) >= 40
    assert any("aspect_ratio" in c["text"] for c in cases)
    assert {c["divergence"] for c in cases if "divergence" in c} <= set(schema.STRICTER_THAN_REFERENCE)


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c["name"])
def test_golden_agreement(case):
    """Our verdict agrees with the reference CaptionVerifier (ideogram4 0.1.0).

    Recipe for regenerating ``tests/data/caption_golden.json`` (outside the repo; the
    reference code is never vendored): load ``src/ideogram4/caption_verifier.py`` of
    the reference checkout with importlib, run ``CaptionVerifier().verify_raw(text)``
    on every case text, store ``{"accepted": not messages, "messages": messages}``
    (or ``"crashed": "<exception>"`` when it raises) and write the file with
    ``ensure_ascii=True`` (some texts hold lone surrogates).
    """
    report = check_caption(case["text"])
    reference = case["reference"]
    if "divergence" in case:
        assert reference["accepted"], "divergence cases document inputs the reference accepts"
        assert report.errors, f"we are deliberately stricter here: {schema.STRICTER_THAN_REFERENCE[case['divergence']]}"
        return
    if reference["accepted"]:
        assert report.errors == [] and report.fixes == [], (report.errors, report.fixes)
        again = check_caption(report.canonical)
        assert (again.errors, again.fixes, again.formatting) == ([], [], [])
        return
    ours = report.errors + report.fixes
    assert ours, "the reference flags this text, so we must report an error or a fix"
    if "crashed" in reference:
        assert report.errors
        return
    for message in reference["messages"]:
        if message.startswith("raw text:"):
            assert any("\\u" in m for m in ours), (message, ours)
        elif message.startswith("invalid JSON"):
            assert any("invalid JSON" in m or "code fence" in m for m in ours), (message, ours)
        else:
            path = _reference_path(message)
            assert path is not None, message
            assert any(_under(m, path) for m in ours), (message, ours)
            listed = re.search(r"keys (\[.*?\])", message)
            if listed:
                for key in ast.literal_eval(listed.group(1)):
                    assert any(f"'{key}'" in m or _under(m, f"{path}.{key}") for m in ours), (key, ours)


def test_builder_reports_a_non_string_element_type_instead_of_crashing():
    report = builders.compose_caption(high_level_description="", style_mode="none", aesthetics="", lighting="",
                                      medium="", style_value="", color_palette="", background="bg",
                                      layout='[{"type": [], "desc": "a"}]')
    assert report.canonical is None
    assert any("elements[0].type" in e and "got []" in e for e in report.errors), report.errors


def test_strict_turns_fixes_into_errors():
    report = check_caption('{"compositional_deconstruction":{"background":"b","elements":[{"type":"obj","desc":"d",'
                           '"color_palette":["#ff0000"]}]}}')
    assert report.fixes and not report.errors and report.canonical
    report.strict()
    assert report.errors == [f"strict: {m}" for m in report.fixes] and report.canonical is None
    clean = check_caption('{"compositional_deconstruction":{"background":"b","elements":[]}}')
    assert not clean.strict().errors and clean.canonical
    reordered = check_caption('{"compositional_deconstruction":{"elements":[],"background":"b"}}').strict()
    assert reordered.errors == ["strict: $.compositional_deconstruction: keys reordered to background, elements"]
    assert reordered.canonical is None


# --------------------------------------------------------------------------- nothing changed or dropped silently

def _builder(**changes):
    kw = dict(high_level_description="A fox.", style_mode="none", aesthetics="", lighting="", medium="",
              style_value="", color_palette="", background="Snow.", layout="")
    kw.update(changes)
    return builders.compose_caption(**kw)


def test_builder_reports_duplicate_layout_keys_palette_rewrites_and_unused_style_widgets():
    dup = _builder(layout='[{"type": "obj", "desc": "a", "desc": "b"}]')
    assert "layout[0]: duplicate key 'desc'; the last value was kept" in dup.warnings, dup.warnings
    assert json.loads(dup.canonical)["compositional_deconstruction"]["elements"][0]["desc"] == "b"
    pal = _builder(style_mode="photo", aesthetics="calm", style_value="35mm", color_palette="ff0000, #00ff00")
    assert "color_palette: 'ff0000' written as '#FF0000'" in pal.warnings
    assert "color_palette: '#00ff00' written as '#00FF00'" in pal.warnings
    unused = _builder(aesthetics="calm", medium="oil")
    assert any(w.startswith("style_mode none: aesthetics, medium not used") for w in unused.warnings), unused.warnings
    blank = _builder(aesthetics="  ", lighting="\n", medium="oil")  # whitespace-only widgets are not "used"
    assert any(w.startswith("style_mode none: medium not used") for w in blank.warnings), blank.warnings
    assert not _builder().warnings
    # the builder's own notes come before the caption's advice
    assert _builder(high_level_description="", aesthetics="calm").warnings == [
        "style_mode none: aesthetics not used (no style_description is written); pick photo or art_style to use them",
        "$: no high_level_description (optional, but strongly recommended)"]


@pytest.mark.parametrize("text,hint", [
    ("", "the caption is empty"),
    ('{"high_level_description": "two\nlines"}', "must be written as \\n or \\t"),
    ("{\u201chigh_level_description\u201d: \u201ca fox\u201d}", "curly quotes"),
])
def test_json_errors_say_what_usually_causes_them(text, hint):
    from model.caption import check_caption

    errors = check_caption(text).errors
    assert errors and hint in errors[0], errors
