import { test } from "node:test";
import assert from "node:assert/strict";

import {
  GUIDANCE_WIDGETS,
  SCHEDULE_WIDGETS,
  inertWidgets,
  inputValue,
  isPackNode,
  parseAspectChoice,
  reportText,
  selectorOf,
} from "../lib/node_ui.js";

test("reportText joins the ui text list of an executed message; null when there is none", () => {
  assert.equal(reportText({ text: ["memory: cpu", "12 steps"] }), "memory: cpu\n12 steps");
  assert.equal(reportText({ text: "one" }), "one");
  assert.equal(reportText({ images: [] }), null);
  assert.equal(reportText(undefined), null);
  assert.equal(reportText({ text: [] }), null);
  assert.ok(isPackNode("Ideogram4NativeKSampler") && !isPackNode("KSampler") && !isPackNode(undefined));
});

test("inertWidgets: custom-only widgets with a preset, size widgets with a latent", () => {
  const all = [...SCHEDULE_WIDGETS, ...GUIDANCE_WIDGETS];
  assert.deepEqual(Object.keys(inertWidgets("Ideogram4NativeKSampler", { preset: "V4_TURBO_12" })), all);
  assert.deepEqual(inertWidgets("Ideogram4NativeKSampler", { preset: "custom" }), {});
  assert.deepEqual(Object.keys(inertWidgets("Ideogram4NativeKSampler", { preset: "custom", latentLinked: true })),
    ["width", "height", "batch_size"]);
  assert.deepEqual(Object.keys(inertWidgets("Ideogram4NativeSigmas", { preset: "V4_DEFAULT_20", latentLinked: true })),
    [...SCHEDULE_WIDGETS, "width", "height"]);
  assert.deepEqual(Object.keys(inertWidgets("Ideogram4NativeGuider", { preset: "V4_DEFAULT_20" })), [...GUIDANCE_WIDGETS]);
  assert.match(inertWidgets("Ideogram4NativeGuider", { preset: "V4_DEFAULT_20" }).guidance, /preset V4_DEFAULT_20/);
  assert.deepEqual(inertWidgets("Ideogram4NativeVAEDecode", { preset: "x" }), {});
  // Empty Latent: width/height count only for aspect_ratio "custom"
  assert.equal(selectorOf("Ideogram4NativeEmptyLatent"), "aspect_ratio");
  assert.equal(selectorOf("Ideogram4NativeKSampler"), "preset");
  assert.deepEqual(Object.keys(inertWidgets("Ideogram4NativeEmptyLatent", { preset: "1360x768 (16:9)" })), ["width", "height"]);
  assert.match(inertWidgets("Ideogram4NativeEmptyLatent", { preset: "1360x768 (16:9)" }).width, /aspect_ratio 1360x768/);
  assert.deepEqual(inertWidgets("Ideogram4NativeEmptyLatent", { preset: "custom" }), {});
});

// A tiny graph with the accessors the frontend's LGraph has (getNodeById, links Map).
function graphOf(nodes, links) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  return { getNodeById: (id) => byId.get(id) ?? null, links: new Map(links.map((l) => [l.id, l])) };
}
const W = (name, value) => ({ name, value });

test("inputValue follows a link to the Empty Latent's size (aspect preset or custom widgets)", () => {
  const latent = { id: 1, type: "Ideogram4NativeEmptyLatent", outputs: [{ name: "latent" }, { name: "width" }, { name: "height" }],
    inputs: [], widgets: [W("aspect_ratio", "1536x768 (2:1)"), W("width", 1024), W("height", 1024), W("batch_size", 1)] };
  const builder = { id: 2, type: "Ideogram4NativeCaptionBuilder",
    inputs: [{ name: "width", link: 10 }, { name: "height", link: 11 }, { name: "elements", link: null }],
    widgets: [W("width", 1024), W("height", 1024)] };
  const g = graphOf([latent, builder], [
    { id: 10, origin_id: 1, origin_slot: 1, target_id: 2, target_slot: 0 },
    { id: 11, origin_id: 1, origin_slot: 2, target_id: 2, target_slot: 1 },
  ]);
  assert.equal(inputValue(g, builder, "width"), 1536);
  assert.equal(inputValue(g, builder, "height"), 768);
  assert.equal(inputValue(g, builder, "elements"), undefined); // not linked
  latent.widgets[0].value = "custom";
  latent.widgets[1].value = 640;
  assert.equal(inputValue(g, builder, "width"), 640);
  assert.equal(parseAspectChoice("2048x2048 (1:1)").width, 2048);
  assert.equal(parseAspectChoice("custom"), null);
});

test("inputValue: primitives and reroutes; unknown upstream values are null", () => {
  const prim = { id: 1, type: "PrimitiveInt", outputs: [{ name: "INT" }], inputs: [], widgets: [W("value", 1280)] };
  const reroute = { id: 2, type: "Reroute", outputs: [{ name: "" }], inputs: [{ name: "", link: 20 }] };
  const other = { id: 3, type: "SomeMathNode", outputs: [{ name: "INT" }, { name: "FLOAT" }], inputs: [], widgets: [] };
  const b = { id: 4, inputs: [{ name: "width", link: 21 }, { name: "height", link: 22 }] };
  const g = graphOf([prim, reroute, other, b], [
    { id: 20, origin_id: 1, origin_slot: 0 },
    { id: 21, origin_id: 2, origin_slot: 0 },
    { id: 22, origin_id: 3, origin_slot: 0 },
  ]);
  assert.equal(inputValue(g, b, "width"), 1280);
  assert.equal(inputValue(g, b, "height"), null);
});

// -- edge cases pinned by mutation testing ------------------------------------

test("isPackNode needs the prefix at the start; parseAspectChoice reads only a leading size (x or ×)", () => {
  assert.equal(isPackNode("MyIdeogram4NativeNode"), false);
  assert.deepEqual(parseAspectChoice("1024×768"), { width: 1024, height: 768 });
  assert.equal(parseAspectChoice("custom (was 1024x768)"), null);
});

test("inertWidgets: no preset value (widget missing) marks nothing custom-only; latentLinked defaults off", () => {
  assert.deepEqual(inertWidgets("Ideogram4NativeKSampler"), {});
  assert.deepEqual(Object.keys(inertWidgets("Ideogram4NativeKSampler", { latentLinked: true })), ["width", "height", "batch_size"]);
});

test("inputValue: links via getLink() or a plain links object; a dangling link id is null (linked, unknown)", () => {
  const prim = { id: 1, type: "PrimitiveInt", outputs: [{ name: "INT" }], inputs: [], widgets: [W("value", 1280)] };
  const b = { id: 2, inputs: [{ name: "width", link: 7 }, { name: "height", link: 8 }] };
  const link = { id: 7, origin_id: 1, origin_slot: 0 };
  const nodes = { getNodeById: (id) => ({ 1: prim, 2: b })[id] ?? null };
  assert.equal(inputValue({ ...nodes, getLink: (id) => (id === 7 ? link : undefined) }, b, "width"), 1280);
  assert.equal(inputValue({ ...nodes, links: { 7: link } }, b, "width"), 1280);
  assert.equal(inputValue({ ...nodes, links: { 7: link } }, b, "height"), null);
});

test("inputValue: a reroute loop ends as null instead of recursing forever", () => {
  const r1 = { id: 1, type: "Reroute", outputs: [{ name: "" }], inputs: [{ name: "", link: 31 }] };
  const r2 = { id: 2, type: "Reroute", outputs: [{ name: "" }], inputs: [{ name: "", link: 32 }] };
  const b = { id: 3, inputs: [{ name: "width", link: 33 }] };
  const g = graphOf([r1, r2, b], [
    { id: 31, origin_id: 2, origin_slot: 0 },
    { id: 32, origin_id: 1, origin_slot: 0 },
    { id: 33, origin_id: 1, origin_slot: 0 },
  ]);
  assert.equal(inputValue(g, b, "width"), null);
});

test("inputValue: a widget converted to a linked input is followed upstream (Empty Latent custom, same-name widget)", () => {
  const prim = { id: 1, type: "PrimitiveInt", outputs: [{ name: "INT" }], inputs: [], widgets: [W("value", 1792)] };
  const latent = { id: 2, type: "Ideogram4NativeEmptyLatent", outputs: [{ name: "latent" }, { name: "width" }, { name: "height" }],
    inputs: [{ name: "width", link: 41 }], widgets: [W("aspect_ratio", "custom"), W("width", 1024), W("height", 1024)] };
  const passthru = { id: 3, type: "SizePassthrough", outputs: [{ name: "width" }, { name: "height" }],
    inputs: [{ name: "width", link: 42 }], widgets: [W("width", 512), W("height", 512)] };
  const b = { id: 4, inputs: [{ name: "width", link: 43 }, { name: "height", link: 44 }] };
  const g = graphOf([prim, latent, passthru, b], [
    { id: 41, origin_id: 1, origin_slot: 0 },
    { id: 42, origin_id: 1, origin_slot: 0 },
    { id: 43, origin_id: 2, origin_slot: 1 },
    { id: 44, origin_id: 3, origin_slot: 0 },
  ]);
  assert.equal(inputValue(g, b, "width"), 1792);
  assert.equal(inputValue(g, b, "height"), 1792);
});

test("inputValue: legacy PrimitiveNode (value + control widget); numeric strings; blanks, NaN and multi-output nodes are unknown", () => {
  const legacy = { id: 1, type: "PrimitiveNode", outputs: [{ name: "INT" }], inputs: [],
    widgets: [W("value", 896), W("control_after_generate", "fixed")] };
  const str = { id: 2, type: "SomeStringInt", outputs: [{ name: "INT" }], inputs: [], widgets: [W("value", " 640 ")] };
  const blank = { id: 3, type: "SomeStringInt", outputs: [{ name: "INT" }], inputs: [], widgets: [W("value", "  ")] };
  const nan = { id: 4, type: "SomeFloat", outputs: [{ name: "FLOAT" }], inputs: [], widgets: [W("value", NaN)] };
  const multi = { id: 5, type: "SomeMathNode", outputs: [{ name: "INT" }, { name: "FLOAT" }], inputs: [], widgets: [W("a", 3)] };
  const b = { id: 6, inputs: [1, 2, 3, 4, 5].map((k) => ({ name: `in${k}`, link: 50 + k })) };
  const g = graphOf([legacy, str, blank, nan, multi, b], [1, 2, 3, 4, 5].map((k) => ({ id: 50 + k, origin_id: k, origin_slot: 0 })));
  assert.equal(inputValue(g, b, "in1"), 896);
  assert.equal(inputValue(g, b, "in2"), 640);
  assert.equal(inputValue(g, b, "in3"), null);
  assert.equal(inputValue(g, b, "in4"), null);
  assert.equal(inputValue(g, b, "in5"), null);
});
