// Ideogram 4 Native — visual layout editor for the Caption Builder node.
//
// For every `Ideogram4NativeCaptionBuilder` node this extension adds a canvas
// (at the aspect ratio of the node's width/height widgets) on which the caption's
// elements are drawn as boxes: drag on empty space to draw a box, click to
// select, drag to move, drag a handle to resize, Delete/Backspace (or the
// button) to delete, arrow keys to nudge (Shift ×10), Tab to cycle, Escape to
// cancel a drag. A panel below edits the selected element's type, text, desc
// and colour palette (max 5).
//
// Storage: the node's `layout` STRING widget IS the storage. The editor reads it
// whenever it changes (load, paste, undo, typing in the raw widget) and writes
// canonical minified JSON into it after every edit, so layouts survive
// save/load and work when the workflow is queued through the HTTP API without a
// browser. The raw widget is hidden behind the "Raw JSON" toggle but is still
// serialised. If the raw text is not valid JSON the editor shows the error and
// refuses to edit until it is fixed (it never overwrites text it cannot read).
//
// Reference image: "Image…" loads a local image file and shows it behind the
// boxes. It stays in this browser tab only — it is NOT saved in the workflow
// (workflows are embedded in every generated PNG; a reference photo should not
// silently travel with them) and is gone after a reload.
//
// No build step, no external resources: plain ES modules served from the
// pack's WEB_DIRECTORY at /extensions/<pack>/, so ../../scripts/app.js is the
// frontend's public app module. The DOM-free logic lives in ./lib/ (unit tested
// with `node --test js/tests/`).

import { app } from "../../scripts/app.js";
import { chain as chainHook } from "./lib/chain.js";
import { aspectRatioString, bboxToRect, fitAspect, handlePositions } from "./lib/geometry.js";
import {
  BUILDER_FIELDS,
  MAX_ELEMENT_COLORS,
  buildCaption,
  importFields,
  importFixes,
  parsePaletteString,
  serializeCaption,
} from "./lib/caption_layout.js";
import {
  LayoutEditorModel,
  formatBoxLabel,
  labelRect,
  sanitizeCanvasSize,
  wrapText,
} from "./lib/editor_model.js";
import { inputValue } from "./lib/node_ui.js";

export const EXTENSION_NAME = "Ideogram4Native.CaptionEditor";
export const NODE_ID = "Ideogram4NativeCaptionBuilder";
export const EDITOR_WIDGET_NAME = "layout_editor";
const LAYOUT_WIDGET = "layout";
const WIDTH_WIDGET = "width";
const HEIGHT_WIDGET = "height";
const EDITOR_MIN_HEIGHT = 560;
const STAGE_MIN_HEIGHT = 300; // the canvas keeps this much when Import / Raw JSON open (the node grows instead)
const INVALID_OVERLAY = "layout JSON is invalid — fix it under Raw JSON or Import";
const TYPE_COLORS = { obj: "#4FC3F7", text: "#FFB74D" };
const OTHER_COLOR = "#E57373";
const STYLE_ID = "ideogram4-caption-editor-style";

const CSS = `
.ideo4-editor{display:flex;flex-direction:column;gap:4px;width:100%;height:100%;box-sizing:border-box;
  font:12px/1.35 system-ui,sans-serif;color:var(--input-text,#ddd);overflow:hidden;min-height:0}
.ideo4-editor *{box-sizing:border-box}
.ideo4-bar{display:flex;flex-wrap:wrap;gap:3px;align-items:center;flex:none}
.ideo4-editor button{font:inherit;padding:2px 7px;border-radius:4px;cursor:pointer;
  border:1px solid var(--border-color,#555);background:var(--comfy-input-bg,#222);color:inherit}
.ideo4-editor button:hover:not(:disabled){filter:brightness(1.3)}
.ideo4-editor button:disabled{opacity:.45;cursor:default}
.ideo4-editor button.ideo4-on{outline:1px solid #4FC3F7}
.ideo4-info{margin-left:auto;opacity:.7;white-space:nowrap}
.ideo4-stage{position:relative;flex:1 1 auto;min-height:${STAGE_MIN_HEIGHT}px;overflow:hidden}
.ideo4-stage canvas{position:absolute;outline:none;touch-action:none;user-select:none;border-radius:2px}
.ideo4-stage canvas:focus-visible{box-shadow:0 0 0 2px #4FC3F7}
.ideo4-status{flex:none;height:2.9em;overflow:auto;font-size:11px;white-space:pre-wrap}
.ideo4-status .err{color:#FF8A80}.ideo4-status .hint{color:#FFD180}.ideo4-status .ok{opacity:.6}
.ideo4-status .fix{color:#A5D6A7}
.ideo4-panel{flex:none;display:flex;flex-direction:column;gap:3px;height:176px;overflow:auto}
.ideo4-row{display:flex;gap:4px;align-items:center;flex-wrap:wrap}
.ideo4-row>label{opacity:.75;min-width:3.2em}
.ideo4-editor select,.ideo4-editor input,.ideo4-editor textarea{font:inherit;color:inherit;
  background:var(--comfy-input-bg,#222);border:1px solid var(--border-color,#555);border-radius:4px;padding:2px 4px}
.ideo4-editor textarea{width:100%;resize:vertical;min-height:2.4em}
.ideo4-editor select.ideo4-elsel{flex:1;min-width:6em;max-width:100%}
.ideo4-editor input[type=color]{width:2.2em;height:1.8em;padding:0 1px}
.ideo4-chip{display:inline-flex;align-items:center;gap:3px;border:1px solid var(--border-color,#555);
  border-radius:10px;padding:0 2px 0 2px;font-family:monospace}
.ideo4-chip i{display:inline-block;width:12px;height:12px;border-radius:6px;border:1px solid #0008}
.ideo4-chip button{border:none;padding:0 3px;background:none}
.ideo4-import{flex:none;display:flex;flex-direction:column;gap:3px}
.ideo4-import textarea{min-height:5em;font-family:monospace;font-size:11px}
.ideo4-muted{opacity:.65}
`;

function injectStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  document.head.appendChild(style);
}

/** Tiny element factory: h("button", {title: "x", onclick}, "text"). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "className") el.className = v;
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function getWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

const chain = (obj, key, fn) => chainHook(obj, key, fn, EXTENSION_NAME);

class CaptionLayoutEditor {
  constructor(node) {
    this.node = node;
    this.model = new LayoutEditorModel();
    this.lastLayoutText = null;
    this.fatal = null; // parse errors of the raw text (editing disabled)
    this.loadNotes = []; // warnings of the last load
    this.fixNotes = []; // what the last import fixed on the way in (canonical form)
    this.canvasW = 1024; // generated image size (widgets)
    this.canvasH = 1024;
    this.cssW = 0; // drawing surface size in CSS px
    this.cssH = 0;
    this.bgImage = null;
    this.bgName = "";
    this.drawQueued = false;
    this.lastBackingScale = 0;
    this.importOpen = false;
    injectStyle();
    this.buildDom();
    this.widget = node.addDOMWidget(EDITOR_WIDGET_NAME, "ideogram4_layout_editor", this.root, {
      serialize: false,
      hideOnZoom: true,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => EDITOR_MIN_HEIGHT + (this.importOpen ? this.importBox.offsetHeight || 120 : 0),
      onDraw: () => this.onGraphDraw(),
    });
    this.widget.serialize = false;
    this.hookWidgets();
    this.setRawVisible(false);
    this.resizeObserver = new ResizeObserver(() => this.layoutCanvas());
    this.resizeObserver.observe(this.stage);
    this.syncFromWidgets(true);
  }

  // -- DOM ---------------------------------------------------------------

  buildDom() {
    const btn = (label, title, onclick) => h("button", { type: "button", title, onclick }, label);
    this.btnDelete = btn("Delete", "Delete the selected box (Delete key)", () => this.deleteSelected());
    this.btnUp = btn("▲", "Move the selected element earlier in the caption (drawn below)", () =>
      this.reorder(-1),
    );
    this.btnDown = btn("▼", "Move the selected element later in the caption (drawn on top)", () =>
      this.reorder(1),
    );
    this.btnImport = btn("Import…", "Paste a caption JSON (fills layout and the other fields) or a layout list", () =>
      this.toggleImport(),
    );
    this.btnExport = btn("Export", "Copy the full caption JSON built from this node's fields (canonical, minified)", () =>
      this.exportJson("caption"),
    );
    this.btnExportLayout = btn("Copy layout", "Copy the layout element list (canonical, minified)", () =>
      this.exportJson("layout"),
    );
    this.fileInput = h("input", {
      type: "file",
      accept: "image/*",
      style: { display: "none" },
      onchange: () => this.loadBackground(this.fileInput.files?.[0]),
    });
    this.btnImage = btn("Image…", "Show a local reference image behind the boxes (kept in this tab only, not saved)", () =>
      this.fileInput.click(),
    );
    this.btnClearImage = btn("✕img", "Remove the reference image", () => this.setBackground(null, ""));
    this.btnRaw = btn("Raw JSON", "Show/hide the raw layout widget (the stored value)", () =>
      this.setRawVisible(!this.rawVisible),
    );
    this.btnClear = btn("Clear", "Remove all elements", () => this.clearAll());
    this.info = h("span", { className: "ideo4-info" });
    const bar = h(
      "div",
      { className: "ideo4-bar" },
      this.btnDelete,
      this.btnUp,
      this.btnDown,
      this.btnImport,
      this.btnExport,
      this.btnExportLayout,
      this.btnImage,
      this.btnClearImage,
      this.btnRaw,
      this.btnClear,
      this.fileInput,
      this.info,
    );

    this.canvas = h("canvas", { tabindex: "0", "aria-label": "Ideogram 4 layout canvas" });
    this.ctx = this.canvas.getContext("2d");
    this.stage = h("div", { className: "ideo4-stage" }, this.canvas);
    this.bindCanvasEvents();

    this.status = h("div", { className: "ideo4-status" });
    this.panel = h("div", { className: "ideo4-panel" });

    this.importText = h("textarea", {
      placeholder:
        'Paste a caption JSON ({"high_level_description":…,"compositional_deconstruction":{…}}) or a layout list ([{"type":"obj",…}])',
      spellcheck: false,
    });
    this.importMsg = h("div", { className: "ideo4-muted" });
    this.importBox = h(
      "div",
      { className: "ideo4-import", style: { display: "none" } },
      this.importText,
      h(
        "div",
        { className: "ideo4-row" },
        btn("Apply import", "Replace the layout (and fields found in the caption)", () => this.applyImport()),
        btn("Close", "", () => this.toggleImport(false)),
        this.importMsg,
      ),
    );
    this.root = h("div", { className: "ideo4-editor" }, bar, this.stage, this.status, this.importBox, this.panel);
    // Keep keyboard shortcuts typed into our inputs away from the graph where
    // the frontend does not already ignore them.
    this.root.addEventListener("keydown", (e) => {
      const t = e.target;
      if (t !== this.canvas && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) {
        if (e.key === "Delete" || e.key === "Backspace") e.stopPropagation();
      }
    });
  }

  bindCanvasEvents() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      e.stopPropagation();
      c.focus({ preventScroll: true });
      if (this.fatal) return;
      c.setPointerCapture?.(e.pointerId);
      this.model.pointerDown(this.eventPoint(e), this.cssW, this.cssH);
      // the panel is rebuilt on pointerup: nothing may shift the canvas mid-drag
      this.requestDraw();
    });
    c.addEventListener("pointermove", (e) => {
      const pt = this.eventPoint(e);
      if (this.model.drag) {
        e.stopPropagation();
        if (this.model.pointerMove(pt, this.cssW, this.cssH).changed) this.requestDraw();
      }
      c.style.cursor = this.fatal ? "not-allowed" : this.model.cursorAt(pt, this.cssW, this.cssH);
    });
    const finish = (e) => {
      if (!this.model.drag) return;
      e.stopPropagation();
      const r = this.model.pointerUp(this.eventPoint(e), this.cssW, this.cssH);
      c.releasePointerCapture?.(e.pointerId);
      if (r.committed) this.commit();
      this.renderPanel();
      if (this.layoutPending) this.layoutCanvas();
      this.requestDraw();
    };
    c.addEventListener("pointerup", finish);
    c.addEventListener("pointercancel", (e) => {
      if (this.model.cancelDrag()) this.requestDraw();
      c.releasePointerCapture?.(e.pointerId);
      this.renderPanel();
      if (this.layoutPending) this.layoutCanvas();
    });
    c.addEventListener("keydown", (e) => {
      if (this.fatal || e.ctrlKey || e.metaKey || e.altKey) return;
      const r = this.model.keyDown(e.key, { shift: e.shiftKey });
      if (!r.handled) return;
      e.preventDefault();
      e.stopPropagation();
      if (r.committed) this.commit();
      if (r.changed || r.committed) {
        this.renderPanel();
        if (this.layoutPending && !this.model.drag) this.layoutCanvas();
        this.requestDraw();
      }
    });
    // Let the wheel zoom/pan the graph like it does over the node body.
    c.addEventListener(
      "wheel",
      (e) => {
        const lg = app.canvas;
        if (lg?.processMouseWheel) {
          e.preventDefault();
          e.stopPropagation();
          lg.processMouseWheel(e);
        }
      },
      { passive: false },
    );
    c.addEventListener("contextmenu", (e) => e.stopPropagation());
  }

  /** Pointer position in drawing-surface CSS px (handles the graph's zoom transform). */
  eventPoint(e) {
    const rect = this.canvas.getBoundingClientRect();
    const sx = rect.width > 0 ? this.cssW / rect.width : 1;
    const sy = rect.height > 0 ? this.cssH / rect.height : 1;
    return { x: (e.clientX - rect.left) * sx, y: (e.clientY - rect.top) * sy };
  }

  // -- widgets -------------------------------------------------------------

  hookWidgets() {
    for (const name of [LAYOUT_WIDGET, WIDTH_WIDGET, HEIGHT_WIDGET]) {
      const w = getWidget(this.node, name);
      if (!w) {
        console.warn(`[${EXTENSION_NAME}] ${NODE_ID} has no "${name}" widget`);
        continue;
      }
      chain(w, "callback", () => this.syncFromWidgets(false));
    }
  }

  get layoutWidget() {
    return getWidget(this.node, LAYOUT_WIDGET);
  }

  setRawVisible(visible) {
    this.rawVisible = visible;
    const w = this.layoutWidget;
    if (w) {
      w.hidden = !visible;
      if (w.options) w.options.hidden = !visible;
    }
    this.btnRaw.classList.toggle("ideo4-on", visible);
    this.fitNode();
  }

  fitNode() {
    const node = this.node;
    if (!node.computeSize || !node.setSize) return;
    try {
      const min = node.computeSize();
      node.setSize([Math.max(node.size[0], min[0], 420), Math.max(node.size[1], min[1])]);
    } catch {
      /* node not in a graph yet */
    }
    node.setDirtyCanvas?.(true, true);
  }

  /** Read the widgets; reload the model when the layout text changed. */
  syncFromWidgets(force) {
    const lw = this.layoutWidget;
    const text = lw ? String(lw.value ?? "") : "";
    let changed = false;
    if (force || text !== this.lastLayoutText) {
      this.lastLayoutText = text;
      const parsed = this.model.load(text);
      this.fatal = parsed.ok ? null : parsed.errors;
      this.loadNotes = parsed.warnings;
      this.fixNotes = [];
      changed = true;
    }
    const w = sanitizeCanvasSize(this.sizeValue(WIDTH_WIDGET));
    const hh = sanitizeCanvasSize(this.sizeValue(HEIGHT_WIDGET));
    const linked = this.sizeLinked;
    if (w !== this.canvasW || hh !== this.canvasH || linked !== this.canvasLinked) {
      this.canvasW = w;
      this.canvasH = hh;
      this.canvasLinked = linked;
      this.layoutCanvas();
      changed = true;
    }
    if (changed) {
      this.renderPanel();
      this.requestDraw();
    }
  }

  /** width/height as the node will receive them: the upstream value when the input is linked, else the widget. */
  sizeValue(name) {
    const upstream = inputValue(this.node.graph, this.node, name);
    if (upstream === undefined) return getWidget(this.node, name)?.value;
    return upstream ?? getWidget(this.node, name)?.value;
  }

  get sizeLinked() {
    return [WIDTH_WIDGET, HEIGHT_WIDGET].some((n) => {
      const inp = this.node.inputs?.find((i) => i.name === n);
      return inp?.link !== null && inp?.link !== undefined;
    });
  }

  /** Write the model into the layout widget (the stored value). */
  commit() {
    const text = this.model.serialize();
    this.lastLayoutText = text;
    const lw = this.layoutWidget;
    if (lw && lw.value !== text) {
      lw.value = text; // DOM text widgets run their callback from the setter
    }
    this.node.setDirtyCanvas?.(true, true);
    this.renderStatus();
  }

  onGraphDraw() {
    // Cheap polling: catches values set without callbacks (undo, API, other extensions).
    this.syncFromWidgets(false); // no-op unless the layout text or the canvas size changed
    // Graph zoom changes the on-screen size of the canvas (CSS transform): redraw at
    // the new resolution once the frontend has applied the transform.
    const zoom = app.canvas?.ds?.scale;
    if (zoom !== this.lastZoom) {
      this.lastZoom = zoom;
      this.requestDraw();
      setTimeout(() => this.requestDraw(), 150);
    } else if (this.cssW > 0 && Math.abs(this.backingScale() - this.lastBackingScale) > 0.05) {
      this.requestDraw();
    }
  }

  // -- canvas ----------------------------------------------------------------

  layoutCanvas() {
    if (this.model.drag) {
      this.layoutPending = true; // re-fit after the drag, never under the pointer
      return;
    }
    this.layoutPending = false;
    const sw = this.stage.clientWidth;
    const sh = this.stage.clientHeight;
    const { width, height } = fitAspect(sw, sh, this.canvasW, this.canvasH);
    if (width === 0 || height === 0) return;
    this.cssW = width;
    this.cssH = height;
    Object.assign(this.canvas.style, {
      width: `${width}px`,
      height: `${height}px`,
      left: `${Math.floor((sw - width) / 2)}px`,
      top: `${Math.floor((sh - height) / 2)}px`,
    });
    this.info.textContent = `${this.canvasW}×${this.canvasH} (${aspectRatioString(this.canvasW, this.canvasH)})${
      this.canvasLinked ? " · linked" : ""
    }`;
    this.requestDraw();
  }

  /** Device pixels per CSS px of the drawing surface, including the graph zoom. */
  backingScale() {
    const rect = this.canvas.getBoundingClientRect();
    const zoom = this.cssW > 0 && rect.width > 0 ? rect.width / this.cssW : 1;
    return Math.min(4, Math.max(1, (window.devicePixelRatio || 1) * zoom));
  }

  requestDraw() {
    if (this.drawQueued) return;
    this.drawQueued = true;
    requestAnimationFrame(() => {
      this.drawQueued = false;
      this.draw();
    });
  }

  draw() {
    const { cssW: W, cssH: H, ctx } = this;
    if (!(W > 0 && H > 0)) return;
    const scale = this.backingScale();
    this.lastBackingScale = scale;
    const bw = Math.round(W * scale);
    const bh = Math.round(H * scale);
    if (this.canvas.width !== bw || this.canvas.height !== bh) {
      this.canvas.width = bw;
      this.canvas.height = bh;
    }
    ctx.setTransform(bw / W, 0, 0, bh / H, 0, 0);
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "#1b1b1b";
    ctx.fillRect(0, 0, W, H);
    if (this.bgImage) {
      const { width: iw, height: ih } = fitAspect(W, H, this.bgImage.naturalWidth, this.bgImage.naturalHeight);
      ctx.drawImage(this.bgImage, (W - iw) / 2, (H - ih) / 2, iw, ih);
    }
    this.drawGrid(W, H);
    const m = this.model;
    this.labelRects = [];
    this.overlayLines = null;
    m.elements.forEach((el, i) => {
      const b = m.displayBbox(i);
      if (b) this.drawBox(el, i, b, i === m.selected);
    });
    const pb = m.previewBbox;
    if (pb) {
      const r = bboxToRect(pb, W, H);
      ctx.save();
      ctx.setLineDash([5, 4]);
      ctx.strokeStyle = "#FFFFFF";
      ctx.lineWidth = 1.5;
      ctx.strokeRect(r.x + 0.5, r.y + 0.5, r.w, r.h);
      ctx.restore();
      this.drawTag(`[${pb.join(", ")}]`, r.x, r.y + r.h + 2, "#FFFFFF", W);
    }
    if (this.fatal) {
      ctx.fillStyle = "rgba(120,0,0,0.55)";
      ctx.fillRect(0, 0, W, H);
      ctx.fillStyle = "#FFFFFF";
      ctx.font = "bold 12px system-ui, sans-serif";
      ctx.textAlign = "center";
      const lines = wrapText(INVALID_OVERLAY, W - 16, (t) => ctx.measureText(t).width);
      const y0 = H / 2 - ((lines.length - 1) * 15) / 2;
      lines.forEach((line, k) => ctx.fillText(line, W / 2, y0 + k * 15));
      this.overlayLines = lines;
      ctx.textAlign = "left";
    } else if (!m.elements.length) {
      ctx.fillStyle = "rgba(255,255,255,0.45)";
      ctx.font = "12px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("drag to draw a box", W / 2, H / 2);
      ctx.textAlign = "left";
    }
    ctx.strokeStyle = "rgba(255,255,255,0.35)";
    ctx.lineWidth = 1;
    ctx.strokeRect(0.5, 0.5, W - 1, H - 1);
  }

  drawGrid(W, H) {
    const ctx = this.ctx;
    ctx.save();
    ctx.lineWidth = 1;
    for (let k = 1; k < 10; k++) {
      ctx.strokeStyle = k === 5 ? "rgba(255,255,255,0.14)" : "rgba(255,255,255,0.06)";
      const x = Math.round((k / 10) * W) + 0.5;
      const y = Math.round((k / 10) * H) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, 0);
      ctx.lineTo(x, H);
      ctx.moveTo(0, y);
      ctx.lineTo(W, y);
      ctx.stroke();
    }
    ctx.restore();
  }

  drawTag(text, x, y, color, W) {
    const ctx = this.ctx;
    ctx.save();
    ctx.font = "11px system-ui, sans-serif";
    const tw = Math.min(ctx.measureText(text).width + 8, Math.max(24, W - x));
    this.fillTag(text, { x, y, w: tw, h: 15 }, color);
    ctx.restore();
  }

  /** A label filled into `r` and clipped to it. */
  fillTag(text, r, color) {
    const ctx = this.ctx;
    ctx.save();
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = color;
    ctx.globalAlpha = 0.88;
    ctx.fillRect(r.x, r.y, r.w, r.h);
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#111";
    ctx.beginPath();
    ctx.rect(r.x, r.y, r.w, r.h);
    ctx.clip();
    ctx.fillText(text, r.x + 4, r.y + Math.min(11, r.h - 2));
    ctx.restore();
  }

  drawBox(el, i, bbox, selected) {
    const { ctx, cssW: W, cssH: H } = this;
    const color = TYPE_COLORS[el.type] ?? OTHER_COLOR;
    const r = bboxToRect(bbox, W, H);
    ctx.save();
    ctx.globalAlpha = selected ? 0.24 : 0.12;
    ctx.fillStyle = color;
    ctx.fillRect(r.x, r.y, r.w, r.h);
    ctx.globalAlpha = 1;
    ctx.strokeStyle = color;
    ctx.lineWidth = selected ? 2.5 : 1.5;
    ctx.strokeRect(r.x, r.y, r.w, r.h);
    ctx.restore();
    // palette swatches along the bottom-left edge
    const palette = Array.isArray(el.color_palette) ? el.color_palette : [];
    palette.slice(0, MAX_ELEMENT_COLORS).forEach((c, k) => {
      const sx = r.x + 3 + k * 12;
      const sy = r.y + r.h - 13;
      if (sx + 10 > r.x + r.w || sy < r.y) return;
      ctx.fillStyle = typeof c === "string" ? c : "#000";
      ctx.fillRect(sx, sy, 10, 10);
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 1;
      ctx.strokeRect(sx + 0.5, sy + 0.5, 9, 9);
    });
    const label = formatBoxLabel(el, i, 40);
    ctx.save();
    ctx.font = "11px system-ui, sans-serif";
    const lr = labelRect(r, ctx.measureText(label).width);
    ctx.restore();
    this.labelRects[i] = lr;
    if (lr) this.fillTag(label, lr, color); // inside the box, clipped to it
    if (selected) {
      for (const p of Object.values(handlePositions(bbox, W, H))) {
        ctx.fillStyle = "#FFFFFF";
        ctx.strokeStyle = color;
        ctx.lineWidth = 1.5;
        ctx.fillRect(p.x - 4, p.y - 4, 8, 8);
        ctx.strokeRect(p.x - 4, p.y - 4, 8, 8);
      }
    }
  }

  // -- panel and status ------------------------------------------------------

  renderStatus() {
    const lines = [];
    if (this.fatal) {
      for (const e of this.fatal) lines.push(["err", e]);
    } else {
      const errors = this.model.validate();
      const strict = this.model.validate({ requireDesc: true }).filter((e) => !errors.includes(e));
      for (const e of errors) lines.push(["err", e]);
      for (const e of strict) lines.push(["hint", e]);
      for (const e of this.loadNotes) lines.push(["hint", e]);
      for (const e of this.fixNotes) lines.push(["fix", `fixed on import: ${e}`]);
      const missing = this.model.elements
        .map((el, i) => (el.bbox === undefined ? i + 1 : 0))
        .filter(Boolean);
      if (missing.length) lines.push(["hint", `no bbox (not drawn): element ${missing.join(", ")}`]);
      const linked = this.node.inputs?.find((inp) => inp.name === LAYOUT_WIDGET)?.link != null;
      if (linked) lines.push(["hint", "the layout input is linked: the linked value is used, not this editor"]);
      if (!lines.length) {
        const n = this.model.elements.length;
        lines.push(["ok", `${n} element${n === 1 ? "" : "s"} · stored in the "layout" widget`]);
      }
    }
    this.status.replaceChildren(...lines.map(([cls, text]) => h("div", { className: cls }, text)));
    const sel = this.model.selected >= 0;
    this.btnDelete.disabled = !sel || !!this.fatal;
    this.btnUp.disabled = !sel || this.model.selected === 0 || !!this.fatal;
    this.btnDown.disabled = !sel || this.model.selected === this.model.elements.length - 1 || !!this.fatal;
    this.btnClearImage.disabled = !this.bgImage;
    this.btnClear.disabled = !this.model.elements.length || !!this.fatal;
  }

  /** Rebuild the element panel (on selection/type/palette changes, not on typing). */
  renderPanel() {
    this.renderStatus();
    const m = this.model;
    if (this.fatal) {
      this.panel.replaceChildren();
      return;
    }
    const options = [h("option", { value: "-1" }, m.elements.length ? "— select an element —" : "— no elements —")];
    m.elements.forEach((el, i) => options.push(h("option", { value: String(i) }, formatBoxLabel(el, i, 48))));
    this.elementSelect = h(
      "select",
      {
        className: "ideo4-elsel",
        title: "Elements in caption order (also those without a bbox)",
        onchange: () => {
          m.select(Number(this.elementSelect.value));
          this.renderPanel();
          this.requestDraw();
        },
      },
      options,
    );
    this.elementSelect.value = String(m.selected);
    const rows = [h("div", { className: "ideo4-row" }, h("label", {}, "Element"), this.elementSelect)];
    const el = m.selectedElement;
    if (!el) {
      rows.push(
        h(
          "div",
          { className: "ideo4-muted" },
          "Drag on the canvas to draw a box · click to select · drag handles to resize · Delete removes · arrows nudge",
        ),
      );
      this.panel.replaceChildren(...rows);
      return;
    }
    const i = m.selected;
    const typeSel = h(
      "select",
      {
        onchange: () => {
          if (m.setType(i, typeSel.value)) this.commit();
          this.renderPanel();
          this.requestDraw();
        },
      },
      h("option", { value: "obj" }, "obj"),
      h("option", { value: "text" }, "text"),
    );
    typeSel.value = el.type === "text" ? "text" : "obj";
    const typeRow = h("div", { className: "ideo4-row" }, h("label", {}, "Type"), typeSel);
    if (el.bbox === undefined) {
      typeRow.append(
        h(
          "button",
          {
            type: "button",
            title: "Give this element a box in the middle of the canvas",
            onclick: () => {
              if (m.placeDefault(i)) this.commit();
              this.renderPanel();
              this.requestDraw();
            },
          },
          "Place box",
        ),
      );
    } else {
      typeRow.append(
        h("span", { className: "ideo4-muted", title: "[y_min, x_min, y_max, x_max], 0–1000 per axis" },
          `bbox ${JSON.stringify(el.bbox)}`),
      );
    }
    rows.push(typeRow);
    const onTextInput = (setter, input) => () => {
      if (setter(input.value)) {
        this.commit();
        this.refreshSelectedLabel();
        this.requestDraw();
      }
    };
    if (el.type === "text") {
      const textIn = h("textarea", {
        rows: 1,
        placeholder: "Text to render, exactly as it should appear",
        spellcheck: false,
      });
      textIn.value = el.text ?? "";
      textIn.addEventListener("input", onTextInput((v) => m.setText(i, v), textIn));
      rows.push(h("div", { className: "ideo4-row" }, h("label", {}, "Text"), textIn));
    }
    const descIn = h("textarea", {
      rows: 2,
      placeholder:
        el.type === "text"
          ? "How the text looks (font, colour, placement)"
          : "What is in this box (subject, appearance, details)",
    });
    descIn.value = el.desc ?? "";
    descIn.addEventListener("input", onTextInput((v) => m.setDesc(i, v), descIn));
    rows.push(h("div", { className: "ideo4-row" }, h("label", {}, "Desc"), descIn));

    const palette = Array.isArray(el.color_palette) ? el.color_palette : [];
    const picker = h("input", { type: "color", value: "#FF0000", title: "Pick a colour" });
    this.paletteMsg = h("span", { className: "ideo4-muted" }, `${palette.length}/${MAX_ELEMENT_COLORS}`);
    const addBtn = h(
      "button",
      {
        type: "button",
        disabled: palette.length >= MAX_ELEMENT_COLORS,
        onclick: () => {
          const err = m.addColor(i, picker.value);
          if (err) {
            this.paletteMsg.textContent = err;
            return;
          }
          this.commit();
          this.renderPanel();
          this.requestDraw();
        },
      },
      "+ Add",
    );
    const chips = palette.map((c, k) =>
      h(
        "span",
        { className: "ideo4-chip" },
        h("i", { style: { background: typeof c === "string" ? c : "transparent" } }),
        String(c),
        h(
          "button",
          {
            type: "button",
            title: `Remove ${c}`,
            onclick: () => {
              if (m.removeColor(i, k)) this.commit();
              this.renderPanel();
              this.requestDraw();
            },
          },
          "×",
        ),
      ),
    );
    rows.push(h("div", { className: "ideo4-row" }, h("label", {}, "Palette"), picker, addBtn, ...chips, this.paletteMsg));
    this.panel.replaceChildren(...rows);
  }

  refreshSelectedLabel() {
    const m = this.model;
    const opt = this.elementSelect?.options[m.selected + 1];
    if (opt && m.selectedElement) opt.textContent = formatBoxLabel(m.selectedElement, m.selected, 48);
  }

  // -- actions -----------------------------------------------------------------

  deleteSelected() {
    if (this.fatal) return;
    if (this.model.deleteSelected()) this.commit();
    this.renderPanel();
    this.requestDraw();
  }

  reorder(delta) {
    if (this.fatal) return;
    if (this.model.reorder(this.model.selected, delta)) this.commit();
    this.renderPanel();
    this.requestDraw();
  }

  clearAll() {
    if (this.fatal || !this.model.elements.length) return;
    if (!window.confirm(`Remove all ${this.model.elements.length} elements from the layout?`)) return;
    this.model.clear();
    this.commit();
    this.renderPanel();
    this.requestDraw();
  }

  toggleImport(open = !this.importOpen) {
    this.importOpen = open;
    this.importBox.style.display = open ? "" : "none";
    this.btnImport.classList.toggle("ideo4-on", open);
    if (open) {
      this.importMsg.textContent = "";
      this.importText.focus();
    }
    this.fitNode(); // grow the node for the import box instead of shrinking the canvas
  }

  /** Import pasted JSON: elements into the layout, caption fields into their widgets. */
  applyImport() {
    const parsed = this.model.load(this.importText.value);
    if (!parsed.ok) {
      this.importMsg.textContent = parsed.errors.join("; ");
      return;
    }
    this.model.select(-1);
    this.fatal = null;
    const { fixed, remaining } = importFixes(parsed);
    this.loadNotes = [...remaining.map((e) => `import: ${e}`), ...parsed.warnings];
    this.fixNotes = fixed;
    const filled = [];
    const fields = importFields(parsed);
    for (const name of BUILDER_FIELDS) {
      if (!(name in fields)) continue;
      const w = getWidget(this.node, name);
      if (!w) continue;
      const value = fields[name];
      const values = w.options?.values;
      if (Array.isArray(values) && !values.includes(value)) continue;
      w.value = value;
      if (!("element" in w)) w.callback?.(w.value, app.canvas, this.node);
      filled.push(name);
    }
    this.commit();
    this.renderPanel();
    this.requestDraw();
    const n = parsed.elements.length;
    this.importMsg.textContent =
      `imported ${n} element${n === 1 ? "" : "s"}` +
      (filled.length ? `; set ${filled.join(", ")}` : "") +
      (fixed.length ? `; fixed ${fixed.length} on the way in` : "") +
      (remaining.length ? ` — ${remaining.length} problem(s), see status` : "");
  }

  /** Copy canonical JSON: "caption" (full caption from all fields) or "layout" (element list). */
  async exportJson(kind) {
    let text;
    let note = "";
    if (kind === "layout") {
      text = this.model.serialize();
    } else {
      const fields = {};
      for (const name of BUILDER_FIELDS) {
        const w = getWidget(this.node, name);
        if (w) fields[name] = w.value;
      }
      text = serializeCaption(buildCaption(fields, this.model.elements));
      if (fields.style_mode === "none" && parsePaletteString(fields.color_palette ?? "").colors.length) {
        note = " — note: the global color_palette needs style_mode photo/art_style (left out here; the node rejects it)";
      }
    }
    this.toggleImport(true);
    this.importText.value = text;
    this.importText.select();
    let copied = false;
    try {
      await navigator.clipboard.writeText(text);
      copied = true;
    } catch {
      try {
        copied = document.execCommand("copy");
      } catch {
        copied = false;
      }
    }
    this.importMsg.textContent = `${kind === "layout" ? "layout" : "caption"} JSON ${
      copied ? "copied to the clipboard" : "shown above (copy it with Ctrl+C)"
    }${note}`;
  }

  loadBackground(file) {
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => {
      const img = new Image();
      img.onload = () => this.setBackground(img, file.name);
      img.onerror = () => this.setBackground(null, "");
      img.src = String(reader.result);
    };
    reader.readAsDataURL(file);
    this.fileInput.value = "";
  }

  setBackground(img, name) {
    this.bgImage = img;
    this.bgName = name;
    this.btnImage.title = img
      ? `Reference image: ${name} (kept in this tab only, not saved)`
      : "Show a local reference image behind the boxes (kept in this tab only, not saved)";
    this.renderStatus();
    this.requestDraw();
  }

  destroy() {
    this.resizeObserver?.disconnect();
  }
}

export const extension = {
  name: EXTENSION_NAME,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      if (!this.ideogram4LayoutEditor) this.ideogram4LayoutEditor = new CaptionLayoutEditor(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      // widgets_values were just restored: reload the layout and canvas size
      this.ideogram4LayoutEditor?.syncFromWidgets(true);
    });
    chain(nodeType.prototype, "onRemoved", function () {
      this.ideogram4LayoutEditor?.destroy();
    });
  },
};

app.registerExtension(extension);
