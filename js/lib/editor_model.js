// State and interaction logic of the Ideogram 4 layout editor, without any DOM.
// The ComfyUI extension (../ideogram4_caption_editor.js) owns the DOM: it feeds
// pointer positions in canvas CSS pixels into this model, draws what the model
// holds, and writes `model.serialize()` into the node's `layout` widget whenever
// a call reports `committed: true`.

import {
  BBOX_MAX,
  HANDLE_CURSORS,
  bboxFromPoints,
  clamp,
  enforceMinSize,
  hitTest,
  isValidBbox,
  minSizeForPixels,
  moveBbox,
  pointToNorm,
  resizeBbox,
} from "./geometry.js";
import {
  ELEMENT_TYPES,
  MAX_ELEMENT_COLORS,
  canonicalElement,
  normalizeHexColor,
  parseLayout,
  serializeElements,
  validateElements,
} from "./caption_layout.js";

/** Canvas size limits of the Caption Builder's width/height widgets. */
export const MIN_CANVAS = 256;
export const MAX_CANVAS = 2048;
export const DEFAULT_CANVAS = 1024;

/** Interaction tuning, in canvas CSS pixels. */
export const HANDLE_TOLERANCE_PX = 7;
export const CLICK_THRESHOLD_PX = 4;
export const MIN_BOX_PX = 8;

/** Width/height widget value → integer in [256, 2048] (fallback for junk). */
export function sanitizeCanvasSize(value, fallback = DEFAULT_CANVAS) {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) return fallback;
  return clamp(Math.round(n), MIN_CANVAS, MAX_CANVAS);
}

function snippet(s, maxLen) {
  const flat = String(s ?? "").replace(/\s+/g, " ").trim();
  return flat.length > maxLen ? flat.slice(0, Math.max(1, maxLen - 1)) + "…" : flat;
}

/**
 * Label drawn on a box: 1-based index, type, then the text (quoted) for text
 * elements or a snippet of desc for obj elements, e.g. `#2 text "SALE"`.
 */
export function formatBoxLabel(el, index, maxLen = 32) {
  const head = `#${index + 1} ${el.type ?? "?"}`;
  let tail = "";
  if (el.type === "text" && el.text) tail = `"${snippet(el.text, maxLen)}"`;
  else if (el.desc) tail = snippet(el.desc, maxLen);
  return tail ? `${head} ${tail}` : head;
}

/** Default bbox for an element that has none: a centred box of 40% × 20%. */
export const DEFAULT_BBOX = Object.freeze([400, 300, 600, 700]);

export class LayoutEditorModel {
  constructor(elements = []) {
    /** Canonical element objects; index order = caption order = draw order. */
    this.elements = elements.map(canonicalElement);
    this.selected = -1;
    /** Active pointer drag or null. */
    this.drag = null;
    /** Text remembered when a text element is switched to obj (restored on switch back). */
    this._textStash = new WeakMap();
  }

  // -- loading / saving ------------------------------------------------------

  /**
   * Replace the elements from widget text. Returns the parseLayout result; when
   * it is not ok the model is left untouched.
   */
  load(text) {
    const parsed = parseLayout(text);
    if (parsed.ok) {
      this.elements = parsed.elements;
      this.drag = null;
      if (this.selected >= this.elements.length) this.selected = this.elements.length - 1;
    }
    return parsed;
  }

  serialize() {
    return serializeElements(this.elements);
  }

  validate(opts) {
    return validateElements(this.elements, opts);
  }

  /** bbox per element, null where missing or invalid (not drawn, not hit). */
  bboxes() {
    return this.elements.map((el) => (isValidBbox(el.bbox) ? el.bbox : null));
  }

  /** The bbox to draw for element i (live during a drag). */
  displayBbox(i) {
    const b = this.elements[i]?.bbox;
    return isValidBbox(b) ? b : null;
  }

  // -- selection and edits ---------------------------------------------------

  select(index) {
    const i = Number.isInteger(index) && index >= 0 && index < this.elements.length ? index : -1;
    const changed = i !== this.selected;
    this.selected = i;
    return changed;
  }

  get selectedElement() {
    return this.selected >= 0 ? this.elements[this.selected] : null;
  }

  addElement(el, { select = true } = {}) {
    this.elements.push(canonicalElement({ type: "obj", desc: "", ...el }));
    if (select) this.selected = this.elements.length - 1;
    return this.elements.length - 1;
  }

  deleteAt(index) {
    if (!(index >= 0 && index < this.elements.length)) return false;
    this.elements.splice(index, 1);
    if (this.selected === index) this.selected = -1;
    else if (this.selected > index) this.selected -= 1;
    return true;
  }

  deleteSelected() {
    return this.deleteAt(this.selected);
  }

  clear() {
    const changed = this.elements.length > 0;
    this.elements = [];
    this.selected = -1;
    this.drag = null;
    return changed;
  }

  _replace(index, el) {
    const stashed = this._textStash.get(this.elements[index]);
    this.elements[index] = canonicalElement(el);
    if (stashed !== undefined) this._textStash.set(this.elements[index], stashed);
  }

  setType(index, type) {
    const el = this.elements[index];
    if (!el || !ELEMENT_TYPES.includes(type) || el.type === type) return false;
    const next = { ...el, type };
    const stashed = typeof el.text === "string" ? el.text : this._textStash.get(el);
    if (type === "obj") delete next.text;
    else if (type === "text") next.text = stashed ?? "";
    this._replace(index, next);
    // remember the text on the new object so switching back restores it
    if (type === "obj" && stashed !== undefined) this._textStash.set(this.elements[index], stashed);
    return true;
  }

  setText(index, text) {
    const el = this.elements[index];
    if (!el || el.type !== "text" || el.text === text) return false;
    this._replace(index, { ...el, text: String(text) });
    return true;
  }

  setDesc(index, desc) {
    const el = this.elements[index];
    if (!el || el.desc === desc) return false;
    this._replace(index, { ...el, desc: String(desc) });
    return true;
  }

  setBbox(index, bbox) {
    const el = this.elements[index];
    if (!el) return false;
    if (bbox == null) {
      if (el.bbox === undefined) return false;
      const next = { ...el };
      delete next.bbox;
      this._replace(index, next);
      return true;
    }
    if (isValidBbox(el.bbox) && el.bbox.every((v, k) => v === bbox[k])) return false;
    this._replace(index, { ...el, bbox: [...bbox] });
    return true;
  }

  /** Give an element without a (valid) bbox the default centred box. */
  placeDefault(index) {
    return this.setBbox(index, [...DEFAULT_BBOX]);
  }

  /**
   * Add a colour to element `index`'s palette. Returns null on success or an
   * error message (invalid colour, duplicate, palette full).
   */
  addColor(index, color) {
    const el = this.elements[index];
    if (!el) return "no element selected";
    const c = normalizeHexColor(color);
    if (!c) return `${JSON.stringify(color)} is not a #RRGGBB colour`;
    const palette = Array.isArray(el.color_palette) ? el.color_palette : [];
    if (palette.includes(c)) return `${c} is already in the palette`;
    if (palette.length >= MAX_ELEMENT_COLORS) return `at most ${MAX_ELEMENT_COLORS} colours per element`;
    this._replace(index, { ...el, color_palette: [...palette, c] });
    return null;
  }

  removeColor(index, colorIndex) {
    const el = this.elements[index];
    if (!el || !Array.isArray(el.color_palette)) return false;
    if (!(colorIndex >= 0 && colorIndex < el.color_palette.length)) return false;
    const palette = el.color_palette.filter((_, k) => k !== colorIndex);
    this._replace(index, { ...el, color_palette: palette });
    return true;
  }

  /** Move element `index` by `delta` places in the list (caption order / z-order). */
  reorder(index, delta) {
    const to = index + delta;
    if (!(index >= 0 && index < this.elements.length) || to < 0 || to >= this.elements.length) return false;
    const [el] = this.elements.splice(index, 1);
    this.elements.splice(to, 0, el);
    if (this.selected === index) this.selected = to;
    else if (this.selected === to) this.selected = index;
    return true;
  }

  /** Move the selected box by (dy, dx) normalised units, clamped to the canvas. */
  nudge(dy, dx) {
    const i = this.selected;
    const b = this.displayBbox(i);
    if (!b) return false;
    return this.setBbox(i, moveBbox(b, dy, dx));
  }

  // -- pointer interaction (canvas CSS pixels) -------------------------------

  hit(pt, width, height) {
    return hitTest(this.bboxes(), pt, width, height, {
      selected: this.selected,
      tolerance: HANDLE_TOLERANCE_PX,
    });
  }

  /** CSS cursor for a hover position. */
  cursorAt(pt, width, height) {
    if (this.drag) {
      if (this.drag.mode === "create") return "crosshair";
      return HANDLE_CURSORS[this.drag.handle] ?? "move";
    }
    const h = this.hit(pt, width, height);
    return h ? HANDLE_CURSORS[h.handle] : "crosshair";
  }

  /**
   * Start a drag: on a handle → resize, on a box → select + move, on empty
   * space → draw a new box. Returns {changed} (selection changed → redraw).
   */
  pointerDown(pt, width, height) {
    const h = this.hit(pt, width, height);
    if (!h) {
      const changed = this.select(-1);
      this.drag = { mode: "create", start: { ...pt }, current: { ...pt }, width, height };
      return { changed };
    }
    const changed = this.select(h.index);
    const startBbox = [...this.elements[h.index].bbox];
    this.drag = {
      mode: h.handle === "body" ? "move" : "resize",
      handle: h.handle,
      index: h.index,
      start: { ...pt },
      startBbox,
      moved: false,
      width,
      height,
    };
    return { changed };
  }

  /** Bbox of the box being drawn (create mode), or null. */
  get previewBbox() {
    const d = this.drag;
    if (!d || d.mode !== "create") return null;
    if (!this._isRealDrag(d)) return null;
    return bboxFromPoints(d.start, d.current, d.width, d.height);
  }

  _isRealDrag(d) {
    return (
      Math.abs(d.current.x - d.start.x) >= CLICK_THRESHOLD_PX ||
      Math.abs(d.current.y - d.start.y) >= CLICK_THRESHOLD_PX
    );
  }

  /** Update the drag. Returns {changed} (true → redraw). */
  pointerMove(pt, width, height) {
    const d = this.drag;
    if (!d) return { changed: false };
    if (d.mode === "create") {
      d.current = { ...pt };
      return { changed: true };
    }
    const el = this.elements[d.index];
    if (!el) {
      this.drag = null;
      return { changed: true };
    }
    let next;
    if (d.mode === "move") {
      const dy = ((pt.y - d.start.y) / height) * BBOX_MAX;
      const dx = ((pt.x - d.start.x) / width) * BBOX_MAX;
      next = moveBbox(d.startBbox, dy, dx);
    } else {
      next = resizeBbox(d.startBbox, d.handle, pointToNorm(pt, width, height), minSizeForPixels(MIN_BOX_PX, width, height));
    }
    const changed = this.setBbox(d.index, next);
    if (changed) d.moved = true;
    return { changed };
  }

  /**
   * Finish the drag. Returns {committed} — true when the elements changed and
   * the caller should write serialize() into the widget.
   */
  pointerUp(pt, width, height) {
    const d = this.drag;
    if (!d) return { committed: false };
    if (pt) this.pointerMove(pt, width, height);
    this.drag = null;
    if (d.mode === "create") {
      if (!this._isRealDrag(d)) return { committed: false };
      const bbox = enforceMinSize(
        bboxFromPoints(d.start, d.current, width, height),
        minSizeForPixels(MIN_BOX_PX, width, height),
      );
      this.addElement({ type: "obj", bbox, desc: "" });
      return { committed: true };
    }
    const el = this.elements[d.index];
    const committed = !!el && !d.startBbox.every((v, k) => v === el.bbox[k]);
    return { committed };
  }

  /** Abort the drag (Escape, pointercancel), restoring the original bbox. */
  cancelDrag() {
    const d = this.drag;
    this.drag = null;
    if (d && d.mode !== "create" && this.elements[d.index]) this.setBbox(d.index, d.startBbox);
    return !!d;
  }

  // -- keyboard -------------------------------------------------------------

  /**
   * Handle a key pressed while the canvas has focus. `key` is
   * KeyboardEvent.key. Returns {handled, committed, changed}.
   */
  keyDown(key, { shift = false } = {}) {
    const step = shift ? 10 : 1;
    switch (key) {
      case "Delete":
      case "Backspace": {
        if (this.drag) return { handled: true, committed: false, changed: false };
        const committed = this.deleteSelected();
        return { handled: committed, committed, changed: committed };
      }
      case "Escape": {
        if (this.drag) {
          this.cancelDrag();
          return { handled: true, committed: false, changed: true };
        }
        const changed = this.select(-1);
        return { handled: changed, committed: false, changed };
      }
      case "ArrowUp":
      case "ArrowDown":
      case "ArrowLeft":
      case "ArrowRight": {
        if (this.selected < 0 || this.drag) return { handled: false, committed: false, changed: false };
        const dy = key === "ArrowUp" ? -step : key === "ArrowDown" ? step : 0;
        const dx = key === "ArrowLeft" ? -step : key === "ArrowRight" ? step : 0;
        const committed = this.nudge(dy, dx);
        return { handled: true, committed, changed: committed };
      }
      case "Tab": {
        if (!this.elements.length) return { handled: false, committed: false, changed: false };
        const n = this.elements.length;
        let next;
        if (this.selected < 0) next = shift ? n - 1 : 0;
        else next = shift ? (this.selected - 1 + n) % n : (this.selected + 1) % n;
        this.select(next);
        return { handled: true, committed: false, changed: true };
      }
      default:
        return { handled: false, committed: false, changed: false };
    }
  }
}

/**
 * Where a box's label goes: inside the box (x, y, w, h in canvas px), at most
 * `tagH` high and as wide as the text needs (`textW` + padding), clipped to the
 * box; null when the box is too small to hold any label.
 */
export function labelRect(rect, textW, { tagH = 15, pad = 8, inset = 1, minW = 10, minH = 7 } = {}) {
  const w = Math.min(textW + pad, rect.w - 2 * inset);
  const h = Math.min(tagH, rect.h - 2 * inset);
  if (!(w >= minW && h >= minH)) return null;
  return { x: rect.x + inset, y: rect.y + inset, w, h };
}

/**
 * Greedy word wrap of `text` into lines no wider than `maxW` (per `measure`,
 * e.g. ctx.measureText(s).width); a single word wider than maxW is broken by
 * characters, so no line is ever wider than maxW.
 */
export function wrapText(text, maxW, measure) {
  const lines = [];
  let line = "";
  const pushWord = (word) => {
    if (measure(word) <= maxW) return word;
    let part = "";
    for (const ch of word) {
      if (part && measure(part + ch) > maxW) {
        lines.push(part);
        part = ch;
      } else part += ch;
    }
    return part;
  };
  for (const word of String(text).split(/\s+/).filter(Boolean)) {
    const candidate = line ? `${line} ${word}` : word;
    if (measure(candidate) <= maxW) line = candidate;
    else {
      if (line) lines.push(line);
      line = pushWord(word);
    }
  }
  if (line) lines.push(line);
  return lines;
}
