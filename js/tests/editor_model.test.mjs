import { test } from "node:test";
import assert from "node:assert/strict";

import { LayoutEditorModel, formatBoxLabel, labelRect, sanitizeCanvasSize, wrapText } from "../lib/editor_model.js";

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

// -- edge cases pinned by mutation testing ------------------------------------

const abc = () =>
  new LayoutEditorModel([
    { type: "obj", bbox: [0, 0, 100, 100], desc: "a" },
    { type: "obj", bbox: [200, 200, 300, 300], desc: "b" },
    { type: "obj", bbox: [400, 400, 500, 500], desc: "c" },
  ]);
const descs = (m) => m.elements.map((e) => e.desc);

test("canvas size: zero/negative/infinite are junk (fallback); fractions round to nearest", () => {
  assert.equal(sanitizeCanvasSize(0), 1024);
  assert.equal(sanitizeCanvasSize(-512, 768), 768);
  assert.equal(sanitizeCanvasSize(Infinity), 1024);
  assert.equal(sanitizeCanvasSize(1000.6), 1001);
  assert.equal(sanitizeCanvasSize("1536"), 1536);
});

test("box labels: exact-length text is not cut; whitespace trimmed; empty text falls back to desc", () => {
  assert.equal(formatBoxLabel({ type: "obj", desc: "abcdefghijkl" }, 0, 12), "#1 obj abcdefghijkl");
  assert.equal(formatBoxLabel({ type: "text", text: "  SALE \n", desc: "x" }, 0), '#1 text "SALE"');
  assert.equal(formatBoxLabel({ type: "text", text: "", desc: "red banner" }, 2), "#3 text red banner");
});

test("select: out-of-range index deselects; re-selecting reports no change", () => {
  const m = abc();
  assert.equal(m.select(3), false, "index == length is not an element");
  assert.equal(m.selected, -1);
  assert.equal(m.select(1), true);
  assert.equal(m.select(1), false);
  assert.equal(m.select(1.5), true);
  assert.equal(m.selected, -1);
});

test("load clamps the selection to the new list and drops an active drag", () => {
  const m = abc();
  m.select(2);
  m.load('[{"type":"obj","bbox":[0,0,10,10],"desc":"x"},{"type":"obj","bbox":[0,0,10,10],"desc":"y"}]');
  assert.equal(m.selected, 1);
  assert.equal(m.selectedElement.desc, "y");
  const d = abc();
  d.pointerDown({ x: 180, y: 90 }, W, H); // body of c
  assert.ok(d.drag);
  d.load('[{"type":"obj","bbox":[0,0,10,10],"desc":"x"}]');
  assert.equal(d.drag, null);
  assert.deepEqual(d.pointerUp({ x: 300, y: 150 }, W, H), { committed: false });
});

test("addElement keeps a given type/text; deleteAt bounds and selection shift; clear", () => {
  const m = abc();
  assert.equal(m.addElement({ type: "text", text: "HI", bbox: [0, 0, 10, 10] }), 3);
  assert.deepEqual(m.elements[3], { type: "text", bbox: [0, 0, 10, 10], text: "HI", desc: "" });
  assert.equal(m.selected, 3);
  assert.equal(m.deleteAt(4), false, "index == length");
  assert.equal(m.elements.length, 4);
  m.select(2);
  assert.equal(m.deleteAt(0), true);
  assert.equal(m.selected, 1, "selection follows its element down");
  assert.equal(m.selectedElement.desc, "c");
  assert.equal(m.clear(), true);
  assert.equal(m.selected, -1);
  assert.equal(m.selectedElement, null);
  assert.equal(m.clear(), false, "clearing an empty list is no change");
});

test("no-op and guarded edits report false; values written are strings", () => {
  const m = new LayoutEditorModel([
    { type: "obj", desc: "no box" },
    { type: "text", bbox: [0, 0, 10, 10], text: "A", desc: "d" },
  ]);
  assert.equal(m.setType(0, "obj"), false, "already obj");
  assert.equal(m.setText(0, "nope"), false, "obj elements have no text");
  assert.equal(m.setBbox(0, null), false, "no bbox to remove");
  assert.equal(m.setBbox(1, null), true);
  assert.equal(m.elements[1].bbox, undefined);
  m.setText(1, 42);
  m.setDesc(1, 7);
  assert.equal(m.serialize(), '[{"type":"obj","desc":"no box"},{"type":"text","text":"42","desc":"7"}]');
});

test("palette: a lower-case duplicate is refused; removing past the end is refused", () => {
  const m = new LayoutEditorModel([{ type: "obj", bbox: [0, 0, 10, 10], desc: "d" }]);
  assert.equal(m.addColor(0, "#ff00aa"), null);
  assert.match(m.addColor(0, "#ff00aa"), /already in the palette/);
  assert.equal(m.removeColor(0, 1), false);
  assert.deepEqual(m.elements[0].color_palette, ["#FF00AA"]);
});

test("reorder: refuses moving past either end; the selection follows the moved/swapped element", () => {
  const m = abc();
  assert.equal(m.reorder(2, 1), false);
  assert.equal(m.reorder(0, -1), false);
  m.select(0);
  assert.equal(m.reorder(0, 1), true);
  assert.deepEqual(descs(m), ["b", "a", "c"]);
  assert.equal(m.selectedElement.desc, "a");
  m.select(2);
  assert.equal(m.reorder(1, 1), true);
  assert.deepEqual(descs(m), ["b", "c", "a"]);
  assert.equal(m.selectedElement.desc, "c", "the element displaced onto the selection keeps it");
});

test("cursors: empty space, body, handle, and during resize/create drags", () => {
  const m = new LayoutEditorModel([{ type: "obj", bbox: [100, 100, 600, 600], desc: "a" }]);
  assert.equal(m.cursorAt({ x: 300, y: 180 }, W, H), "crosshair");
  assert.equal(m.cursorAt({ x: 140, y: 70 }, W, H), "move");
  assert.equal(m.cursorAt({ x: 240, y: 120 }, W, H), "nwse-resize");
  m.pointerDown({ x: 240, y: 120 }, W, H);
  assert.equal(m.cursorAt({ x: 0, y: 0 }, W, H), "nwse-resize");
  m.cancelDrag();
  m.pointerDown({ x: 300, y: 180 }, W, H);
  assert.equal(m.cursorAt({ x: 140, y: 70 }, W, H), "crosshair");
  m.cancelDrag();
  assert.equal(m.cancelDrag(), false, "nothing to cancel");
});

test("a 4 px drag draws a box, 3 px is a click; pointerUp alone applies its point", () => {
  const m = new LayoutEditorModel();
  assert.equal(drag(m, { x: 300, y: 150 }, { x: 303, y: 150 }, 1).committed, false);
  assert.equal(drag(m, { x: 300, y: 150 }, { x: 304, y: 150 }, 1).committed, true);
  assert.equal(m.elements.length, 1);
  const b = new LayoutEditorModel([{ type: "obj", bbox: [100, 100, 600, 600], desc: "a" }]);
  b.pointerDown({ x: 140, y: 70 }, W, H);
  assert.deepEqual(b.pointerUp({ x: 180, y: 90 }, W, H), { committed: true });
  assert.deepEqual(b.elements[0].bbox, [200, 200, 700, 700]);
});

test("keys: Delete/arrows do nothing mid-drag; Escape/arrows unhandled without a selection; ArrowLeft", () => {
  const m = new LayoutEditorModel([{ type: "obj", bbox: [100, 100, 600, 600], desc: "a" }]);
  assert.deepEqual(m.keyDown("Escape"), { handled: false, committed: false, changed: false });
  assert.deepEqual(m.keyDown("ArrowLeft"), { handled: false, committed: false, changed: false });
  m.pointerDown({ x: 140, y: 70 }, W, H);
  m.pointerMove({ x: 180, y: 90 }, W, H);
  assert.deepEqual(m.keyDown("Delete"), { handled: true, committed: false, changed: false });
  assert.equal(m.elements.length, 1);
  assert.equal(m.keyDown("ArrowLeft").handled, false);
  assert.deepEqual(m.elements[0].bbox, [200, 200, 700, 700]);
  m.pointerUp(null, W, H);
  assert.equal(m.keyDown("ArrowLeft").committed, true);
  assert.deepEqual(m.elements[0].bbox, [200, 199, 700, 699]);
});

test("Tab cycles forwards and Shift+Tab backwards, wrapping at both ends", () => {
  const m = abc();
  m.keyDown("Tab", { shift: true });
  assert.equal(m.selected, 2, "Shift+Tab with nothing selected picks the last");
  m.keyDown("Tab");
  assert.equal(m.selected, 0);
  m.keyDown("Tab", { shift: true });
  assert.equal(m.selected, 2);
});

test("labelRect: exact placement inside the box; too short a box gets no label", () => {
  assert.deepEqual(labelRect({ x: 10, y: 50, w: 40, h: 200 }, 120), { x: 11, y: 51, w: 38, h: 15 });
  assert.equal(labelRect({ x: 0, y: 0, w: 300, h: 8 }, 50), null);
});

test("wrapText: exact-width lines fit; no empty lines before a broken word or a wide character", () => {
  const measure = (s) => s.length * 7;
  assert.deepEqual(wrapText("ab cd", 35, measure), ["ab cd"]);
  assert.deepEqual(wrapText("abcdefgh ij", 35, measure), ["abcde", "fgh", "ij"]);
  assert.deepEqual(wrapText("ab", 5, measure), ["a", "b"]);
});
