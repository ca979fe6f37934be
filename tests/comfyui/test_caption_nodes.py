"""Caption node classes inside a real ComfyUI ``comfy_api`` (V3 schema, execute).

Skipped unless ``COMFYUI_PATH`` points at a ComfyUI checkout whose ``comfy_api``
imports in this interpreter (run with ComfyUI's own Python, e.g.
``COMFYUI_PATH=/opt/ComfyUI /path/to/comfy/venv/python -m pytest tests/comfyui/test_caption_nodes.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys

import pytest
from comfy_harness import COMFYUI_PATH, REPO, requires_comfyui

pytestmark = requires_comfyui("comfy_api")

PACKAGE = "ideogram4_native_under_test"


@pytest.fixture(scope="module")
def nodes():
    # ComfyUI goes first only while comfy_api is imported (its nodes.py / utils / tests
    # would otherwise shadow or be shadowed by the repo's top-level names), then last.
    sys.path.insert(0, COMFYUI_PATH)
    try:
        importlib.import_module("comfy_api.latest")
    except ImportError as exc:
        pytest.skip(f"comfy_api does not import in this interpreter: {exc}")
    finally:
        sys.path.remove(COMFYUI_PATH)
        sys.path.append(COMFYUI_PATH)
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACKAGE}.nodes.caption_nodes")


def schema_inputs(node_class):
    return {i.id: i for i in node_class.define_schema().inputs}


def test_registration_facts(nodes):
    assert [n.define_schema().node_id for n in nodes.NODES] == [
        "Ideogram4NativeCaptionBuilder", "Ideogram4NativeCaptionElement",
        "Ideogram4NativeCaptionFromJSON", "Ideogram4NativeMagicPrompt"]
    for node in nodes.NODES:
        schema = node.define_schema()
        schema.validate()
        assert schema.category == "Ideogram4 Native/caption"
        assert schema.display_name.startswith("Ideogram4 ")
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"
            assert "key" not in item.id.lower() and "token" not in item.id.lower(), item.id
        info = node.GET_NODE_INFO_V1()
        assert info["category"] == "Ideogram4 Native/caption"


def test_caption_builder_widget_contract(nodes):
    """The canvas editor (js/) reads and writes these widgets by name."""
    info = nodes.Ideogram4NativeCaptionBuilder.GET_NODE_INFO_V1()
    required = info["input"]["required"]
    assert list(required) == ["high_level_description", "style_mode", "aesthetics", "lighting", "medium",
                              "style_value", "color_palette", "background", "layout", "width", "height"]
    assert required["layout"][0] == "STRING" and required["layout"][1]["default"] == "[]"
    assert required["layout"][1]["multiline"] is True and required["layout"][1]["dynamicPrompts"] is False
    assert required["style_mode"][1]["options"] == ["photo", "art_style", "none"]
    assert required["medium"][1]["default"] == "photograph"
    for side in ("width", "height"):
        assert required[side][0] == "INT"
        assert {k: required[side][1][k] for k in ("default", "min", "max", "step")} == {
            "default": 1024, "min": 256, "max": 2048, "step": 16}
    assert info["input"]["optional"]["elements"][0] == "IDEOGRAM4_ELEMENTS"
    assert info["output"] == ["STRING", "STRING"] and info["output_name"] == ["caption", "caption_json"]


def builder_args(**overrides):
    args = dict(high_level_description="A cat on a rug.", style_mode="art_style", aesthetics="cosy",
                lighting="soft", medium="illustration", style_value="watercolour", color_palette="#ff0000",
                background="A rug.", layout='[{"type":"obj","bbox":[100,100,900,900],"desc":"A cat."}]',
                width=1024, height=768)
    args.update(overrides)
    return args


def test_builder_execute(nodes):
    out = nodes.Ideogram4NativeCaptionBuilder.execute(**builder_args())
    caption, pretty = out.args
    assert caption.startswith('{"high_level_description":"A cat on a rug.","style_description":{"aesthetics":"cosy"')
    assert '"color_palette":["#FF0000"]' in caption
    assert json.loads(pretty) == json.loads(caption) and "\n" in pretty
    assert out.ui == {"text": ["warning: color_palette: '#ff0000' written as '#FF0000'"]}  # the rewrite is said
    clean = nodes.Ideogram4NativeCaptionBuilder.execute(**builder_args(color_palette="#FF0000"))
    assert clean.args[0] == caption
    assert clean.ui == {"text": ["caption OK: canonical, %d characters" % len(caption)]}


def test_builder_raises_every_problem(nodes):
    with pytest.raises(ValueError) as info:
        nodes.Ideogram4NativeCaptionBuilder.execute(**builder_args(
            style_mode="none", layout='[{"type":"obj","bbox":[0,0,10,2000],"desc":"x"}]'))
    message = str(info.value)
    assert message.startswith("Ideogram4 Caption Builder: 2 problems:")
    assert "color_palette: a global palette needs style_mode" in message
    assert "bbox[3]: got 2000" in message and "(layout[0])" in message


def test_element_chain_does_not_mutate_its_input(nodes):
    first = nodes.Ideogram4NativeCaptionElement.execute(
        type="obj", text="", desc="A cat.", use_bbox=True, y_min=1, x_min=2, y_max=3, x_max=4, color_palette="")
    chained = first.args[0]
    second = nodes.Ideogram4NativeCaptionElement.execute(
        type="text", text="MIAU", desc="Label.", use_bbox=False, y_min=0, x_min=0, y_max=0, x_max=0,
        color_palette="#abcdef", elements=chained)
    assert chained == [{"type": "obj", "bbox": [1, 2, 3, 4], "desc": "A cat."}]
    assert second.args[0][1] == {"type": "text", "text": "MIAU", "desc": "Label.", "color_palette": ["#ABCDEF"]}
    with pytest.raises(ValueError, match=r"element.bbox: y_min 9 > y_max 3"):
        nodes.Ideogram4NativeCaptionElement.execute(
            type="obj", text="", desc="d", use_bbox=True, y_min=9, x_min=0, y_max=3, x_max=4, color_palette="")
    out = nodes.Ideogram4NativeCaptionBuilder.execute(**builder_args(elements=second.args[0]))
    assert out.args[0].endswith('{"type":"text","text":"MIAU","desc":"Label.","color_palette":["#ABCDEF"]}]}}')


def test_from_json_strict_and_lenient(nodes):
    text = '```json\n{"compositional_deconstruction":{"elements":[],"background":"b"}}\n```'
    out = nodes.Ideogram4NativeCaptionFromJSON.execute(json_text=text, strict=False)
    assert out.args[0] == '{"compositional_deconstruction":{"background":"b","elements":[]}}'
    assert "fixed: $: removed the surrounding ``` code fence" in out.ui["text"][0]
    with pytest.raises(ValueError, match="strict: "):
        nodes.Ideogram4NativeCaptionFromJSON.execute(json_text=text, strict=True)


def test_magic_prompt_node_has_no_key_input_and_defaults_to_none(nodes):
    inputs = schema_inputs(nodes.Ideogram4NativeMagicPrompt)
    assert inputs["provider"].default == "none"
    assert nodes.Ideogram4NativeMagicPrompt.define_schema().not_idempotent is True
    with pytest.raises(ValueError, match="no provider selected"):
        nodes.Ideogram4NativeMagicPrompt.execute(prompt="a cat", width=1024, height=1024, provider="none",
                                                 base_url="", model="", keep_bboxes=True, seed=0)
