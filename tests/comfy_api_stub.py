"""Test-only stand-in for ``comfy_api.latest`` (+ ``folder_paths``) that records node schemas.

Lets CI (no ComfyUI installed) import the pack's node modules and read every ``define_schema()``
so workflow files can be checked against the declared inputs.  The widget constructors accept
exactly the keyword arguments of ComfyUI 0.33's ``comfy_api.latest.io`` (a misspelt or removed
argument fails here as it would in ComfyUI).  ``folder_paths.get_filename_list(key)`` answers
``["<files:key>.safetensors"]`` so combos filled from model folders are recognisable.

Usage::

    with stubbed_pack() as pack:          # the repo imported as a package, stubs in sys.modules
        schemas = collect_schemas(pack)    # {node_id: NodeSchema}
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "_ideogram4_pack_stubbed"
FILE_LIST_PREFIX = "<files:"

_INPUT_KW = {"display_name", "optional", "tooltip", "lazy", "extra_dict", "raw_link", "advanced"}
_WIDGET_KW = _INPUT_KW | {"default", "socketless", "force_input"}
_ALLOWED = {
    "INT": _WIDGET_KW | {"min", "max", "step", "control_after_generate", "display_mode"},
    "FLOAT": _WIDGET_KW | {"min", "max", "step", "round", "display_mode", "gradient_stops"},
    "STRING": _WIDGET_KW | {"multiline", "placeholder", "dynamic_prompts"},
    "BOOLEAN": _WIDGET_KW | {"label_on", "label_off"},
    "COMBO": (_WIDGET_KW - {"force_input"}) | {"options", "control_after_generate", "upload", "image_folder",
                                                "remote"},
}
_OUTPUT_KW = {"display_name", "tooltip", "is_output_list"}
WIDGET_TYPES = set(_ALLOWED)


@dataclass
class InputDecl:
    id: str
    io_type: str
    kwargs: dict

    @property
    def is_widget(self) -> bool:
        return self.io_type in WIDGET_TYPES and not self.kwargs.get("force_input", False)

    @property
    def optional(self) -> bool:
        return bool(self.kwargs.get("optional", False))

    def get(self, key: str, default: Any = None) -> Any:
        return self.kwargs.get(key, default)


@dataclass
class OutputDecl:
    id: Optional[str]
    io_type: str
    kwargs: dict


@dataclass
class NodeSchema:
    node_id: str
    kwargs: dict
    inputs: list[InputDecl] = field(default_factory=list)
    outputs: list[OutputDecl] = field(default_factory=list)


def _make_type(io_type: str):
    allowed = _ALLOWED.get(io_type)

    class Input(InputDecl):
        def __init__(self, id: str, *args, **kwargs):
            if args:
                if io_type == "COMBO" and len(args) == 1 and "options" not in kwargs:
                    kwargs["options"] = args[0]
                else:
                    raise TypeError(f"{io_type}.Input({id!r}): pass arguments after the id by keyword")
            permitted = allowed if allowed is not None else _INPUT_KW
            unknown = set(kwargs) - permitted
            if unknown:
                raise TypeError(f"{io_type}.Input({id!r}) got unexpected keyword argument(s) {sorted(unknown)}")
            if io_type == "COMBO":
                options = kwargs.get("options")
                if isinstance(options, type):  # Enum class
                    kwargs["options"] = [v.value for v in options]
            super().__init__(id=id, io_type=io_type, kwargs=kwargs)

    class Output(OutputDecl):
        def __init__(self, id: Optional[str] = None, **kwargs):
            unknown = set(kwargs) - _OUTPUT_KW - ({"options"} if io_type == "COMBO" else set())
            if unknown:
                raise TypeError(f"{io_type}.Output({id!r}) got unexpected keyword argument(s) {sorted(unknown)}")
            super().__init__(id=id, io_type=io_type, kwargs=kwargs)

    return type(io_type.title(), (), {"io_type": io_type, "Input": Input, "Output": Output})


_NAMED = {"Int": "INT", "Float": "FLOAT", "String": "STRING", "Boolean": "BOOLEAN", "Combo": "COMBO",
          "Model": "MODEL", "Clip": "CLIP", "Vae": "VAE", "Conditioning": "CONDITIONING", "Latent": "LATENT",
          "Image": "IMAGE", "Mask": "MASK", "Sigmas": "SIGMAS", "Sampler": "SAMPLER", "Guider": "GUIDER",
          "Noise": "NOISE", "ControlNet": "CONTROL_NET", "ClipVision": "CLIP_VISION"}


class _Schema:
    def __init__(self, node_id: str, **kwargs):
        self.node_id = node_id
        self.kwargs = kwargs
        self.inputs = kwargs.get("inputs", [])
        self.outputs = kwargs.get("outputs", [])
        self.display_name = kwargs.get("display_name")
        self.category = kwargs.get("category")


class _NodeOutput:
    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui = args, ui


class _ComfyNode:
    @classmethod
    def define_schema(cls):  # pragma: no cover - overridden
        raise NotImplementedError


class _ComfyExtension:
    async def on_load(self) -> None:
        return None


def _io_module() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    for attr, io_type in _NAMED.items():
        setattr(io, attr, _make_type(io_type))
    io.Custom = lambda io_type: _make_type(io_type)
    io.Schema = _Schema
    io.NodeOutput = _NodeOutput
    io.ComfyNode = _ComfyNode
    io.ControlAfterGenerate = enum.Enum("ControlAfterGenerate", {n: n for n in ("fixed", "increment", "decrement",
                                                                             "randomize")}, type=str)
    io.Hidden = types.SimpleNamespace(unique_id="UNIQUE_ID", prompt="PROMPT", extra_pnginfo="EXTRA_PNGINFO")
    return io


def _folder_paths_module() -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = "/nonexistent-models"
    fp.folder_names_and_paths = {k: ([], {".safetensors"}) for k in ("diffusion_models", "text_encoders", "vae")}
    fp.get_filename_list = lambda key: [f"{FILE_LIST_PREFIX}{key}>.safetensors"]
    fp.get_folder_paths = lambda key: list(fp.folder_names_and_paths.get(key, ([], set()))[0])
    fp.get_full_path = lambda key, name: None
    return fp


@contextlib.contextmanager
def stubbed_pack():
    """Import the repo as package ``PACKAGE`` with stub ComfyUI modules; restore ``sys.modules`` after."""
    names = ("comfy_api", "comfy_api.latest", "comfy_api.latest.io", "folder_paths")
    saved = {n: sys.modules.get(n) for n in names}
    before = set(sys.modules)
    io = _io_module()
    latest = types.ModuleType("comfy_api.latest")
    latest.io = io
    latest.ui = types.ModuleType("comfy_api.latest.ui")
    latest.ComfyExtension = _ComfyExtension
    root = types.ModuleType("comfy_api")
    root.latest = latest
    sys.modules.update({"comfy_api": root, "comfy_api.latest": latest, "comfy_api.latest.io": io,
                        "folder_paths": _folder_paths_module()})
    try:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pack
        spec.loader.exec_module(pack)
        yield pack
    finally:
        for n in set(sys.modules) - before:
            if n == PACKAGE or n.startswith(PACKAGE + "."):
                del sys.modules[n]
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def collect_schemas(pack) -> dict[str, NodeSchema]:
    extension = importlib.import_module(f"{pack.__name__}.nodes.extension")
    out: dict[str, NodeSchema] = {}
    for node in extension.all_nodes():
        s = node.define_schema()
        if s.node_id in out:
            raise ValueError(f"duplicate node id {s.node_id}")
        out[s.node_id] = NodeSchema(node_id=s.node_id, kwargs=s.kwargs, inputs=list(s.inputs), outputs=list(s.outputs))
    return out
