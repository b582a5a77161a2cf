// The patch view: the image (as the model saw it) under its patch grid, each cell coloured
// by the neuron's activation; colour map and opacity adjustable, value on hover, a click
// selects a patch and lists that patch's most active neurons.
import { h, clear, level, levelColor, fmt, CMAPS, f32, i32, blobUrl } from "./core.js";

// data: { imageUrl, values: Float32Array [rows*cols], grid: [rows, cols], vmax, cmap, opacity,
//         selected, topIds: Int32Array [rows*cols*k], topValues: Float32Array, k, layer }
// opts: { onCmap(name), onOpacity(x), onSelect(index), onNeuron(id) | null, size, controls }
export function renderPatches(container, data, opts = {}) {
  const [rows, cols] = data.grid || [0, 0];
  const cmap = CMAPS.includes(data.cmap) ? data.cmap : "diverging";
  const withControls = opts.controls !== false;
  // The controls stay the same elements from draw to draw (a slider being dragged, a select
  // being stepped with the keyboard keep going); only what they control is drawn anew.
  let box = container.firstElementChild;
  if (!(box && box.classList.contains("nw-patches") && box._withControls === withControls)) {
    clear(container);
    box = h("div", "nw-patches");
    box._withControls = withControls;
    container.appendChild(box);
    if (withControls) box.appendChild(controls());
  }
  if (withControls) updateControls(box.firstElementChild, data, cmap, opts);
  const old = box.querySelector(":scope > .nw-patch-wrap");

  const wrap = h("div", "nw-patch-wrap");
  const stage = h("div", "nw-patch-stage");
  const size = opts.size || 280;
  stage.style.width = `${size}px`;
  stage.style.height = `${size}px`;
  if (data.imageUrl) {
    const img = h("img", "nw-patch-img");
    img.alt = "input image";
    img.src = data.imageUrl;
    stage.appendChild(img);
  } else {
    stage.classList.add("nw-noimage");
  }
  const grid = h("div", "nw-patch-grid");
  grid.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
  grid.style.gridTemplateRows = `repeat(${rows}, 1fr)`;
  grid.style.opacity = String(data.opacity ?? 0.6);
  const n = rows * cols;
  for (let p = 0; p < n; p++) {
    const v = data.values[p];
    const l = level(v, data.vmax);
    const cell = h("div", "nw-cell");
    cell.style.backgroundColor = levelColor(l, cmap);
    cell.dataset.index = String(p);
    cell.dataset.level = String(l);
    cell.dataset.value = String(v);
    cell.dataset.tip = `patch (${Math.floor(p / cols)}, ${p % cols})  ${fmt(v)}  (level ${l})`;
    if (p === data.selected) cell.classList.add("nw-selected");
    if (opts.onSelect) cell.addEventListener("click", () => opts.onSelect(p === data.selected ? -1 : p));
    grid.appendChild(cell);
  }
  stage.appendChild(grid);
  wrap.appendChild(stage);
  if (opts.side !== false) wrap.appendChild(sidePanel(data, cols, opts));
  if (old) box.replaceChild(wrap, old);
  else box.appendChild(wrap);
}

// The colour map and opacity controls; their handlers read the latest opts (set by updateControls).
function controls() {
  const bar = h("div", "nw-controls");
  const pick = h("select", "nw-cmap");
  pick.title = "colour map";
  for (const name of CMAPS) {
    const o = h("option", null, name);
    o.value = name;
    pick.appendChild(o);
  }
  pick.addEventListener("change", () => bar._opts.onCmap && bar._opts.onCmap(pick.value));
  const slider = h("input", "nw-opacity");
  slider.type = "range";
  slider.min = "0";
  slider.max = "1";
  slider.step = "0.05";
  slider.title = "overlay opacity";
  slider.addEventListener("input", () => bar._opts.onOpacity && bar._opts.onOpacity(Number(slider.value)));
  const l1 = h("label", null, "colour ");
  l1.appendChild(pick);
  const l2 = h("label", null, " opacity ");
  l2.appendChild(slider);
  bar.append(l1, l2);
  return bar;
}

function updateControls(bar, data, cmap, opts) {
  bar._opts = opts;
  const pick = bar.querySelector(".nw-cmap");
  const slider = bar.querySelector(".nw-opacity");
  if (pick.value !== cmap) pick.value = cmap;
  const opacity = String(data.opacity ?? 0.6);
  if (Number(slider.value) !== Number(opacity)) slider.value = opacity;
}

function sidePanel(data, cols, opts) {
  const side = h("div", "nw-patch-side");
  const p = data.selected;
  const k = data.k || 0;
  if (!(p >= 0) || !k || data.topIds.length < (p + 1) * k) {
    side.appendChild(h("div", "nw-hint", "Click a patch to see its most active neurons."));
    return side;
  }
  side.appendChild(h("div", "nw-side-title", `patch (${Math.floor(p / cols)}, ${p % cols}): top neurons in layer ${data.layer}`));
  const list = h("ol", "nw-top");
  for (let j = 0; j < k; j++) {
    const id = data.topIds[p * k + j];
    const v = data.topValues[p * k + j];
    if (id < 0) continue;
    const item = h("li");
    const label = `neuron ${id}  ${fmt(v)}`;
    if (opts.onNeuron) {
      const b = h("button", "nw-link", label);
      b.type = "button";
      b.dataset.neuron = String(id);
      b.addEventListener("click", () => opts.onNeuron(id));
      item.appendChild(b);
    } else {
      item.appendChild(h("span", null, label));
    }
    list.appendChild(item);
  }
  side.appendChild(list);
  return side;
}

export function patchData(get, imageUrl) {
  return {
    imageUrl,
    values: f32(get("values")),
    grid: get("grid") || [0, 0],
    vmax: get("vmax"),
    cmap: get("cmap"),
    opacity: get("opacity"),
    selected: get("selected") ?? -1,
    topIds: i32(get("top_ids")),
    topValues: f32(get("top_values")),
    k: get("k") || 0,
    layer: get("layer"),
  };
}

// One object URL per image bytes value, revoked when the bytes change or the view goes.
export function imageUrls() {
  let last = null;
  let url = null;
  return {
    get(bytes) {
      if (bytes === last) return url;
      if (url) URL.revokeObjectURL(url);
      last = bytes;
      url = blobUrl(bytes, "image/png");
      return url;
    },
    revoke() {
      if (url) URL.revokeObjectURL(url);
      url = null;
      last = null;
    },
  };
}
