"""The img2img and inpaint templates: UI/API twins agree, the graphs are wired as documented (CI, no ComfyUI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_api_stub import collect_schemas, stubbed_pack
from test_workflows import README_FILES
from workflow_check import CORE, check_api, check_template_models, check_ui, compare_twins, from_stub, ui_to_api

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
NAMES = ("image_ideogram4_img2img", "image_ideogram4_inpaint")
SHIPPED_IMAGE = "example.png"  # ComfyUI ships input/example.png; the pack ships no input image


@pytest.fixture(scope="module")
def schemas():
    with stubbed_pack() as pack:
        return {**CORE, **from_stub(collect_schemas(pack))}


def load(name: str) -> tuple[dict, dict]:
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / f"{name}_api.json").read_text(encoding="utf-8"))
    return ui, api


@pytest.mark.parametrize("name", NAMES)
def test_twins_are_valid_and_describe_the_same_graph(schemas, name):
    ui, api = load(name)
    assert not check_ui(ui, schemas) and not check_api(api, schemas)
    problems = compare_twins(ui_to_api(ui, schemas), {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
                                                      for k, v in api.items()})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_templates_load_comfyuis_example_image_and_offer_every_model_download(name):
    ui, api = load(name)
    assert not check_template_models(ui), check_template_models(ui)
    offered = {e["name"]: e["directory"] for n in ui["nodes"] for e in n.get("properties", {}).get("models", [])}
    assert offered == README_FILES  # the same downloads as the text-to-image template
    ui_image = next(n for n in ui["nodes"] if n["type"] == "LoadImage")["widgets_values"][0]
    assert ui_image == _node(api, "LoadImage")[1]["image"] == SHIPPED_IMAGE


def _node(api: dict, ctype: str) -> tuple[str, dict]:
    return next((k, v["inputs"]) for k, v in api.items() if v["class_type"] == ctype)


@pytest.mark.parametrize("name,denoise,masked", [("image_ideogram4_img2img", 0.6, False),
                                                 ("image_ideogram4_inpaint", 1.0, True)])
def test_graph_wiring(name, denoise, masked):
    _, api = load(name)
    load_id, _ = _node(api, "LoadImage")
    enc_id, enc = _node(api, "Ideogram4NativeVAEEncode")
    _, ks = _node(api, "Ideogram4NativeKSampler")
    _, cb = _node(api, "Ideogram4NativeCaptionBuilder")
    vae_id, _ = _node(api, "Ideogram4NativeVAELoader")
    assert enc["image"] == [load_id, 0] and enc["vae"] == [vae_id, 0]
    assert (enc.get("mask") == [load_id, 1]) is masked and ("mask" in enc) is masked
    assert ks["latent"] == [enc_id, 0] and ks["denoise"] == denoise
    assert cb["width"] == [enc_id, 1] and cb["height"] == [enc_id, 2]  # the caption's canvas = the encoded size
    decode_id, dec = _node(api, "Ideogram4NativeVAEDecode")
    assert _node(api, "SaveImage")[1]["images"] == [decode_id, 0]


def test_upload_widget_value_is_understood(schemas):
    ui, _ = load("image_ideogram4_inpaint")
    node = next(n for n in ui["nodes"] if n["type"] == "LoadImage")
    assert node["widgets_values"][1] == "image"
    node["widgets_values"].append("extra")
    assert any("extra widgets_values" in p for p in check_ui(ui, schemas))
