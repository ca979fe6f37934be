// Cross-check the JS caption helpers against the reference verifier's verdicts
// recorded in tests/data/caption_golden.json (shared with the Python tests).

import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import {
  buildCaption,
  parseLayout,
  serializeCaption,
  serializeElements,
  validateElements,
} from "../lib/caption_layout.js";

const GOLDEN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../tests/data/caption_golden.json");
const skip = existsSync(GOLDEN) ? false : `missing ${GOLDEN}`;
const cases = skip ? [] : JSON.parse(readFileSync(GOLDEN, "utf8")).cases;
const byName = Object.fromEntries(cases.map((c) => [c.name, c]));

// Accepted captions that are already canonical (minified, schema key order,
// literal non-ASCII, no blank HLD / empty palette): import → export must give
// the identical string.
const CANONICAL_ACCEPTED = [
  "docs_retriever_photo",
  "docs_business_card_art_style",
  "docs_full_example_trademark_literal",
  "docs_sailboat_no_bbox",
  "minimal_required_only",
  "cjk_text_literal",
  "bbox_edges_and_zero_area",
  "palette_16_and_element_5",
  "no_style_no_hld",
  "text_element_with_bbox_and_palette",
];

test("golden: canonical accepted captions round-trip import → export byte-identically", { skip }, () => {
  for (const name of CANONICAL_ACCEPTED) {
    const c = byName[name];
    assert.ok(c, `golden case ${name} missing`);
    assert.equal(c.reference.accepted, true);
    const p = parseLayout(c.text);
    assert.equal(p.ok, true, name);
    assert.deepEqual(p.errors, [], name);
    assert.equal(serializeCaption(buildCaption(p.fields, p.elements)), c.text, name);
    // and the layout part alone is a fixed point
    const layout = serializeElements(p.elements);
    assert.equal(serializeElements(parseLayout(layout).elements), layout, name);
  }
});

test("golden: non-canonical accepted captions are canonicalised to minified schema order", { skip }, () => {
  for (const name of ["pretty_printed_indent2", "top_level_order_not_checked", "surrounding_whitespace"]) {
    const p = parseLayout(byName[name].text);
    assert.equal(p.ok, true, name);
    const out = serializeCaption(buildCaption(p.fields, p.elements));
    assert.notEqual(out, byName[name].text, name);
    assert.doesNotMatch(out, /\n|": |", /, `${name} not minified`);
    assert.ok(out.startsWith('{"high_level_description"') || out.startsWith('{"style_description"') || out.startsWith('{"compositional'), name);
    // export → import → export is stable
    const q = parseLayout(out);
    assert.equal(serializeCaption(buildCaption(q.fields, q.elements)), out, name);
  }
});

test("golden: element-level rejections are reported by validateElements", { skip }, () => {
  // Cases the reference rejects because of one element. Key-order problems are
  // not errors here: the editor always writes canonical order (checked below).
  const KEY_ORDER_ONLY = new Set(["element_desc_before_type", "element_text_after_desc", "element_bbox_after_desc"]);
  // 1.0 and 1 are the same number once parsed in JS; canonical output writes ints.
  const JS_INDISTINGUISHABLE = new Set(["bbox_integral_floats"]);
  let checked = 0;
  for (const c of cases) {
    if (c.reference.accepted || !/^(element_|bbox_)/.test(c.name)) continue;
    if (KEY_ORDER_ONLY.has(c.name) || JS_INDISTINGUISHABLE.has(c.name)) continue;
    const els = JSON.parse(c.text).compositional_deconstruction.elements;
    const errors = validateElements(els);
    assert.ok(errors.length > 0, `${c.name}: reference says ${c.reference.messages.join("; ")}, JS found nothing`);
    checked++;
  }
  assert.ok(checked >= 18, `only ${checked} element cases checked`);
  for (const name of KEY_ORDER_ONLY) {
    const p = parseLayout(byName[name].text);
    for (const el of p.elements) {
      const keys = Object.keys(el);
      const order = ["type", "bbox", "text", "desc", "color_palette"].filter((k) => keys.includes(k));
      assert.deepEqual(keys, order, name);
    }
  }
});

test("golden: accepted captions raise no element errors (except where JS is stricter on types)", { skip }, () => {
  // The reference does not type-check desc/text and treats booleans as ints;
  // the pack's validator (and this one) reject those.
  const STRICTER = new Set(["desc_is_number", "text_is_list", "bbox_booleans"]);
  for (const c of cases) {
    if (!c.reference.accepted || STRICTER.has(c.name)) continue;
    const p = parseLayout(c.text);
    if (!p.ok) continue; // e.g. NaN, which JSON.parse rejects
    assert.deepEqual(p.errors, [], c.name);
  }
  for (const name of STRICTER) assert.ok(parseLayout(byName[name].text).errors.length > 0, name);
});
