// NeuronExplorer: pick a neuron and an input, edit the prompt, watch the neuron respond.
//
// Prompt edits are debounced here (150 ms) and sent as {type: "prompt", seq, prompt}; the
// kernel answers by setting the panels and `seq` in one message. Replies older than the
// latest request are stale: they are not drawn. In a static export (state has
// `_snapshots`) the same requests are answered from the precomputed snapshots.
import { h, clear, root, tooltip, watch, debounce, blobUrl, showToken } from "./core.js";
import { renderTokens, tokenData } from "./tokens.js";
import { renderPatches, patchData, imageUrls } from "./patches.js";
import { renderCard } from "./card.js";
import { createSimulationView, simulationData } from "./chart.js";

const WAIT_MS = 150;

function render({ model, el }) {
  const node = root(el, "explorer");
  const untip = tooltip(node);
  const snapshots = model.get("_snapshots");
  const isStatic = Array.isArray(snapshots);
  let sent = model.get("seq") || 0;
  let localNote = "";
  const cleanups = [];
  const stale = () => (model.get("seq") || 0) < sent;
  const set = (pairs) => {
    for (const [k, v] of Object.entries(pairs)) model.set(k, v);
    model.save_changes();
  };

  // --- layout ---------------------------------------------------------------------------
  const pickBar = h("div", "nw-ex-pick");
  const layerSel = h("select", "nw-ex-layer");
  layerSel.title = "layer";
  const neuronIn = h("input", "nw-ex-neuron");
  neuronIn.type = "number";
  neuronIn.min = "0";
  neuronIn.title = "neuron index";
  const catSel = h("select", "nw-ex-category");
  catSel.title = "category filter";
  const search = h("input", "nw-ex-search");
  search.type = "search";
  search.placeholder = "search explanations";
  const lab = (text, input) => {
    const l = h("label", null, text);
    l.appendChild(input);
    return l;
  };
  pickBar.append(lab("layer ", layerSel), lab(" neuron ", neuronIn), lab(" category ", catSel), search);
  const matches = h("div", "nw-ex-matches");

  const inputBox = h("div", "nw-ex-input");
  const thumbs = h("div", "nw-ex-thumbs");
  const upload = h("input", "nw-ex-upload");
  upload.type = "file";
  upload.accept = "image/*";
  upload.title = "upload an image";
  const prompt = h("textarea", "nw-prompt");
  prompt.setAttribute("aria-label", "prompt (with <image> where the image goes)");
  prompt.rows = 2;
  prompt.spellcheck = false;
  prompt.value = model.get("prompt") || "";
  const suggestions = h("div", "nw-ex-suggest");
  const status = h("div", "nw-status");
  status.setAttribute("aria-live", "polite");
  inputBox.append(thumbs, lab("upload ", upload), prompt, suggestions, status);

  const main = h("div", "nw-ex-main");
  const left = h("div", "nw-ex-left");
  const patchEl = h("div", "nw-ex-patches");
  const tokenEl = h("div", "nw-ex-tokens");
  const simEl = h("div", "nw-ex-sim");
  left.append(patchEl, tokenEl, simEl);
  const cardEl = h("div", "nw-ex-card");
  main.append(left, cardEl);
  node.append(pickBar, matches, inputBox, main);
  if (isStatic) {
    upload.disabled = true;
    node.classList.add("nw-static");
  }

  // --- requests ---------------------------------------------------------------------------
  function applyStatic(change) {
    const want = { layer: model.get("layer"), neuron: model.get("neuron"), prompt: model.get("prompt"), ...change };
    const key = String(want.prompt).trim();
    const hit = snapshots.find((s) => s.layer === want.layer && s.neuron === want.neuron && String(s.prompt).trim() === key);
    if (!hit) {
      localNote = "Static export: only the precomputed prompts and neurons listed here can be shown; a running kernel computes any other.";
      drawStatus();
      return false;
    }
    localNote = "";
    for (const [k, v] of Object.entries(hit.state)) model.set(k, v);
    model.set("layer", hit.layer);
    model.set("neuron", hit.neuron);
    model.set("prompt", hit.prompt);
    drawStatus();
    return true;
  }

  function choose(change) {
    if (isStatic) {
      if (!applyStatic(change)) drawPicker();
      return;
    }
    set(change);
  }

  const sendPrompt = debounce(() => {
    const text = prompt.value;
    if (isStatic) {
      applyStatic({ prompt: text });
      return;
    }
    sent = Math.max(sent, model.get("seq") || 0) + 1;
    drawStatus();
    model.send({ type: "prompt", prompt: text, seq: sent });
  }, WAIT_MS);
  prompt.addEventListener("input", () => {
    status.textContent = "typing\u2026";
    sendPrompt();
  });

  layerSel.addEventListener("change", () => choose({ layer: Number(layerSel.value) }));
  neuronIn.addEventListener("change", () => {
    const n = Math.trunc(Number(neuronIn.value));
    if (Number.isFinite(n)) choose({ neuron: n });
  });
  catSel.addEventListener("change", () => {
    if (isStatic) model.set("category", catSel.value);
    else set({ category: catSel.value });
  });
  const sendSearch = debounce(() => {
    if (isStatic) model.set("search", search.value);
    else set({ search: search.value });
  }, WAIT_MS);
  search.addEventListener("input", sendSearch);
  upload.addEventListener("change", async () => {
    const file = upload.files && upload.files[0];
    if (!file) return;
    const bytes = await file.arrayBuffer();
    sent = Math.max(sent, model.get("seq") || 0) + 1;
    drawStatus();
    model.send({ type: "upload", name: file.name, seq: sent }, undefined, [bytes]);
    upload.value = "";
  });

  // --- drawing ----------------------------------------------------------------------------
  function drawPicker() {
    clear(layerSel);
    for (const l of model.get("layers") || []) {
      const o = h("option", null, String(l));
      o.value = String(l);
      o.selected = l === model.get("layer");
      layerSel.appendChild(o);
    }
    neuronIn.max = String((model.get("n_neurons") || 1) - 1);
    neuronIn.value = String(model.get("neuron"));
    clear(catSel);
    for (const c of ["", ...(model.get("categories") || [])]) {
      const o = h("option", null, c || "all categories");
      o.value = c;
      o.selected = c === (model.get("category") || "");
      catSel.appendChild(o);
    }
    if (document.activeElement !== search) search.value = model.get("search") || "";
    layerSel.disabled = neuronIn.disabled = isStatic && !snapshots.length;
  }

  function drawMatches() {
    clear(matches);
    const cat = model.get("category") || "";
    const q = (model.get("search") || "").toLowerCase();
    const rows = (model.get("matches") || []).filter(
      (m) => (!cat || m.category === cat) && (!q || String(m.text || "").toLowerCase().includes(q)),
    );
    if (!rows.length) {
      matches.appendChild(h("span", "nw-muted", "no neurons match"));
      return;
    }
    for (const m of rows) {
      const b = h("button", "nw-match", `L${m.layer} N${m.neuron} \u00b7 ${m.category || "?"}${m.text ? " \u00b7 " + m.text : ""}`);
      b.title = b.textContent; // the whole text where the button cuts it short
      b.type = "button";
      b.dataset.layer = String(m.layer);
      b.dataset.neuron = String(m.neuron);
      if (m.layer === model.get("layer") && m.neuron === model.get("neuron")) b.classList.add("nw-current");
      b.addEventListener("click", () => choose({ layer: m.layer, neuron: m.neuron }));
      matches.appendChild(b);
    }
  }

  const thumbUrls = [];
  function drawThumbs() {
    for (const u of thumbUrls.splice(0)) URL.revokeObjectURL(u);
    clear(thumbs);
    const current = model.get("image_index");
    (model.get("images") || []).forEach((im, i) => {
      const b = h("button", "nw-thumb");
      b.type = "button";
      b.dataset.tip = String(im.label);
      b.dataset.index = String(i);
      const url = blobUrl(im.thumb, "image/png");
      if (url) {
        thumbUrls.push(url);
        const img = h("img");
        img.alt = String(im.label);
        img.src = url;
        b.appendChild(img);
      } else {
        b.textContent = String(im.label);
      }
      if (i === current) b.classList.add("nw-current");
      b.disabled = isStatic && i !== current;
      b.addEventListener("click", () => !isStatic && set({ image_index: i }));
      thumbs.appendChild(b);
    });
  }

  function drawSuggestions() {
    clear(suggestions);
    const list = model.get("prompts") || [];
    if (!list.length) return;
    suggestions.appendChild(h("span", "nw-muted", isStatic ? "precomputed prompts: " : "try: "));
    for (const p of list) {
      const b = h("button", "nw-suggest", showToken(p));
      b.title = showToken(p); // prompts that differ only at the end look alike when cut short
      b.dataset.prompt = p;
      b.type = "button";
      b.addEventListener("click", () => {
        prompt.value = p;
        sendPrompt();
      });
      suggestions.appendChild(b);
    }
  }

  function drawStatus() {
    const err = model.get("status") || "";
    status.classList.toggle("nw-error", Boolean(err) || Boolean(localNote));
    if (localNote) status.textContent = localNote;
    else if (stale()) status.textContent = "updating\u2026";
    else status.textContent = err || (isStatic ? "static export" : "up to date");
    node.dataset.seq = String(model.get("seq") || 0);
    node.dataset.sent = String(sent);
  }

  const urls = imageUrls();
  function drawPatches() {
    const view = model.get("patch_view") || {};
    const get = (k) => (k in view ? view[k] : model.get(k));
    renderPatches(patchEl, patchData(get, urls.get(model.get("image"))), {
      onCmap: (v) => set({ cmap: v }),
      onOpacity: (v) => set({ opacity: v }),
      onSelect: (p) => set({ selected: p }),
      onNeuron: (id) => choose({ neuron: id }),
    });
  }

  function drawTokens() {
    const view = model.get("tokens_view") || {};
    renderTokens(tokenEl, tokenData((k) => (k === "expanded" ? model.get("expanded") : view[k])), {
      onToggle: (x) => set({ expanded: x }),
    });
  }

  const cardUrls = new Map();
  function drawCard() {
    renderCard(cardEl, model.get("card") || {}, cardUrls);
  }

  let simFocus = 0; // the input the per-position chart shows: a choice of this view alone
  const sim = createSimulationView(simEl, {
    onFocus: (i) => {
      simFocus = i;
      drawSim();
    },
  });
  function drawSim() {
    const data = model.get("sim") || {};
    if (!(simFocus < (data.inputs || []).length)) simFocus = 0;
    sim.update(simulationData((k) => (k === "spec" ? model.get("sim_spec") : k === "focus" ? simFocus : data[k])));
  }

  function drawPrompt() {
    if (document.activeElement !== prompt && prompt.value !== (model.get("prompt") || "")) prompt.value = model.get("prompt") || "";
  }

  // One redraw per message: changed keys mark panels dirty, a microtask draws them. The
  // panels showing the input's activations wait while a newer request is in flight.
  const PANELS = {
    picker: [["layers", "n_neurons", "layer", "neuron", "categories", "category", "search"], drawPicker],
    matches: [["matches", "category", "search", "layer", "neuron"], drawMatches],
    thumbs: [["images", "image_index"], drawThumbs],
    suggest: [["prompts"], drawSuggestions],
    patches: [["image", "patch_view", "cmap", "opacity", "selected"], drawPatches],
    tokens: [["tokens_view", "expanded"], drawTokens],
    card: [["card"], drawCard],
    sim: [["sim", "sim_spec"], drawSim],
    prompt: [["prompt"], drawPrompt],
  };
  const LIVE = new Set(["patches", "tokens", "card", "sim", "prompt"]);
  const dirty = new Set(Object.keys(PANELS));
  let queued = false;
  function flush() {
    queued = false;
    drawStatus();
    const fresh = !stale();
    for (const name of [...dirty]) {
      if (LIVE.has(name) && !fresh) continue;
      dirty.delete(name);
      PANELS[name][1]();
    }
  }
  const mark = (name) => {
    if (name) dirty.add(name);
    if (!queued) {
      queued = true;
      queueMicrotask(flush);
    }
  };
  flush();
  for (const [name, [keys]] of Object.entries(PANELS)) cleanups.push(watch(model, keys, () => mark(name)));
  cleanups.push(watch(model, ["seq", "status"], () => mark(null)));

  return () => {
    sendPrompt.cancel();
    sendSearch.cancel();
    for (const c of cleanups) c();
    sim.destroy();
    urls.revoke();
    for (const u of thumbUrls) URL.revokeObjectURL(u);
    for (const u of cardUrls.values()) URL.revokeObjectURL(u);
    untip();
    node.remove();
  };
}

export default { render };
