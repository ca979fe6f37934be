"""Checks a ComfyUI workflow (UI format) or prompt (API format) against node schemas.

Schemas come either from the pack's ``define_schema()`` (recorded through ``tests/comfy_api_stub.py``,
no ComfyUI needed) or from a live server's ``GET /object_info``; both are normalised to
:class:`Node`.  Every problem is returned as a string (empty list = valid), so a failing test shows
all drift at once: unknown node types, unknown/missing inputs, widget values of the wrong type,
outside min/max, not among the combo options, wrong link types, UI/API twins that disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
FILE_LIST_PREFIX = "<files:"
# Frontend-only nodes (no Python class): type -> number of string widgets.
FRONTEND_ONLY = {"MarkdownNote": 1, "Note": 1}


@dataclass
class Inp:
    name: str
    type: str
    optional: bool = False
    opts: dict = field(default_factory=dict)

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.opts.get("forceInput", self.opts.get("force_input", False))


@dataclass
class Node:
    inputs: list[Inp]
    outputs: list[str]

    def input(self, name: str) -> Optional[Inp]:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def widgets(self) -> list[Inp]:
        return [i for i in self.inputs if i.is_widget]


# Core nodes the templates use, as ComfyUI 0.33 declares them.
CORE = {
    "SaveImage": Node([Inp("images", "IMAGE"), Inp("filename_prefix", "STRING", opts={"default": "ComfyUI"})],
                      ["IMAGE"]),
    "SaveLatent": Node([Inp("samples", "LATENT"), Inp("filename_prefix", "STRING")], []),
    "SamplerCustomAdvanced": Node([Inp("noise", "NOISE"), Inp("guider", "GUIDER"), Inp("sampler", "SAMPLER"),
                                   Inp("sigmas", "SIGMAS"), Inp("latent_image", "LATENT")], ["LATENT", "LATENT"]),
    "VAELoader": Node([Inp("vae_name", "COMBO", opts={"options": [FILE_LIST_PREFIX + "vae>"]})], ["VAE"]),
    "VAEDecode": Node([Inp("samples", "LATENT"), Inp("vae", "VAE")], ["IMAGE"]),
    "LoadImage": Node([Inp("image", "COMBO", opts={"options": [FILE_LIST_PREFIX + "input>"], "image_upload": True})],
                      ["IMAGE", "MASK"]),
}
UPLOAD_VALUE = "image"  # the frontend stores its upload widget's value after an image_upload combo
FILE_SUFFIXES = (".safetensors", ".sft", ".png", ".jpg", ".jpeg", ".webp")


def from_stub(schemas: dict) -> dict[str, Node]:
    """``tests.comfy_api_stub.collect_schemas`` output → {node_id: Node}."""
    out = {}
    for node_id, s in schemas.items():
        inputs = []
        for i in s.inputs:
            opts = dict(i.kwargs)
            if opts.get("control_after_generate"):
                opts["control_after_generate"] = True
            inputs.append(Inp(i.id, i.io_type, bool(i.kwargs.get("optional", False)), opts))
        out[node_id] = Node(inputs, [o.io_type for o in s.outputs])
    return out


def from_object_info(info: dict) -> dict[str, Node]:
    """``GET /object_info`` → {node_id: Node} (input order from ``input_order``)."""
    out = {}
    for node_id, d in info.items():
        inputs = []
        for section, optional in (("required", False), ("optional", True)):
            decl = d.get("input", {}).get(section, {}) or {}
            order = (d.get("input_order") or {}).get(section) or list(decl)
            for name in order:
                spec = decl[name]
                typ, opts = spec[0], (dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {})
                if isinstance(typ, list):  # legacy combo
                    opts["options"], typ = typ, "COMBO"
                inputs.append(Inp(name, typ, optional, opts))
        out[node_id] = Node(inputs, list(d.get("output", [])))
    return out


def _check_value(where: str, inp: Inp, value: Any) -> list[str]:
    o, t = inp.opts, inp.type
    if t == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: {value!r} is not an INT"]
    elif t == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [f"{where}: {value!r} is not a FLOAT"]
    elif t == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a STRING"]
    elif t == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a BOOLEAN"]
    elif t == "COMBO":
        options = list(o.get("options") or [])
        files = [x for x in options if isinstance(x, str) and x.startswith(FILE_LIST_PREFIX)]
        if value in options:
            return []
        if files and isinstance(value, str) and (value.endswith(FILE_SUFFIXES) or value.endswith("/")):
            return []  # a model/input-folder combo: any model or image file / folder name is legitimate
        return [f"{where}: {value!r} is not one of {options}"]
    problems = []
    if "min" in o and o["min"] is not None and value < o["min"]:
        problems.append(f"{where}: {value} < min {o['min']}")
    if "max" in o and o["max"] is not None and value > o["max"]:
        problems.append(f"{where}: {value} > max {o['max']}")
    if t == "INT" and o.get("step") and "min" in o and (value - o["min"]) % o["step"]:
        problems.append(f"{where}: {value} is not on the step grid (min {o['min']}, step {o['step']})")
    return problems


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def check_api(prompt: dict, schemas: dict[str, Node]) -> list[str]:
    """An API-format prompt ``{id: {class_type, inputs}}``."""
    problems = []
    for nid, node in prompt.items():
        ctype = node.get("class_type")
        schema = schemas.get(ctype)
        if schema is None:
            problems.append(f"node {nid}: unknown class_type {ctype!r}")
            continue
        inputs = node.get("inputs", {})
        for name, value in inputs.items():
            inp = schema.input(name)
            where = f"node {nid} ({ctype}).{name}"
            if inp is None:
                problems.append(f"{where}: not an input of {ctype}")
                continue
            if _is_link(value):
                src = prompt.get(value[0])
                if src is None:
                    problems.append(f"{where}: links to missing node {value[0]}")
                    continue
                src_schema = schemas.get(src.get("class_type"))
                if src_schema is None:
                    continue
                if not 0 <= value[1] < len(src_schema.outputs):
                    problems.append(f"{where}: output {value[1]} of {src['class_type']} does not exist")
                    continue
                out_type = src_schema.outputs[value[1]]
                if out_type != inp.type and not (inp.type == "COMBO" and out_type == "COMBO"):
                    problems.append(f"{where}: gets {out_type} from node {value[0]}, expects {inp.type}")
            elif inp.is_widget:
                problems += _check_value(where, inp, value)
            else:
                problems.append(f"{where}: {inp.type} input needs a link, got {value!r}")
        for inp in schema.inputs:
            if not inp.optional and inp.name not in inputs:
                problems.append(f"node {nid} ({ctype}): required input {inp.name!r} missing")
    return problems


def check_ui(workflow: dict, schemas: dict[str, Node]) -> list[str]:
    """A UI-format workflow (frontend ``version`` 0.4: nodes with widgets_values, links)."""
    problems = []
    if workflow.get("version") != 0.4:
        problems.append(f"workflow version {workflow.get('version')!r}, expected 0.4")
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    links = {l[0]: l for l in workflow.get("links", [])}
    if len(nodes) != len(workflow.get("nodes", [])):
        problems.append("duplicate node ids")
    if workflow.get("last_node_id", 0) < max(nodes, default=0):
        problems.append("last_node_id is smaller than a node id")
    if workflow.get("last_link_id", 0) < max(links, default=0):
        problems.append("last_link_id is smaller than a link id")
    for nid, node in nodes.items():
        ntype = node.get("type")
        where = f"node {nid} ({ntype})"
        if ntype in FRONTEND_ONLY:
            values = node.get("widgets_values", [])
            if len(values) != FRONTEND_ONLY[ntype] or not all(isinstance(v, str) for v in values):
                problems.append(f"{where}: expects {FRONTEND_ONLY[ntype]} string widget(s)")
            continue
        schema = schemas.get(ntype)
        if schema is None:
            problems.append(f"{where}: unknown node type (would load as a missing node)")
            continue
        # widgets_values follow the widget inputs in declaration order; a widget with
        # control_after_generate stores its mode right after its value.
        values = list(node.get("widgets_values", []))
        pos = 0
        for inp in schema.widgets:
            if pos >= len(values):
                problems.append(f"{where}: widgets_values has no value for {inp.name!r}")
                break
            problems += _check_value(f"{where}.{inp.name}", inp, values[pos])
            pos += 1
            if inp.opts.get("control_after_generate"):
                if pos >= len(values) or values[pos] not in CONTROL_VALUES:
                    problems.append(f"{where}.{inp.name}: missing control_after_generate value {CONTROL_VALUES}")
                else:
                    pos += 1
            if inp.opts.get("image_upload") and pos < len(values) and values[pos] == UPLOAD_VALUE:
                pos += 1
        if pos < len(values):
            problems.append(f"{where}: {len(values) - pos} extra widgets_values {values[pos:]}")
        # sockets
        for slot, entry in enumerate(node.get("inputs", [])):
            inp = schema.input(entry.get("name"))
            if inp is None:
                problems.append(f"{where}: input {entry.get('name')!r} is not declared")
                continue
            if entry.get("type") != inp.type:
                problems.append(f"{where}.{inp.name}: socket type {entry.get('type')} != declared {inp.type}")
            if inp.is_widget and (entry.get("widget") or {}).get("name") != inp.name:
                problems.append(f"{where}.{inp.name}: widget input without widget name")
            link = entry.get("link")
            if link is not None:
                l = links.get(link)
                if l is None or l[3] != nid or l[4] != slot:
                    problems.append(f"{where}.{inp.name}: link {link} does not point here")
        linked = {e.get("name") for e in node.get("inputs", []) if e.get("link") is not None}
        for inp in schema.inputs:
            if not inp.optional and not inp.is_widget and inp.name not in linked:
                problems.append(f"{where}: required input {inp.name!r} is not connected")
        outs = node.get("outputs", [])
        if [o.get("type") for o in outs] != schema.outputs:
            problems.append(f"{where}: outputs {[o.get('type') for o in outs]} != declared {schema.outputs}")
    for lid, (link_id, src, sslot, dst, dslot, ltype) in links.items():
        s, d = nodes.get(src), nodes.get(dst)
        if s is None or d is None:
            problems.append(f"link {lid}: missing node")
            continue
        souts = s.get("outputs", [])
        if sslot >= len(souts) or lid not in (souts[sslot].get("links") or []):
            problems.append(f"link {lid}: not listed on the output of node {src}")
        elif souts[sslot].get("type") != ltype:
            problems.append(f"link {lid}: type {ltype} != output type {souts[sslot].get('type')}")
        dins = d.get("inputs", [])
        if dslot >= len(dins) or dins[dslot].get("type") != ltype:
            problems.append(f"link {lid}: type {ltype} does not match the input of node {dst}")
    return problems


def ui_to_api(workflow: dict, schemas: dict[str, Node]) -> dict:
    """The API prompt the frontend would queue for ``workflow`` (widget values + links)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {l[0]: l for l in workflow["links"]}
    prompt = {}
    for nid, node in nodes.items():
        schema = schemas.get(node["type"])
        if schema is None:
            continue
        inputs, values, pos = {}, list(node.get("widgets_values", [])), 0
        for inp in schema.widgets:
            if pos < len(values):
                inputs[inp.name] = values[pos]
            pos += 2 if inp.opts.get("control_after_generate") else 1
            if inp.opts.get("image_upload") and pos < len(values) and values[pos] == UPLOAD_VALUE:
                pos += 1
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                l = links[entry["link"]]
                inputs[entry["name"]] = [str(l[1]), l[2]]
        prompt[str(nid)] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def compare_twins(ui_prompt: dict, api: dict) -> list[str]:
    problems = []
    if set(ui_prompt) != set(api):
        problems.append(f"node ids differ: UI {sorted(ui_prompt)} vs API {sorted(api)}")
    for nid in sorted(set(ui_prompt) & set(api)):
        a, b = ui_prompt[nid], api[nid]
        if a["class_type"] != b["class_type"]:
            problems.append(f"node {nid}: {a['class_type']} vs {b['class_type']}")
            continue
        for name in sorted(set(a["inputs"]) | set(b["inputs"])):
            if a["inputs"].get(name) != b["inputs"].get(name):
                problems.append(f"node {nid}.{name}: UI {a['inputs'].get(name)!r} vs API {b['inputs'].get(name)!r}")
    return problems


# --------------------------------------------------------------------------- template metadata

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")  # the frontend's list
MODEL_DIRECTORIES = {"Ideogram4NativeModelLoader": "diffusion_models", "Ideogram4NativeTextEncoderLoader":
                     "text_encoders", "Ideogram4NativeVAELoader": "vae"}


def check_template_models(workflow: dict) -> list[str]:
    """Every model file a loader widget names has a ``properties.models`` entry (name, url, directory) so the
    frontend's missing-models dialog offers the download; no entry names a file the widgets do not use (the
    frontend only offers entries whose name is a widget value)."""
    problems = []
    for node in workflow.get("nodes", []):
        directory = MODEL_DIRECTORIES.get(node.get("type"))
        if directory is None:
            continue
        where = f"node {node['id']} ({node['type']})"
        files = [v for v in node.get("widgets_values", []) if isinstance(v, str) and v.endswith(MODEL_EXTENSIONS)]
        entries = {e.get("name"): e for e in (node.get("properties") or {}).get("models", [])}
        if not files:
            problems.append(f"{where}: names no model file")
        for name in files:
            e = entries.get(name)
            if e is None:
                problems.append(f"{where}: no properties.models entry for {name!r}")
                continue
            if e.get("directory") != directory:
                problems.append(f"{where}: {name} directory {e.get('directory')!r}, expected {directory!r}")
            url = str(e.get("url", ""))
            if not (url.startswith("https://huggingface.co/") and "/resolve/" in url and url.endswith("/" + name)):
                problems.append(f"{where}: {name} url {url!r} is not a Hugging Face download of that file")
        for name in set(entries) - set(files):
            problems.append(f"{where}: properties.models entry {name!r} is not a widget value")
    return problems
