"""Headless-Chromium checks of the pack's node UI in a real ComfyUI with tiny models (issue 10 items 2, 4, 5, 9).

* Reports: the shipped template (tiny files swapped in) is queued from the page with ``app.queuePrompt``; the
  ``ui`` text of every Ideogram4Native node that returned one appears in a read-only text area on that node, is
  not serialised, and is cleared when the prompt is queued again (then filled again by the new run).
* The Caption Builder canvas follows the size it is wired to (Empty Latent aspect preset / custom size), not its
  own stale width/height widgets.
* Inert widgets: on KSampler / Sigmas / Guider the custom-only widgets are disabled while a preset is selected and
  width/height/batch_size while a latent is connected; on Empty Latent width/height while aspect_ratio is not custom;
  the sampler's report says which settings ran.
* Editor: Import replaces every field, box labels stay inside their box, Import / Raw JSON do not shrink the
  canvas, the invalid-JSON overlay fits the canvas, an auto-fix reads as a fix.

Screenshots go to ``$EDITOR_SHOTS_DIR`` (default /tmp/editor_shots). Skipped without ``COMFYUI_PATH`` or Chromium.
"""

from __future__ import annotations

import json
import time

import pytest

from comfy_harness import REPO, running_server, requires_comfyui, write_models

fe = pytest.importorskip("test_frontend_editor")

pytestmark = [*requires_comfyui(), pytest.mark.slow,
              pytest.mark.skipif(not fe.CHROMIUM, reason="no chromium binary (set $CHROMIUM)")]

APP = fe.APP
SHOTS = fe.SHOTS
UI_TEMPLATE = REPO / "workflows" / "image_ideogram4_t2i.json"
TINY = {  # template node type → widget values with the tiny test files (same order as the template)
    "Ideogram4NativeModelLoader": ["i4tiny_bf16.safetensors", "auto", "auto"],
    "Ideogram4NativeTextEncoderLoader": ["tiny-te/", "auto", "auto", "auto"],
    "Ideogram4NativeVAELoader": ["tiny_flux2_vae.safetensors", "auto"],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_ui_root")
    write_models(root / "models")
    (root / "user" / "default").mkdir(parents=True)
    (root / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    with running_server(root) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with fe.chromium_page(tmp_path_factory.mktemp("chromium-nodes"), width=1600, height=1200, deviceScaleFactor=1,
                          mobile=False) as cdp:
        cdp.call("Page.navigate", url=server.url)
        cdp.wait_js(f"!!({APP} && {APP}.graph && window.LiteGraph && LiteGraph.registered_node_types?."
                    f"Ideogram4NativeKSampler && {APP}.extensions?.some?.(e => e.name === 'Ideogram4Native.NodeUI'))",
                    timeout=120, what="ComfyUI app with the node UI extension")
        fe._wait_initial_graph(cdp)
        yield cdp


def _load_template(cdp, **tweaks) -> dict:
    """Load the UI template with the tiny files; returns {type: node id}."""
    wf = json.loads(UI_TEMPLATE.read_text(encoding="utf-8"))
    for n in wf["nodes"]:
        if n["type"] in TINY:
            n["widgets_values"] = list(TINY[n["type"]])
        if n["type"] == "Ideogram4NativeEmptyLatent":
            n["widgets_values"] = ["custom", 256, 256, 1]
        if n["type"] == "Ideogram4NativeKSampler":
            n["widgets_values"][1] = "fixed"
            n["widgets_values"][2] = "V4_TURBO_12"
        for k, v in tweaks.get(n["type"], {}).items():
            n["widgets_values"][k] = v
    cdp.js(f"(async () => {{ await {APP}.loadGraphData({json.dumps(wf)}, true, true, 'i4test'); return true; }})()")
    ids = cdp.js(f"Object.fromEntries({APP}.graph._nodes.map(n => [n.type, n.id]))")
    cdp.js(f"(() => {{ const a = {APP}; a.canvas.ds.scale = 1; a.canvas.setDirty(true, true); }})()")
    return ids


def _focus(cdp, node_id, x=140, y=120) -> None:
    """Put the node's top-left at (x, y) on screen at zoom 1."""
    cdp.js(f"""(() => {{ const a = {APP}; const n = a.graph.getNodeById({json.dumps(node_id)});
      a.canvas.ds.scale = 1; a.canvas.ds.offset = [{x} - n.pos[0], {y} + LiteGraph.NODE_TITLE_HEIGHT - n.pos[1]];
      a.canvas.setDirty(true, true); }})()""")
    time.sleep(0.4)


REPORTS = f"""(() => Object.fromEntries({APP}.graph._nodes
  .map(n => [n.type, n.widgets?.find(w => w.name === 'ideogram4_report')])
  .filter(([, w]) => w).map(([t, w]) => [t, {{value: w.ideogram4Area.value, readOnly: w.ideogram4Area.readOnly,
    serialize: w.serialize, shown: w.ideogram4Area.getBoundingClientRect().height > 0}}])))()"""


# --------------------------------------------------------------------------- item 2 (+ 5: the report)

def test_node_reports_appear_on_the_node_and_clear_on_requeue(server, page):
    cdp = page
    ids = _load_template(cdp)
    assert cdp.js(REPORTS) == {}, "no report area before a run"
    # record what the report areas hold right after the frontend queued the prompt (listener added after ours)
    cdp.js(f"""(() => {{ window.__i4AtQueue = [];
      window.comfyAPI.api.api.addEventListener('promptQueued', () => window.__i4AtQueue.push({REPORTS})); }})()""")
    cdp.js(f"(async () => {{ await {APP}.queuePrompt(0, 1); return true; }})()")
    expected = {"Ideogram4NativeModelLoader", "Ideogram4NativeTextEncoderLoader", "Ideogram4NativeVAELoader",
                "Ideogram4NativeTextEncode", "Ideogram4NativeCaptionBuilder", "Ideogram4NativeKSampler",
                "Ideogram4NativeVAEDecode"}
    # each node's text arrives with its own "executed" message: wait until every one is shown (a loaded machine
    # can paint the last ones after the decode's), then check them all
    reports = cdp.wait_js(f"""(() => {{ const r = {REPORTS};
      return {json.dumps(sorted(expected))}.every(t => r[t]?.value) && r; }})()""",
                          timeout=240, what="every node's report after the run")
    assert expected <= set(reports), reports.keys()
    assert "SaveImage" not in reports and "MarkdownNote" not in reports
    for t, r in reports.items():
        assert r["readOnly"] and r["serialize"] is False and r["value"].strip(), (t, r)
    ks = reports["Ideogram4NativeKSampler"]["value"]
    assert "V4_TURBO_12" in ks and "memory" in ks, ks
    assert "preset V4_TURBO_12 ran: steps, mu, std, guidance" in ks, ks  # item 5: which settings ran
    assert "size 256×256, batch 1 from the latent (width/height/batch_size widgets not used)" in ks, ks
    assert "caption" in reports["Ideogram4NativeTextEncode"]["value"].lower()
    assert "decoded 1×256×256" in reports["Ideogram4NativeVAEDecode"]["value"]
    # what the server sent is what the node shows
    deadline = time.time() + 60
    while not (hist := server.get("/history")) and time.time() < deadline:
        time.sleep(0.3)
    entry = next(iter(hist.values()))
    assert entry["outputs"][str(ids["Ideogram4NativeKSampler"])]["text"][0] == ks
    # not in the workflow or the API prompt
    saved = cdp.js(f"(async () => [JSON.stringify({APP}.graph.serialize()), "
                   f"JSON.stringify((await {APP}.graphToPrompt()).output)])()")
    assert ks.splitlines()[0] not in saved[0] and "ideogram4_report" not in saved[0] + saved[1]
    _focus(cdp, ids["Ideogram4NativeKSampler"])
    shot = cdp.screenshot(SHOTS / "10_report_ksampler.png", fe._node_clip(cdp, ids["Ideogram4NativeKSampler"]))
    _focus(cdp, ids["Ideogram4NativeModelLoader"])
    cdp.screenshot(SHOTS / "11_report_model_loader.png", fe._node_clip(cdp, ids["Ideogram4NativeModelLoader"]))

    # re-run with another seed: cleared when queued, then the new report
    cdp.js(f"""(() => {{ const n = {APP}.graph.getNodeById({ids['Ideogram4NativeKSampler']});
      const w = n.widgets.find(w => w.name === 'seed'); w.value = 7; }})()""")
    cdp.js(f"(async () => {{ await {APP}.queuePrompt(0, 1); return true; }})()")
    at_queue = cdp.wait_js("window.__i4AtQueue.length >= 2 && window.__i4AtQueue", timeout=30, what="second queue")
    assert at_queue[0] == {} and at_queue[1], at_queue
    assert all(r["value"] == "" for r in at_queue[1].values()), at_queue[1]
    again = cdp.wait_js(f"""(() => {{ const r = {REPORTS}; const v = r.Ideogram4NativeKSampler?.value;
      return v && v.includes('seed 7') && r; }})()""", timeout=240, what="report of the second run")
    assert "seed 1234" not in again["Ideogram4NativeKSampler"]["value"]
    assert shot.stat().st_size > 3000
    assert not fe._own_errors(cdp), fe._own_errors(cdp)


# --------------------------------------------------------------------------- item 4

CANVAS = f"""((id) => {{ const n = {APP}.graph.getNodeById(id); const e = n.ideogram4LayoutEditor;
  const r = e.canvas.getBoundingClientRect();
  return {{w: r.width, h: r.height, canvasW: e.canvasW, canvasH: e.canvasH, info: e.info.textContent,
          stage: e.stage.getBoundingClientRect().height}}; }})"""


def test_caption_builder_canvas_follows_the_linked_latent_size(server, page):
    cdp = page
    ids = _load_template(cdp)
    b, lat = ids["Ideogram4NativeCaptionBuilder"], ids["Ideogram4NativeEmptyLatent"]
    # the builder's own (linked, hence stale) widgets say 1024×1024; the latent says 1440×720 (2:1)
    cdp.js(f"""(() => {{ const a = {APP}; const l = a.graph.getNodeById({lat});
      const w = l.widgets.find(w => w.name === 'aspect_ratio'); w.value = '1440x720 (2:1)'; w.callback?.(w.value);
      const bw = a.graph.getNodeById({b}).widgets; for (const k of ['width', 'height'])
        bw.find(w => w.name === k).value = 1024; a.canvas.setDirty(true, true); }})()""")
    _focus(cdp, b)
    st = cdp.wait_js(f"(() => {{ const s = {CANVAS}({b}); return s.w > 0 && Math.abs(s.w / s.h - 2) < 0.02 && s; }})()",
                     timeout=10, what="2:1 canvas from the linked latent")
    assert (st["canvasW"], st["canvasH"]) == (1440, 720) and "linked" in st["info"], st
    cdp.screenshot(SHOTS / "12_builder_follows_latent_2to1.png", fe._node_clip(cdp, b))
    # custom size on the latent: 768×1280 (3:5)
    cdp.js(f"""(() => {{ const l = {APP}.graph.getNodeById({lat});
      for (const [k, v] of [['aspect_ratio', 'custom'], ['width', 768], ['height', 1280]]) {{
        const w = l.widgets.find(w => w.name === k); w.value = v; w.callback?.(v); }}
      {APP}.canvas.setDirty(true, true); }})()""")
    st = cdp.wait_js(f"(() => {{ const s = {CANVAS}({b}); return Math.abs(s.w / s.h - 0.6) < 0.02 && s; }})()",
                     timeout=10, what="3:5 canvas from the latent's custom size")
    assert (st["canvasW"], st["canvasH"]) == (768, 1280)
    time.sleep(0.3)
    cdp.screenshot(SHOTS / "13_builder_follows_latent_custom.png", fe._node_clip(cdp, b))
    # unlinked: the builder's own widgets count again
    cdp.js(f"(() => {{ const n = {APP}.graph.getNodeById({b}); n.disconnectInput(n.findInputSlot('width')); "
           f"n.disconnectInput(n.findInputSlot('height')); {APP}.canvas.setDirty(true, true); }})()")
    st = cdp.wait_js(f"(() => {{ const s = {CANVAS}({b}); return s.canvasW === 1024 && s.canvasH === 1024 && s; }})()",
                     timeout=10, what="widget size after unlinking")
    assert "linked" not in st["info"]


# --------------------------------------------------------------------------- item 5

DISABLED = f"""((id) => Object.fromEntries({APP}.graph.getNodeById(id).widgets
  .filter(w => w.name !== 'ideogram4_report').map(w => [w.name, !!w.disabled])))"""


def test_inert_sampler_widgets_are_disabled(server, page):
    cdp = page
    ids = _load_template(cdp)
    ks = ids["Ideogram4NativeKSampler"]
    custom_only = ["steps", "mu", "std", "guidance", "polish_steps", "polish_guidance", "guidance_schedule"]
    d = cdp.js(f"{DISABLED}({ks})")
    assert all(d[n] for n in custom_only), d  # preset selected
    assert d["width"] and d["height"] and d["batch_size"], d  # latent connected
    assert not d["seed"] and not d["preset"]
    tip = cdp.js(f"{APP}.graph.getNodeById({ks}).widgets.find(w => w.name === 'steps').tooltip")
    assert "custom only" in tip
    _focus(cdp, ks)
    cdp.screenshot(SHOTS / "14_ksampler_preset_latent_inert.png", fe._node_clip(cdp, ks))
    # preset custom through the widget, latent unplugged: everything is live again
    cdp.js(f"""(() => {{ const n = {APP}.graph.getNodeById({ks}); const p = n.widgets.find(w => w.name === 'preset');
      p.value = 'custom'; p.callback?.(p.value); n.disconnectInput(n.findInputSlot('latent'));
      {APP}.canvas.setDirty(true, true); }})()""")
    d = cdp.js(f"{DISABLED}({ks})")
    assert not any(d.values()), d
    time.sleep(0.3)
    cdp.screenshot(SHOTS / "15_ksampler_custom_live.png", fe._node_clip(cdp, ks))
    # Sigmas and Guider: fresh nodes with the default preset
    made = cdp.js(f"""(() => {{ const out = {{}}; for (const t of ['Ideogram4NativeSigmas', 'Ideogram4NativeGuider']) {{
      const n = LiteGraph.createNode(t); n.pos = [2000, 2000]; {APP}.graph.add(n); out[t] = n.id; }} return out; }})()""")
    sig = cdp.js(f"{DISABLED}({made['Ideogram4NativeSigmas']})")
    assert sig["steps"] and sig["mu"] and sig["std"] and not sig["width"] and not sig["preset"], sig
    gd = cdp.js(f"{DISABLED}({made['Ideogram4NativeGuider']})")
    assert all(gd[n] for n in ["guidance", "polish_steps", "polish_guidance", "guidance_schedule"]), gd
    # Empty Latent: width/height count only for aspect_ratio custom
    el = cdp.js(f"""(() => {{ const n = LiteGraph.createNode('Ideogram4NativeEmptyLatent'); n.pos = [2400, 2000];
      {APP}.graph.add(n); return n.id; }})()""")
    d = cdp.js(f"{DISABLED}({el})")
    assert d["width"] and d["height"] and not d["aspect_ratio"] and not d["batch_size"], d
    cdp.js(f"""(() => {{ const n = {APP}.graph.getNodeById({el}); const a = n.widgets.find(w => w.name === 'aspect_ratio');
      a.value = 'custom'; a.callback?.(a.value); }})()""")
    d = cdp.js(f"{DISABLED}({el})")
    assert not d["width"] and not d["height"], d
    cdp.js(f"{APP}.graph.remove({APP}.graph.getNodeById({el}))")
    # disabled widgets keep their values in the workflow
    wf = cdp.js(f"{APP}.graph.serialize()")
    node = [n for n in wf["nodes"] if n["type"] == "Ideogram4NativeGuider"]
    assert len(node) == 1, [(n["id"], n["type"]) for n in wf["nodes"]]
    node = node[0]
    assert node["widgets_values"][1:] == [7.0, 2, 3.0, ""], node["widgets_values"]
    assert not fe._own_errors(cdp), fe._own_errors(cdp)


# --------------------------------------------------------------------------- item 9

def test_editor_import_labels_panels_overlay_and_fix_status(server, page):
    cdp = page
    ids = _load_template(cdp)
    b = ids["Ideogram4NativeCaptionBuilder"]
    _focus(cdp, b)
    before = cdp.wait_js(f"(() => {{ const s = {CANVAS}({b}); return s.h > 0 && s; }})()", timeout=10, what="canvas")
    assert cdp.js(f"{APP}.graph.getNodeById({b}).widgets.find(w => w.name === 'color_palette').value") != ""

    def click(label, scope=".ideo4-bar"):
        cdp.js(f"""[...document.querySelectorAll('{scope} button')].find(b => b.textContent === {json.dumps(label)})
          .click()""")

    # Import a caption with lowercase hex, no global palette, no aesthetics, a tiny box and a narrow box
    caption = json.dumps({
        "high_level_description": "A poster",
        "style_description": {"lighting": "flat", "medium": "graphic_design", "art_style": "swiss"},
        "compositional_deconstruction": {"background": "paper", "elements": [
            {"type": "text", "bbox": [50, 100, 85, 900], "text": "A VERY LONG HEADLINE TEXT", "desc": "thin strip",
             "color_palette": ["#e53935"]},
            {"type": "obj", "bbox": [300, 40, 900, 80], "desc": "a narrow pole standing upright"},
            {"type": "obj", "bbox": [300, 250, 900, 750], "desc": "a bowl of ramen"}]}})
    click("Import…")
    time.sleep(0.5)
    opened = cdp.js(f"{CANVAS}({b})")
    assert opened["h"] >= 0.95 * before["h"] and opened["stage"] >= 290, (before, opened)  # was ~140 px
    cdp.js(f"""(() => {{ document.querySelector('.ideo4-import textarea').value = {json.dumps(caption)}; }})()""")
    click("Apply import", ".ideo4-import")
    time.sleep(0.5)
    values = cdp.js(f"""Object.fromEntries({APP}.graph.getNodeById({b}).widgets
      .filter(w => w.serialize !== false).map(w => [w.name, w.value]))""")
    assert values["color_palette"] == "" and values["aesthetics"] == "", values  # replaced, not kept
    assert values["style_mode"] == "art_style" and values["style_value"] == "swiss" and values["lighting"] == "flat"
    status = cdp.js("[...document.querySelectorAll('.ideo4-status div')].map(d => [d.className, d.textContent])")
    assert ["fix", 'fixed on import: element 1: color_palette[0] "#e53935" upper-cased to "#E53935"'] in status, status
    assert not any(c == "err" for c, _ in status), status
    assert "#E53935" in json.loads(values["layout"])[0]["color_palette"]
    # labels inside their boxes
    geo = cdp.js(f"""(() => {{ const e = {APP}.graph.getNodeById({b}).ideogram4LayoutEditor;
      return {{labels: e.labelRects, W: e.cssW, H: e.cssH, boxes: e.model.elements.map(el => el.bbox)}}; }})()""")
    for lr, bb in zip(geo["labels"], geo["boxes"]):
        x0, y0, x1, y1 = bb[1] / 1000 * geo["W"], bb[0] / 1000 * geo["H"], bb[3] / 1000 * geo["W"], bb[2] / 1000 * geo["H"]
        assert lr and lr["x"] >= x0 - 0.5 and lr["y"] >= y0 - 0.5, (lr, bb)
        assert lr["x"] + lr["w"] <= x1 + 0.5 and lr["y"] + lr["h"] <= y1 + 0.5, (lr, bb)
    time.sleep(0.3)
    cdp.screenshot(SHOTS / "16_editor_import_open_labels.png", fe._node_clip(cdp, b))
    click("Close", ".ideo4-import")

    # Raw JSON open: canvas keeps its size; invalid JSON: the overlay fits the canvas
    click("Raw JSON")
    time.sleep(0.5)
    raw = cdp.js(f"{CANVAS}({b})")
    assert raw["h"] >= 0.95 * before["h"] and raw["stage"] >= 290, (before, raw)
    # a tall 1:2 canvas is narrower than the overlay sentence
    cdp.js(f"""(() => {{ const l = {APP}.graph.getNodeById({ids['Ideogram4NativeEmptyLatent']});
      const a = l.widgets.find(w => w.name === 'aspect_ratio'); a.value = '720x1440 (1:2)'; a.callback?.(a.value);
      const n = {APP}.graph.getNodeById({b});
      const lw = n.widgets.find(w => w.name === 'layout'); lw.value = '[{{"type":"obj"';
      {APP}.canvas.setDirty(true, true); }})()""")
    time.sleep(0.6)
    ov = cdp.js(f"""(() => {{ const e = {APP}.graph.getNodeById({b}).ideogram4LayoutEditor;
      e.ctx.save(); e.ctx.font = 'bold 12px system-ui, sans-serif';
      const widths = (e.overlayLines || []).map(l => e.ctx.measureText(l).width); e.ctx.restore();
      return {{lines: e.overlayLines, widths, W: e.cssW, fatal: !!e.fatal}}; }})()""")
    assert ov["fatal"] and ov["lines"], ov
    assert max(ov["widths"]) <= ov["W"] - 8, ov
    assert " ".join(ov["lines"]) == "layout JSON is invalid — fix it under Raw JSON or Import"
    time.sleep(0.3)
    cdp.screenshot(SHOTS / "17_editor_raw_invalid_overlay.png", fe._node_clip(cdp, b))
    assert not fe._own_errors(cdp), fe._own_errors(cdp)


# --------------------------------------------------------------------------- item 11

def test_template_thumbnail_is_served_and_missing_models_offer_downloads(server, page):
    cdp = page
    from comfy_harness import PACK_DIR_NAME

    thumb = server.get_bytes(f"/api/workflow_templates/{PACK_DIR_NAME}/image_ideogram4_t2i.jpg")
    assert thumb[:3] == b"\xff\xd8\xff" and thumb == (REPO / "workflows" / "image_ideogram4_t2i.jpg").read_bytes()
    # the template as the template browser loads it; none of its model files exist on this server
    cdp.js(f"""(async () => {{ const r = await fetch('/api/workflow_templates/{PACK_DIR_NAME}/image_ideogram4_t2i.json');
      await {APP}.loadGraphData(await r.json(), true, true, 'image_ideogram4_t2i'); return true; }})()""")
    cdp.wait_js("[...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'View details')",
                timeout=20, what="the missing-models error overlay")
    cdp.js("[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'View details').click()")
    text = cdp.wait_js("(() => { const t = document.body.innerText; return t.includes('Download all') && t; })()",
                       timeout=20, what="missing-models panel with downloads")
    section = text[text.index("Missing Models"):text.index("Download all")]
    for name, folder in (("ideogram4_fp8_scaled.safetensors", "diffusion_models"),
                         ("ideogram4_unconditional_fp8_scaled.safetensors", "diffusion_models"),
                         ("qwen3vl_8b_fp8_scaled.safetensors", "text_encoders"), ("flux2-vae.safetensors", "vae")):
        i = section.index(name)
        assert section[i:].split("\n")[1:3] == [folder, "Download"], section[i:i + 120]
    assert section.count("\nDownload\n") == 4, section
    time.sleep(0.5)
    cdp.screenshot(SHOTS / "21_missing_models_details.png")


def test_reports_and_inert_widgets_in_vue_nodes_mode(server, page):
    """The same report area and disabled widgets with the frontend's Vue node renderer ("Nodes 2.0")."""
    cdp = page
    setting = f"{APP}.extensionManager.setting"
    cdp.js(f"(async () => {{ await {setting}.set('Comfy.VueNodes.Enabled', true); return true; }})()")
    try:
        assert cdp.wait_js("window.LiteGraph.vueNodesMode === true", timeout=10, what="Vue nodes mode")
        ids = _load_template(cdp)
        ks = ids["Ideogram4NativeKSampler"]
        time.sleep(1)
        # an executed message as the frontend's app delivers it to the node
        cdp.js(f"{APP}.graph.getNodeById({ks}).onExecuted({{text: ['V4_TURBO_12: 12 steps\\nmemory: cpu']}})")
        st = cdp.wait_js(f"""(() => {{ const w = {APP}.graph.getNodeById({ks}).widgets
            .find(w => w.name === 'ideogram4_report'); const r = w?.ideogram4Area.getBoundingClientRect();
          return r && r.height > 20 && {{value: w.ideogram4Area.value, h: r.height,
            inDom: document.body.contains(w.ideogram4Area)}}; }})()""", timeout=10, what="report area in a Vue node")
        assert st["inDom"] and st["value"] == "V4_TURBO_12: 12 steps\nmemory: cpu"
        d = cdp.js(f"{DISABLED}({ks})")
        assert d["steps"] and d["width"] and not d["seed"], d
        _focus(cdp, ks)
        # the Vue widgets themselves are disabled (number inputs, by widget name), the live ones are not
        vue = cdp.wait_js(f"""(() => {{ const el = document.querySelector('[data-node-id="{ks}"]');
          const out = {{}}; for (const i of el?.querySelectorAll('[aria-label]') ?? []) {{
            const name = i.getAttribute('aria-label'); if (name in out) continue;
            const inp = i.matches('input') ? i : i.querySelector('input');
            out[name] = !!(inp?.disabled || i.getAttribute('aria-disabled') === 'true' || i.hasAttribute('disabled')
                           || i.hasAttribute('data-disabled')); }}
          return out.steps !== undefined && out; }})()""", timeout=10, what="Vue widget inputs")
        print("vue widgets disabled:", vue)
        assert vue["steps"] and vue["mu"] and vue["width"] and not vue["seed"], vue
        cdp.screenshot(SHOTS / "18_vue_mode_report_inert.png", fe._node_clip(cdp, ks))
        assert not fe._own_errors(cdp), fe._own_errors(cdp)
    finally:
        cdp.js(f"(async () => {{ await {setting}.set('Comfy.VueNodes.Enabled', false); return true; }})()")


def test_connected_latent_size_wins_over_invalid_size_widgets(server):
    """Item 5, server side: with a latent connected the KSampler's width/height widgets are not validated."""
    api = json.loads((REPO / "workflows" / "api" / "image_ideogram4_t2i_api.json").read_text(encoding="utf-8"))
    prompt = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in api.items()}
    ids = {v["class_type"]: k for k, v in prompt.items()}
    for ctype, values in {
        "Ideogram4NativeModelLoader": {"conditional": "i4tiny_bf16.safetensors",
                                       "unconditional": "i4tiny_unconditional_bf16.safetensors"},
        "Ideogram4NativeTextEncoderLoader": {"text_encoder": "tiny-te/", "tokenizer": "auto"},
        "Ideogram4NativeVAELoader": {"vae_name": "tiny_flux2_vae.safetensors"},
        "Ideogram4NativeEmptyLatent": {"aspect_ratio": "custom", "width": 256, "height": 256},
        "Ideogram4NativeKSampler": {"preset": "custom", "steps": 3, "width": 100, "height": 5000},
    }.items():
        prompt[ids[ctype]]["inputs"].update(values)
    ks = ids["Ideogram4NativeKSampler"]
    assert isinstance(prompt[ks]["inputs"]["latent"], list)  # connected
    entry = server.run(prompt)
    errors = [m[1].get("exception_message") for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", errors
    text = entry["outputs"][ks]["text"][0]
    assert "size 256×256, batch 1 from the latent (width/height/batch_size widgets not used)" in text, text
    assert "ran:" not in text  # custom: every setting came from the widgets
    # without the latent the same widgets are rejected before the run
    del prompt[ks]["inputs"]["latent"]
    status, body = server.queue(prompt)
    assert status == 400 and "width" in json.dumps(body), body


def test_fast_fp8_node_reports_on_the_canvas(server, page):
    """The opt-in fast fp8 node dropped between the loader and the sampler of the template (fp8 files): after the
    run its UI text, on the node itself, says it is not reference-exact and what deviation it measured."""
    cdp = page
    ids = _load_template(cdp, Ideogram4NativeModelLoader={0: "i4tiny_fp8.safetensors"})
    fast = cdp.js(f"""(() => {{ const a = {APP}, g = a.graph;
      const loader = g.getNodeById({ids["Ideogram4NativeModelLoader"]}), ks = g.getNodeById({ids["Ideogram4NativeKSampler"]});
      const n = LiteGraph.createNode('Ideogram4NativeFastFP8'); n.pos = [loader.pos[0], loader.pos[1] + 1400];  // clear of the template
      g.add(n); loader.connect(0, n, 0); loader.connect(1, n, 1); n.connect(0, ks, 0); n.connect(1, ks, 1);
      return n.id; }})()""")
    cdp.js(f"(async () => {{ await {APP}.queuePrompt(0, 1); return true; }})()")
    reports = cdp.wait_js(f"""(() => {{ const r = {REPORTS};
      return r.Ideogram4NativeFastFP8?.value && r.Ideogram4NativeVAEDecode?.value && r; }})()""",
                          timeout=240, what="reports after the run with the fast fp8 node")
    text = reports["Ideogram4NativeFastFP8"]["value"]
    assert "model: fp8 matmul: FAST" in text and "unconditional_model: fp8 matmul: FAST" in text, text
    assert "NOT reference-exact" in text and "max relative deviation" in text, text
    _focus(cdp, fast)
    assert cdp.js(REPORTS)["Ideogram4NativeFastFP8"]["shown"]  # drawn on the node once it is on screen
    cdp.screenshot(SHOTS / "30_report_fast_fp8.png", fe._node_clip(cdp, fast))
