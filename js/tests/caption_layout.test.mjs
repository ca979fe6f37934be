import { test } from "node:test";
import assert from "node:assert/strict";

import {
  buildCaption,
  canonicalElement,
  captionToFields,
  formatPaletteString,
  isCanonicalHexColor,
  normalizeHexColor,
  parseLayout,
  parsePaletteString,
  serializeCaption,
  serializeElements,
  validateBbox,
  validateElement,
  validateElements,
} from "../lib/caption_layout.js";

const CANONICAL_LIST =
  '[{"type":"obj","bbox":[120,80,640,520],"desc":"a red vintage bicycle leaning on a wall"},' +
  '{"type":"text","bbox":[40,100,160,900],"text":"GRAND OPENING","desc":"bold white sans-serif headline","color_palette":["#FFFFFF","#E53935"]}]';

const CANONICAL_CAPTION =
  '{"high_level_description":"A café poster: 日本 ramen bar opening","style_description":{"aesthetics":"clean, bold",' +
  '"lighting":"flat studio light","medium":"graphic_design","art_style":"swiss poster","color_palette":["#111111","#F5F5F5","#E53935"]},' +
  '"compositional_deconstruction":{"background":"off-white paper texture","elements":[' +
  '{"type":"text","bbox":[60,80,200,920],"text":"ラーメン OPEN","desc":"huge red brush lettering","color_palette":["#E53935"]},' +
  '{"type":"obj","bbox":[300,250,900,750],"desc":"a steaming bowl of ramen"},' +
  '{"type":"obj","desc":"chopsticks resting on the bowl"}]}}';

test("canonical key order: type, bbox, text, desc, color_palette; minified", () => {
  const el = {
    color_palette: ["#00FF00"],
    desc: "neon sign",
    text: "OPEN",
    bbox: [1, 2, 3, 4],
    type: "text",
  };
  assert.equal(
    serializeElements([el]),
    '[{"type":"text","bbox":[1,2,3,4],"text":"OPEN","desc":"neon sign","color_palette":["#00FF00"]}]',
  );
  assert.deepEqual(Object.keys(canonicalElement({ desc: "x", type: "obj", bbox: [0, 0, 1, 1] })), [
    "type",
    "bbox",
    "desc",
  ]);
  // unknown keys and an empty palette are dropped, lowercase palette upper-cased
  assert.equal(
    serializeElements([{ type: "obj", desc: "d", canvas: 1, color_palette: [] }, { type: "obj", desc: "e", color_palette: ["#aabbcc"] }]),
    '[{"type":"obj","desc":"d"},{"type":"obj","desc":"e","color_palette":["#AABBCC"]}]',
  );
  // text is dropped from obj elements; a text element always has one
  assert.equal(serializeElements([{ type: "obj", text: "X", desc: "d" }]), '[{"type":"obj","desc":"d"}]');
  assert.equal(serializeElements([{ type: "text", desc: "d" }]), '[{"type":"text","text":"","desc":"d"}]');
  assert.equal(serializeElements([]), "[]");
});

test("non-ASCII stays literal, escapes match Python json.dumps(ensure_ascii=False)", () => {
  const s = serializeElements([{ type: "text", text: "Café 日本 ✓", desc: 'quote " back\\slash\nnew\ttab\u0001' }]);
  assert.equal(
    s,
    '[{"type":"text","text":"Café 日本 ✓","desc":"quote \\" back\\\\slash\\nnew\\ttab\\u0001"}]',
  );
  assert.ok(!/\\u00e9|\\u65e5/.test(s));
});

test("round trip: canonical layout list → parse → serialize is identical", () => {
  const parsed = parseLayout(CANONICAL_LIST);
  assert.equal(parsed.ok, true);
  assert.equal(parsed.kind, "elements");
  assert.deepEqual(parsed.errors, []);
  assert.equal(parsed.elements.length, 2);
  assert.equal(serializeElements(parsed.elements), CANONICAL_LIST);
});

test("messy input (pretty, reordered keys) canonicalises, and canonical output is a fixed point", () => {
  const messy = `[
    {"desc": "a red vintage bicycle leaning on a wall", "bbox": [120, 80, 640, 520], "type": "obj"},
    {"color_palette": ["#ffffff", "#E53935"], "desc": "bold white sans-serif headline",
     "text": "GRAND OPENING", "type": "text", "bbox": [40, 100, 160, 900]}
  ]`;
  const first = parseLayout(messy);
  assert.equal(first.ok, true);
  // the lowercase colour is reported (verifier rule) but canonicalised
  assert.equal(first.errors.length, 1);
  assert.match(first.errors[0], /element 2: color_palette\[0\] "#ffffff".*uppercase/);
  const once = serializeElements(first.elements);
  assert.equal(once, CANONICAL_LIST);
  assert.equal(serializeElements(parseLayout(once).elements), once);
});

test("import a full caption: elements + builder fields; export rebuilds the identical caption", () => {
  const parsed = parseLayout(CANONICAL_CAPTION);
  assert.equal(parsed.ok, true);
  assert.equal(parsed.kind, "caption");
  assert.deepEqual(parsed.errors, []);
  assert.equal(parsed.elements.length, 3);
  assert.equal(parsed.elements[2].bbox, undefined);
  assert.deepEqual(parsed.fields, {
    high_level_description: "A café poster: 日本 ramen bar opening",
    style_mode: "art_style",
    style_value: "swiss poster",
    aesthetics: "clean, bold",
    lighting: "flat studio light",
    medium: "graphic_design",
    color_palette: "#111111, #F5F5F5, #E53935",
    background: "off-white paper texture",
  });
  assert.equal(serializeCaption(buildCaption(parsed.fields, parsed.elements)), CANONICAL_CAPTION);
});

test("photo captions and captions without style_description round-trip too", () => {
  const photo =
    '{"high_level_description":"street at dusk","style_description":{"aesthetics":"moody","lighting":"neon",' +
    '"photo":"35mm film","medium":"photograph"},"compositional_deconstruction":{"background":"wet asphalt",' +
    '"elements":[{"type":"obj","bbox":[0,0,1000,500],"desc":"a taxi"}]}}';
  const p = parseLayout(photo);
  assert.equal(p.fields.style_mode, "photo");
  assert.equal(p.fields.style_value, "35mm film");
  assert.equal(serializeCaption(buildCaption(p.fields, p.elements)), photo);

  const bare = '{"compositional_deconstruction":{"background":"sky","elements":[]}}';
  const b = parseLayout(bare);
  assert.equal(b.fields.style_mode, "none");
  assert.equal(serializeCaption(buildCaption(b.fields, b.elements)), bare);
});

test("Magic Prompt dialect, fenced code and API responses are accepted", () => {
  const mp =
    '```json\n{"aspect_ratio":"1:1","high_level_description":"h","compositional_deconstruction":' +
    '{"background":"b","elements":[{"type":"obj","bbox":[1,2,3,4],"desc":"d"}]}}\n```';
  const p = parseLayout(mp);
  assert.equal(p.ok, true);
  assert.equal(p.kind, "caption");
  assert.deepEqual(p.warnings, ["ignored top-level keys: aspect_ratio"]);
  assert.equal(serializeElements(p.elements), '[{"type":"obj","bbox":[1,2,3,4],"desc":"d"}]');
  assert.equal(p.fields.style_mode, "none");

  const api = parseLayout('{"aspect_ratio":"1x1","json_prompt":{"compositional_deconstruction":{"background":"b","elements":[]}}}');
  assert.equal(api.ok, true);
  assert.equal(api.fields.background, "b");

  const cd = parseLayout('{"background":"grass","elements":[{"type":"obj","desc":"cow"}]}');
  assert.equal(cd.kind, "deconstruction");
  assert.deepEqual(cd.fields, { background: "grass" });
  assert.equal(cd.elements.length, 1);
});

test("parseLayout: empty, invalid JSON, wrong shapes", () => {
  assert.deepEqual(parseLayout("   ").elements, []);
  assert.equal(parseLayout("").kind, "empty");
  const bad = parseLayout("[{type: obj}]");
  assert.equal(bad.ok, false);
  assert.equal(bad.elements, null);
  assert.match(bad.errors[0], /^invalid JSON/);
  const num = parseLayout("42");
  assert.equal(num.ok, false);
  assert.match(num.errors[0], /expected a JSON list/);
  const notObj = parseLayout('[{"type":"obj","desc":"a"}, "b"]');
  assert.equal(notObj.ok, false);
  assert.match(notObj.errors[0], /element 2 must be an object/);
  const elemsNotList = parseLayout('{"compositional_deconstruction":{"background":"x","elements":{}}}');
  assert.equal(elemsNotList.ok, false);
  assert.match(elemsNotList.errors[0], /elements must be a list/);
});

test("validation: bbox problems", () => {
  const v = (bbox) => validateElement({ type: "obj", bbox, desc: "d" }, 2);
  assert.deepEqual(v([0, 0, 1000, 1000]), []);
  assert.match(v([0, 0, 10])[0], /^element 3: bbox must be a list of 4 integers/);
  assert.match(v([0, 0.5, 10, 10])[0], /bbox values must be integers/);
  assert.match(v([0, 0, 1001, 10])[0], /bbox values must be in \[0, 1000\]/);
  assert.match(v([-1, 0, 10, 10])[0], /must be in \[0, 1000\]/);
  assert.deepEqual(v([500, 10, 100, 20]), ["element 3: bbox: y_min 500 > y_max 100"]);
  assert.deepEqual(v([10, 600, 100, 20]), ["element 3: bbox: x_min 600 > x_max 20"]);
  assert.match(v("0,0,1,1")[0], /must be a list of 4 integers/);
});

test("validation: palettes", () => {
  const v = (color_palette) => validateElement({ type: "obj", desc: "d", color_palette }, 0);
  assert.deepEqual(v(["#FF0000", "#00AA00"]), []);
  assert.deepEqual(v(["#ff0000"]), ['element 1: color_palette[0] "#ff0000" is not "#RRGGBB" (hex digits must be uppercase)']);
  assert.deepEqual(v(["#F00"]), ['element 1: color_palette[0] "#F00" is not "#RRGGBB"']);
  assert.deepEqual(v(["red"]), ['element 1: color_palette[0] "red" is not "#RRGGBB"']);
  const six = ["#000000", "#111111", "#222222", "#333333", "#444444", "#555555"];
  assert.deepEqual(v(six), ["element 1: color_palette has 6 colours, at most 5 allowed"]);
  assert.match(v("#FF0000")[0], /color_palette must be a list/);
});

test("validation: types and required keys", () => {
  assert.deepEqual(validateElement({ type: "image", desc: "d" }, 0), ['element 1: type must be "obj" or "text", got "image"']);
  assert.deepEqual(validateElement({ desc: "d" }, 0), ['element 1: missing "type"']);
  assert.deepEqual(validateElement({ type: "obj" }, 0), ['element 1: missing "desc"']);
  assert.deepEqual(validateElement({ type: "text", desc: "d" }, 0), ['element 1: text elements need a "text" string']);
  assert.deepEqual(validateElement({ type: "obj", text: "T", desc: "d" }, 0), ['element 1: "text" is only allowed on text elements']);
  assert.deepEqual(validateElement({ type: "obj", desc: "d", layout: 1 }, 0), ['element 1: unknown key "layout"']);
  assert.deepEqual(validateElement({ type: "obj", desc: 5 }, 0), ['element 1: "desc" must be a string']);
  assert.deepEqual(validateElement("x", 4), ['element 5 must be an object, got "x"']);
  // empty strings are only flagged on request
  assert.deepEqual(validateElement({ type: "text", text: "", desc: " " }, 0), []);
  assert.deepEqual(validateElement({ type: "text", text: "", desc: " " }, 0, { requireDesc: true }), [
    'element 1: "text" is empty',
    'element 1: "desc" is empty',
  ]);
  assert.deepEqual(validateElements({}), ["layout must be a JSON list of elements, got {}"]);
  assert.equal(validateElements([{ type: "obj", desc: "a" }, { type: "x", desc: "b" }]).length, 1);
});

test("colour helpers: only lowercase→uppercase is normalised", () => {
  assert.equal(normalizeHexColor("#a1b2c3"), "#A1B2C3");
  assert.equal(normalizeHexColor("  #A1B2C3 "), "#A1B2C3");
  assert.equal(normalizeHexColor("#abc"), null);
  assert.equal(normalizeHexColor("a1b2c3"), null);
  assert.equal(normalizeHexColor("#a1b2c3ff"), null);
  assert.equal(normalizeHexColor(0xffffff), null);
  assert.equal(isCanonicalHexColor("#A1B2C3"), true);
  assert.equal(isCanonicalHexColor("#a1b2c3"), false);

  const ok = parsePaletteString("#ff0000, #00FF00\n#0000ff;#123456");
  assert.deepEqual(ok, { colors: ["#FF0000", "#00FF00", "#0000FF", "#123456"], errors: [] });
  // same leniency as the Python node's parse_palette: no "#", JSON-list form
  assert.deepEqual(parsePaletteString('["ff0000", "#00ff00"]').colors, ["#FF0000", "#00FF00"]);
  const bad = parsePaletteString("#fff, blue, #ABCDEF");
  assert.deepEqual(bad.colors, ["#ABCDEF"]);
  assert.deepEqual(bad.errors, ['color_palette: "#fff" is not a #RRGGBB colour', 'color_palette: "blue" is not a #RRGGBB colour']);
  const many = Array.from({ length: 17 }, (_, i) => `#0000${String(i).padStart(2, "0")}`).join(",");
  assert.deepEqual(parsePaletteString(many).errors, ["color_palette: 17 colours, at most 16 allowed"]);
  assert.equal(formatPaletteString(["#000000", "#FFFFFF"]), "#000000, #FFFFFF");
});

test("captionToFields reports ambiguous style_description", () => {
  const { fields, warnings } = captionToFields({
    style_description: { photo: "a", art_style: "b", aesthetics: "x", lighting: "y", medium: "z" },
    compositional_deconstruction: { background: "bg", elements: [] },
  });
  assert.equal(fields.style_mode, undefined);
  assert.deepEqual(warnings, ['style_description must have exactly one of "photo" / "art_style"']);
  assert.equal(fields.background, "bg");
});

test("captionToFields writes the style palette in canonical case; validateBbox reports non-integers alone", () => {
  const { fields } = captionToFields({
    style_description: { aesthetics: "x", lighting: "y", medium: "z", art_style: "a", color_palette: ["#e53935", "red"] },
    compositional_deconstruction: { background: "bg", elements: [] },
  });
  assert.equal(fields.color_palette, "#E53935, red");
  // one message for fractions: not also a range or order error computed on values that are not bbox numbers
  assert.deepEqual(validateBbox([0.5, 2000.5, 0.25, 1]), ["bbox values must be integers, got [0.5,2000.5,0.25,1]"]);
  // an element of an unknown type keeps its text, so the Python checker still sees (and reports) all of it
  assert.deepEqual(canonicalElement({ type: "image", text: "HI", desc: "d" }), { type: "image", text: "HI", desc: "d" });
});

test("buildCaption omits blank HLD, style for mode none, and an empty palette", () => {
  const els = [{ type: "obj", bbox: [0, 0, 10, 10], desc: "d" }];
  assert.equal(
    serializeCaption(buildCaption({ high_level_description: "  ", style_mode: "none", background: "bg", color_palette: "#FF0000" }, els)),
    '{"compositional_deconstruction":{"background":"bg","elements":[{"type":"obj","bbox":[0,0,10,10],"desc":"d"}]}}',
  );
  assert.equal(
    serializeCaption(
      buildCaption({ style_mode: "photo", aesthetics: "a", lighting: "l", medium: "m", style_value: "p", color_palette: "", background: "" }, []),
    ),
    '{"style_description":{"aesthetics":"a","lighting":"l","photo":"p","medium":"m"},"compositional_deconstruction":{"background":"","elements":[]}}',
  );
});
