// The token view: text tokens coloured by one neuron's activation (diverging: red above
// zero, blue below), the value on hover, each run of image tokens collapsed into one chip
// that expands into its patch grid.
import { h, clear, level, levelColor, textColor, fmt, showToken, f32, i32 } from "./core.js";

// data: { tokens: string[], patch: Int32Array (patch index, -1 for text), values: Float32Array,
//         vmax: number, grid: [rows, cols], imageToken: string, expanded: boolean }
// opts: { onToggle(expanded) }
export function renderTokens(container, data, opts = {}) {
  // A chip operated from the keyboard keeps the focus across the redraw it causes.
  const focused = document.activeElement;
  const chipAt = focused && container.contains(focused) && focused.classList.contains("nw-chip") ? focused.dataset.start : null;
  drawTokens(container, data, opts);
  if (chipAt != null) {
    const again = container.querySelector(`.nw-chip[data-start="${chipAt}"]`);
    if (again) again.focus();
  }
}

function drawTokens(container, data, opts) {
  clear(container);
  const { tokens, patch, values, vmax } = data;
  const [rows, cols] = data.grid || [0, 0];
  const line = h("div", "nw-tokens");
  container.appendChild(line);
  const n = Math.min(tokens.length, values.length);
  if (!n) {
    line.appendChild(h("span", "nw-empty", "no tokens"));
    return;
  }
  let i = 0;
  while (i < n) {
    if (patch[i] >= 0) {
      let j = i;
      while (j < n && patch[j] >= 0) j++;
      addChip(container, line, data, i, j, rows, cols, opts);
      i = j;
      continue;
    }
    const v = values[i];
    const l = level(v, vmax);
    const tok = h("span", "nw-tok", showToken(tokens[i]));
    tok.style.backgroundColor = levelColor(l, "diverging");
    tok.style.color = textColor(l, "diverging");
    tok.dataset.pos = String(i);
    tok.dataset.level = String(l);
    tok.dataset.value = String(v);
    tok.dataset.tip = `${showToken(tokens[i])}  ${fmt(v)}  (level ${l}, position ${i})`;
    line.appendChild(tok);
    i++;
  }
}

function addChip(container, line, data, start, end, rows, cols, opts) {
  const { values, vmax, patch } = data;
  let best = start;
  for (let k = start; k < end; k++) if (values[k] > values[best]) best = k;
  const l = level(values[best], vmax);
  const count = end - start;
  const chip = h("button", "nw-chip", `${showToken(data.imageToken || "<image>")} \u00d7${count}`);
  chip.type = "button";
  chip.dataset.start = String(start);
  chip.style.backgroundColor = levelColor(l, "diverging");
  chip.style.color = textColor(l, "diverging");
  chip.dataset.level = String(l);
  chip.dataset.value = String(values[best]);
  const where = cols ? ` at (${Math.floor(patch[best] / cols)}, ${patch[best] % cols})` : "";
  chip.dataset.tip = `${count} image patches: max ${fmt(values[best])}${where}; click to ${data.expanded ? "collapse" : "expand"}`;
  chip.setAttribute("aria-expanded", data.expanded ? "true" : "false");
  chip.addEventListener("click", () => opts.onToggle && opts.onToggle(!data.expanded));
  line.appendChild(chip);
  if (!data.expanded || !rows || !cols) return;
  const grid = h("div", "nw-chip-grid");
  grid.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
  const cells = new Array(rows * cols).fill(null);
  for (let k = start; k < end; k++) {
    const p = patch[k];
    if (p < 0 || p >= cells.length) continue;
    const v = values[k];
    const lv = level(v, vmax);
    const cell = h("span", "nw-pcell");
    cell.style.backgroundColor = levelColor(lv, "diverging");
    cell.dataset.level = String(lv);
    cell.dataset.value = String(v);
    cell.dataset.tip = `patch (${Math.floor(p / cols)}, ${p % cols})  ${fmt(v)}  (level ${lv}, position ${k})`;
    cells[p] = cell;
  }
  for (const cell of cells) grid.appendChild(cell || h("span", "nw-pcell nw-missing"));
  container.appendChild(grid);
}

// The view's data from a getter over model state (a widget's traits or one Dict trait).
export function tokenData(get) {
  return {
    tokens: get("tokens") || [],
    patch: i32(get("patch")),
    values: f32(get("values")),
    vmax: get("vmax"),
    grid: get("grid") || [0, 0],
    imageToken: get("image_token") || "<image>",
    expanded: Boolean(get("expanded")),
  };
}
