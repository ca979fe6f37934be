"""Issue 10: a new user's first hour, against a real ComfyUI server (``--cpu``, 127.0.0.1).

The models folder holds exactly the README's recommended files by their Comfy-Org names — tiny random
weights in the real layouts: ``ideogram4_fp8_scaled.safetensors`` + ``ideogram4_unconditional_fp8_scaled``
(Comfy ``fp8_scaled``), ``qwen3vl_8b_fp8_scaled.safetensors`` (single file, Comfy-Org naming
``model.language_model.*`` + ``model.visual.*``, hidden size 64 but the **real vocabulary of 151,936 rows**,
so ComfyUI's bundled ``qwen25_tokenizer`` can be used) and ``flux2-vae.safetensors``.  No tokenizer
folder exists anywhere, so ``tokenizer = auto`` must find ComfyUI's bundled one (ComfyUI 0.33:
``comfy/text_encoders`` is a namespace package, ``__file__`` is None).

The first run is the README's headless example: the shipped API twin, the fox caption, seed 42,
1360×768, queued over HTTP with a websocket listening; ``test_first_run_log`` prints the seconds from
POST to PNG and the progress messages (copied into the issue note).  Skipped unless ``COMFYUI_PATH``
is set.
"""

from __future__ import annotations

import collections
import io as _io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from comfy_harness import (COMFYUI_PATH, REPO, TEXT_WIDTH, running_server, errors_of, new_client_id,
                           requires_comfyui, ws_messages)

pytestmark = requires_comfyui()

API_TEMPLATE = REPO / "workflows" / "api" / "image_ideogram4_t2i_api.json"
REAL_VOCAB = 151_936  # Qwen3-VL-8B's embedding rows
README_CAPTION = json.dumps({
    "high_level_description": "A red fox in fresh snow.",
    "compositional_deconstruction": {"background": "A snowy pine forest at dawn.", "elements": [
        {"type": "obj", "bbox": [300, 250, 900, 750], "desc": "a red fox sitting, facing the viewer"}]}},
    separators=(",", ":"), ensure_ascii=False)


def write_readme_models(models: Path) -> dict:
    """The README's four files (Comfy-Org names), tiny; plus two VAEs with an encoder for core VAELoader."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    from tools.make_test_checkpoints import convert, random_state_dict, tiny_config, write_file
    from tools.make_test_text_encoder import tiny_text_config, write_layout
    from tools.make_test_vae import write_vae

    dm, te, vae = models / "diffusion_models", models / "text_encoders", models / "vae"
    for d in (dm, te, vae):
        d.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(text_width=TEXT_WIDTH)
    write_file(convert(random_state_dict(cfg, 0), "comfy_fp8_scaled"), dm / "ideogram4_fp8_scaled.safetensors",
               "comfy_fp8_scaled")
    write_file(convert(random_state_dict(cfg, 1), "comfy_fp8_scaled"),
               dm / "ideogram4_unconditional_fp8_scaled.safetensors", "comfy_fp8_scaled")
    staging = models / "_staging"
    text = tiny_text_config(num_layers=36, vocab_size=REAL_VOCAB)
    written = write_layout("comfy_fp8_scaled", staging, text=text, comfy_naming="hf")
    shutil.move(str(written), str(te / "qwen3vl_8b_fp8_scaled.safetensors"))
    shutil.rmtree(staging, ignore_errors=True)
    write_vae(vae / "flux2-vae.safetensors", "bfl")
    write_qwen_gguf(te, text)
    import torch

    write_vae(vae / "tiny_vae_with_core_encoder.safetensors", "bfl", with_encoder=True, dtype=torch.bfloat16,
              encoder_ch=128)  # what core ComfyUI builds
    write_vae(vae / "tiny_vae_with_small_encoder.safetensors", "bfl", with_encoder=True, encoder_ch=32)
    return {"te": te / "qwen3vl_8b_fp8_scaled.safetensors"}


QWEN_GGUF = "Qwen3VL-8B-Instruct-Q8_0.gguf"  # Qwen/Qwen3VL-8B-Instruct-GGUF's names
QWEN_MMPROJ = "mmproj-Qwen3VL-8B-Instruct-F16.gguf"


def write_qwen_gguf(te: Path, text: dict) -> None:
    """llama.cpp's language-model GGUF (36 layers, hidden 64, Q8_0) listing the real vocabulary — the token strings
    of ComfyUI's bundled Qwen tokenizer padded to 151,936 rows with ``[PADn]``, as llama.cpp writes Qwen3-VL's —
    and the mmproj file users download beside it."""
    from transformers import AutoTokenizer
    from tools.make_test_text_encoder_gguf import write_llama_cpp_gguf, write_mmproj

    tok = AutoTokenizer.from_pretrained(str(Path(COMFYUI_PATH) / "comfy" / "text_encoders" / "qwen25_tokenizer"))
    by_id = {i: t for t, i in tok.get_vocab().items()}
    write_llama_cpp_gguf(te / QWEN_GGUF, "Q8_0", text=text, tokens=[by_id.get(i) for i in range(max(by_id) + 1)],
                         merges=[])
    write_mmproj(te / QWEN_MMPROJ)


@pytest.fixture(scope="module")
def first_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_run_root")
    write_readme_models(root / "models")
    with running_server(root) as server:
        yield server


def api_prompt() -> dict:
    return {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])}
            for k, v in json.loads(API_TEMPLATE.read_text(encoding="utf-8")).items()}


def readme_prompt() -> dict:
    """Exactly what the README's Python example changes in the API twin."""
    prompt = api_prompt()
    prompt["6"]["inputs"]["caption"] = README_CAPTION
    prompt["7"]["inputs"].update(seed=42, preset="V4_DEFAULT_20")
    prompt["4"]["inputs"].update(aspect_ratio="1360x768 (16:9)")
    return prompt


def _collect(ws, prompt_id: str, timeout: float) -> list[tuple[float, dict]]:
    msgs = []
    for t, msg in ws_messages(ws, timeout):
        msg = msg or {"type": "binary preview", "data": {"prompt_id": prompt_id}}
        msgs.append((t, msg))
        if msg.get("type") in ("execution_success", "execution_error", "execution_interrupted") and \
                (msg.get("data") or {}).get("prompt_id") == prompt_id:
            break
    return msgs


def _summary(msgs: list[tuple[float, dict]], t0: float) -> list[str]:
    """One line per websocket event (progress collapsed per node into first..last/max)."""
    lines, progress = [], collections.OrderedDict()
    for t, m in msgs:
        kind, data = m.get("type"), m.get("data") or {}
        if kind == "progress":
            key = data.get("node")
            first = progress.get(key, (t, data["value"]))
            progress[key] = (first[0], first[1], t, data["value"], data["max"])
            continue
        if kind in ("progress_state", "status", "crystools.monitor"):
            continue
        node = data.get("node") or data.get("display_node") or ""
        lines.append(f"{t - t0:7.2f} s  {kind} {node}".rstrip())
    for node, (ta, va, tb, vb, mx) in progress.items():
        lines.append(f"progress node {node}: {va}→{vb} of {mx} ({ta - t0:.2f}–{tb - t0:.2f} s)")
    return lines


# --------------------------------------------------------------------------- 1. the README first run

def test_first_run_log(first_server):
    """The README headless example on the README's files: PNG back, no tokenizer folder anywhere."""
    from PIL import Image

    server = first_server
    client = new_client_id()
    ws = server.websocket(client)
    try:
        t0 = time.monotonic()
        status, body = server.post("/prompt", {"prompt": readme_prompt(), "client_id": client})
        assert status == 200, body
        pid = body["prompt_id"]
        msgs = _collect(ws, pid, 900)
    finally:
        ws.close()
    entry = server.wait(pid, 60)
    errs = errors_of(entry)
    assert entry["status"]["status_str"] == "success", (errs and errs[0]["exception_message"]) or server.log_tail()
    info = entry["outputs"]["9"]["images"][0]
    png = server.get_bytes(f"/view?filename={info['filename']}&subfolder={info['subfolder']}&type={info['type']}")
    t_png = time.monotonic()
    image = Image.open(_io.BytesIO(png))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and image.size == (1360, 768)
    assert np.asarray(image.convert("RGB")).std() > 0
    te_text = entry["outputs"]["2"]["text"][0]
    assert "qwen25_tokenizer" in te_text, te_text  # tokenizer auto → ComfyUI's bundled one
    kinds = [m.get("type") for _, m in msgs]
    sampler = [m["data"] for _, m in msgs if m.get("type") == "progress" and m["data"].get("node") == "7"]
    assert sampler and sampler[-1]["max"] == 20 and sampler[-1]["value"] == 20
    assert "execution_success" in kinds
    print(f"\nfirst run: {t_png - t0:.2f} s from POST /prompt to the PNG ({len(png)} bytes, 1360×768)")
    print("\n".join(_summary(msgs, t0)))
    print("Text Encoder Loader:", te_text)
    print("Model Loader:", entry["outputs"]["1"]["text"][0].splitlines()[0])


def _readme_python_example(server, out: Path, extra: str = ""):
    """The README's Python headless example, verbatim but for the server address and the template's path (and
    ``extra`` lines run just before it posts), in a fresh interpreter with ``out`` as its working folder."""
    import re
    import subprocess

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Headless use"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for old, new in (('SERVER = "http://127.0.0.1:8188"', f"SERVER = {server.url!r}"),
                     ('open("workflows/api/image_ideogram4_t2i_api.json")', f"open({str(API_TEMPLATE)!r})"),
                     ("\nreq = urllib.request.Request(", f"\n{extra}\nreq = urllib.request.Request(")):
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=900)


def test_the_readme_python_example_runs_as_written(first_server, tmp_path):
    from PIL import Image

    proc = _readme_python_example(first_server, tmp_path / "ok")
    assert proc.returncode == 0, proc.stderr[-2000:]
    pngs = list((tmp_path / "ok").glob("*.png"))
    assert len(pngs) == 1 and Image.open(pngs[0]).size == (1360, 768)
    # an invalid input: the example's 400 branch prints which node, field and value (urllib raises on the 400)
    bad = _readme_python_example(first_server, tmp_path / "bad", extra='prompt["7"]["inputs"]["steps"] = 0')
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "'7'" in bad.stderr and "steps" in bad.stderr, bad.stderr[-2000:]


def test_the_readme_prompt_runs_on_a_llama_cpp_gguf_text_encoder(first_server):
    """A ComfyUI-GGUF user's text encoder: Qwen's own Q8_0 GGUF with tokenizer auto (ComfyUI's bundled one,
    checked against the vocabulary the file lists) → the README prompt gives its PNG; the loader says what it read."""
    prompt = readme_prompt()
    prompt["2"]["inputs"]["text_encoder"] = QWEN_GGUF
    prompt["4"]["inputs"].update(aspect_ratio="custom", width=256, height=256)
    prompt["7"]["inputs"].update(preset="V4_TURBO_12")
    entry = first_server.run(prompt)
    assert entry["status"]["status_str"] == "success", errors_of(entry)
    assert len(entry["outputs"]["9"]["images"]) == 1
    text = entry["outputs"]["2"]["text"][0]
    assert f"{QWEN_GGUF} — Qwen3-VL text encoder, GGUF (Q8_0), llama.cpp names (blk.N.*), compute bfloat16" in text
    assert "tokenizer: " in text and "qwen25_tokenizer" in text and "warning" not in text
    encoded = entry["outputs"]["6"]["text"][0]  # the encode node says how the packed layers were decoded
    assert encoded.endswith("GGUF decode: Q8_0: eager torch ops (exact) — not compiled on the CPU unless "
                            "IDEOGRAM4_GGUF_DECODE=fused (it needs a C++ compiler)"), encoded


def test_the_mmproj_file_is_named_as_such(first_server):
    entry = first_server.run(_with_preview({"class_type": "Ideogram4NativeTextEncoderLoader", "inputs": {
        "text_encoder": QWEN_MMPROJ, "tokenizer": "auto", "dtype": "auto", "device": "auto"}}))
    err = errors_of(entry)[0]
    assert err["node_type"] == "Ideogram4NativeTextEncoderLoader" and err["exception_type"] == "ValueError"
    assert "'clip' — the vision projector (mmproj)" in err["exception_message"]
    assert "pick the larger Qwen3-VL-8B-Instruct GGUF without 'mmproj' in its name" in err["exception_message"]


# --------------------------------------------------------------------------- 10. clean exception type

def _with_preview(node: dict) -> dict:
    """One pack node plus core *Preview as Text* (an output node) on its first output."""
    return {"1": node, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def test_caption_error_type_is_clean(first_server):
    entry = first_server.run(_with_preview({"class_type": "Ideogram4NativeCaptionFromJSON",
                                            "inputs": {"json_text": "a fox in the snow", "strict": False}}))
    err = errors_of(entry)[0]
    assert err["node_type"] == "Ideogram4NativeCaptionFromJSON"
    assert err["exception_type"] == "ideogram4_native.CaptionError", err["exception_type"]
    assert "/" not in err["exception_type"] and "Ideogram4-Native" not in err["exception_type"]


def _loader(conditional: str, unconditional: str) -> dict:
    return _with_preview({"class_type": "Ideogram4NativeModelLoader", "inputs": {
        "conditional": conditional, "unconditional": unconditional, "weight_dtype": "auto"}})


def test_same_file_for_both_roles_is_a_plain_value_error(first_server):
    entry = first_server.run(_loader("ideogram4_fp8_scaled.safetensors", "ideogram4_fp8_scaled.safetensors"))
    err = errors_of(entry)[0]
    assert err["node_type"] == "Ideogram4NativeModelLoader" and err["exception_type"] == "ValueError"
    assert "same checkpoint" in err["exception_message"] and "guidance" in err["exception_message"]


# --------------------------------------------------------------------------- 3. loader guards

def test_swapped_roles_warn_on_the_node(first_server):
    entry = first_server.run(_loader("ideogram4_unconditional_fp8_scaled.safetensors",
                                     "ideogram4_fp8_scaled.safetensors"))
    assert entry["status"]["status_str"] == "success", errors_of(entry)
    text = entry["outputs"]["1"]["text"][0]
    assert "warning: conditional = 'ideogram4_unconditional_fp8_scaled.safetensors' is named like an " \
           "unconditional checkpoint" in text
    assert "warning: unconditional = 'ideogram4_fp8_scaled.safetensors' is not named like" in text
    plain = first_server.run(_loader("ideogram4_fp8_scaled.safetensors", "auto"))
    assert plain["status"]["status_str"] == "success" and "warning" not in plain["outputs"]["1"]["text"][0]


# --------------------------------------------------------------------------- 6. size errors

def test_size_error_names_one_value_and_a_supported_suggestion(first_server):
    prompt = readme_prompt()
    prompt["4"]["inputs"].update(aspect_ratio="custom", width=100, height=1024)
    status, body = first_server.queue(prompt)
    assert status == 400, body
    errors = body["node_errors"]["4"]["errors"]
    details = {e["details"] for e in errors}
    messages = {d.split(" - ", 1)[1] for d in details}
    assert messages == {"Ideogram4 Empty Latent: width = 100 is outside the supported range 256–2048 px "
                        "(try width = 256)"}, details
    assert "try 96" not in json.dumps(body, ensure_ascii=False)
    # ComfyUI 0.33 attaches a validate_inputs message to every input the check reads (execution.py).
    print(f"\nsize error: {len(errors)} entries (inputs {[e['extra_info']['input_name'] for e in errors]}), "
          f"one message: {messages.pop()}")


# --------------------------------------------------------------------------- 7. Magic Prompt schema

def test_magic_prompt_seed_fixed_and_latent_input(first_server):
    info = first_server.get("/object_info/Ideogram4NativeMagicPrompt")["Ideogram4NativeMagicPrompt"]
    seed = info["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] == "fixed"
    assert info["input"]["optional"]["latent"][0] == "LATENT"


# --------------------------------------------------------------------------- 12. VAE files in core VAELoader

def _core_vae_roundtrip(vae_name: str) -> dict:
    return {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 8421504}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 0]}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "core_vae"}},
    }


def test_make_test_vae_with_encoder_loads_in_core_vae_loader(first_server):
    from tools.make_test_vae import core_vae_problem, tiny_vae_config

    assert core_vae_problem(tiny_vae_config(), True, encoder_ch=128) is None
    entry = first_server.run(_core_vae_roundtrip("tiny_vae_with_core_encoder.safetensors"))
    errs = errors_of(entry)
    assert entry["status"]["status_str"] == "success", errs and errs[0]["exception_message"]
    img = first_server.image(entry, "5")
    assert img.shape == (64, 64, 3)
    assert "Missing VAE keys" not in first_server.log_tail(200_000)


def test_make_test_vae_small_encoder_is_flagged_and_really_fails_in_core(first_server):
    from tools.make_test_vae import core_vae_problem, tiny_vae_config

    problem = core_vae_problem(tiny_vae_config(), True, encoder_ch=32)
    assert problem and "core VAELoader cannot load it" in problem
    entry = first_server.run(_core_vae_roundtrip("tiny_vae_with_small_encoder.safetensors"))
    errs = errors_of(entry)
    assert errs and errs[0]["node_type"] == "VAELoader", entry["status"]
    assert "size mismatch" in errs[0]["exception_message"]
    # This pack's own VAE Loader reads the decoder of the same file.
    prompt = readme_prompt()
    prompt["3"]["inputs"]["vae_name"] = "tiny_vae_with_small_encoder.safetensors"
    prompt["7"]["inputs"].update(preset="V4_TURBO_12")
    prompt["4"]["inputs"].update(aspect_ratio="custom", width=256, height=256)
    ok = first_server.run(prompt)
    assert ok["status"]["status_str"] == "success", errors_of(ok)
