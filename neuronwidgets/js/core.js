// Shared helpers for every neuronwidgets view: binary decoding, the 0-10 colour scales,
// safe DOM building (text only, never HTML from data) and the hover tooltip.
//
// Module rules (neuronwidgets/widgets/_assets.py links these files into one ES module per
// widget, no build step): sibling imports are `import { a, b } from "./name.js";` lines,
// exports are `export function|const|class NAME` declarations, names are unique across files.

// --- binary buffers --------------------------------------------------------------------------
// Traits holding bytes arrive as DataView (anywidget, ipywidgets, the static host).
function asBytes(value) {
  if (value == null) return new Uint8Array(0);
  if (value instanceof DataView) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return new Uint8Array(0);
}

function typed(value, Type) {
  const bytes = asBytes(value);
  const n = Math.floor(bytes.byteLength / Type.BYTES_PER_ELEMENT);
  // Copy: the view's offset need not be aligned for Type. Little-endian, as Python sends.
  const out = new Type(n);
  new Uint8Array(out.buffer).set(bytes.subarray(0, n * Type.BYTES_PER_ELEMENT));
  return out;
}

export function f32(value) {
  return typed(value, Float32Array);
}

export function i32(value) {
  return typed(value, Int32Array);
}

export function blobUrl(value, type) {
  const bytes = asBytes(value);
  if (!bytes.byteLength) return null;
  return URL.createObjectURL(new Blob([bytes.slice()], { type }));
}

// --- the 0-10 scale (records.discretize) and the colour maps -----------------------------------
// Mirrored in neuronwidgets/widgets/colors.py; the browser tests check both agree.
export const POSITIVE = [214, 96, 77];
export const NEGATIVE = [67, 147, 195];
export const VIRIDIS = [
  [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142], [33, 145, 140],
  [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37],
];
export const CMAPS = ["diverging", "reveal", "viridis"];

// Signed level: floor(10 * |v| / vmax) with the sign of v, clipped to -10..10.
export function level(v, vmax) {
  if (!(vmax > 0) || !Number.isFinite(v) || v === 0) return 0;
  const l = Math.min(10, Math.floor((10 * Math.abs(v)) / vmax));
  return v < 0 ? -l : l;
}

function mixWhite(rgb, k) {
  return rgb.map((c) => 255 + Math.floor(((c - 255) * k + 5) / 10));
}

// CSS colour of a signed level under a colour map (what getComputedStyle reports).
export function levelColor(l, cmap) {
  if (cmap === "reveal") {
    // The paper's overlay: white over the pixel, fading where the neuron fires.
    const a = (10 - Math.max(0, l)) / 10;
    return a === 1 ? "rgb(255, 255, 255)" : a === 0 ? "rgba(255, 255, 255, 0)" : `rgba(255, 255, 255, ${a})`;
  }
  if (cmap === "viridis") {
    const [r, g, b] = VIRIDIS[Math.max(0, l)];
    return `rgb(${r}, ${g}, ${b})`;
  }
  const [r, g, b] = mixWhite(l < 0 ? NEGATIVE : POSITIVE, Math.abs(l));
  return `rgb(${r}, ${g}, ${b})`;
}

export function textColor(l, cmap) {
  if (cmap === "viridis") return l >= 6 ? "#111" : "#fff";
  return Math.abs(l) >= 8 ? "#fff" : "#111";
}

export function fmt(v) {
  if (v == null || !Number.isFinite(v)) return "n/a";
  return v.toFixed(3);
}

// --- safe DOM --------------------------------------------------------------------------------
// Every string from a model, a file or an LLM goes through textContent, never innerHTML.
export function h(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = String(text);
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

// Tokens shown faithfully on one line: whitespace made visible, nothing dropped.
export function showToken(token) {
  const s = String(token);
  if (s === "") return "\u2205";
  return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d");
}

// --- tooltip -------------------------------------------------------------------------------
// One tooltip element per root; targets carry their text in dataset.tip (set as text).
export function tooltip(root) {
  const tip = h("div", "nw-tip");
  tip.setAttribute("role", "tooltip");
  tip.hidden = true;
  root.appendChild(tip);
  const show = (event) => {
    const target = event.target.closest ? event.target.closest("[data-tip]") : null;
    if (!target || !root.contains(target)) {
      tip.hidden = true;
      return;
    }
    tip.textContent = target.dataset.tip;
    tip.hidden = false;
    const box = root.getBoundingClientRect();
    const t = target.getBoundingClientRect();
    tip.style.left = "0px"; // laid out at its natural width first, then moved left to stay inside the widget
    const width = tip.getBoundingClientRect().width;
    tip.style.left = `${Math.max(0, Math.min(t.left - box.left, box.width - width))}px`;
    tip.style.top = `${t.bottom - box.top + 4}px`;
  };
  const hide = () => {
    tip.hidden = true;
  };
  root.addEventListener("mouseover", show);
  root.addEventListener("mouseleave", hide);
  return () => {
    root.removeEventListener("mouseover", show);
    root.removeEventListener("mouseleave", hide);
    tip.remove();
  };
}

export function debounce(fn, wait) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

// Re-render on any of `keys` changing, once per burst (one message may change several keys).
// Returns the cleanup that removes the listeners.
export function watch(model, keys, fn) {
  let queued = false;
  const run = () => {
    if (queued) return;
    queued = true;
    queueMicrotask(() => {
      queued = false;
      fn();
    });
  };
  const names = keys.map((k) => `change:${k}`);
  for (const n of names) model.on(n, run);
  return () => {
    for (const n of names) model.off(n, run);
  };
}

export function root(el, kind) {
  const node = h("div", `nw-root nw-${kind}`);
  el.appendChild(node);
  return node;
}
