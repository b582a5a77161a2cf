// The explanation card: neuron id, category badge, explanation text, score against the
// baseline, top exemplars as small heatmaps and the activation histogram. All text from a
// model, a file or an LLM is set with textContent.
import { h, clear, f32, i32, fmt, level, levelColor, textColor, showToken, blobUrl } from "./core.js";
import { renderPatches } from "./patches.js";
import { renderLogitLists } from "./logits.js";

const SVG = "http://www.w3.org/2000/svg";

// card: { header: {layer, neuron, category, text, explainer, model, concept, prompt_version},
//         score: {score, baseline, kinds: {top, random, all}} | {},
//         exemplars: [{sample_id, kind, activation, image (bytes PNG), values (f32), grid,
//                      tokens: string[], text_values (f32)}],
//         hist: {image: {edges (f32), counts (i32)}, text: {...}}, vmax,
//         logits: {writes|reads_up|reads_gate: {promoted: [{token, token_id, logit}], suppressed: [...]}} }
// urls: a Map reused across renders (bytes -> object URL), revoked by the caller's cleanup.
export function renderCard(container, card, urls) {
  clear(container);
  const box = h("div", "nw-card");
  container.appendChild(box);
  const head = card.header || {};
  if (head.layer == null) {
    box.appendChild(h("div", "nw-empty", "no explanation for this neuron yet"));
    return;
  }
  const top = h("div", "nw-card-head");
  top.appendChild(h("span", "nw-nid", `layer ${head.layer} \u00b7 neuron ${head.neuron}`));
  const cat = String(head.category || "unknown");
  const badge = h("span", "nw-badge", cat);
  badge.dataset.category = cat;
  top.appendChild(badge);
  box.appendChild(top);

  const text = h("p", "nw-card-text", head.text ? head.text : "(no explanation text)");
  if (!head.text) text.classList.add("nw-muted");
  box.appendChild(text);
  const meta = [head.explainer, head.model !== head.explainer ? head.model : null, head.prompt_version ? `prompt ${head.prompt_version}` : null].filter(Boolean);
  if (meta.length) box.appendChild(h("div", "nw-card-meta", meta.join(" \u00b7 ")));

  box.appendChild(scoreBlock(card.score || {}));
  const logitBlock = renderLogitLists(card.logits || {}); // LM-head decoding (issue 25), absent when not decoded
  if (logitBlock) box.appendChild(logitBlock);

  const ex = card.exemplars || [];
  if (ex.length) {
    box.appendChild(h("div", "nw-section", "top exemplars"));
    const strip = h("div", "nw-exemplars");
    for (const e of ex) strip.appendChild(exemplar(e, card.vmax, urls));
    box.appendChild(strip);
  }
  const hist = card.hist || {};
  const kinds = Object.keys(hist).filter((m) => hist[m] && hist[m].counts);
  if (kinds.length) {
    box.appendChild(h("div", "nw-section", "activation histogram (log count)"));
    const row = h("div", "nw-hists");
    for (const m of kinds) row.appendChild(histogram(m, f32(hist[m].edges), i32(hist[m].counts)));
    box.appendChild(row);
  }
}

function scoreBlock(score) {
  const block = h("div", "nw-score");
  if (score.score == null || !Number.isFinite(score.score)) {
    block.appendChild(h("span", "nw-muted", "not scored"));
    return block;
  }
  block.appendChild(h("span", "nw-score-main", `score ${score.score.toFixed(2)}`));
  const base = score.baseline;
  block.appendChild(h("span", "nw-score-base", Number.isFinite(base) ? ` vs baseline ${base.toFixed(2)}` : " (no baseline)"));
  const bar = h("div", "nw-score-bar");
  const fill = h("div", "nw-score-fill");
  fill.style.width = `${Math.max(0, Math.min(1, score.score)) * 100}%`;
  bar.appendChild(fill);
  if (Number.isFinite(base)) {
    const mark = h("div", "nw-score-mark");
    mark.style.left = `${Math.max(0, Math.min(1, base)) * 100}%`;
    mark.dataset.tip = `baseline ${base.toFixed(3)}`;
    bar.appendChild(mark);
  }
  block.appendChild(bar);
  const kinds = score.kinds || {};
  const names = Object.keys(kinds);
  if (names.length) {
    const parts = names.map((k) => `${k} ${Number.isFinite(kinds[k]) ? kinds[k].toFixed(2) : "n/a"}`);
    block.appendChild(h("div", "nw-score-kinds", parts.join(" \u00b7 ")));
  }
  return block;
}

function exemplar(e, vmax, urls) {
  const fig = h("figure", "nw-exemplar");
  const grid = e.grid || [0, 0];
  const values = f32(e.values);
  if (values.length && grid[0] * grid[1] === values.length) {
    let url = null;
    if (e.image) {
      url = urls.get(e.image);
      if (!url) {
        url = blobUrl(e.image, "image/png");
        urls.set(e.image, url);
      }
    }
    const stage = h("div");
    renderPatches(stage, { imageUrl: url, values, grid, vmax, cmap: "reveal", opacity: 0.85, selected: -1, topIds: [], topValues: [], k: 0 },
      { controls: false, side: false, size: 96 });
    fig.appendChild(stage);
  }
  const toks = e.tokens || [];
  const tv = f32(e.text_values);
  if (toks.length) {
    const line = h("div", "nw-tokens nw-mini");
    for (let i = 0; i < toks.length && i < tv.length; i++) {
      const l = level(tv[i], vmax);
      const t = h("span", "nw-tok", showToken(toks[i]));
      t.style.backgroundColor = levelColor(l, "diverging");
      t.style.color = textColor(l, "diverging");
      t.dataset.tip = `${showToken(toks[i])}  ${fmt(tv[i])}  (level ${l})`;
      line.appendChild(t);
    }
    fig.appendChild(line);
  }
  fig.appendChild(h("figcaption", null, `${e.sample_id} \u00b7 ${e.kind || "top"} \u00b7 max ${fmt(e.activation)}`));
  return fig;
}

// counts has len(edges) + 1 bins (open-ended first and last, as the index stores them) or
// len(edges) - 1 (numpy's convention); only the span from the first to the last filled bin is drawn.
function histogram(modality, edges, counts) {
  const W = 200, H = 64;
  const open = counts.length === edges.length + 1;
  const lo = (i) => (open ? (i === 0 ? -Infinity : edges[i - 1]) : edges[i]);
  const hi = (i) => (open ? (i === counts.length - 1 ? Infinity : edges[i]) : edges[i + 1]);
  let first = counts.findIndex((c) => c > 0);
  let last = counts.length - 1;
  while (last > 0 && !(counts[last] > 0)) last--;
  const wrap = h("div", "nw-hist");
  wrap.appendChild(h("div", "nw-hist-title", `${modality} tokens`));
  if (first < 0) {
    wrap.appendChild(h("div", "nw-muted", "no values"));
    return wrap;
  }
  const n = last - first + 1;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", String(W));
  svg.setAttribute("height", String(H));
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  let peak = 0;
  for (let i = first; i <= last; i++) peak = Math.max(peak, Math.log1p(counts[i]));
  const bw = W / n;
  for (let i = first; i <= last; i++) {
    const hgt = peak > 0 ? (Math.log1p(counts[i]) / peak) * (H - 2) : 0;
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", String((i - first) * bw));
    r.setAttribute("y", String(H - hgt));
    r.setAttribute("width", String(Math.max(0.5, bw - 0.5)));
    r.setAttribute("height", String(hgt));
    r.setAttribute("class", hi(i) <= 0 ? "nw-bar nw-bar-neg" : "nw-bar");
    r.dataset.tip = `[${fmtEdge(lo(i))}, ${fmtEdge(hi(i))}): ${counts[i]}`;
    svg.appendChild(r);
  }
  wrap.appendChild(svg);
  const axis = h("div", "nw-hist-axis");
  axis.append(h("span", null, fmtEdge(lo(first))), h("span", null, fmtEdge(hi(last))));
  wrap.appendChild(axis);
  return wrap;
}

function fmtEdge(v) {
  if (v === Infinity) return "+\u221e";
  if (v === -Infinity) return "-\u221e";
  return Math.abs(v) >= 0.01 || v === 0 ? String(Number(v.toPrecision(3))) : v.toExponential(1);
}
