"""Drift check for workflows/*.json against the pack's node schemas — runs in CI without ComfyUI.

The node modules are imported with a recording stub of ``comfy_api.latest`` (tests/comfy_api_stub.py),
so every ``define_schema()`` is read as written.  The same checker runs against a live ComfyUI's
``/object_info`` in ``tests/comfyui/test_server.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_api_stub import collect_schemas, stubbed_pack
from workflow_check import (CORE, FRONTEND_ONLY, check_api, check_template_models, check_ui, compare_twins, from_stub,
                            ui_to_api)

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
UI_TEMPLATE = WORKFLOWS / "image_ideogram4_t2i.json"
API_TEMPLATE = WORKFLOWS / "api" / "image_ideogram4_t2i_api.json"
TAKEN_IDS = {"Ideogram4Scheduler", "DualModelGuider", "CFGOverride", "BuildJsonPromptIdeogram", "CreateBoundingBoxes",
             "JsonExtractString", "EmptyFlux2LatentImage", "IdeogramV3", "IdeogramV4", "IdeogramPImage",
             "Ideogram4PromptBuilderKJ", "Ideogram4OptimizationsKJ"}
CORE_TYPES = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "SIGMAS", "SAMPLER", "GUIDER", "NOISE",
              "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def stub_schemas():
    with stubbed_pack() as pack:
        return collect_schemas(pack)


@pytest.fixture(scope="module")
def schemas(stub_schemas):
    return {**CORE, **from_stub(stub_schemas)}


def _is_ui(data: dict) -> bool:
    return "nodes" in data and "links" in data


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.rglob("*.json"))


def test_the_required_workflows_exist():
    assert UI_TEMPLATE.is_file() and API_TEMPLATE.is_file()
    assert _is_ui(json.loads(UI_TEMPLATE.read_text()))
    assert not _is_ui(json.loads(API_TEMPLATE.read_text()))


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_workflow_matches_schemas(path, schemas):
    data = json.loads(path.read_text(encoding="utf-8"))
    problems = check_ui(data, schemas) if _is_ui(data) else check_api(data, schemas)
    assert not problems, "\n".join(problems)


def test_ui_template_and_api_twin_describe_the_same_graph(schemas):
    ui = json.loads(UI_TEMPLATE.read_text(encoding="utf-8"))
    api = json.loads(API_TEMPLATE.read_text(encoding="utf-8"))
    problems = compare_twins(ui_to_api(ui, schemas), {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
                                                      for k, v in api.items()})
    assert not problems, "\n".join(problems)


def test_template_uses_the_reference_pipeline(schemas):
    api = json.loads(API_TEMPLATE.read_text(encoding="utf-8"))
    types = [n["class_type"] for n in api.values()]
    for needed in ("Ideogram4NativeCaptionBuilder", "Ideogram4NativeTextEncode", "Ideogram4NativeKSampler",
                   "Ideogram4NativeVAEDecode", "SaveImage", "Ideogram4NativeModelLoader",
                   "Ideogram4NativeTextEncoderLoader", "Ideogram4NativeVAELoader"):
        assert needed in types
    ui = json.loads(UI_TEMPLATE.read_text(encoding="utf-8"))
    assert {n["type"] for n in ui["nodes"]} - set(schemas) <= set(FRONTEND_ONLY)


README_FILES = {"ideogram4_fp8_scaled.safetensors": "diffusion_models",
                "ideogram4_unconditional_fp8_scaled.safetensors": "diffusion_models",
                "qwen3vl_8b_fp8_scaled.safetensors": "text_encoders", "flux2-vae.safetensors": "vae"}


def test_template_offers_every_model_download_and_has_a_thumbnail_title_and_description():
    from PIL import Image

    ui = json.loads(UI_TEMPLATE.read_text(encoding="utf-8"))
    assert not check_template_models(ui), check_template_models(ui)
    offered = {e["name"]: e["directory"] for n in ui["nodes"] for e in n.get("properties", {}).get("models", [])}
    assert offered == README_FILES  # the README's first-run files, each in its ComfyUI folder
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, e in ((e["name"], e) for n in ui["nodes"] for e in n.get("properties", {}).get("models", [])):
        assert name in readme and e["url"] in readme, name
    assert "Templates sidebar → Extensions" in readme
    # ComfyUI's frontend (1.49) shows a pack template's thumbnail from /api/workflow_templates/<pack>/<name>.jpg
    thumb = UI_TEMPLATE.with_suffix(".jpg")
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.width >= 256 and im.height >= 192, (im.format, im.size)
    assert thumb.stat().st_size < 200_000
    info = ui["extra"]["template_info"]
    assert info["title"].startswith("Ideogram 4") and len(info["description"]) > 40
    note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")
    assert note["widgets_values"][0].startswith("## " + info["title"])
    # the API twin names the same files (kept in sync)
    api = json.loads(API_TEMPLATE.read_text(encoding="utf-8"))
    named = {v for n in api.values() for v in n["inputs"].values() if isinstance(v, str) and v.endswith(".safetensors")}
    assert named == set(README_FILES)


def test_template_model_check_catches_drift():
    ui = json.loads(UI_TEMPLATE.read_text(encoding="utf-8"))
    loader = next(n for n in ui["nodes"] if n["type"] == "Ideogram4NativeVAELoader")
    loader["properties"]["models"][0]["directory"] = "checkpoints"
    te = next(n for n in ui["nodes"] if n["type"] == "Ideogram4NativeTextEncoderLoader")
    te["properties"]["models"][0]["url"] = "https://example.com/x.safetensors"
    dit = next(n for n in ui["nodes"] if n["type"] == "Ideogram4NativeModelLoader")
    dit["properties"]["models"].pop()
    problems = check_template_models(ui)
    assert any("directory 'checkpoints'" in p for p in problems)
    assert any("not a Hugging Face download" in p for p in problems)
    assert any("no properties.models entry for 'ideogram4_unconditional_fp8_scaled.safetensors'" in p
               for p in problems), problems


def test_node_contract(stub_schemas):
    """V3 facts every node must keep (spec §7.2/§7.3): prefixed ids and types, category, tooltips."""
    for node_id, s in stub_schemas.items():
        assert node_id.startswith("Ideogram4Native"), node_id
        assert node_id not in TAKEN_IDS
        assert s.kwargs.get("category", "").startswith("Ideogram4 Native/"), node_id
        assert s.kwargs.get("display_name", "").startswith("Ideogram4 "), node_id
        assert s.kwargs.get("description"), node_id
        for inp in s.inputs:
            assert inp.kwargs.get("tooltip"), f"{node_id}.{inp.id} has no tooltip"
            assert inp.io_type in CORE_TYPES or inp.io_type.startswith("IDEOGRAM4_"), f"{node_id}.{inp.id}"
        for out in s.outputs:
            assert out.io_type in CORE_TYPES or out.io_type.startswith("IDEOGRAM4_"), f"{node_id} output"
    names = set(stub_schemas)
    for expected in ("Ideogram4NativeModelLoader", "Ideogram4NativeTextEncoderLoader", "Ideogram4NativeTextEncode",
                     "Ideogram4NativeKSampler", "Ideogram4NativeSigmas", "Ideogram4NativeGuider",
                     "Ideogram4NativeSampler", "Ideogram4NativeNoise", "Ideogram4NativeEmptyLatent",
                     "Ideogram4NativeVAEDecode", "Ideogram4NativeLatentToFlux2VAE", "Ideogram4NativeVAELoader"):
        assert expected in names
    assert not any("negative" in i.id for s in stub_schemas.values() for i in s.inputs)


def test_checker_catches_drift(schemas):
    """The checker itself: each kind of drift is reported."""
    api = json.loads(API_TEMPLATE.read_text(encoding="utf-8"))

    def problems_after(edit):
        data = json.loads(json.dumps(api))
        edit(data)
        return check_api(data, schemas)

    sampler = next(k for k, v in api.items() if v["class_type"] == "Ideogram4NativeKSampler")
    assert any("not one of" in p for p in problems_after(lambda d: d[sampler]["inputs"].update(preset="V4_FAST")))
    assert any("max" in p for p in problems_after(lambda d: d[sampler]["inputs"].update(steps=5000)))
    assert any("not an INT" in p for p in problems_after(lambda d: d[sampler]["inputs"].update(seed="7")))
    assert any("not an input" in p for p in problems_after(lambda d: d[sampler]["inputs"].update(cfg=4.0)))
    assert any("missing" in p for p in problems_after(lambda d: d[sampler]["inputs"].pop("guidance")))
    assert any("expects" in p for p in problems_after(lambda d: d[sampler]["inputs"].update(positive=["1", 0])))
    assert any("unknown class_type" in p for p in problems_after(lambda d: d[sampler].update(class_type="KSampler")))
    ui = json.loads(UI_TEMPLATE.read_text(encoding="utf-8"))
    node = next(n for n in ui["nodes"] if n["type"] == "Ideogram4NativeKSampler")
    node["widgets_values"] = node["widgets_values"][:-1]
    assert any("no value" in p for p in check_ui(ui, schemas))


def test_every_template_has_a_thumbnail():
    """The frontend asks /api/workflow_templates/<pack>/<name>.jpg for each template (a 404 per missing one)."""
    from PIL import Image

    templates = sorted((REPO / "workflows").glob("*.json"))
    assert len(templates) >= 3
    for t in templates:
        with Image.open(t.with_suffix(".jpg")) as im:
            assert im.format == "JPEG" and im.width >= 256 and im.height >= 192, (t.name, im.format, im.size)
        assert t.with_suffix(".jpg").stat().st_size < 200_000
