"""Start/stop a real ComfyUI server for the integration tests, and talk to it (stdlib + websocket-client).

The server is always bound to 127.0.0.1, every wait is bounded, and ``stop()`` kills the whole
process group (also on test failure).  Test model files are the project's tiny random checkpoints:
a 2-layer DiT with 13 × 64 text features, a 36-layer 64-wide Qwen3-VL text encoder (so the real
13 taps exist) and the tiny FLUX.2 VAE.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
PACK_DIR_NAME = "ComfyUI-Ideogram4-Native"
COND_SEED, UNCOND_SEED = 0, 1
TEXT_WIDTH = 64  # text encoder hidden size; DiT llm_features_dim = 13 × 64


def requires_comfyui(marker: str = "main.py") -> list:
    """``pytestmark`` for tests that need the ComfyUI checkout in ``$COMFYUI_PATH`` (``marker`` must exist there)."""
    import pytest

    return [pytest.mark.comfyui,
            pytest.mark.skipif(not COMFYUI_PATH or not Path(COMFYUI_PATH, marker).exists(),
                               reason="COMFYUI_PATH (a ComfyUI checkout) not set")]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The start of every worker script: argv, ComfyUI first on sys.path, --cpu, the pack as ``i4pack``
# (``cm`` = its nodes.host.comfy_model), ``mm`` = comfy.model_management, and the tiny DiT's test inputs
# (``cfg``, ``sd``, ``x``, ``feats``; results go into ``res``).
WORKER_PREAMBLE = '''import contextlib, json, sys, importlib
comfy_path, repo, pack_parent, out_dir = sys.argv[1:5]
sys.path[:0] = [comfy_path]
sys.path.append(pack_parent)
sys.path.append(repo)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
import torch
torch.set_num_threads(2)
from pathlib import Path
import comfy.model_management as mm
pack = importlib.import_module("i4pack")
cm = importlib.import_module("i4pack.nodes.host.comfy_model")
from tools.make_test_checkpoints import convert, random_state_dict, tiny_config, write_file
res = {}
cfg = tiny_config()
sd = random_state_dict(cfg, 0)
g = torch.Generator().manual_seed(3)
gh, gw = 3, 4
x = torch.randn(2, 128, gh, gw, generator=g)
feats = torch.randn(2, 7, cfg.llm_features_dim, generator=g)
'''


# Worker setup for the LoRA tests: ComfyUI's LoRA folder pointed at ``loras`` (a scratch folder), the pack's
# LoRA host module, the test-LoRA writers, and ``sigma`` for the two-sample test inputs.
LORA_WORKER_SETUP = '''
import folder_paths
import nodes as comfy_nodes
from safetensors.torch import save_file
from i4pack.model.checkpoints import QuantizedLinear
lora_host = importlib.import_module("i4pack.nodes.host.lora")
importlib.import_module("i4pack.nodes.host.core_lora_loaders").install_core_loader_hooks()  # as the pack's on_load
from tools.make_test_loras import layout_state_dict, lora_factors, merge_reference, write_peft_lora

out = Path(out_dir)
loras = out / "loras"
loras.mkdir()
folder_paths.add_model_folder_path("loras", str(loras))
sigma = torch.tensor([0.7, 0.3])

def rel(a, b):
    """max |a − b| / max |b|"""
    return float((a - b).abs().max() / b.abs().max())

def dequantised(dit):
    """Official fp32 state dict of what a loaded DiT computes with (packed weights decoded)."""
    out_sd = {}
    for name, module in dit.named_modules():
        p = name + "." if name else ""
        if isinstance(module, QuantizedLinear):
            out_sd[p + "weight"] = module.dequantized_weight(torch.float32, "cpu")
            if module.bias is not None:
                out_sd[p + "bias"] = module.bias.float()
        else:
            for leaf, t in module.named_parameters(recurse=False):
                out_sd[p + leaf] = t.detach().float()
    return out_sd

def load_for_run(patcher, full=True):
    """Load ``patcher`` alone: whole, or partially (64 KiB resident, the rest streamed) with its object patches."""
    mm.unload_all_models()
    if full:
        mm.load_models_gpu([patcher], force_full_load=True)
    else:
        patcher.detach()
        patcher.patch_model(torch.device("cpu"), lowvram_model_memory=64 * 1024)
'''

# Worker snippet: ``uploads_copy()`` — while active, ``Module.to(device)`` leaves a private copy of every tensor in
# use, like an upload to a GPU does (on a CPU there is no device copy to observe otherwise).
UPLOADS_COPY = """
@contextlib.contextmanager
def uploads_copy():
    original = torch.nn.Module.to
    def to(self, *args, **kwargs):
        for sub in self.modules():
            for name, t in list(sub._parameters.items()):
                if t is not None:
                    t.data = t.data.clone()
            for name, t in list(sub._buffers.items()):
                if t is not None:
                    sub._buffers[name] = t.clone()
        return self
    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = original
"""


def worker_result(source: str, timeout: float = 600):
    """A module-scoped ``result`` fixture: the JSON of one :func:`run_worker` run of ``source`` (printed for -s)."""
    import pytest

    @pytest.fixture(scope="module")
    def result():
        res = run_worker(source, timeout)
        print(res)  # the measured figures (pytest -s)
        return res

    return result


def run_worker(source: str, timeout: float = 600) -> dict:
    """Run ``WORKER_PREAMBLE + source`` in ComfyUI's Python (``$COMFYUI_PYTHON`` or this one), ComfyUI in ``--cpu``
    mode, with the pack importable as ``i4pack`` (``cm`` = its ``nodes.host.comfy_model``) and ``out_dir`` an
    empty scratch folder; returns the JSON the worker prints on its ``RESULT `` line."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pack_parent = Path(tmp) / "pkgs"
        pack_parent.mkdir()
        (pack_parent / "i4pack").symlink_to(REPO, target_is_directory=True)
        out = Path(tmp) / "ckpt"
        out.mkdir()
        script = Path(tmp) / "worker.py"
        script.write_text(WORKER_PREAMBLE + source)
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        proc = subprocess.run([python, str(script), COMFYUI_PATH, str(REPO), str(pack_parent), str(out)],
                              capture_output=True, text=True, timeout=timeout, cwd=tmp)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        assert line is not None, proc.stdout[-3000:] + proc.stderr[-6000:]
        return json.loads(line[len("RESULT "):])


# --------------------------------------------------------------------------- test model files

def write_models(root: Path) -> dict[str, Any]:
    """Tiny checkpoints in ComfyUI's folders; returns what the tests need to know about them."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    from safetensors.torch import save_file

    from tools.make_test_checkpoints import convert, random_state_dict, tiny_config, write_file, write_hf_folder
    from tools.make_test_text_encoder import tiny_text_config, write_layout, write_tokenizer
    from tools.make_test_vae import write_vae

    dm, te, vae, i4 = (root / "diffusion_models", root / "text_encoders", root / "vae", root / "ideogram4")
    for d in (dm, te, vae, i4):
        d.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(text_width=TEXT_WIDTH)
    cond, uncond = random_state_dict(cfg, COND_SEED), random_state_dict(cfg, UNCOND_SEED)
    files = {}
    for fmt in ("bf16", "fp8", "comfy_fp8_scaled", "nf4", "diffusers"):
        files[fmt] = (write_file(convert(cond, fmt), dm / f"i4tiny_{fmt}.safetensors", fmt),
                      write_file(convert(uncond, fmt), dm / f"i4tiny_unconditional_{fmt}.safetensors", fmt))
    write_hf_folder(i4 / "tiny-repo", cond, uncond, "bf16")
    text = tiny_text_config(num_layers=36)
    staging = root / "_staging"
    official = write_layout("official_bf16", staging, text=text)
    shutil.move(str(official), str(i4 / "tiny-te"))
    comfy_file = write_layout("comfy_fp8_scaled", te, text=text)
    write_tokenizer(te / "tiny_tokenizer")
    vae_file = write_vae(vae / "tiny_flux2_vae.safetensors", "bfl")
    # Not an Ideogram 4 DiT: a FLUX-like state dict under diffusion_models.
    import torch

    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(8, 8), "img_in.weight": torch.zeros(8, 4)},
              str(dm / "not_ideogram.safetensors"))
    # LoRAs: a style LoRA (kohya keys) and an unconditional LoRA (ai-toolkit keys) for the tiny DiT
    from tools.make_test_loras import layout_state_dict, lora_factors

    loras = root / "loras"
    loras.mkdir(exist_ok=True)
    save_file(layout_state_dict(lora_factors(cfg, seed=31), "kohya"), str(loras / "i4tiny_style.safetensors"))
    save_file(layout_state_dict(lora_factors(cfg, seed=32), "ai-toolkit"), str(loras / "i4tiny_uncond.safetensors"))
    shutil.rmtree(staging, ignore_errors=True)
    return {"dit": files, "hf_repo": i4 / "tiny-repo", "te_folder": i4 / "tiny-te", "te_file": comfy_file,
            "tokenizer": te / "tiny_tokenizer", "vae": vae_file}


# --------------------------------------------------------------------------- server

class ComfyServer:
    def __init__(self, comfyui: Path, root: Path, python: str = sys.executable, extra_args: tuple = ()):
        self.comfyui, self.root, self.python = Path(comfyui), Path(root), python
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.root / "server.log"
        self.output = self.root / "output"
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        custom = self.root / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        link = custom / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        for d in ("output", "user", "input", "temp"):
            (self.root / d).mkdir(exist_ok=True)
        models = self.root / "models"
        (self.root / "paths.yaml").write_text(
            "i4test:\n"
            f"  base_path: {self.root}\n"
            "  custom_nodes: custom_nodes\n"
            f"  diffusion_models: {models / 'diffusion_models'}\n"
            f"  text_encoders: {models / 'text_encoders'}\n"
            f"  vae: {models / 'vae'}\n"
            f"  loras: {models / 'loras'}\n"
            f"  ideogram4: {models / 'ideogram4'}\n")

    def start(self, timeout: float = 180.0) -> None:
        self.prepare()
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--extra-model-paths-config", str(self.root / "paths.yaml"),
               "--output-directory", str(self.output), "--input-directory", str(self.root / "input"),
               "--temp-directory", str(self.root / "temp"), "--user-directory", str(self.root / "user"),
               "--database-url", "sqlite:///:memory:", "--disable-all-custom-nodes",
               "--whitelist-custom-nodes", PACK_DIR_NAME, *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self.proc = None
        self._log.close()

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # -- HTTP
    def get(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            data = r.read()
            return json.loads(data) if r.headers.get_content_type() == "application/json" else data

    def get_bytes(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def post(self, path: str, data: Any, timeout: float = 30) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else None)
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body.decode("utf-8", "replace")

    def queue(self, prompt: dict, client_id: str = "tests") -> tuple[int, Any]:
        return self.post("/prompt", {"prompt": prompt, "client_id": client_id})

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and (entry.get("status", {}).get("completed") or
                          entry.get("status", {}).get("status_str") in ("success", "error")):
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        status, body = self.queue(prompt)
        if status != 200:
            raise AssertionError(f"POST /prompt answered {status}: {body}")
        return self.wait(body["prompt_id"], timeout)

    def image(self, entry: dict, node_id: str, index: int = 0):
        import numpy as np
        from PIL import Image
        import io as _io

        info = entry["outputs"][node_id]["images"][index]
        q = urllib.parse.urlencode({"filename": info["filename"], "subfolder": info["subfolder"], "type": info["type"]})
        return np.asarray(Image.open(_io.BytesIO(self.get_bytes(f"/view?{q}"))).convert("RGB"))

    def websocket(self, client_id: str):
        import websocket  # websocket-client

        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=60)
        return ws


@contextlib.contextmanager
def running_server(root: Path, **kwargs):
    """A started ComfyServer on ``root`` (ComfyUI in ``$COMFYUI_PATH``, ``$COMFYUI_PYTHON`` or this interpreter),
    always stopped."""
    server = ComfyServer(Path(COMFYUI_PATH), root, python=os.environ.get("COMFYUI_PYTHON", sys.executable), **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ws_messages(ws, timeout: float):
    """Yield (monotonic time, message dict, or None for a binary preview frame) until ``timeout`` s pass."""
    import websocket  # websocket-client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            raw = ws.recv()
        except websocket.WebSocketTimeoutException:
            return
        yield time.monotonic(), (None if isinstance(raw, bytes) else json.loads(raw))


def errors_of(entry: dict) -> list[dict]:
    return [m[1] for m in entry.get("status", {}).get("messages", []) if m[0] == "execution_error"]


def new_client_id() -> str:
    return uuid.uuid4().hex
