// Issue 10 item 9: Import replaces every field, labels stay inside their box, the
// invalid-JSON overlay wraps instead of being cut off, auto-fixes read as fixes.
import { test } from "node:test";
import assert from "node:assert/strict";

import { BUILDER_FIELDS, importFields, importFixes, parseLayout } from "../lib/caption_layout.js";
import { labelRect, wrapText } from "../lib/editor_model.js";

test("importing a full caption sets every builder field; absent ones are cleared", () => {
  const caption = JSON.stringify({
    high_level_description: "A fox",
    style_description: { medium: "illustration", art_style: "flat" }, // no palette, aesthetics, lighting
    compositional_deconstruction: { background: "snow", elements: [] },
  });
  const f = importFields(parseLayout(caption));
  assert.deepEqual(Object.keys(f).sort(), [...BUILDER_FIELDS].sort());
  assert.equal(f.color_palette, "");
  assert.equal(f.aesthetics, "");
  assert.equal(f.lighting, "");
  assert.equal(f.style_mode, "art_style");
  assert.equal(f.style_value, "flat");
  // no style_description at all: mode none, every style field cleared
  const bare = importFields(parseLayout('{"compositional_deconstruction":{"background":"","elements":[]}}'));
  assert.equal(bare.style_mode, "none");
  assert.equal(bare.high_level_description, "");
  assert.equal(bare.medium, "");
  // element lists set no field; a bare deconstruction only background
  assert.deepEqual(importFields(parseLayout("[]")), {});
  assert.deepEqual(importFields(parseLayout('{"background":"x","elements":[]}')), { background: "x" });
});

test("importFixes: errors the canonical form fixed vs errors that remain", () => {
  const parsed = parseLayout(
    '[{"type":"obj","bbox":[0,0,500,500],"desc":"a","color_palette":["#ff0000"]},' +
      '{"type":"obj","bbox":[900,0,100,500],"desc":"b"}]',
  );
  const { fixed, remaining } = importFixes(parsed);
  assert.equal(fixed.length, 1);
  assert.equal(fixed[0], 'element 1: color_palette[0] "#ff0000" upper-cased to "#FF0000"');
  assert.equal(remaining.length, 1);
  assert.doesNotMatch(remaining[0], /uppercase/);
  assert.deepEqual(importFixes(parseLayout("[]")), { fixed: [], remaining: [] });
});

test("labelRect keeps the label inside its box (narrow, short and tiny boxes)", () => {
  const inside = (r, l) => l.x >= r.x && l.y >= r.y && l.x + l.w <= r.x + r.w && l.y + l.h <= r.y + r.h;
  for (const r of [
    { x: 10, y: 50, w: 300, h: 200 },
    { x: 10, y: 50, w: 40, h: 200 }, // narrower than the text
    { x: 10, y: 50, w: 300, h: 12 }, // shorter than a tag (used to be drawn above the box)
  ]) {
    const l = labelRect(r, 120);
    assert.ok(l && inside(r, l), JSON.stringify([r, l]));
  }
  assert.equal(labelRect({ x: 0, y: 0, w: 300, h: 200 }, 120).w, 128); // as wide as the text needs
  assert.equal(labelRect({ x: 0, y: 0, w: 6, h: 6 }, 50), null);
});

test("wrapText never returns a line wider than the canvas", () => {
  const measure = (s) => s.length * 7;
  const text = "layout JSON is invalid — fix it under Raw JSON or Import";
  const lines = wrapText(text, 150, measure);
  assert.ok(lines.length > 1);
  assert.ok(lines.every((l) => measure(l) <= 150), lines);
  assert.equal(lines.join(" "), text);
  assert.deepEqual(wrapText(text, 1000, measure), [text]);
  assert.ok(wrapText("x".repeat(50), 70, measure).every((l) => measure(l) <= 70));
});
