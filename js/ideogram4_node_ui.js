// Ideogram 4 Native — what every node of the pack did, on the node.
//
// * Reports: the text our nodes return as `ui={"text": [...]}` (memory plan, what
//   is resident, token count, caption fixes and warnings, seconds per step,
//   safety-placeholder warning, unconditional/conditional mix-ups) is shown in a
//   read-only text area on the node (added on the first report, like core's
//   preview-text nodes), and cleared when a prompt is queued again.
// * Inert widgets: on Ideogram4 KSampler / Sigmas / Guider the custom-only
//   widgets are disabled (greyed, not editable) while a preset is selected, and
//   width/height/batch_size while a latent is connected (the Python report says
//   the same); on Empty Latent, width/height while aspect_ratio is not custom.
//   Their values are still saved with the workflow.
//
// The DOM-free logic lives in ./lib/node_ui.js (unit tested with node --test).

import { app } from "../../scripts/app.js";
import { chain as chainHook } from "./lib/chain.js";
import { api } from "../../scripts/api.js";
import { REPORT_WIDGET, INERT_RULES, inertWidgets, isPackNode, reportText, selectorOf } from "./lib/node_ui.js";

export const EXTENSION_NAME = "Ideogram4Native.NodeUI";
const STYLE_ID = "ideogram4-node-ui-style";
const CSS = `
.ideo4-report{width:100%;height:100%;box-sizing:border-box;resize:none;font:11px/1.35 ui-monospace,monospace;
  color:var(--input-text,#ddd);background:var(--comfy-input-bg,#222);border:1px solid var(--border-color,#555);
  border-radius:4px;padding:3px 5px;white-space:pre-wrap;overflow:auto}
.ideo4-report:placeholder-shown{opacity:.55}
`;

function injectStyle() {
  if (typeof document === "undefined" || document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  document.head.appendChild(style);
}

const chain = (obj, key, fn) => chainHook(obj, key, fn, EXTENSION_NAME);

/** Rows the text needs in a ~55-character-wide area (wrapped lines count). */
function rowCount(text) {
  return String(text ?? "")
    .split("\n")
    .reduce((n, line) => n + Math.max(1, Math.ceil(line.length / 55)), 0);
}

/** The node's report widget, created on first use (read-only, never serialised). */
function reportWidget(node) {
  let w = node.widgets?.find((x) => x.name === REPORT_WIDGET);
  if (w) return w;
  injectStyle();
  const area = document.createElement("textarea");
  area.className = "ideo4-report";
  area.readOnly = true;
  area.spellcheck = false;
  area.placeholder = "report of the last run";
  area.title = "What this node did in the last run (read-only)";
  w = node.addDOMWidget(REPORT_WIDGET, "ideogram4_report", area, {
    serialize: false,
    getValue: () => area.value,
    setValue: (v) => {
      area.value = String(v ?? "");
    },
    getMinHeight: () => Math.min(20 * 15, 15 * Math.max(2, rowCount(area.value)) + 12),
  });
  w.serialize = false;
  w.ideogram4Area = area;
  return w;
}

function setReport(node, text) {
  const w = reportWidget(node);
  w.ideogram4Area.value = text;
  const min = node.computeSize?.();
  if (min && node.setSize) node.setSize([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
  node.setDirtyCanvas?.(true, true);
}

function clearReports(graph) {
  for (const node of graph?._nodes ?? graph?.nodes ?? []) {
    const w = node.widgets?.find((x) => x.name === REPORT_WIDGET);
    if (w?.ideogram4Area) w.ideogram4Area.value = "";
    if (node.subgraph) clearReports(node.subgraph);
  }
  app.canvas?.setDirty?.(true, true);
}

/** Disable the widgets that do nothing for the current preset / latent link. */
function updateInert(node) {
  const rule = INERT_RULES[node.type ?? node.comfyClass];
  if (!rule || !node.widgets) return;
  const preset = node.widgets.find((w) => w.name === selectorOf(node.type ?? node.comfyClass))?.value;
  const latentLinked = node.inputs?.some((i) => i.name === "latent" && i.link !== null && i.link !== undefined);
  const inert = inertWidgets(node.type ?? node.comfyClass, { preset, latentLinked });
  let changed = false;
  for (const w of node.widgets) {
    if (![...rule.custom, ...rule.latent].includes(w.name)) continue;
    const reason = inert[w.name];
    changed ||= !!w.disabled !== !!reason;
    w.disabled = !!reason; // the canvas renderer greys it out and ignores clicks
    if (w.options) w.options.disabled = !!reason; // the Vue node renderer reads options.disabled
    if (w.ideogram4Tooltip === undefined) w.ideogram4Tooltip = w.tooltip ?? w.options?.tooltip ?? "";
    w.tooltip = reason ? `${reason}. ${w.ideogram4Tooltip}` : w.ideogram4Tooltip;
  }
  if (changed) node.setDirtyCanvas?.(true, true);
}

export const extension = {
  name: EXTENSION_NAME,
  async setup() {
    api.addEventListener?.("promptQueued", () => clearReports(app.graph));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isPackNode(nodeData?.name)) return;
    chain(nodeType.prototype, "onExecuted", function (output) {
      const text = reportText(output);
      if (text !== null) setReport(this, text);
    });
    if (!INERT_RULES[nodeData.name]) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      const preset = this.widgets?.find((w) => w.name === selectorOf(nodeData.name));
      if (preset) chain(preset, "callback", () => updateInert(this));
      updateInert(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      updateInert(this);
    });
    chain(nodeType.prototype, "onConnectionsChange", function () {
      updateInert(this);
    });
    // values set without a callback (undo, paste, API): re-check when the node is drawn
    chain(nodeType.prototype, "onDrawForeground", function () {
      updateInert(this);
    });
  },
};

app.registerExtension(extension);
