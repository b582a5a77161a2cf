// Simulated against real activations, drawn with vega-embed (the altair spec comes from
// Python with named data sets "focus" and "points"; values arrive as binary arrays and are
// swapped in with view.data, so a redraw never re-embeds the chart).
//
// `vegaEmbed` is not imported here: widgets that use this file are bundled by
// vl-convert-python's javascript_bundle (as altair's JupyterChart.enable_offline does), which
// supplies it from the pinned, vendored vega bundle.
import { h, clear, fmt, showToken, f32, i32 } from "./core.js";

// data: { real: Float32Array, simulated: Float32Array, group: Int32Array, inputs: [{label,
//         kind, modality, corr}], labels: string[], corr, n, spec, focus, status, grid, realMax }
// opts: { onFocus(i) }
export function createSimulationView(container, opts = {}) {
  clear(container);
  const box = h("div", "nw-sim");
  const head = h("div", "nw-sim-head");
  const corr = h("span", "nw-sim-corr");
  const pick = h("select", "nw-sim-focus");
  pick.title = "input shown per patch / token";
  pick.addEventListener("change", () => opts.onFocus && opts.onFocus(Number(pick.value)));
  const status = h("span", "nw-sim-status");
  head.append(corr, pick, status);
  const chart = h("div", "nw-chart");
  chart.dataset.version = "0";
  box.append(head, chart);
  container.appendChild(box);

  let embedded = null; // {spec, result}
  let embedding = null;
  let version = 0;
  let latest = null;
  let dead = false;

  // The first embed carries the data inline (vega-lite's top-level `datasets`), so the chart
  // is sized from real extents; later redraws swap the named data sets in place.
  async function ensure(spec, initial) {
    const key = JSON.stringify(spec);
    if (embedded && embedded.key === key) return { view: embedded.result.view, fresh: false };
    if (embedding && embedding.key === key) return { view: (await embedding.promise).view, fresh: false };
    if (embedded) embedded.result.finalize();
    embedded = null;
    const full = structuredClone(spec);
    full.datasets = { ...(full.datasets || {}), ...initial };
    full.autosize = { type: "pad", resize: true };
    const promise = vegaEmbed(chart, full, { actions: false, renderer: "svg", logLevel: 1 });
    embedding = { key, promise };
    const result = await promise;
    if (embedding && embedding.promise === promise) embedding = null;
    embedded = { key, result };
    return { view: result.view, fresh: true };
  }

  async function draw() {
    const data = latest;
    if (!data || dead) return;
    const { points, focus } = rows(data);
    if (!data.spec || !Object.keys(data.spec).length) return;
    try {
      const { view, fresh } = await ensure(data.spec, { points, focus });
      if (dead || data !== latest) return;
      if (!fresh) {
        view.data("points", points);
        view.data("focus", focus);
        await view.runAsync();
      }
      if (data !== latest) return;
      chart.dataset.version = String(++version);
      chart.dataset.points = String(points.filter((p) => !p.ghost).length);
      chart.dataset.focus = String(focus.filter((p) => !p.ghost).length);
      chart.dataset.signature = signature(points, focus);
    } catch (err) {
      status.textContent = `chart error: ${err && err.message ? err.message : err}`;
    }
  }

  function update(data) {
    latest = data;
    const inputs = data.inputs || [];
    clear(pick);
    inputs.forEach((inp, i) => {
      const o = h("option", null, `${inp.label} (${inp.modality}, r = ${Number.isFinite(inp.corr) ? inp.corr.toFixed(2) : "n/a"})`);
      o.value = String(i);
      o.selected = i === data.focus;
      pick.appendChild(o);
    });
    pick.hidden = inputs.length < 2;
    const n = data.n ?? data.real.length;
    corr.textContent = Number.isFinite(data.corr) ? `r = ${data.corr.toFixed(3)} over ${n} values` : `r = n/a (${n} values)`;
    status.textContent = data.status || "";
    box.classList.toggle("nw-pending", Boolean(data.status));
    draw();
  }

  return {
    update,
    destroy() {
      dead = true;
      if (embedded) embedded.result.finalize();
      box.remove();
    },
  };
}

function rows(data) {
  const { real, simulated, group, inputs, labels } = data;
  const have = simulated.length === real.length;
  let realMax = data.realMax > 0 ? data.realMax : 1e-9;
  if (!(data.realMax > 0)) for (const v of real) if (v > realMax) realMax = v;
  const points = [];
  const focus = [];
  const counters = new Map();
  const cols = (data.grid || [0, 0])[1] || 0;
  for (let i = 0; i < real.length; i++) {
    const g = group.length ? group[i] : 0;
    const k = counters.get(g) || 0;
    counters.set(g, k + 1);
    const inp = inputs[g] || { label: "input", kind: "", modality: "text" };
    let label = labels && labels[i] != null ? showToken(labels[i]) : null;
    if (label == null) label = inp.modality === "image" && cols ? `(${Math.floor(k / cols)}, ${k % cols})` : String(k);
    const sim = have ? simulated[i] : NaN;
    if (!Number.isFinite(real[i])) continue; // nothing to draw against (and an extent of NaN breaks the layout)
    if (Number.isFinite(sim)) points.push({ real: real[i], simulated: sim, input: String(inp.label), kind: String(inp.kind || ""), label });
    if (g === (data.focus ?? 0)) {
      focus.push({ i: k, label, series: "real (0-10 scale)", value: (10 * Math.max(0, real[i])) / realMax, raw: fmt(real[i]) });
      if (Number.isFinite(sim)) focus.push({ i: k, label, series: "simulated", value: sim, raw: fmt(sim) });
    }
  }
  // Vega cannot lay out a concat chart around an empty data set (its extent is infinite), so
  // an empty side gets invisible rows (the spec draws `ghost` rows with opacity 0) spanning
  // the real values' range.
  if (!points.length || !focus.length) {
    let lo = Infinity, hi = -Infinity;
    for (const v of real) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!(lo <= hi)) { lo = 0; hi = 1; }
    const kind = String((inputs[0] || {}).kind || "");
    if (!points.length) for (const r of [lo, hi]) points.push({ real: r, simulated: 0, input: "", kind, label: "", ghost: true });
    if (!focus.length) focus.push({ i: 0, label: "", series: "real (0-10 scale)", value: 0, raw: "", ghost: true });
  }
  return { points, focus };
}

// A checksum of what is drawn (tests compare it before and after an edit).
function signature(points, focus) {
  let s = 0;
  for (const p of points) s = (s * 31 + Math.round(p.real * 1000) + 7 * Math.round(p.simulated * 1000)) % 1000000007;
  for (const f of focus) s = (s * 31 + Math.round(f.value * 1000) + f.i) % 1000000007;
  return `${points.length}:${focus.length}:${s}`;
}

export function simulationData(get) {
  return {
    real: f32(get("real")),
    simulated: f32(get("simulated")),
    group: i32(get("group")),
    inputs: get("inputs") || [],
    labels: get("labels") || [],
    corr: get("corr"),
    n: get("n"),
    spec: get("spec"),
    focus: get("focus") ?? 0,
    status: get("status") || "",
    grid: get("grid") || [0, 0],
    realMax: get("real_max"),
  };
}
