import { test } from "node:test";
import assert from "node:assert/strict";

import { LayoutEditorModel, formatBoxLabel, sanitizeCanvasSize } from "../lib/editor_model.js";

// Drawing surface 400 × 200 CSS px (e.g. a 2048 × 1024 image shown small).
const W = 400;
const H = 200;

function drag(m, from, to, steps = 4) {
  m.pointerDown(from, W, H);
  for (let k = 1; k <= steps; k++) {
    m.pointerMove({ x: from.x + ((to.x - from.x) * k) / steps, y: from.y + ((to.y - from.y) * k) / steps }, W, H);
  }
  return m.pointerUp(to, W, H);
}

test("dragging on empty space draws a new obj box with an integer bbox and selects it", () => {
  const m = new LayoutEditorModel();
  const r = drag(m, { x: 40, y: 20 }, { x: 240, y: 120 });
  assert.equal(r.committed, true);
  assert.equal(m.elements.length, 1);
  assert.deepEqual(m.elements[0], { type: "obj", bbox: [100, 100, 600, 600], desc: "" });
  assert.equal(m.selected, 0);
  assert.equal(m.serialize(), '[{"type":"obj","bbox":[100,100,600,600],"desc":""}]');
});

test("drawing towards the top-left is normalised; a click does not create a box", () => {
  const m = new LayoutEditorModel();
  drag(m, { x: 240, y: 120 }, { x: 40, y: 20 });
  assert.deepEqual(m.elements[0].bbox, [100, 100, 600, 600]);
  const click = drag(m, { x: 380, y: 190 }, { x: 381, y: 191 });
  assert.equal(click.committed, false);
  assert.equal(m.elements.length, 1);
  assert.equal(m.selected, -1, "clicking empty space deselects");
});

test("a thin drag gets the minimum size (8 px)", () => {
  const m = new LayoutEditorModel();
  drag(m, { x: 100, y: 100 }, { x: 300, y: 101 });
  // 8 px of 200 px height = 40 units
  assert.deepEqual(m.elements[0].bbox, [500, 250, 540, 750]);
});

test("preview bbox is available during a create drag", () => {
  const m = new LayoutEditorModel();
  m.pointerDown({ x: 0, y: 0 }, W, H);
  assert.equal(m.previewBbox, null);
  m.pointerMove({ x: 200, y: 50 }, W, H);
  assert.deepEqual(m.previewBbox, [0, 0, 250, 500]);
  m.cancelDrag();
  assert.equal(m.previewBbox, null);
  assert.equal(m.elements.length, 0);
});

test("move by dragging the body, clamped at the canvas edge", () => {
  const m = new LayoutEditorModel([{ type: "obj", bbox: [100, 100, 600, 600], desc: "a" }]);
  // body centre (140, 70) → move right 40 px (= 100 units) and down 20 px (= 100 units)
  const r = drag(m, { x: 140, y: 70 }, { x: 180, y: 90 });
  assert.equal(r.committed, true);
  assert.deepEqual(m.elements[0].bbox, [200, 200, 700, 700]);
  drag(m, { x: 180, y: 90 }, { x: 1000, y: 1000 });
  assert.deepEqual(m.elements[0].bbox, [500, 500, 1000, 1000]);
});

test("resize with a corner handle; other edges stay", () => {
  const m = new LayoutEditorModel([{ type: "obj", bbox: [100, 100, 600, 600], desc: "a" }]);
  // se corner at (240, 120) px
  const r = drag(m, { x: 241, y: 121 }, { x: 320, y: 160 });
  assert.equal(r.committed, true);
  assert.deepEqual(m.elements[0].bbox, [100, 100, 800, 800]);
  // nw corner (40, 20) dragged beyond the se corner stops at the minimum size
  drag(m, { x: 40, y: 20 }, { x: 399, y: 199 });
  assert.deepEqual(m.elements[0].bbox, [760, 780, 800, 800]);
});

test("escape cancels a move and restores the bbox", () => {
  const m = new LayoutEditorModel([{ type: "obj", bbox: [100, 100, 600, 600], desc: "a" }]);
  m.pointerDown({ x: 140, y: 70 }, W, H);
  m.pointerMove({ x: 200, y: 100 }, W, H);
  assert.notDeepEqual(m.elements[0].bbox, [100, 100, 600, 600]);
  const k = m.keyDown("Escape");
  assert.equal(k.handled, true);
  assert.deepEqual(m.elements[0].bbox, [100, 100, 600, 600]);
  assert.equal(m.drag, null);
});

test("clicking without moving selects but does not commit", () => {
  const m = new LayoutEditorModel([{ type: "obj", bbox: [100, 100, 600, 600], desc: "a" }]);
  const r = drag(m, { x: 140, y: 70 }, { x: 140, y: 70 }, 1);
  assert.equal(r.committed, false);
  assert.equal(m.selected, 0);
});

test("topmost box is picked; Delete removes the selected one; arrows nudge", () => {
  const m = new LayoutEditorModel([
    { type: "obj", bbox: [0, 0, 1000, 1000], desc: "bottom" },
    { type: "text", bbox: [400, 400, 600, 600], text: "TOP", desc: "top" },
  ]);
  m.pointerDown({ x: 200, y: 100 }, W, H);
  m.pointerUp({ x: 200, y: 100 }, W, H);
  assert.equal(m.selected, 1);
  let k = m.keyDown("ArrowRight", { shift: true });
  assert.deepEqual(k, { handled: true, committed: true, changed: true });
  assert.deepEqual(m.elements[1].bbox, [400, 410, 600, 610]);
  k = m.keyDown("ArrowUp");
  assert.deepEqual(m.elements[1].bbox, [399, 410, 599, 610]);
  k = m.keyDown("Delete");
  assert.equal(k.committed, true);
  assert.deepEqual(
    m.elements.map((e) => e.desc),
    ["bottom"],
  );
  assert.equal(m.selected, -1);
  assert.equal(m.keyDown("Delete").committed, false);
  assert.equal(m.keyDown("Tab").handled, true);
  assert.equal(m.selected, 0);
});

test("type switch keeps text across obj and back; text/desc/palette edits", () => {
  const m = new LayoutEditorModel([{ type: "text", bbox: [0, 0, 10, 10], text: "SALE", desc: "red" }]);
  assert.equal(m.setType(0, "obj"), true);
  assert.equal(m.serialize(), '[{"type":"obj","bbox":[0,0,10,10],"desc":"red"}]');
  assert.equal(m.setDesc(0, "red"), false);
  assert.equal(m.nudge(0, 0), false, "nothing selected");
  m.select(0);
  assert.equal(m.nudge(5, 0), true, "edits while obj keep the stashed text");
  assert.equal(m.setType(0, "text"), true);
  assert.equal(m.elements[0].text, "SALE");
  assert.deepEqual(m.elements[0].bbox, [5, 0, 15, 10]);
  m.nudge(-5, 0);
  assert.equal(m.setType(0, "image"), false);
  assert.equal(m.setText(0, "SALE!"), true);
  assert.equal(m.setDesc(0, "red script"), true);
  assert.equal(m.setDesc(0, "red script"), false, "no-op edits report no change");
  assert.equal(m.addColor(0, "#ff00aa"), null);
  assert.match(m.addColor(0, "#FF00AA"), /already in the palette/);
  assert.match(m.addColor(0, "#f0a"), /not a #RRGGBB colour/);
  for (const c of ["#000001", "#000002", "#000003", "#000004"]) assert.equal(m.addColor(0, c), null);
  assert.match(m.addColor(0, "#000005"), /at most 5 colours/);
  assert.equal(m.removeColor(0, 0), true);
  assert.equal(
    m.serialize(),
    '[{"type":"text","bbox":[0,0,10,10],"text":"SALE!","desc":"red script","color_palette":["#000001","#000002","#000003","#000004"]}]',
  );
});

test("load: invalid JSON leaves the model untouched; elements without bbox are kept but not hit", () => {
  const m = new LayoutEditorModel();
  let p = m.load('[{"type":"obj","desc":"no box"},{"type":"obj","bbox":[0,0,500,500],"desc":"box"}]');
  assert.equal(p.ok, true);
  assert.deepEqual(m.bboxes(), [null, [0, 0, 500, 500]]);
  assert.deepEqual(m.hit({ x: 10, y: 10 }, W, H), { index: 1, handle: "body" });
  p = m.load("[{oops");
  assert.equal(p.ok, false);
  assert.equal(m.elements.length, 2);
  assert.equal(m.placeDefault(0), true);
  assert.deepEqual(m.elements[0].bbox, [400, 300, 600, 700]);
  assert.equal(m.reorder(0, 1), true);
  assert.deepEqual(
    m.elements.map((e) => e.desc),
    ["box", "no box"],
  );
});

test("labels and canvas-size sanitising", () => {
  assert.equal(formatBoxLabel({ type: "text", text: "GRAND  OPENING", desc: "x" }, 1), '#2 text "GRAND OPENING"');
  assert.equal(formatBoxLabel({ type: "obj", desc: "a very long description of a bicycle" }, 0, 12), "#1 obj a very long…");
  assert.equal(formatBoxLabel({ type: "obj", desc: "" }, 4), "#5 obj");
  assert.equal(sanitizeCanvasSize(1536), 1536);
  assert.equal(sanitizeCanvasSize(100), 256);
  assert.equal(sanitizeCanvasSize(9999), 2048);
  assert.equal(sanitizeCanvasSize("abc"), 1024);
  assert.equal(sanitizeCanvasSize(undefined, 768), 768);
});
