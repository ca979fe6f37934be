"""Issue 10 (a new user's first hour), the parts testable without ComfyUI: the bundled-tokenizer
lookup on a namespace-package layout, Model Loader guards, size messages, Magic Prompt seed/size,
empty style fields, clean exception types, the test extra and the transformers deprecation.

The same behaviours against a real ComfyUI server: ``tests/comfyui/test_first_run.py``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from comfy_api_stub import PACKAGE, collect_schemas, stubbed_pack

ROOT = Path(__file__).resolve().parents[1]


class _Modules(dict):
    """``pack["loader_nodes"]`` imports ``nodes.loader_nodes`` (``nodes.host.x`` for host modules) on first use."""

    def __init__(self, package):
        super().__init__(pack=package)

    def __missing__(self, name: str):
        sub = f"host.{name}" if not name.endswith("_nodes") else name
        self[name] = importlib.import_module(f"{self['pack'].__name__}.nodes.{sub}")
        return self[name]


@pytest.fixture(scope="module")
def pack():
    with stubbed_pack() as p:
        yield _Modules(p)


# --------------------------------------------------------------------------- 1. bundled tokenizer

def _write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text("{}")
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


@pytest.fixture
def fake_comfy(tmp_path, monkeypatch):
    """Put ``root`` on sys.path and forget any cached ``name`` modules; returns a layout builder."""
    def layout(name: str, *, regular: bool = False, roots: int = 1, tokenizer_in: int = 0) -> list[Path]:
        paths = []
        for i in range(roots):
            root = tmp_path / f"root{i}"
            pkg = root / name / "text_encoders"
            pkg.mkdir(parents=True)
            if regular:
                (root / name / "__init__.py").write_text("")
                (pkg / "__init__.py").write_text("")
            if i == tokenizer_in:
                _write_vocab(pkg / "qwen25_tokenizer")
            monkeypatch.syspath_prepend(str(root))
            paths.append(pkg / "qwen25_tokenizer")
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, mod)
        importlib.invalidate_caches()
        return paths
    return layout


def test_bundled_tokenizer_found_in_a_namespace_package(pack, fake_comfy):
    """ComfyUI 0.33: comfy/ and comfy/text_encoders/ have no __init__.py (``__file__`` is None)."""
    bt = pack["bundled_tokenizer"]
    want = fake_comfy("i4fake_comfy_ns")[0]
    ns = importlib.import_module("i4fake_comfy_ns.text_encoders")
    assert ns.__file__ is None  # what made Path(comfy.text_encoders.__file__) raise TypeError
    found, searched = bt.find_bundled_tokenizer("i4fake_comfy_ns")
    assert found == want and want in searched


def test_bundled_tokenizer_namespace_split_over_two_folders_and_regular_package(pack, fake_comfy):
    bt = pack["bundled_tokenizer"]
    paths = fake_comfy("i4fake_comfy_split", roots=2, tokenizer_in=1)
    assert bt.find_bundled_tokenizer("i4fake_comfy_split")[0] == paths[1]
    regular = fake_comfy("i4fake_comfy_regular", regular=True)[0]
    assert bt.find_bundled_tokenizer("i4fake_comfy_regular")[0] == regular
    # the tokenizer in the portion that comes LAST on sys.path (root0: root1 was prepended after it) is found too
    paths = fake_comfy("i4fake_comfy_split_last", roots=2, tokenizer_in=0)
    found, searched = bt.find_bundled_tokenizer("i4fake_comfy_split_last")
    assert found == paths[0] and searched == [paths[1], paths[0]]


def test_bundled_tokenizer_found_when_the_package_cannot_be_imported(pack, fake_comfy):
    """A regular ``comfy`` whose ``__init__`` fails to import outside ComfyUI: its folder is still searched."""
    bt = pack["bundled_tokenizer"]
    want = fake_comfy("i4fake_comfy_broken", regular=True)[0]
    (want.parents[2] / "i4fake_comfy_broken" / "__init__.py").write_text("raise ImportError('needs ComfyUI')\n")
    assert bt.find_bundled_tokenizer("i4fake_comfy_broken") == (want, [want])


def test_missing_bundled_tokenizer_says_which_folder_to_pick(pack, fake_comfy):
    bt = pack["bundled_tokenizer"]
    fake_comfy("i4fake_comfy_empty", tokenizer_in=-1)
    found, searched = bt.find_bundled_tokenizer("i4fake_comfy_empty")
    assert found is None and searched
    assert bt.find_bundled_tokenizer("i4fake_not_installed_anywhere") == (None, [])
    message = bt.missing_tokenizer_message(searched, ["tiny_tokenizer/", "ideogram-4-fp8/"])
    assert "pick one of 'tiny_tokenizer/', 'ideogram-4-fp8/' as tokenizer" in message
    assert str(searched[0]) in message
    assert "models/text_encoders/qwen3vl_tokenizer/" in bt.missing_tokenizer_message([], [])


def test_text_encoder_loader_auto_tokenizer_uses_the_namespace_package(pack, fake_comfy):
    """The node's own lookup (``tokenizer = auto`` for a single file) with ``comfy`` a namespace package."""
    want = fake_comfy("comfy")[0]
    assert pack["text_encoder_nodes"]._tokenizer_path("auto", False) == want
    assert pack["text_encoder_nodes"]._tokenizer_path("auto", True) is None  # a folder brings its own


def test_text_encoder_loader_without_bundled_tokenizer_is_a_value_error(pack, fake_comfy):
    fake_comfy("comfy", tokenizer_in=-1)
    with pytest.raises(ValueError, match="pick .* as tokenizer"):
        pack["text_encoder_nodes"]._tokenizer_path("comfyui (qwen25_tokenizer)", False)


# --------------------------------------------------------------------------- 3. Model Loader guards

def test_same_file_for_both_roles_is_an_error(pack, tmp_path):
    guard = pack["loader_nodes"].pair_warnings
    f = tmp_path / "ideogram4_fp8_scaled.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="same checkpoint .*guidance.*or leave it on auto"):
        guard(f.name, f, "transformer", f.name, f, "unconditional_transformer")
    link = tmp_path / "other_name_unconditional.safetensors"
    link.symlink_to(f)
    with pytest.raises(ValueError, match="same checkpoint"):
        guard(f.name, f, "transformer", link.name, link, "unconditional_transformer")
    repo = tmp_path / "repo"
    for component in ("transformer", "unconditional_transformer"):
        (repo / component).mkdir(parents=True)
        (repo / component / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert guard("repo/", repo, "transformer", "auto", repo, "unconditional_transformer") == []  # two components
    # a bare transformer folder (no unconditional_transformer/) picked for both roles supplies the same weights
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    (bare / "diffusion_pytorch_model.bf16.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="same checkpoint") as err:  # auto would fail on it too: not suggested
        guard("bare/", bare, "transformer", "bare/", bare, "unconditional_transformer")
    assert "unconditional model's own folder or file" in str(err.value) and "auto" not in str(err.value)


def test_role_names_swapped_are_warnings(pack, tmp_path):
    guard = pack["loader_nodes"].pair_warnings
    cond = tmp_path / "ideogram4_fp8_scaled.safetensors"
    uncond = tmp_path / "ideogram4_unconditional_fp8_scaled.safetensors"
    for f in (cond, uncond):
        f.write_bytes(f.name.encode())
    assert guard(cond.name, cond, "transformer", "auto", uncond, "unconditional_transformer") == []
    swapped = guard(uncond.name, uncond, "transformer", cond.name, cond, "unconditional_transformer")
    assert len(swapped) == 2
    assert "conditional = 'ideogram4_unconditional_fp8_scaled.safetensors' is named like an unconditional" in swapped[0]
    assert "unconditional = 'ideogram4_fp8_scaled.safetensors' is not named like an unconditional" in swapped[1]
    # without an unconditional pick (none / none (from a LoRA)) the conditional name is still checked
    alone = pack["loader_nodes"].conditional_name_warnings(uncond.name, uncond)
    assert len(alone) == 1 and "is named like an unconditional" in alone[0]
    assert pack["loader_nodes"].conditional_name_warnings(cond.name, cond) == []


# --------------------------------------------------------------------------- 6. size messages

@pytest.mark.parametrize("w,h,name,value,suggestion", [
    (100, 1024, "width", 100, 256),
    (1000, 1024, "width", 1000, 992),
    (1024, 4096, "height", 4096, 2048),
    (1024, 1030, "height", 1030, 1024),
    (2048, 256, "height", 256, 352),
    (256, 2048, "width", 256, 352),
])
def test_size_errors_name_one_value_and_a_supported_suggestion(pack, w, h, name, value, suggestion):
    from sampling.resolution import check_resolution

    with pytest.raises(ValueError) as info:
        check_resolution(w, h)
    message = str(info.value)
    assert message.startswith(f"{name} = {value} ") and f"(try {name} = {suggestion})" in message
    assert 256 <= suggestion <= 2048 and suggestion % 16 == 0
    other = {"width": w, "height": h}
    other[name] = suggestion
    check_resolution(other["width"], other["height"])  # the suggestion is accepted
    node = pack["latent_nodes"].Ideogram4NativeEmptyLatent.validate_inputs("custom", w, h)
    assert node == f"Ideogram4 Empty Latent: {message}"
    assert node.count(" = ") == 2 and node.count("256") <= 2  # one value, one suggestion, the rule once


# --------------------------------------------------------------------------- 7. Magic Prompt

def test_magic_prompt_seed_is_fixed_and_size_can_come_from_the_latent(pack, monkeypatch):
    import torch

    schema = collect_schemas(pack["pack"])["Ideogram4NativeMagicPrompt"]
    inputs = {i.id: i for i in schema.inputs}
    assert inputs["seed"].get("control_after_generate") == "fixed"
    assert inputs["latent"].io_type == "LATENT" and inputs["latent"].optional
    cn = pack["caption_nodes"]
    seen = {}

    def fake_expand(prompt, width, height, **kw):
        seen.update(width=width, height=height)
        report = cn.cap.check_caption('{"compositional_deconstruction":{"background":"b","elements":[]}}')
        return type("R", (), {"caption": report.canonical, "report": report, "repaired": False})()

    monkeypatch.setattr(cn.mp, "expand", fake_expand)
    latent = {"samples": torch.zeros(1, 128, 48, 85)}  # 1360×768
    out = cn.Ideogram4NativeMagicPrompt.execute("a fox", 1024, 1024, "none", "", "", True, 0, 30, latent=latent)
    assert seen == {"width": 1360, "height": 768}
    assert "1360×768 from the latent" in out.ui["text"][0]
    cn.Ideogram4NativeMagicPrompt.execute("a fox", 640, 1024, "none", "", "", True, 0, 30)
    assert seen == {"width": 640, "height": 1024}


# --------------------------------------------------------------------------- 8. empty style fields

def test_latent_notes_name_what_is_not_the_packs(pack):
    """A latent without the pack's space mark whose content is used (img2img start, decode) gets a note pointing at
    Ideogram4 Flux2 VAE To Latent; batch_index rows other than 0…n−1 are said."""
    sn = pack["sampler_nodes"]
    core = {"samples": torch.zeros(1, 128, 16, 16)}
    note = sn.unmarked_latent_note(core, "its content is the img2img start")
    assert note and "carries no Ideogram 4 mark" in note and "Ideogram4 Flux2 VAE To Latent" in note
    assert sn.unmarked_latent_note(dict(core, ideogram4_space="model"), "is decoded") is None
    assert sn.batch_index_note(dict(core, batch_index=[2]), 5) == \
        "noise: items [2] of the batch of 3 that seed 5 draws (the latent's batch_index)"
    assert sn.batch_index_note(dict(core, batch_index=[0], ideogram4_batch=4), 5) == \
        "noise: items [0] of the batch of 4 that seed 5 draws (the latent's batch_index)"
    assert sn.batch_index_note(dict(core, batch_index=[0]), 5) is None and sn.batch_index_note(core, 5) is None


def test_verbatim_modes_do_not_claim_repairs_and_elements_say_what_they_drop(pack):
    """strict / warn encode the caption as typed: what canonicalize would repair is listed as not applied."""
    import json

    te = pack["text_encoder_nodes"]
    caption = json.dumps({"high_level_description": "A fox.",
                          "compositional_deconstruction": {"background": "Snow.", "elements": []}}, indent=2)
    for mode in ("strict", "warn"):
        text, lines = te.check_caption_text(caption, mode)
        assert text == caption
        assert not any(line.startswith(("fixed:", "format:")) for line in lines), lines
        assert any(line.startswith("not reformatted (encoded verbatim)") for line in lines), lines
    text, lines = te.check_caption_text(caption, "canonicalize")
    assert text != caption and any(line.startswith("format:") for line in lines), lines
    out = pack["caption_nodes"].Ideogram4NativeCaptionElement.execute("obj", "HELLO", "a sign", True, 0, 0, 1000,
                                                                      1000, "ff0000")
    note = out.ui["text"][0]
    assert "text not used: an obj element renders no text" in note and "'ff0000' written as '#FF0000'" in note
    assert pack["caption_nodes"].Ideogram4NativeCaptionElement.execute("obj", "", "a fox", True, 0, 0, 1000, 1000,
                                                                       "").ui is None


def test_caption_builder_omits_an_empty_style():
    from model.caption import builders

    base = dict(high_level_description="A fox.", background="snow", layout="[]", color_palette="")
    report = builders.compose_caption(style_mode="photo", aesthetics="", lighting=" ", medium="photograph",
                                      style_value="", **base)
    assert report.errors == [] and "style_description" not in report.data
    assert '"aesthetics"' not in report.canonical and '""' not in report.canonical.replace('"elements":[]', "")
    assert any("no style_description is written" in w for w in report.warnings)
    filled = builders.compose_caption(style_mode="photo", aesthetics="calm", lighting="dawn", medium="photograph",
                                      style_value="35mm", **base)
    assert filled.data["style_description"] == {"aesthetics": "calm", "lighting": "dawn", "photo": "35mm",
                                                 "medium": "photograph"}
    # A partly filled style keeps the keys the reference verifier requires, and says which are empty.
    partial = builders.compose_caption(style_mode="art_style", aesthetics="calm", lighting="", medium="illustration",
                                       style_value="flat vector", **base)
    assert partial.errors == [] and partial.data["style_description"]["lighting"] == ""
    assert any("style_description.lighting: empty" in w for w in partial.warnings)


# --------------------------------------------------------------------------- 10. exception types

def _full_type_name(klass) -> str:
    """ComfyUI 0.33 ``execution.full_type_name`` (what the UI shows as the exception type)."""
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else module + "." + klass.__qualname__


def test_exception_types_read_cleanly_whatever_the_pack_module_is_called(pack):
    """ComfyUI imports the pack as ``/path/to/custom_nodes/ComfyUI-Ideogram4-Native``; here it is
    ``_ideogram4_pack_stubbed`` — no exception type we define may carry that name."""
    import pkgutil

    ours = []
    for sub in ("model", "nodes", "sampling"):
        root = importlib.import_module(f"{PACKAGE}.{sub}")
        for info in pkgutil.walk_packages(root.__path__, prefix=root.__name__ + "."):
            module = importlib.import_module(info.name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__qualname__ in vars(module) and \
                        getattr(module, obj.__qualname__) is obj and not obj.__module__.startswith(("builtins",)):
                    ours.append(obj)
    caption_error = importlib.import_module(f"{PACKAGE}.model.caption").CaptionError
    assert caption_error in ours
    for klass in ours:
        name = _full_type_name(klass)
        assert PACKAGE not in name and "/" not in name, name
    assert _full_type_name(caption_error) == "ideogram4_native.CaptionError"
    assert issubclass(caption_error, ValueError)


# --------------------------------------------------------------------------- 12. contributor setup

_IMPORT_NAME_TO_DIST = {"websocket": "websocket-client", "PIL": "pillow", "yaml": "pyyaml"}
_PROVIDED = {"torch", "comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "execution", "nodes",
             "server", "main", "model", "sampling", "tools", "benchmarks"}


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    local = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    return {n for n in names if n not in sys.stdlib_module_names and n not in _PROVIDED and n not in local}


def test_integration_test_imports_are_in_the_test_extra():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower()
                for d in pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["test"]}
    needed = set()
    for path in list((ROOT / "tests").glob("*.py")) + list((ROOT / "tests" / "comfyui").glob("*.py")):
        needed |= _third_party_imports(path)
    assert "websocket" in needed
    missing = {n for n in needed if _IMPORT_NAME_TO_DIST.get(n, n).lower() not in declared}
    assert not missing, f"imported by the tests but not in dependencies or the test extra: {sorted(missing)}"


def test_readme_documents_one_command_for_the_integration_tests():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next((l for l in readme.splitlines() if "tests/comfyui" in l and "COMFYUI_PATH=" in l and "[test]" in l),
                None)
    assert line is not None, "README: one command that installs the test extra and runs tests/comfyui"


def test_encoding_raises_no_deprecation_warning(tmp_path):
    from model.text_encoder import load_text_encoder
    from tools.make_test_text_encoder import tiny_text_config, write_layout

    root = write_layout("official_bf16", tmp_path, text=tiny_text_config(num_layers=5))
    enc = load_text_encoder(root, taps=(0, 1, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any FutureWarning/DeprecationWarning from transformers fails the test
        out = enc.encode(['{"compositional_deconstruction":{"background":"b","elements":[]}}'], use_cache=False)
    assert out.features.shape[-1] == 3 * 64
