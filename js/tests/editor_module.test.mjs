// The ComfyUI extension module must import without a DOM (it only touches the
// DOM when a Caption Builder node is created), register exactly one extension,
// and only patch the Caption Builder node type. ComfyUI serves the pack's js/
// folder at /extensions/<pack>/ and loads EVERY *.js file in it as an extension,
// so the lib/ modules must import cleanly too, and nothing may be fetched from
// outside the pack except the frontend's own ../../scripts/app.js.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const JS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const APP_SPECIFIER = "../../scripts/app.js";
const API_SPECIFIER = "../../scripts/api.js";
// the extension entry points: only these may import the frontend's app/api shims
const EXTENSION_FILES = ["ideogram4_caption_editor.js", "ideogram4_node_ui.js"];
let root;
let packDir;

function listJs(dir, rel = "") {
  const out = [];
  for (const ent of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = path.join(rel, ent.name);
    if (ent.isDirectory()) {
      if (ent.name !== "tests" && ent.name !== "node_modules") out.push(...listJs(dir, r));
    } else if (ent.name.endsWith(".js")) out.push(r);
  }
  return out;
}

before(() => {
  // <root>/scripts/app.js (stub of the frontend shim) and <root>/extensions/pack/…
  root = mkdtempSync(path.join(tmpdir(), "ideo4-ext-"));
  packDir = path.join(root, "extensions", "ideogram4_native");
  mkdirSync(path.join(root, "scripts"), { recursive: true });
  mkdirSync(packDir, { recursive: true });
  writeFileSync(path.join(root, "package.json"), '{"type":"module"}\n');
  writeFileSync(
    path.join(root, "scripts", "app.js"),
    "export const app = { registered: [], canvas: null, registerExtension(ext) { this.registered.push(ext); } };\n" +
      "globalThis.__ideo4StubApp = app;\n",
  );
  writeFileSync(
    path.join(root, "scripts", "api.js"),
    "export const api = { listeners: {}, addEventListener(t, f) { (this.listeners[t] ??= []).push(f); } };\n" +
      "globalThis.__ideo4StubApi = api;\n",
  );
  cpSync(JS_DIR, packDir, { recursive: true, filter: (src) => !src.includes(`${path.sep}tests`) });
});

after(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

test("no DOM globals exist in this test process", () => {
  assert.equal(typeof globalThis.document, "undefined");
  assert.equal(typeof globalThis.window, "undefined");
});

test("every .js file only imports relative pack files or the frontend app shim", () => {
  const files = listJs(JS_DIR);
  assert.ok(files.includes("ideogram4_caption_editor.js"));
  assert.ok(files.includes(path.join("lib", "geometry.js")));
  for (const rel of files) {
    const src = readFileSync(path.join(JS_DIR, rel), "utf8");
    const specs = [...src.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+["']([^"']+)["']/gm)].map((m) => m[1]);
    specs.push(...[...src.matchAll(/import\(\s*["']([^"']+)["']\s*\)/g)].map((m) => m[1]));
    for (const spec of specs) {
      assert.ok(spec.startsWith("./") || spec.startsWith("../"), `${rel}: non-relative import ${spec}`);
      if (spec === APP_SPECIFIER || spec === API_SPECIFIER) {
        assert.ok(EXTENSION_FILES.includes(rel), `${rel} must not depend on the app`);
        continue;
      }
      const target = path.resolve(path.dirname(path.join(JS_DIR, rel)), spec);
      assert.ok(target.startsWith(JS_DIR + path.sep), `${rel}: import ${spec} leaves js/`);
      assert.ok(existsSync(target), `${rel}: import ${spec} does not exist`);
    }
    assert.doesNotMatch(src, /https?:\/\/(?!github\.com)/, `${rel} references an external URL`);
  }
});

test("every .js file under js/ imports without a DOM (ComfyUI loads them all)", async () => {
  for (const rel of listJs(packDir)) {
    await import(pathToFileURL(path.join(packDir, rel)).href);
  }
});

test("the editor registers one extension that patches only the Caption Builder", async () => {
  const mod = await import(pathToFileURL(path.join(packDir, "ideogram4_caption_editor.js")).href);
  const app = globalThis.__ideo4StubApp;
  assert.deepEqual(app.registered.map((e) => e.name).sort(), ["Ideogram4Native.CaptionEditor", "Ideogram4Native.NodeUI"]);
  const ext = app.registered.find((e) => e.name === "Ideogram4Native.CaptionEditor");
  assert.equal(ext, mod.extension);
  assert.equal(ext.name, "Ideogram4Native.CaptionEditor");
  assert.equal(mod.NODE_ID, "Ideogram4NativeCaptionBuilder");

  // another node type is left alone
  const other = function () {};
  other.prototype = {};
  await ext.beforeRegisterNodeDef(other, { name: "CLIPTextEncode" });
  assert.deepEqual(Object.keys(other.prototype), []);

  // the builder gets chained hooks that still call the originals
  const calls = [];
  const builder = function () {};
  builder.prototype = {
    onConfigure(info) {
      calls.push(["configure", info]);
      return "orig";
    },
  };
  await ext.beforeRegisterNodeDef(builder, { name: "Ideogram4NativeCaptionBuilder" });
  for (const hook of ["onNodeCreated", "onConfigure", "onRemoved"]) {
    assert.equal(typeof builder.prototype[hook], "function", hook);
  }
  const node = Object.create(builder.prototype);
  // no editor attached (it needs a DOM): configure/remove must still work
  assert.equal(node.onConfigure({ widgets_values: [] }), "orig");
  assert.deepEqual(calls, [["configure", { widgets_values: [] }]]);
  node.onRemoved();
  // a node whose editor exists gets re-synced on configure
  let synced = 0;
  node.ideogram4LayoutEditor = { syncFromWidgets: (force) => (synced += force ? 1 : 0) };
  node.onConfigure({});
  assert.equal(synced, 1);
});
