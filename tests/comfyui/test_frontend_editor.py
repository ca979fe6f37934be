"""Headless-Chromium check of the Caption Builder's layout editor in a real ComfyUI.

Starts ComfyUI (``$COMFYUI_PATH/main.py --cpu``) with this pack linked into a
temporary custom_nodes folder, opens the page in headless Chromium driven over
the DevTools protocol (a tiny stdlib websocket client: no selenium/playwright),
adds an ``Ideogram4NativeCaptionBuilder`` node, draws a box with real mouse
events, edits its desc through the panel, and checks that

* the ``layout`` widget holds the canonical JSON of that box (bbox from the
  pixels dragged, normalised per axis),
* the raw widget is hidden but still serialised (workflow and API prompt), and
  the editor's own widget is not,
* the canvas follows the width/height aspect ratio and is drawn at
  devicePixelRatio resolution,
* the workflow survives serialise → page reload → load, and
* the API prompt built from the graph runs through ``POST /prompt`` (the Python
  node accepts what the editor wrote).

Screenshots go to ``$EDITOR_SHOTS_DIR`` (default /tmp/editor_shots).

Skipped unless ``COMFYUI_PATH`` is set and a Chromium binary is found
(``$CHROMIUM`` or chromium / chromium-browser / google-chrome on PATH). The
Python that runs ComfyUI is ``$COMFYUI_PYTHON`` (default: this interpreter).
Run directly with ``python tests/comfyui/test_frontend_editor.py`` too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
CHROMIUM = (shutil.which(os.environ["CHROMIUM"]) if os.environ.get("CHROMIUM") else None) or next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
)
SHOTS = Path(os.environ.get("EDITOR_SHOTS_DIR", "/tmp/editor_shots"))
NODE_ID = "Ideogram4NativeCaptionBuilder"
EXTENSION = "Ideogram4Native.CaptionEditor"

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.slow,
    pytest.mark.skipif(not COMFYUI_PATH or not Path(COMFYUI_PATH, "main.py").is_file(),
                       reason="COMFYUI_PATH (a ComfyUI checkout) not set"),
    pytest.mark.skipif(not CHROMIUM, reason="no chromium binary (set $CHROMIUM)"),
]


# --------------------------------------------------------------------------- helpers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_json(url: str, data: dict | None = None, timeout: float = 10) -> tuple[int, object]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class _WebSocket:
    """Just enough RFC 6455 for the DevTools protocol (client, text frames)."""

    def __init__(self, url: str, timeout: float = 120):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake failed: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode: int, data: bytes) -> None:
        n = len(data)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big") \
            if n else b""
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by peer")
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if fin:
                    return message.decode()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class CDP:
    """Minimal DevTools client for one page target."""

    def __init__(self, ws_url: str):
        self.ws = _WebSocket(ws_url)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == "Page.javascriptDialogOpening":
                    # e.g. the "unsaved changes" beforeunload prompt on reload: accept it
                    self.next_id += 1
                    self.ws.send(json.dumps({"id": self.next_id, "method": "Page.handleJavaScriptDialog",
                                             "params": {"accept": True}}))

    def js(self, expression: str):
        """Evaluate an expression (awaiting promises) and return its JSON value."""
        r = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(f"JS error: {d.get('exception', {}).get('description') or d.get('text')}")
        return r["result"].get("value")

    def wait_js(self, expression: str, timeout: float = 60, what: str = ""):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.js(expression)
                if last:
                    return last
            except RuntimeError as e:
                last = e
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {what or expression}: last={last!r}")

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" or buttons
                  else "none", buttons=buttons, clickCount=1 if kind != "mouseMoved" else 0)

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 8) -> None:
        self.mouse("mouseMoved", x0, y0)
        self.mouse("mousePressed", x0, y0, buttons=1)
        for k in range(1, steps + 1):
            self.mouse("mouseMoved", x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps, buttons=1)
        self.mouse("mouseReleased", x1, y1)

    def screenshot(self, path: Path, clip: dict | None = None) -> Path:
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.ws.close()


def _write_png(path: Path, width: int = 96, height: int = 48) -> Path:
    """A small RGB gradient PNG (stdlib only), used as the editor's reference image."""
    import zlib

    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 160))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def comfy_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    custom = root / "custom_nodes"
    custom.mkdir()
    pack_name = REPO.name if REPO.name not in ("", "main") else "ComfyUI-Ideogram4-Native"
    (custom / pack_name).symlink_to(REPO, target_is_directory=True)
    (root / "paths.yaml").write_text(f"ideogram4_test:\n  custom_nodes: {custom}\n")
    user = root / "user"
    (user / "default").mkdir(parents=True)
    # no first-run template dialog over the canvas
    (user / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = _free_port()
    log = open(root / "comfyui.log", "w")
    proc = subprocess.Popen(
        [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
         "--port", str(port), "--extra-model-paths-config", str(root / "paths.yaml"),
         "--output-directory", str(root / "output"), "--user-directory", str(user),
         "--database-url", "sqlite:///:memory:",
         "--disable-all-custom-nodes", "--whitelist-custom-nodes", pack_name],
        cwd=COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited ({proc.returncode}):\n{(root / 'comfyui.log').read_text()[-4000:]}")
            try:
                status, info = _http_json(f"{url}/object_info/{NODE_ID}", timeout=5)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                pytest.fail("ComfyUI did not come up:\n" + (root / "comfyui.log").read_text()[-4000:])
            time.sleep(1)
        if NODE_ID not in (info or {}):
            pytest.fail(f"{NODE_ID} is not registered (pack import failed?):\n"
                        + (root / "comfyui.log").read_text()[-4000:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def chromium_page(profile: Path, **metrics):
    """Start headless Chromium (offline flags, fresh profile) and yield a DevTools connection to its page."""
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--window-size=1600,1200", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    cdp = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        _, targets = _http_json(f"http://127.0.0.1:{port}/json/list")
        target = next(t for t in targets if t.get("type") == "page")
        cdp = CDP(target["webSocketDebuggerUrl"])
        cdp.call("Runtime.enable")
        cdp.call("Page.enable")
        if metrics:
            cdp.call("Emulation.setDeviceMetricsOverride", **metrics)
        yield cdp
    finally:
        if cdp:
            cdp.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(comfy_url, tmp_path_factory):
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), width=1600, height=1200, deviceScaleFactor=2,
                       mobile=False) as cdp:
        yield cdp


# --------------------------------------------------------------------------- page scripts

APP = "window.comfyAPI.app.app"

OPEN_APP = f"""(() => {{
  const app = window.comfyAPI?.app?.app;
  return !!(app && app.graph && app.canvas && window.LiteGraph &&
            LiteGraph.registered_node_types?.["{NODE_ID}"] && LiteGraph.registered_node_types?.PreviewAny &&
            app.extensions?.some?.(e => e.name === "{EXTENSION}"));
}})()"""

# Fresh graph with one Caption Builder (plus a PreviewAny on its caption output), zoom 1.
ADD_NODE = f"""(async () => {{
  const app = {APP};
  app.graph.clear();
  const node = LiteGraph.createNode("{NODE_ID}");
  node.pos = [40, 40];
  app.graph.add(node);
  const prev = LiteGraph.createNode("PreviewAny");
  prev.pos = [700, 40];
  app.graph.add(prev);
  node.connect(0, prev, 0);
  node.setSize([560, Math.max(node.size[1], 1000)]);
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset = [80, 90];
  app.canvas.setDirty(true, true);
  return [node.id, prev.id];
}})()"""

EDITOR_STATE = f"""((id) => {{
  const app = {APP};
  const node = app.graph.getNodeById(id);
  const c = document.querySelector(".ideo4-stage canvas");
  const r = c?.getBoundingClientRect();
  const lw = node?.widgets.find(w => w.name === "layout");
  return {{
    layout: lw?.value, layoutHidden: !!lw?.hidden,
    editorWidget: !!node?.widgets.find(w => w.name === "layout_editor"),
    rect: r && r.width > 0 ? {{x: r.x, y: r.y, w: r.width, h: r.height}} : null,
    backing: c ? [c.width, c.height] : null, dpr: window.devicePixelRatio,
    elements: node?.ideogram4LayoutEditor?.model.elements.length,
    selected: node?.ideogram4LayoutEditor?.model.selected,
    status: document.querySelector(".ideo4-status")?.textContent,
  }};
}})"""


def _wait_initial_graph(cdp: CDP) -> None:
    """The frontend loads its start-up workflow asynchronously after init; let it land first."""
    try:
        cdp.wait_js(f"{APP}.graph._nodes.length > 0", timeout=30, what="start-up workflow")
    except TimeoutError:
        pass  # an empty start-up graph is fine too
    time.sleep(1.0)


def _state(cdp: CDP, node_id) -> dict:
    return cdp.js(f"{EDITOR_STATE}({json.dumps(node_id)})")


def _node_clip(cdp: CDP, node_id) -> dict:
    r = cdp.js(f"""(() => {{
      const app = {APP}; const n = app.graph.getNodeById({json.dumps(node_id)});
      const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
      const rect = app.canvas.canvas.getBoundingClientRect();
      return {{x: rect.x + x, y: rect.y + y, width: n.size[0] * app.canvas.ds.scale,
               height: (n.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * app.canvas.ds.scale}};
    }})()""")
    return {k: max(0.0, float(v)) for k, v in r.items()}


def _own_errors(cdp: CDP) -> list[str]:
    out = []
    for ev in cdp.events:
        if ev["method"] == "Runtime.exceptionThrown":
            text = json.dumps(ev["params"])
        elif ev["method"] == "Runtime.consoleAPICalled" and ev["params"].get("type") == "error":
            text = json.dumps(ev["params"].get("args", []))
        else:
            continue
        if "ideogram" in text.lower() or "ideo4" in text.lower():
            out.append(text[:500])
    return out


# --------------------------------------------------------------------------- the test

def test_layout_editor_draw_save_reload_and_queue(comfy_url, page):
    cdp = page
    shots: list[Path] = []
    cdp.call("Page.navigate", url=comfy_url)
    cdp.wait_js(OPEN_APP, timeout=120, what="ComfyUI app with the caption editor extension")
    _wait_initial_graph(cdp)
    node_id, preview_id = cdp.js(ADD_NODE)

    # -- editor present, raw widget hidden, canvas square for 1024x1024 --------------------
    st = cdp.wait_js(f"(() => {{ const s = {EDITOR_STATE}({json.dumps(node_id)}); return s.rect && s; }})()",
                     timeout=30, what="editor canvas laid out")
    assert st["editorWidget"] and st["layoutHidden"]
    assert st["layout"] == "[]" and st["elements"] == 0
    assert abs(st["rect"]["w"] - st["rect"]["h"]) <= 1.5, st["rect"]
    time.sleep(0.3)
    st = _state(cdp, node_id)
    # crisp: backing store at devicePixelRatio (2) × CSS size
    assert st["dpr"] == 2
    assert abs(st["backing"][0] - 2 * st["rect"]["w"]) <= 2, (st["backing"], st["rect"])

    # -- switch to 1536x768: the canvas follows the 2:1 aspect ratio -----------------------
    cdp.js(f"""(() => {{ const n = {APP}.graph.getNodeById({json.dumps(node_id)});
      for (const [k, v] of [["width", 1536], ["height", 768]]) {{
        const w = n.widgets.find(w => w.name === k); w.value = v; w.callback?.(v); }}
      {APP}.canvas.setDirty(true, true); }})()""")
    st = cdp.wait_js(f"""(() => {{ const s = {EDITOR_STATE}({json.dumps(node_id)});
      return s.rect && Math.abs(s.rect.w / s.rect.h - 2) < 0.02 && s; }})()""", timeout=10, what="2:1 canvas")
    r = st["rect"]

    # -- draw a box with real mouse events -------------------------------------------------
    x0, y0 = r["x"] + 0.20 * r["w"], r["y"] + 0.30 * r["h"]
    x1, y1 = r["x"] + 0.60 * r["w"], r["y"] + 0.70 * r["h"]
    cdp.drag(x0, y0, x1, y1)
    st = cdp.wait_js(f"(() => {{ const s = {EDITOR_STATE}({json.dumps(node_id)}); return s.elements === 1 && s; }})()",
                     timeout=10, what="one element after the drag")
    layout = json.loads(st["layout"])
    assert len(layout) == 1 and layout[0]["type"] == "obj" and layout[0]["desc"] == ""
    expected = [300, 200, 700, 600]
    assert all(abs(a - b) <= 2 for a, b in zip(layout[0]["bbox"], expected)), layout[0]["bbox"]
    assert all(isinstance(v, int) for v in layout[0]["bbox"])
    assert st["layout"] == json.dumps(layout, separators=(",", ":"), ensure_ascii=False)  # canonical

    # -- type a desc into the panel (real key input) ---------------------------------------
    cdp.js("""(() => { const t = [...document.querySelectorAll('.ideo4-panel textarea')]
      .find(t => t.placeholder.startsWith('What is in this box')); t.focus(); t.select(); return !!t; })()""")
    cdp.call("Input.insertText", text="a red vintage bicycle, café")
    st = _state(cdp, node_id)
    layout = json.loads(st["layout"])
    assert layout[0]["desc"] == "a red vintage bicycle, café"
    assert list(layout[0]) == ["type", "bbox", "desc"]

    # -- move it with the mouse, then nudge with the keyboard --------------------------------
    before = layout[0]["bbox"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cdp.drag(cx, cy, cx + 0.10 * r["w"], cy)
    st = _state(cdp, node_id)
    moved = json.loads(st["layout"])[0]["bbox"]
    assert moved[0] == before[0] and moved[2] == before[2], (before, moved)
    assert abs((moved[1] - before[1]) - 100) <= 2 and moved[3] - moved[1] == before[3] - before[1], (before, moved)
    shots.append(cdp.screenshot(SHOTS / "01_drawn_2to1.png", _node_clip(cdp, node_id)))

    # -- serialisation: layout stored, editor widget not ---------------------------------------
    saved = cdp.js(f"""(async () => {{
      const app = {APP}; const n = app.graph.getNodeById({json.dumps(node_id)});
      const wf = app.graph.serialize();
      const p = await app.graphToPrompt();
      return {{wf, inputs: p.output[String(n.id)].inputs,
               names: n.widgets.filter(w => w.serialize !== false).map(w => w.name)}};
    }})()""")
    inputs = saved["inputs"]
    assert inputs["layout"] == st["layout"]
    assert "layout_editor" not in inputs and "layout_editor" not in saved["names"]
    assert inputs["width"] == 1536 and inputs["height"] == 768
    wf_node = next(n for n in saved["wf"]["nodes"] if n["type"] == NODE_ID)
    assert st["layout"] in wf_node["widgets_values"]

    # -- the Python node accepts what the editor wrote (HTTP API, no browser involved) -----
    api_prompt = cdp.js(f"(async () => (await {APP}.graphToPrompt()).output)()")
    status, res = _http_json(f"{comfy_url}/prompt", {"prompt": api_prompt, "client_id": "editor-test"})
    assert status == 200, res
    pid = res["prompt_id"]
    deadline = time.time() + 60
    hist = {}
    while time.time() < deadline:
        _, hist = _http_json(f"{comfy_url}/history/{pid}")
        if hist and pid in hist and hist[pid].get("status", {}).get("completed"):
            break
        time.sleep(0.5)
    assert pid in hist and hist[pid]["status"]["status_str"] == "success", hist
    outputs = hist[pid]["outputs"]
    caption = json.loads(outputs[str(preview_id)]["text"][0])
    assert "error" not in outputs[str(node_id)]["text"][0].lower(), outputs[str(node_id)]
    assert caption["compositional_deconstruction"]["elements"] == json.loads(st["layout"])

    # -- reload the page, load the saved workflow: the box is back -------------------------------
    cdp.call("Page.reload", ignoreCache=True)
    time.sleep(1)
    cdp.wait_js(OPEN_APP, timeout=120, what="app after reload")
    _wait_initial_graph(cdp)
    cdp.js(f"(async () => {{ await {APP}.loadGraphData({json.dumps(saved['wf'])}); return true; }})()")
    new_id = cdp.js(f"{APP}.graph._nodes.find(n => n.type === '{NODE_ID}').id")
    cdp.js(f"(() => {{ const a = {APP}; a.canvas.ds.scale = 1; a.canvas.ds.offset = [80, 90]; "
           f"a.canvas.setDirty(true, true); }})()")
    st2 = cdp.wait_js(f"(() => {{ const s = {EDITOR_STATE}({json.dumps(new_id)}); return s.rect && s.elements === 1 && s; }})()",
                      timeout=30, what="editor restored after reload")
    assert st2["layout"] == st["layout"]
    assert st2["layoutHidden"]
    assert abs(st2["rect"]["w"] / st2["rect"]["h"] - 2) < 0.02
    # select the restored box by clicking it, so the panel shows its fields
    r2 = st2["rect"]
    b = json.loads(st2["layout"])[0]["bbox"]
    cdp.drag(r2["x"] + (b[1] + b[3]) / 2000 * r2["w"], r2["y"] + (b[0] + b[2]) / 2000 * r2["h"],
             r2["x"] + (b[1] + b[3]) / 2000 * r2["w"], r2["y"] + (b[0] + b[2]) / 2000 * r2["h"], steps=1)
    st_sel = _state(cdp, new_id)
    assert st_sel["selected"] == 0
    assert st_sel["layout"] == st["layout"], "selecting a box by clicking must not move it"
    assert st_sel["rect"] == st2["rect"], "selecting must not shift the canvas"
    time.sleep(0.3)
    shots.append(cdp.screenshot(SHOTS / "02_reloaded_selected.png", _node_clip(cdp, new_id)))

    # -- Delete key removes it; the widget follows ----------------------------------------------
    cdp.call("Input.dispatchKeyEvent", type="keyDown", key="Delete", code="Delete", windowsVirtualKeyCode=46)
    cdp.call("Input.dispatchKeyEvent", type="keyUp", key="Delete", code="Delete", windowsVirtualKeyCode=46)
    st3 = _state(cdp, new_id)
    assert st3["layout"] == "[]" and st3["elements"] == 0
    # the node itself must still be there (Delete went to the editor, not the graph)
    assert cdp.js(f"!!{APP}.graph.getNodeById({json.dumps(new_id)})")

    # -- import a full caption: fills layout + other widgets --------------------------------------
    caption_text = json.dumps({
        "high_level_description": "A poster",
        "style_description": {"aesthetics": "bold", "lighting": "flat", "medium": "graphic_design",
                              "art_style": "swiss", "color_palette": ["#111111", "#EEEEEE"]},
        "compositional_deconstruction": {"background": "paper", "elements": [
            {"type": "text", "bbox": [50, 100, 200, 900], "text": "OPEN", "desc": "red headline",
             "color_palette": ["#E53935"]},
            {"type": "obj", "bbox": [300, 250, 900, 750], "desc": "a bowl of ramen"}]}},
        separators=(",", ":"), ensure_ascii=False)
    filled = cdp.js(f"""(() => {{
      const n = {APP}.graph.getNodeById({json.dumps(new_id)});
      const btn = [...document.querySelectorAll('.ideo4-bar button')].find(b => b.textContent === 'Import…');
      btn.click();
      const ta = document.querySelector('.ideo4-import textarea');
      ta.value = {json.dumps(caption_text)};
      [...document.querySelectorAll('.ideo4-import button')].find(b => b.textContent === 'Apply import').click();
      const v = Object.fromEntries(n.widgets.filter(w => w.serialize !== false).map(w => [w.name, w.value]));
      return v;
    }})()""")
    assert filled["style_mode"] == "art_style" and filled["style_value"] == "swiss"
    assert filled["color_palette"] == "#111111, #EEEEEE" and filled["background"] == "paper"
    assert json.loads(filled["layout"]) == json.loads(caption_text)["compositional_deconstruction"]["elements"]
    # Export rebuilds the same canonical caption
    exported = cdp.js("""(async () => {
      [...document.querySelectorAll('.ideo4-bar button')].find(b => b.textContent === 'Export').click();
      await new Promise(r => setTimeout(r, 300));
      return document.querySelector('.ideo4-import textarea').value; })()""")
    assert exported == caption_text
    time.sleep(0.3)
    shots.append(cdp.screenshot(SHOTS / "03_imported_caption.png", _node_clip(cdp, new_id)))

    # -- resize the obj box (#2, [300,250,900,750]) by its south-east corner ---------------------
    st4 = _state(cdp, new_id)
    r4 = st4["rect"]
    px = lambda b, i, axis: r4["x" if axis == "x" else "y"] + b[i] / 1000 * r4["w" if axis == "x" else "h"]
    box = [300, 250, 900, 750]
    cdp.drag(px(box, 1, "x") + 10, px(box, 0, "y") + 10, px(box, 1, "x") + 10, px(box, 0, "y") + 10, steps=1)
    cdp.drag(px(box, 3, "x"), px(box, 2, "y"), r4["x"] + 0.9 * r4["w"], r4["y"] + 0.95 * r4["h"])
    resized = json.loads(_state(cdp, new_id)["layout"])[1]["bbox"]
    assert resized[:2] == [300, 250], resized
    assert abs(resized[2] - 950) <= 2 and abs(resized[3] - 900) <= 2, resized

    # -- graph zoom 0.75: pointer mapping and backing store follow the CSS transform ---------------
    cdp.js(f"(() => {{ const a = {APP}; a.canvas.ds.scale = 0.75; a.canvas.setDirty(true, true); }})()")
    st5 = cdp.wait_js(f"""(() => {{ const s = {EDITOR_STATE}({json.dumps(new_id)});
      return s.rect && Math.abs(s.rect.w - 0.75 * {r4['w']}) < 2 && s; }})()""", timeout=10, what="zoomed editor")
    time.sleep(0.3)
    st5 = _state(cdp, new_id)
    r5 = st5["rect"]
    assert abs(st5["backing"][0] - 2 * r5["w"]) <= 3, (st5["backing"], r5)  # dpr 2 × on-screen size
    cdp.drag(r5["x"] + 0.05 * r5["w"], r5["y"] + 0.55 * r5["h"], r5["x"] + 0.15 * r5["w"], r5["y"] + 0.95 * r5["h"])
    added = json.loads(_state(cdp, new_id)["layout"])
    assert len(added) == 3
    assert all(abs(a - b) <= 3 for a, b in zip(added[2]["bbox"], [550, 50, 950, 150])), added[2]
    shots.append(cdp.screenshot(SHOTS / "04_zoomed_resized.png", _node_clip(cdp, new_id)))

    # -- raw JSON: shown by the toggle; typing invalid JSON disables the editor, valid JSON reloads it
    raw = cdp.js(f"""(async () => {{
      const n = {APP}.graph.getNodeById({json.dumps(new_id)});
      [...document.querySelectorAll('.ideo4-bar button')].find(b => b.textContent === 'Raw JSON').click();
      const lw = n.widgets.find(w => w.name === 'layout');
      const ta = lw.element;
      const type = (text) => {{ ta.value = text; ta.dispatchEvent(new Event('input', {{bubbles: true}})); }};
      type('[{{"type":"obj"');
      await new Promise(r => setTimeout(r, 100));
      const bad = {{hidden: lw.hidden, status: document.querySelector('.ideo4-status').textContent,
                   value: lw.value, elements: n.ideogram4LayoutEditor.model.elements.length}};
      type('[{{"desc":"sky","type":"obj","bbox":[0,0,200,1000]}}]');
      await new Promise(r => setTimeout(r, 100));
      const good = {{value: lw.value, elements: n.ideogram4LayoutEditor.model.elements.length,
                    status: document.querySelector('.ideo4-status').textContent}};
      [...document.querySelectorAll('.ideo4-bar button')].find(b => b.textContent === 'Raw JSON').click();
      return {{bad, good, hiddenAgain: lw.hidden}};
    }})()""")
    assert raw["bad"]["hidden"] is False and raw["hiddenAgain"] is True
    assert "invalid JSON" in raw["bad"]["status"] and raw["bad"]["value"] == '[{"type":"obj"'  # not overwritten
    assert raw["good"]["elements"] == 1
    # the editor does not rewrite text it did not edit; the next edit canonicalises
    assert raw["good"]["value"] == '[{"desc":"sky","type":"obj","bbox":[0,0,200,1000]}]'
    cdp.js(f"{APP}.canvas.setDirty(true, true)")

    # -- reference image: picked through the file input, drawn, not serialised ---------------------
    png = _write_png(Path(tempfile.mkdtemp()) / "reference.png")
    doc = cdp.call("DOM.getDocument", depth=-1)["root"]["nodeId"]
    file_input = cdp.call("DOM.querySelector", nodeId=doc, selector=".ideo4-editor input[type=file]")["nodeId"]
    cdp.call("DOM.setFileInputFiles", files=[str(png)], nodeId=file_input)
    cdp.wait_js(f"!!{APP}.graph.getNodeById({json.dumps(new_id)}).ideogram4LayoutEditor.bgImage", timeout=10,
                what="reference image loaded")
    wf_after = cdp.js(f"JSON.stringify({APP}.graph.serialize())")
    assert "data:image" not in wf_after  # stays in the tab, never in the workflow
    time.sleep(0.3)
    shots.append(cdp.screenshot(SHOTS / "04b_reference_image.png", _node_clip(cdp, new_id)))

    assert not _own_errors(cdp), _own_errors(cdp)
    for s in shots:
        assert s.stat().st_size > 5000, s
    print("screenshots:", *map(str, shots))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider", "--noconftest"]))


def test_layout_editor_in_vue_nodes_mode(comfy_url, page):
    """Same editor with the frontend's Vue node renderer ("Nodes 2.0")."""
    cdp = page
    cdp.call("Page.navigate", url=comfy_url)
    cdp.wait_js(OPEN_APP, timeout=120, what="ComfyUI app")
    _wait_initial_graph(cdp)
    setting = f"{APP}.extensionManager.setting"
    cdp.js(f"(async () => {{ await {setting}.set('Comfy.VueNodes.Enabled', true); return true; }})()")
    try:
        assert cdp.wait_js("window.LiteGraph.vueNodesMode === true", timeout=10, what="Vue nodes mode")
        time.sleep(1)
        node_id, _ = cdp.js(ADD_NODE)
        st = cdp.wait_js(f"(() => {{ const s = {EDITOR_STATE}({json.dumps(node_id)}); return s.rect && s; }})()",
                         timeout=30, what="editor canvas in a Vue node")
        assert st["layoutHidden"] and abs(st["rect"]["w"] - st["rect"]["h"]) <= 1.5
        r = st["rect"]
        cdp.drag(r["x"] + 0.1 * r["w"], r["y"] + 0.5 * r["h"], r["x"] + 0.9 * r["w"], r["y"] + 0.9 * r["h"])
        st = _state(cdp, node_id)
        layout = json.loads(st["layout"])
        assert len(layout) == 1
        assert all(abs(a - b) <= 2 for a, b in zip(layout[0]["bbox"], [500, 100, 900, 900])), layout
        # a drag inside the editor must not move the node (Vue nodes drag on pointerdown)
        pos = cdp.js(f"Array.from({APP}.graph.getNodeById({json.dumps(node_id)}).pos)")
        assert pos == [40, 40], pos
        cdp.screenshot(SHOTS / "05_vue_nodes_mode.png", _node_clip(cdp, node_id))
        assert not _own_errors(cdp), _own_errors(cdp)
    finally:
        cdp.js(f"(async () => {{ await {setting}.set('Comfy.VueNodes.Enabled', false); return true; }})()")
