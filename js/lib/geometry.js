// Pure geometry for the Ideogram 4 layout editor. No DOM, no ComfyUI imports:
// everything here runs unchanged under Node's test runner.
//
// Conventions (spec §6.3 item 7):
//   * A bbox is [y_min, x_min, y_max, x_max], integers in [0, 1000], origin at
//     the top-left corner of the image.
//   * Each axis is normalised separately: x by the canvas width, y by the
//     canvas height. A square bbox is only square on a square canvas.
//   * "Canvas pixels" are the CSS pixels of the drawing surface the editor
//     shows (not the generated image size); any size works because only the
//     ratio between a coordinate and its axis length matters.
//   * A pixel rectangle is {x, y, w, h} (top-left origin, w/h >= 0).

export const BBOX_MAX = 1000;

/** Handle names: corners first (they win over edges where both overlap). */
export const CORNER_HANDLES = Object.freeze(["nw", "ne", "se", "sw"]);
export const EDGE_HANDLES = Object.freeze(["n", "e", "s", "w"]);
export const ALL_HANDLES = Object.freeze([...CORNER_HANDLES, ...EDGE_HANDLES]);

/** CSS cursor for each handle, plus "move" for the body. */
export const HANDLE_CURSORS = Object.freeze({
  nw: "nwse-resize",
  se: "nwse-resize",
  ne: "nesw-resize",
  sw: "nesw-resize",
  n: "ns-resize",
  s: "ns-resize",
  e: "ew-resize",
  w: "ew-resize",
  body: "move",
});

export function clamp(value, lo, hi) {
  if (Number.isNaN(value)) return lo;
  return value < lo ? lo : value > hi ? hi : value;
}

/** Round to the nearest integer and clamp into [0, 1000]. */
export function roundNorm(value) {
  return clamp(Math.round(value), 0, BBOX_MAX);
}

function checkSize(size, name) {
  if (!(typeof size === "number" && Number.isFinite(size) && size > 0)) {
    throw new RangeError(`${name} must be a positive finite number, got ${size}`);
  }
}

/** Pixel coordinate on an axis of length `size` → normalised float in [0, 1000] (not rounded). */
export function pxToNorm(px, size) {
  checkSize(size, "axis size");
  return clamp((px / size) * BBOX_MAX, 0, BBOX_MAX);
}

/** Normalised coordinate → pixel coordinate on an axis of length `size` (not rounded). */
export function normToPx(norm, size) {
  checkSize(size, "axis size");
  return (norm / BBOX_MAX) * size;
}

/** Canvas point {x, y} in pixels → {x, y} normalised floats, clamped to the canvas. */
export function pointToNorm(pt, width, height) {
  return { x: pxToNorm(pt.x, width), y: pxToNorm(pt.y, height) };
}

/** bbox [y0, x0, y1, x1] → pixel rect {x, y, w, h} on a width×height canvas. */
export function bboxToRect(bbox, width, height) {
  const [y0, x0, y1, x1] = bbox;
  const x = normToPx(x0, width);
  const y = normToPx(y0, height);
  return { x, y, w: normToPx(x1, width) - x, h: normToPx(y1, height) - y };
}

/**
 * Pixel rect {x, y, w, h} (w/h may be negative, e.g. a drag to the upper left)
 * → integer bbox, normalised (min <= max) and clamped to the canvas.
 */
export function rectToBbox(rect, width, height) {
  return normalizeBbox([
    pxToNorm(rect.y, height),
    pxToNorm(rect.x, width),
    pxToNorm(rect.y + rect.h, height),
    pxToNorm(rect.x + rect.w, width),
  ]);
}

/** Two pixel points (drag start, drag end) → integer bbox. */
export function bboxFromPoints(a, b, width, height) {
  return rectToBbox({ x: a.x, y: a.y, w: b.x - a.x, h: b.y - a.y }, width, height);
}

/** Any rect given by two corners → {x0, y0, x1, y1} with x0 <= x1 and y0 <= y1. */
export function normalizeRect({ x0, y0, x1, y1 }) {
  return {
    x0: Math.min(x0, x1),
    y0: Math.min(y0, y1),
    x1: Math.max(x0, x1),
    y1: Math.max(y0, y1),
  };
}

/**
 * Any 4 numbers [y0, x0, y1, x1] → a valid bbox: rounded to ints, clamped to
 * [0, 1000], and swapped per axis so that min <= max.
 */
export function normalizeBbox(bbox) {
  if (!Array.isArray(bbox) || bbox.length !== 4) {
    throw new TypeError("bbox must be an array of 4 numbers [y_min, x_min, y_max, x_max]");
  }
  const [a, b, c, d] = bbox.map((v) => roundNorm(Number(v)));
  return [Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d)];
}

/** True for a list of exactly 4 integers in [0, 1000] with min <= max on both axes. */
export function isValidBbox(bbox) {
  return (
    Array.isArray(bbox) &&
    bbox.length === 4 &&
    bbox.every((v) => Number.isInteger(v) && v >= 0 && v <= BBOX_MAX) &&
    bbox[0] <= bbox[2] &&
    bbox[1] <= bbox[3]
  );
}

/** Pixel positions of the handles of a bbox: {nw: {x, y}, n: …}. */
export function handlePositions(bbox, width, height) {
  const r = bboxToRect(bbox, width, height);
  const xm = r.x + r.w / 2;
  const ym = r.y + r.h / 2;
  const xr = r.x + r.w;
  const yb = r.y + r.h;
  return {
    nw: { x: r.x, y: r.y },
    ne: { x: xr, y: r.y },
    se: { x: xr, y: yb },
    sw: { x: r.x, y: yb },
    n: { x: xm, y: r.y },
    e: { x: xr, y: ym },
    s: { x: xm, y: yb },
    w: { x: r.x, y: ym },
  };
}

/**
 * Which handle of `bbox` is under pixel point `pt`? `tolerance` is the half
 * size of the square grab zone in pixels. Corners win over edges; with
 * `corners_only` the edge handles are ignored. Returns a handle name or null.
 */
export function hitTestHandle(bbox, pt, width, height, { tolerance = 6, cornersOnly = false } = {}) {
  const pos = handlePositions(bbox, width, height);
  const names = cornersOnly ? CORNER_HANDLES : ALL_HANDLES;
  for (const name of names) {
    const p = pos[name];
    if (Math.abs(pt.x - p.x) <= tolerance && Math.abs(pt.y - p.y) <= tolerance) return name;
  }
  return null;
}

/** Is pixel point `pt` inside the bbox (edges inclusive)? */
export function pointInBbox(bbox, pt, width, height) {
  const r = bboxToRect(bbox, width, height);
  return pt.x >= r.x && pt.x <= r.x + r.w && pt.y >= r.y && pt.y <= r.y + r.h;
}

/**
 * Hit test a list of bboxes (entries may be null/undefined for elements without
 * a bbox; they are skipped). Later entries are drawn on top, so the search goes
 * from the last entry to the first. The selected entry's handles are tested
 * before anything else so a selected box underneath another one can still be
 * resized. With handles: "selected" only the selected box exposes handles.
 *
 * Returns {index, handle} where handle is a handle name or "body", or null.
 */
export function hitTest(
  bboxes,
  pt,
  width,
  height,
  { selected = -1, tolerance = 6, handles = "all", cornersOnly = false } = {},
) {
  const opts = { tolerance, cornersOnly };
  if (selected >= 0 && selected < bboxes.length && bboxes[selected]) {
    const h = hitTestHandle(bboxes[selected], pt, width, height, opts);
    if (h) return { index: selected, handle: h };
  }
  for (let i = bboxes.length - 1; i >= 0; i--) {
    const b = bboxes[i];
    if (!b) continue;
    if (handles === "all") {
      const h = hitTestHandle(b, pt, width, height, opts);
      if (h) return { index: i, handle: h };
    }
    if (pointInBbox(b, pt, width, height)) return { index: i, handle: "body" };
  }
  return null;
}

/**
 * Move a bbox by (dy, dx) normalised units, keeping its size and keeping it
 * inside [0, 1000] on both axes. Returns a new integer bbox.
 */
export function moveBbox(bbox, dy, dx) {
  const [y0, x0, y1, x1] = normalizeBbox(bbox);
  const ddy = Math.round(clamp(dy, -y0, BBOX_MAX - y1));
  const ddx = Math.round(clamp(dx, -x0, BBOX_MAX - x1));
  return [y0 + ddy, x0 + ddx, y1 + ddy, x1 + ddx];
}

/**
 * Resize a bbox by dragging `handle` to normalised point {x, y}. The edges the
 * handle controls follow the point; the opposite edges stay put. The result is
 * clamped to [0, 1000] and keeps at least `minH` × `minW` normalised units
 * (where the canvas allows), so a drag past the opposite edge stops there
 * instead of flipping. Returns a new integer bbox.
 */
export function resizeBbox(bbox, handle, point, { minH = 1, minW = 1 } = {}) {
  if (!ALL_HANDLES.includes(handle)) throw new RangeError(`unknown handle ${handle}`);
  let [y0, x0, y1, x1] = normalizeBbox(bbox);
  const py = roundNorm(point.y);
  const px = roundNorm(point.x);
  const mh = Math.min(Math.max(0, Math.round(minH)), BBOX_MAX);
  const mw = Math.min(Math.max(0, Math.round(minW)), BBOX_MAX);
  if (handle.includes("n")) y0 = clamp(py, 0, Math.max(0, y1 - mh));
  if (handle.includes("s")) y1 = clamp(py, Math.min(BBOX_MAX, y0 + mh), BBOX_MAX);
  if (handle.includes("w")) x0 = clamp(px, 0, Math.max(0, x1 - mw));
  if (handle.includes("e")) x1 = clamp(px, Math.min(BBOX_MAX, x0 + mw), BBOX_MAX);
  return [y0, x0, y1, x1];
}

/**
 * Enforce a minimum size on a bbox (e.g. a freshly drawn one) by growing it
 * from its top-left corner, shifting it back inside the canvas if needed.
 */
export function enforceMinSize(bbox, { minH = 1, minW = 1 } = {}) {
  let [y0, x0, y1, x1] = normalizeBbox(bbox);
  const mh = Math.min(Math.max(0, Math.round(minH)), BBOX_MAX);
  const mw = Math.min(Math.max(0, Math.round(minW)), BBOX_MAX);
  if (y1 - y0 < mh) {
    y1 = y0 + mh;
    if (y1 > BBOX_MAX) [y0, y1] = [BBOX_MAX - mh, BBOX_MAX];
  }
  if (x1 - x0 < mw) {
    x1 = x0 + mw;
    if (x1 > BBOX_MAX) [x0, x1] = [BBOX_MAX - mw, BBOX_MAX];
  }
  return [y0, x0, y1, x1];
}

/** Minimum normalised size per axis that corresponds to `px` canvas pixels. */
export function minSizeForPixels(px, width, height) {
  return {
    minW: Math.max(1, Math.ceil(pxToNorm(px, width))),
    minH: Math.max(1, Math.ceil(pxToNorm(px, height))),
  };
}

/**
 * Largest {width, height} (integer CSS pixels) with aspect ratio
 * aspectW:aspectH that fits inside availW × availH.
 */
export function fitAspect(availW, availH, aspectW, aspectH) {
  if (!(availW > 0 && availH > 0 && aspectW > 0 && aspectH > 0)) return { width: 0, height: 0 };
  const scale = Math.min(availW / aspectW, availH / aspectH);
  return {
    width: Math.max(1, Math.floor(aspectW * scale)),
    height: Math.max(1, Math.floor(aspectH * scale)),
  };
}

/** Aspect ratio "W:H" reduced by the gcd (spec §6.5), e.g. 768×1376 → "24:43". */
export function aspectRatioString(width, height) {
  const gcd = (a, b) => (b === 0 ? a : gcd(b, a % b));
  const w = Math.round(width);
  const h = Math.round(height);
  const g = gcd(w, h) || 1;
  return `${w / g}:${h / g}`;
}
