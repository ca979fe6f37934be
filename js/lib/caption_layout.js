// Caption-JSON helpers for the Ideogram 4 layout editor (spec §6). Pure ES
// module: no DOM, no ComfyUI imports, runs under Node's test runner.
//
// The Caption Builder node stores its layout in the `layout` STRING widget as a
// JSON *list* of element objects, exactly in caption schema:
//   [{"type":"obj","bbox":[y0,x0,y1,x1],"desc":"..."},
//    {"type":"text","bbox":[...],"text":"HELLO","desc":"...","color_palette":["#FF0000"]}]
// This module parses that string (tolerantly: a whole caption JSON object, its
// `compositional_deconstruction`, a Magic Prompt response or fenced code are also
// accepted), validates elements with the verifier's rules (spec §6.3 items 6–8)
// and writes the canonical form (key order type, bbox, text, desc,
// color_palette; minified; non-ASCII kept literal like Python's
// json.dumps(..., separators=(",", ":"), ensure_ascii=False)).

import { BBOX_MAX } from "./geometry.js";

export const ELEMENT_TYPES = Object.freeze(["obj", "text"]);
export const ELEMENT_KEY_ORDER = Object.freeze(["type", "bbox", "text", "desc", "color_palette"]);
export const MAX_ELEMENT_COLORS = 5;
export const MAX_GLOBAL_COLORS = 16;
/** style_description key orders (spec §6.1 / §6.3 item 4). */
export const STYLE_KEY_ORDER = Object.freeze({
  photo: Object.freeze(["aesthetics", "lighting", "photo", "medium", "color_palette"]),
  art_style: Object.freeze(["aesthetics", "lighting", "medium", "art_style", "color_palette"]),
});
/** Builder widgets (other than layout/width/height) that an imported caption can fill. */
export const BUILDER_FIELDS = Object.freeze([
  "high_level_description",
  "style_mode",
  "aesthetics",
  "lighting",
  "medium",
  "style_value",
  "color_palette",
  "background",
]);

const HEX6 = /^#[0-9A-F]{6}$/;
const HEX6_ANY_CASE = /^#[0-9a-fA-F]{6}$/;

// ---------------------------------------------------------------------------
// Colours

/**
 * "#rrggbb" / "#RRGGBB" (surrounding whitespace ignored) → "#RRGGBB"; anything
 * else (including "#abc", "abcdef", names) → null. Only lowercase → uppercase
 * is normalised; the verifier rejects every other form, so we do too.
 */
export function normalizeHexColor(value) {
  if (typeof value !== "string") return null;
  const s = value.trim();
  return HEX6_ANY_CASE.test(s) ? s.toUpperCase() : null;
}

/** Strict check used by validation: exactly "#RRGGBB" with uppercase hex digits. */
export function isCanonicalHexColor(value) {
  return typeof value === "string" && HEX6.test(value);
}

/**
 * Parse the builder's `color_palette` widget text the way the Python node does
 * (model/caption.py parse_palette): colours separated by commas, semicolons,
 * whitespace or newlines, optionally wrapped in [] and quotes, with or without
 * the leading "#", any case. Returns {colors, errors}; colours come out as
 * "#RRGGBB", anything else is reported and left out.
 */
export function parsePaletteString(text, { max = MAX_GLOBAL_COLORS, label = "color_palette" } = {}) {
  const colors = [];
  const errors = [];
  const parts = String(text ?? "")
    .trim()
    .replace(/^\[+|\]+$/g, "")
    .split(/[\s,;]+/)
    .map((p) => p.replace(/^["']+|["']+$/g, ""))
    .filter((p) => p.length > 0);
  for (const part of parts) {
    const c = normalizeHexColor(/^[0-9a-fA-F]{6}$/.test(part) ? `#${part}` : part);
    if (c) colors.push(c);
    else errors.push(`${label}: ${JSON.stringify(part)} is not a #RRGGBB colour`);
  }
  if (colors.length > max) errors.push(`${label}: ${colors.length} colours, at most ${max} allowed`);
  return { colors, errors };
}

/** Colour list → text for the builder's `color_palette` widget. */
export function formatPaletteString(colors) {
  return (colors ?? []).join(", ");
}

// ---------------------------------------------------------------------------
// Validation

const isPlainObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function describe(v) {
  try {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s.length > 60 ? s.slice(0, 57) + "..." : s;
  } catch {
    return String(v);
  }
}

/** Errors for one bbox value (empty list when valid). `where` prefixes messages. */
export function validateBbox(bbox, where = "bbox") {
  if (!Array.isArray(bbox) || bbox.length !== 4) {
    return [`${where} must be a list of 4 integers [y_min, x_min, y_max, x_max], got ${describe(bbox)}`];
  }
  const errors = [];
  if (!bbox.every((v) => Number.isInteger(v))) {
    errors.push(`${where} values must be integers, got ${describe(bbox)}`);
    return errors;
  }
  if (!bbox.every((v) => v >= 0 && v <= BBOX_MAX)) {
    errors.push(`${where} values must be in [0, ${BBOX_MAX}], got ${describe(bbox)}`);
  }
  if (bbox[0] > bbox[2]) errors.push(`${where}: y_min ${bbox[0]} > y_max ${bbox[2]}`);
  if (bbox[1] > bbox[3]) errors.push(`${where}: x_min ${bbox[1]} > x_max ${bbox[3]}`);
  return errors;
}

/** Errors for a color_palette value; `max` is 5 for elements and 16 globally. */
export function validatePalette(palette, max, where = "color_palette") {
  if (!Array.isArray(palette)) return [`${where} must be a list of "#RRGGBB" strings, got ${describe(palette)}`];
  const errors = [];
  if (palette.length > max) errors.push(`${where} has ${palette.length} colours, at most ${max} allowed`);
  palette.forEach((c, i) => {
    if (!isCanonicalHexColor(c)) {
      const hint = normalizeHexColor(c) ? " (hex digits must be uppercase)" : "";
      errors.push(`${where}[${i}] ${describe(c)} is not "#RRGGBB"${hint}`);
    }
  });
  return errors;
}

/**
 * Validate one element with the verifier's rules. `index` is 0-based; messages
 * use the 1-based number shown on the canvas ("element 1 …").
 * Options: requireDesc (default false) also flags empty desc/text strings.
 */
export function validateElement(el, index = 0, { requireDesc = false } = {}) {
  const where = `element ${index + 1}`;
  if (!isPlainObject(el)) return [`${where} must be an object, got ${describe(el)}`];
  const errors = [];
  for (const key of Object.keys(el)) {
    if (!ELEMENT_KEY_ORDER.includes(key)) errors.push(`${where}: unknown key ${JSON.stringify(key)}`);
  }
  if (!("type" in el)) errors.push(`${where}: missing "type"`);
  else if (!ELEMENT_TYPES.includes(el.type)) {
    errors.push(`${where}: type must be "obj" or "text", got ${describe(el.type)}`);
  }
  if ("bbox" in el) errors.push(...validateBbox(el.bbox, `${where}: bbox`));
  if (el.type === "text") {
    if (!("text" in el)) errors.push(`${where}: text elements need a "text" string`);
    else if (typeof el.text !== "string") errors.push(`${where}: "text" must be a string`);
    else if (requireDesc && el.text.trim() === "") errors.push(`${where}: "text" is empty`);
  } else if ("text" in el && el.type === "obj") {
    errors.push(`${where}: "text" is only allowed on text elements`);
  }
  if (!("desc" in el)) errors.push(`${where}: missing "desc"`);
  else if (typeof el.desc !== "string") errors.push(`${where}: "desc" must be a string`);
  else if (requireDesc && el.desc.trim() === "") errors.push(`${where}: "desc" is empty`);
  if ("color_palette" in el) {
    errors.push(...validatePalette(el.color_palette, MAX_ELEMENT_COLORS, `${where}: color_palette`));
  }
  return errors;
}

/** Validate a whole elements list; returns a flat list of error strings. */
export function validateElements(elements, opts = {}) {
  if (!Array.isArray(elements)) return [`layout must be a JSON list of elements, got ${describe(elements)}`];
  return elements.flatMap((el, i) => validateElement(el, i, opts));
}

// ---------------------------------------------------------------------------
// Canonical form

/**
 * Element → new object with the canonical key order (type, bbox, text, desc,
 * color_palette). Unknown keys are dropped; `text` is dropped from obj
 * elements (a text element without one gets ""); an empty color_palette is dropped; palette colours are upper-cased
 * when they are otherwise valid. Values are not otherwise altered, so
 * validation errors survive canonicalisation and Python still reports them.
 */
export function canonicalElement(el) {
  const out = {};
  out.type = el.type;
  if (el.bbox !== undefined) out.bbox = Array.isArray(el.bbox) ? [...el.bbox] : el.bbox;
  if (el.type === "text") out.text = el.text ?? "";
  else if (el.text !== undefined && el.type !== "obj") out.text = el.text;
  out.desc = el.desc ?? "";
  if (el.color_palette !== undefined) {
    if (Array.isArray(el.color_palette)) {
      if (el.color_palette.length > 0) out.color_palette = el.color_palette.map((c) => normalizeHexColor(c) ?? c);
    } else {
      out.color_palette = el.color_palette;
    }
  }
  return out;
}

/** Elements list → canonical minified JSON string for the `layout` widget. */
export function serializeElements(elements) {
  return JSON.stringify((elements ?? []).map(canonicalElement));
}

// ---------------------------------------------------------------------------
// Parsing

function stripCodeFence(text) {
  const m = /^\s*```[a-zA-Z0-9_-]*\s*\n([\s\S]*?)\n?\s*```\s*$/.exec(text);
  return m ? m[1] : text;
}

/**
 * Builder widget values found in a caption object (only keys the caption
 * actually has; style_mode is "none" when a full caption has no
 * style_description).
 */
export function captionToFields(caption) {
  const fields = {};
  const warnings = [];
  if (typeof caption.high_level_description === "string") {
    fields.high_level_description = caption.high_level_description;
  }
  const sd = caption.style_description;
  if (sd === undefined) {
    fields.style_mode = "none";
  } else if (isPlainObject(sd)) {
    const hasPhoto = "photo" in sd;
    const hasArt = "art_style" in sd;
    if (hasPhoto && !hasArt) {
      fields.style_mode = "photo";
      fields.style_value = String(sd.photo ?? "");
    } else if (hasArt && !hasPhoto) {
      fields.style_mode = "art_style";
      fields.style_value = String(sd.art_style ?? "");
    } else {
      warnings.push('style_description must have exactly one of "photo" / "art_style"');
    }
    for (const key of ["aesthetics", "lighting", "medium"]) {
      if (typeof sd[key] === "string") fields[key] = sd[key];
    }
    if (Array.isArray(sd.color_palette)) {
      const colors = sd.color_palette.map((c) => normalizeHexColor(c) ?? String(c));
      fields.color_palette = formatPaletteString(colors);
    }
  } else {
    warnings.push("style_description must be an object");
  }
  const cd = caption.compositional_deconstruction;
  if (isPlainObject(cd) && typeof cd.background === "string") fields.background = cd.background;
  return { fields, warnings };
}

/**
 * Parse the `layout` widget text (or pasted import text).
 *
 * Accepts: "" (empty layout), a JSON list of elements, a full caption object
 * (documented or Magic Prompt dialect), a bare compositional_deconstruction
 * object, a Magic Prompt response {"json_prompt": {...}}, a single element
 * object, any of these inside a ``` code fence.
 *
 * Returns {ok, kind, elements, fields, errors, warnings}:
 *   ok       – false when nothing usable could be extracted (elements is null);
 *   kind     – "empty" | "elements" | "caption" | "deconstruction" | "element" | "invalid";
 *   elements – canonical element objects (unknown keys dropped);
 *   fields   – builder widget values found in a full caption ({} otherwise);
 *   errors   – validation errors of the elements as given (verifier rules);
 *   warnings – notes about what was ignored.
 */
export function parseLayout(text) {
  const result = { ok: false, kind: "invalid", elements: null, fields: {}, errors: [], warnings: [] };
  const src = stripCodeFence(String(text ?? "")).trim();
  if (src === "") {
    return { ...result, ok: true, kind: "empty", elements: [] };
  }
  let data;
  try {
    data = JSON.parse(src);
  } catch (e) {
    result.errors.push(`invalid JSON: ${e.message}`);
    return result;
  }
  if (isPlainObject(data) && isPlainObject(data.json_prompt)) data = data.json_prompt;

  let elements;
  if (Array.isArray(data)) {
    result.kind = "elements";
    elements = data;
  } else if (isPlainObject(data) && "compositional_deconstruction" in data) {
    result.kind = "caption";
    const cd = data.compositional_deconstruction;
    if (!isPlainObject(cd)) {
      result.errors.push("compositional_deconstruction must be an object");
      return result;
    }
    const known = ["high_level_description", "style_description", "compositional_deconstruction"];
    const extra = Object.keys(data).filter((k) => !known.includes(k));
    if (extra.length) result.warnings.push(`ignored top-level keys: ${extra.join(", ")}`);
    const { fields, warnings } = captionToFields(data);
    result.fields = fields;
    result.warnings.push(...warnings);
    elements = cd.elements ?? [];
  } else if (isPlainObject(data) && ("elements" in data || "background" in data)) {
    result.kind = "deconstruction";
    if (typeof data.background === "string") result.fields = { background: data.background };
    elements = data.elements ?? [];
  } else if (isPlainObject(data) && "type" in data) {
    result.kind = "element";
    elements = [data];
  } else {
    result.errors.push(
      "expected a JSON list of elements or a caption object with compositional_deconstruction",
    );
    return result;
  }
  if (!Array.isArray(elements)) {
    result.errors.push(`elements must be a list, got ${describe(elements)}`);
    return result;
  }
  const bad = elements.findIndex((el) => !isPlainObject(el));
  if (bad >= 0) {
    result.errors.push(`element ${bad + 1} must be an object, got ${describe(elements[bad])}`);
    return result;
  }
  result.errors.push(...validateElements(elements));
  result.elements = elements.map(canonicalElement);
  result.ok = true;
  return result;
}

// ---------------------------------------------------------------------------
// Full caption (Export)

/**
 * Assemble a caption object in canonical key order from the builder's widget
 * values and an elements list. Mirrors the documented schema (§6.1):
 * high_level_description is omitted when blank; style_description is omitted
 * for style_mode "none"; its color_palette is omitted when empty.
 * The Python node remains the authority for what is sent to the model.
 */
export function buildCaption(fields, elements) {
  const caption = {};
  const hld = fields.high_level_description;
  if (typeof hld === "string" && hld.trim() !== "") caption.high_level_description = hld;
  const mode = fields.style_mode ?? "none";
  if (mode === "photo" || mode === "art_style") {
    const sd = {};
    const palette = parsePaletteString(fields.color_palette ?? "").colors;
    for (const key of STYLE_KEY_ORDER[mode]) {
      if (key === "color_palette") {
        if (palette.length) sd.color_palette = palette;
      } else if (key === mode) {
        sd[key] = fields.style_value ?? "";
      } else {
        sd[key] = fields[key] ?? "";
      }
    }
    caption.style_description = sd;
  }
  caption.compositional_deconstruction = {
    background: fields.background ?? "",
    elements: (elements ?? []).map(canonicalElement),
  };
  return caption;
}

/** Caption object → canonical minified JSON (keys must already be in order, as buildCaption makes them). */
export function serializeCaption(caption) {
  return JSON.stringify(caption);
}

// ---------------------------------------------------------------------------
// Import

/**
 * Builder widget values an Import sets. A full caption replaces EVERY builder
 * field: those the caption lacks are cleared ("" — e.g. no global palette, no
 * aesthetics), so nothing of the previous caption survives. A bare
 * compositional_deconstruction only sets background; element lists set none.
 * style_mode is left alone only when the caption's style_description is
 * ambiguous (both or neither of photo/art_style: reported as a warning).
 */
export function importFields(parsed) {
  if (!parsed?.ok) return {};
  if (parsed.kind !== "caption") return { ...parsed.fields };
  const out = {};
  for (const name of BUILDER_FIELDS) {
    if (name in parsed.fields) out[name] = parsed.fields[name];
    else if (name !== "style_mode") out[name] = "";
  }
  return out;
}

/**
 * Split the validation errors of imported elements (as given) into those the
 * canonical form already fixed (e.g. lowercase hex upper-cased) and those that
 * remain in what is stored.
 */
export function importFixes(parsed) {
  if (!parsed?.ok) return { fixed: [], remaining: [] };
  const remaining = validateElements(parsed.elements);
  const fixed = parsed.errors.filter((e) => !remaining.includes(e)).map(describeFix);
  return { fixed, remaining };
}

/** A fixed validation error as what was done ('… "#e53935" upper-cased to "#E53935"'). */
function describeFix(error) {
  const m = /^(.*?) "(#[0-9a-fA-F]{6})" is not "#RRGGBB" \(hex digits must be uppercase\)$/.exec(error);
  if (m) return `${m[1]} "${m[2]}" upper-cased to "${m[2].toUpperCase()}"`;
  return `${error} (stored in canonical form)`;
}
