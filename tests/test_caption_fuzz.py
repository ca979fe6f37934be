"""Property tests: check_caption never raises, and its canonical output is a fixed point."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.caption import CaptionError, check_caption, require_caption

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-2000, 2000) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)

# Key names the validator cares about, so random objects reach the interesting branches.
KEYS = ["high_level_description", "style_description", "compositional_deconstruction", "aspect_ratio",
        "aesthetics", "lighting", "photo", "medium", "art_style", "color_palette", "colour_palette",
        "background", "elements", "type", "bbox", "text", "desc", "canvas"]
schema_ish = st.recursive(
    json_scalars | st.sampled_from(["obj", "text", "#FFFFFF", "#abcdef", "#FFF", "\u00e9", "\\u00e9"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(KEYS), children, max_size=6),
    max_leaves=30,
)

hex_colors = st.from_regex(r"\A#[0-9A-F]{6}\Z", fullmatch=True)
prose = st.text(st.characters(codec="utf-8"), max_size=20)


@st.composite
def bboxes(draw):
    y = sorted(draw(st.lists(st.integers(0, 1000), min_size=2, max_size=2)))
    x = sorted(draw(st.lists(st.integers(0, 1000), min_size=2, max_size=2)))
    return [y[0], x[0], y[1], x[1]]


@st.composite
def elements(draw):
    kind = draw(st.sampled_from(["obj", "text"]))
    element = {"type": kind}
    if draw(st.booleans()):
        element["bbox"] = draw(bboxes())
    if kind == "text":
        element["text"] = draw(prose)
    element["desc"] = draw(prose)
    if draw(st.booleans()):
        element["color_palette"] = draw(st.lists(hex_colors, max_size=5))
    return element


@st.composite
def valid_captions(draw):
    caption = {}
    if draw(st.booleans()):
        caption["high_level_description"] = draw(prose)
    mode = draw(st.sampled_from(["photo", "art_style", None]))
    if mode:
        style = {"aesthetics": draw(prose), "lighting": draw(prose)}
        if mode == "photo":
            style.update(photo=draw(prose), medium="photograph")
        else:
            style.update(medium=draw(prose), art_style=draw(prose))
        if draw(st.booleans()):
            style["color_palette"] = draw(st.lists(hex_colors, max_size=16))
        caption["style_description"] = style
    caption["compositional_deconstruction"] = {"background": draw(prose),
                                               "elements": draw(st.lists(elements(), max_size=4))}
    return caption


def shuffled(value, rng):
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


def assert_report_invariants(report):
    assert isinstance(report.errors, list) and all(isinstance(m, str) and m for m in report.errors)
    assert all(isinstance(m, str) for m in report.fixes + report.formatting + report.warnings)
    assert (report.canonical is None) == bool(report.errors)
    assert (report.data is None) == bool(report.errors)
    if report.canonical is not None:
        report.canonical.encode("utf-8")  # valid Unicode
        assert "\n" not in report.canonical
        assert json.loads(report.canonical) == report.data
        again = check_caption(report.canonical)
        assert (again.errors, again.fixes, again.formatting) == ([], [], [])
        assert again.canonical == report.canonical


def assert_require_raises_only_caption_error(text):
    try:
        result = require_caption(text)
    except CaptionError as exc:
        assert exc.report.errors
    else:
        assert isinstance(result, str)


@FUZZ
@given(st.text())
def test_arbitrary_text_never_raises(text):
    report = check_caption(text)
    assert_report_invariants(report)
    assert_require_raises_only_caption_error(text)


@FUZZ
@given(json_values)
def test_arbitrary_json_values_never_raise(value):
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        assert_report_invariants(check_caption(text))
        assert_require_raises_only_caption_error(text)


@FUZZ
@given(schema_ish)
def test_caption_shaped_noise_never_raises(value):
    text = json.dumps(value, ensure_ascii=False)
    report = check_caption(text)
    assert_report_invariants(report)
    assert_require_raises_only_caption_error(text)


@FUZZ
@given(valid_captions(), st.randoms(use_true_random=False), st.booleans(), st.sampled_from([None, 1, 2]))
def test_valid_captions_in_any_serialisation_canonicalise_to_the_same_string(caption, rng, ascii_, indent):
    canonical = json.dumps(caption, separators=(",", ":"), ensure_ascii=False)
    direct = check_caption(canonical)
    assert direct.errors == [] and direct.fixes == [] and direct.formatting == []
    assert direct.canonical == canonical

    text = json.dumps(shuffled(caption, rng), ensure_ascii=ascii_, indent=indent)
    report = check_caption(text)
    assert report.errors == [], report.errors
    assert report.canonical == canonical
    # only key order and ensure_ascii repairs are needed for a reserialised valid caption
    assert all("reordered" in m or "ensure_ascii" in m for m in report.fixes), report.fixes
    assert_report_invariants(report)


@FUZZ
@given(valid_captions(), st.randoms(use_true_random=False), json_values)
def test_mutated_captions_never_raise(caption, rng, junk):
    # replace one random node of a valid caption with junk
    nodes = []

    def collect(value):
        if isinstance(value, dict):
            for key in value:
                nodes.append((value, key))
                collect(value[key])
        elif isinstance(value, list):
            for index in range(len(value)):
                nodes.append((value, index))
                collect(value[index])

    collect(caption)
    container, key = rng.choice(nodes)
    container[key] = junk
    text = json.dumps(caption, ensure_ascii=rng.random() < 0.5)
    assert_report_invariants(check_caption(text))
    assert_require_raises_only_caption_error(text)


@FUZZ
@given(st.text(alphabet='{}[]":,0123456789.-eE tfnrual\\', max_size=60))
def test_json_like_garbage_never_raises(text):
    assert_report_invariants(check_caption(text))

