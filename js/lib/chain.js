// Hook chaining shared by the pack's extensions (no DOM, no side effects).

/**
 * Chain `fn` onto `obj[key]`: the original runs first and its result is
 * returned; an error in `fn` is logged with `tag`, never thrown into the
 * frontend's own hook.
 */
export function chain(obj, key, fn, tag = "Ideogram4Native") {
  const orig = obj[key];
  obj[key] = function (...args) {
    const r = orig?.apply(this, args);
    try {
      fn.apply(this, args);
    } catch (e) {
      console.error(`[${tag}]`, e);
    }
    return r;
  };
}
