// DOM-free helpers of the node-UI extension (ideogram4_node_ui.js): the text a
// node reports after a run, which sampler widgets are inert for the current
// preset / latent link, and the value a linked INT input receives from
// upstream (so the Caption Builder canvas follows a wired-in size).

/** Name of the read-only report widget added to a node that returned ui text. */
export const REPORT_WIDGET = "ideogram4_report";
export const PACK_PREFIX = "Ideogram4Native";
export const CUSTOM_PRESET = "custom";

/** Same names as nodes/host/sampler_settings.py SCHEDULE_WIDGETS / GUIDANCE_WIDGETS. */
export const SCHEDULE_WIDGETS = Object.freeze(["steps", "mu", "std"]);
export const GUIDANCE_WIDGETS = Object.freeze(["guidance", "polish_steps", "polish_guidance", "guidance_schedule"]);

/** Per node type: widgets only a `custom` preset uses, and widgets a connected `latent` replaces. */
export const INERT_RULES = Object.freeze({
  Ideogram4NativeKSampler: { custom: [...SCHEDULE_WIDGETS, ...GUIDANCE_WIDGETS], latent: ["width", "height", "batch_size"] },
  Ideogram4NativeSigmas: { custom: [...SCHEDULE_WIDGETS], latent: ["width", "height"] },
  Ideogram4NativeGuider: { custom: [...GUIDANCE_WIDGETS], latent: [] },
  // the size widgets count only for aspect_ratio "custom" (the node's report says so too)
  Ideogram4NativeEmptyLatent: { selector: "aspect_ratio", custom: ["width", "height"], latent: [] },
});

/** The widget whose value makes a rule's custom-only widgets inert ("preset", or the rule's selector). */
export function selectorOf(type) {
  return INERT_RULES[type]?.selector ?? "preset";
}

export function isPackNode(type) {
  return typeof type === "string" && type.startsWith(PACK_PREFIX);
}

/** The `text` list of an `executed` message's output as one string, or null when there is none. */
export function reportText(output) {
  const t = output?.text;
  if (typeof t === "string") return t;
  if (!Array.isArray(t) || !t.length) return null;
  return t.map((v) => String(v)).join("\n");
}

/**
 * Widgets that do nothing in the current state: {name: reason}.
 * preset: the preset widget's value; latentLinked: whether the latent input is connected.
 */
export function inertWidgets(type, { preset, latentLinked = false } = {}) {
  const rule = INERT_RULES[type];
  const out = {};
  if (!rule) return out;
  if (preset !== undefined && preset !== CUSTOM_PRESET) {
    const what = rule.selector ?? "preset";
    for (const name of rule.custom) out[name] = `not used with ${what} ${preset} (custom only)`;
  }
  if (latentLinked) for (const name of rule.latent) out[name] = "not used: the connected latent sets the size";
  return out;
}

/** "1024x1024 (1:1)" → {width: 1024, height: 1024}; anything else → null. */
export function parseAspectChoice(choice) {
  const m = /^\s*(\d+)\s*[x×]\s*(\d+)/.exec(String(choice ?? ""));
  return m ? { width: Number(m[1]), height: Number(m[2]) } : null;
}

function linkOf(graph, id) {
  if (id === null || id === undefined || !graph) return null;
  return graph.getLink?.(id) ?? graph.links?.get?.(id) ?? graph.links?.[id] ?? null;
}

function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

function asNumber(v) {
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  return typeof n === "number" && Number.isFinite(n) ? n : null;
}

/** The value output `slot` of `node` carries, as far as the graph tells (null when unknown). */
export function outputValue(graph, node, slot, seen = new Set()) {
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  const outName = node.outputs?.[slot]?.name;
  if (node.type === "Ideogram4NativeEmptyLatent" && (outName === "width" || outName === "height")) {
    const preset = parseAspectChoice(widgetValue(node, "aspect_ratio"));
    if (preset) return preset[outName];
    return inputValue(graph, node, outName, seen) ?? asNumber(widgetValue(node, outName));
  }
  if (node.type === "Reroute") return inputValue(graph, node, node.inputs?.[0]?.name, seen, 0);
  if (node.type === "PrimitiveNode") return asNumber(node.widgets?.[0]?.value);
  // core primitives (PrimitiveInt: widget "value") and nodes whose output repeats a widget of the same name
  if (outName && node.widgets?.some((w) => w.name === outName)) {
    return inputValue(graph, node, outName, seen) ?? asNumber(widgetValue(node, outName));
  }
  if (node.outputs?.length === 1 && node.widgets?.length === 1) return asNumber(node.widgets[0].value);
  return null;
}

/**
 * What input `name` of `node` receives through its link: undefined when it is not
 * linked, null when linked but the upstream value is not known in the graph
 * (it is computed when the prompt runs), else the number.
 */
export function inputValue(graph, node, name, seen = new Set(), index = -1) {
  const inp = index >= 0 ? node?.inputs?.[index] : node?.inputs?.find((i) => i.name === name);
  if (!inp || inp.link === null || inp.link === undefined) return undefined;
  const link = linkOf(graph, inp.link);
  if (!link) return null;
  const origin = graph.getNodeById?.(link.origin_id);
  return outputValue(graph, origin, link.origin_slot, seen);
}
