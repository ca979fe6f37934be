import { test } from "node:test";
import assert from "node:assert/strict";

import {
  aspectRatioString,
  bboxFromPoints,
  bboxToRect,
  clamp,
  enforceMinSize,
  fitAspect,
  handlePositions,
  hitTest,
  hitTestHandle,
  isValidBbox,
  minSizeForPixels,
  moveBbox,
  normToPx,
  normalizeBbox,
  normalizeRect,
  pointInBbox,
  pxToNorm,
  rectToBbox,
  resizeBbox,
} from "../lib/geometry.js";

test("pxToNorm / normToPx normalise each axis by its own length", () => {
  // 1536 wide × 768 high: x and y scale differently
  assert.equal(pxToNorm(768, 1536), 500);
  assert.equal(pxToNorm(768, 768), 1000);
  assert.equal(pxToNorm(192, 768), 250);
  assert.equal(normToPx(500, 1536), 768);
  assert.equal(normToPx(250, 768), 192);
  // clamped to the canvas
  assert.equal(pxToNorm(-40, 800), 0);
  assert.equal(pxToNorm(900, 800), 1000);
  assert.throws(() => pxToNorm(1, 0), RangeError);
});

test("bboxToRect maps [y0,x0,y1,x1] onto a non-square canvas", () => {
  // 400 × 200 px drawing surface
  assert.deepEqual(bboxToRect([100, 250, 600, 750], 400, 200), { x: 100, y: 20, w: 200, h: 100 });
  // a "square" bbox is not square in pixels on a non-square canvas
  const r = bboxToRect([0, 0, 500, 500], 300, 600);
  assert.deepEqual(r, { x: 0, y: 0, w: 150, h: 300 });
});

test("rectToBbox rounds to ints, clamps, and normalises negative drags", () => {
  // 300 × 200: x unit = 0.3 px, y unit = 0.2 px
  assert.deepEqual(rectToBbox({ x: 30, y: 20, w: 150, h: 100 }, 300, 200), [100, 100, 600, 600]);
  // rounding: 10 px of 300 = 33.33 → 33; 101 px of 300 = 336.67 → 337
  assert.deepEqual(rectToBbox({ x: 10, y: 0, w: 91, h: 200 }, 300, 200), [0, 33, 1000, 337]);
  // drag towards the upper-left: negative w/h
  assert.deepEqual(rectToBbox({ x: 180, y: 120, w: -150, h: -100 }, 300, 200), [100, 100, 600, 600]);
  // outside the canvas is clamped
  assert.deepEqual(rectToBbox({ x: -50, y: -10, w: 500, h: 300 }, 300, 200), [0, 0, 1000, 1000]);
  const b = rectToBbox({ x: 12.3, y: 7.7, w: 33.3, h: 44.4 }, 333, 777);
  assert.ok(b.every(Number.isInteger), `not ints: ${b}`);
});

test("bboxFromPoints is order-independent (min <= max)", () => {
  const a = bboxFromPoints({ x: 50, y: 80 }, { x: 10, y: 20 }, 100, 100);
  const b = bboxFromPoints({ x: 10, y: 20 }, { x: 50, y: 80 }, 100, 100);
  assert.deepEqual(a, [200, 100, 800, 500]);
  assert.deepEqual(a, b);
});

test("normalizeRect and normalizeBbox swap per axis and round/clamp", () => {
  assert.deepEqual(normalizeRect({ x0: 5, y0: 9, x1: 1, y1: 2 }), { x0: 1, y0: 2, x1: 5, y1: 9 });
  assert.deepEqual(normalizeBbox([600, 700, 100, 200]), [100, 200, 600, 700]);
  assert.deepEqual(normalizeBbox([-5, 10.4, 1200, 10.6]), [0, 10, 1000, 11]);
  assert.throws(() => normalizeBbox([1, 2, 3]), TypeError);
});

test("isValidBbox", () => {
  assert.equal(isValidBbox([0, 0, 1000, 1000]), true);
  assert.equal(isValidBbox([10, 10, 10, 10]), true);
  assert.equal(isValidBbox([10, 20, 5, 30]), false); // y_min > y_max
  assert.equal(isValidBbox([0, 0, 1001, 10]), false);
  assert.equal(isValidBbox([0, 0.5, 10, 10]), false);
  assert.equal(isValidBbox([0, 0, 10]), false);
  assert.equal(isValidBbox("0,0,10,10"), false);
});

test("clamp", () => {
  assert.equal(clamp(5, 0, 3), 3);
  assert.equal(clamp(-1, 0, 3), 0);
  assert.equal(clamp(NaN, 2, 3), 2);
});

test("handles sit on corners/edges in pixels and hit test finds them", () => {
  const W = 400;
  const H = 200;
  const bbox = [100, 250, 600, 750]; // rect x 100..300, y 20..120
  const p = handlePositions(bbox, W, H);
  assert.deepEqual(p.nw, { x: 100, y: 20 });
  assert.deepEqual(p.se, { x: 300, y: 120 });
  assert.deepEqual(p.n, { x: 200, y: 20 });
  assert.deepEqual(p.w, { x: 100, y: 70 });
  assert.equal(hitTestHandle(bbox, { x: 103, y: 18 }, W, H), "nw");
  assert.equal(hitTestHandle(bbox, { x: 297, y: 123 }, W, H), "se");
  assert.equal(hitTestHandle(bbox, { x: 300, y: 70 }, W, H), "e");
  assert.equal(hitTestHandle(bbox, { x: 300, y: 70 }, W, H, { cornersOnly: true }), null);
  assert.equal(hitTestHandle(bbox, { x: 200, y: 70 }, W, H), null);
  assert.equal(hitTestHandle(bbox, { x: 110, y: 20 }, W, H, { tolerance: 5 }), null);
  assert.equal(hitTestHandle(bbox, { x: 106, y: 14 }, W, H), "nw"); // exactly `tolerance` away still grabs
  assert.equal(pointInBbox(bbox, { x: 200, y: 70 }, W, H), true);
  assert.equal(pointInBbox(bbox, { x: 99, y: 70 }, W, H), false);
});

test("hitTest returns the topmost box first and prefers the selected box's handles", () => {
  const W = 100;
  const H = 100;
  const boxes = [
    [0, 0, 600, 600], // 0: big, bottom
    [200, 200, 500, 500], // 1: on top of 0
    null, // 2: element without bbox
  ];
  assert.deepEqual(hitTest(boxes, { x: 35, y: 35 }, W, H), { index: 1, handle: "body" });
  assert.deepEqual(hitTest(boxes, { x: 10, y: 10 }, W, H), { index: 0, handle: "body" });
  assert.equal(hitTest(boxes, { x: 90, y: 90 }, W, H), null);
  // corner of box 0 at (60, 60)
  assert.deepEqual(hitTest(boxes, { x: 60, y: 60 }, W, H, { tolerance: 3 }), { index: 0, handle: "se" });
  // box 1's nw corner (20,20) lies inside box 0 — box 1 is on top, so its handle wins
  assert.deepEqual(hitTest(boxes, { x: 20, y: 20 }, W, H, { tolerance: 3 }), { index: 1, handle: "nw" });
  // only the selected box exposes handles with handles: "selected": box 1's corner
  // is then just part of box 1's body (edges inclusive)
  assert.deepEqual(hitTest(boxes, { x: 20, y: 20 }, W, H, { tolerance: 3, handles: "selected", selected: 0 }), {
    index: 1,
    handle: "body",
  });
  assert.deepEqual(hitTest(boxes, { x: 18, y: 18 }, W, H, { tolerance: 3, handles: "selected", selected: 0 }), {
    index: 0,
    handle: "body",
  });
  // box 0 selected: its handle is found even where box 1 is on top
  const stacked = [
    [200, 200, 500, 500],
    [0, 0, 1000, 1000],
  ];
  assert.deepEqual(hitTest(stacked, { x: 35, y: 20 }, W, H, { tolerance: 3 }), { index: 1, handle: "body" });
  assert.deepEqual(hitTest(stacked, { x: 35, y: 20 }, W, H, { tolerance: 3, selected: 0 }), { index: 0, handle: "n" });
});

test("moveBbox keeps the size and stays inside the canvas", () => {
  assert.deepEqual(moveBbox([100, 100, 300, 400], 50, -20), [150, 80, 350, 380]);
  assert.deepEqual(moveBbox([100, 100, 300, 400], -500, 900), [0, 700, 200, 1000]);
  assert.deepEqual(moveBbox([100, 100, 300, 400], 10.6, 0.4), [111, 100, 311, 400]);
});

test("resizeBbox moves only the dragged edges, clamps, and keeps a minimum size", () => {
  const b = [100, 100, 500, 500];
  assert.deepEqual(resizeBbox(b, "se", { x: 800, y: 700 }), [100, 100, 700, 800]);
  assert.deepEqual(resizeBbox(b, "nw", { x: 50.4, y: 20.6 }), [21, 50, 500, 500]);
  assert.deepEqual(resizeBbox(b, "n", { x: 999, y: 0 }), [0, 100, 500, 500]);
  assert.deepEqual(resizeBbox(b, "e", { x: 1200, y: 300 }), [100, 100, 500, 1000]);
  // dragging past the opposite edge stops at the minimum size (no flip)
  assert.deepEqual(resizeBbox(b, "w", { x: 900, y: 300 }, { minW: 20 }), [100, 480, 500, 500]);
  assert.deepEqual(resizeBbox(b, "s", { x: 0, y: 0 }, { minH: 15 }), [100, 100, 115, 500]);
  assert.deepEqual(resizeBbox(b, "e", { x: 0, y: 300 }, { minW: 20 }), [100, 100, 500, 120]);
  // a fractional minimum (from minSizeForPixels on any canvas) is rounded: the bbox stays integer
  assert.deepEqual(resizeBbox(b, "s", { x: 0, y: 0 }, { minH: 14.6 }), [100, 100, 115, 500]);
  assert.throws(() => resizeBbox(b, "middle", { x: 0, y: 0 }), RangeError);
});

test("enforceMinSize and minSizeForPixels", () => {
  assert.deepEqual(enforceMinSize([100, 100, 102, 400], { minH: 10, minW: 10 }), [100, 100, 110, 400]);
  assert.deepEqual(enforceMinSize([998, 995, 1000, 1000], { minH: 10, minW: 10 }), [990, 990, 1000, 1000]);
  // 8 px on a 400 × 100 surface: 20 units in x, 80 units in y
  assert.deepEqual(minSizeForPixels(8, 400, 100), { minW: 20, minH: 80 });
});

test("fitAspect and aspectRatioString", () => {
  assert.deepEqual(fitAspect(400, 400, 1536, 768), { width: 400, height: 200 });
  assert.deepEqual(fitAspect(400, 300, 768, 1376), { width: 167, height: 300 });
  assert.deepEqual(fitAspect(0, 300, 1, 1), { width: 0, height: 0 });
  assert.deepEqual(fitAspect(100, 100, 3, 2), { width: 100, height: 66 }); // never larger than the space
  assert.deepEqual(fitAspect(100, 100, 2, 3), { width: 66, height: 100 });
  assert.equal(aspectRatioString(1024, 1024), "1:1");
  assert.equal(aspectRatioString(768, 1376), "24:43");
});
