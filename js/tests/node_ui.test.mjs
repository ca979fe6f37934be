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
