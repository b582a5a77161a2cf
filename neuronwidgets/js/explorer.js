// NeuronExplorer: pick a neuron and an input, edit the prompt, watch the neuron respond.
//
// Prompt edits are debounced here (150 ms) and sent as {type: "prompt", seq, prompt}; the
// kernel answers by setting the panels and `seq` in one message. Replies older than the
// latest request are stale: they are not drawn. In a static export (state has
// `_snapshots`) the same requests are answered from the precomputed snapshots.
// Layout, picker, inputs and the redraw schedule live in the explorer_*.js modules.
import { root, tooltip, watch, debounce } from "./core.js";
import { renderTokens, tokenData } from "./tokens.js";
import { renderPatches, patchData, imageUrls } from "./patches.js";
import { renderCard } from "./card.js";
import { createSimulationView, simulationData } from "./chart.js";
import { explorerLayout } from "./explorer_layout.js";
import { drawNeuronPicker, drawNeuronMatches } from "./explorer_picker.js";
import { drawThumbnails, drawPromptSuggestions } from "./explorer_inputs.js";
import { panelScheduler, findSnapshot } from "./explorer_schedule.js";
import { createClampView } from "./explorer_clamp.js";

const WAIT_MS = 150;

function render({ model, el }) {
  const node = root(el, "explorer");
  const untip = tooltip(node);
  const snapshots = model.get("_snapshots");
  const isStatic = Array.isArray(snapshots);
  const els = explorerLayout(node, isStatic);
  const { prompt, status, search } = els;
  prompt.value = model.get("prompt") || "";
  let sent = model.get("seq") || 0;
  let localNote = "";
  const stale = () => (model.get("seq") || 0) < sent;
  const set = (pairs) => {
    for (const [k, v] of Object.entries(pairs)) model.set(k, v);
    model.save_changes();
  };

  // --- requests ---------------------------------------------------------------------------
  function applyStatic(change) {
    const hit = findSnapshot(snapshots, { layer: model.get("layer"), neuron: model.get("neuron"), prompt: model.get("prompt"), ...change });
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

  els.layerSel.addEventListener("change", () => choose({ layer: Number(els.layerSel.value) }));
  els.neuronIn.addEventListener("change", () => {
    const n = Math.trunc(Number(els.neuronIn.value));
    if (Number.isFinite(n)) choose({ neuron: n });
  });
  els.catSel.addEventListener("change", () => {
    if (isStatic) model.set("category", els.catSel.value);
    else set({ category: els.catSel.value });
  });
  const sendSearch = debounce(() => {
    if (isStatic) model.set("search", search.value);
    else set({ search: search.value });
  }, WAIT_MS);
  search.addEventListener("input", sendSearch);
  els.upload.addEventListener("change", async () => {
    const file = els.upload.files && els.upload.files[0];
    if (!file) return;
    const bytes = await file.arrayBuffer();
    sent = Math.max(sent, model.get("seq") || 0) + 1;
    drawStatus();
    model.send({ type: "upload", name: file.name, seq: sent }, undefined, [bytes]);
    els.upload.value = "";
  });

  // --- drawing ----------------------------------------------------------------------------
  const drawPicker = () => drawNeuronPicker(els, model, isStatic && !snapshots.length);
  const drawMatches = () => drawNeuronMatches(els.matches, model, choose);
  const thumbUrls = [];
  const drawThumbs = () => drawThumbnails(els.thumbs, model, isStatic, thumbUrls, (i) => set({ image_index: i }));
  const drawSuggestions = () =>
    drawPromptSuggestions(els.suggestions, model, isStatic, (p) => {
      prompt.value = p;
      sendPrompt();
    });

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
    renderPatches(els.patchEl, patchData(get, urls.get(model.get("image"))), {
      onCmap: (v) => set({ cmap: v }),
      onOpacity: (v) => set({ opacity: v }),
      onSelect: (p) => set({ selected: p }),
      onNeuron: (id) => choose({ neuron: id }),
    });
  }

  function drawTokens() {
    const view = model.get("tokens_view") || {};
    renderTokens(els.tokenEl, tokenData((k) => (k === "expanded" ? model.get("expanded") : view[k])), {
      onToggle: (x) => set({ expanded: x }),
    });
  }

  const cardUrls = new Map();
  const drawCard = () => renderCard(els.cardEl, model.get("card") || {}, cardUrls);

  let simFocus = 0; // the input the per-position chart shows: a choice of this view alone
  const sim = createSimulationView(els.simEl, {
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

  const clampView = createClampView(els.clampEl, isStatic, (msg) => model.send(msg)); // issue 25
  const drawClamp = () =>
    clampView.update(model.get("clamp_range"), model.get("clamp_view"), { layer: model.get("layer"), neuron: model.get("neuron") });

  function drawPrompt() {
    if (document.activeElement !== prompt && prompt.value !== (model.get("prompt") || "")) prompt.value = model.get("prompt") || "";
  }

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
    clamp: [["clamp_range", "clamp_view", "layer", "neuron"], drawClamp],
  };
  const LIVE = new Set(["patches", "tokens", "card", "sim", "prompt"]);
  const schedule = panelScheduler(model, PANELS, LIVE, () => !stale(), drawStatus);
  schedule.flush();
  const cleanups = [...schedule.cleanups, watch(model, ["seq", "status"], () => schedule.mark(null))];

  return () => {
    sendPrompt.cancel();
    sendSearch.cancel();
    for (const c of cleanups) c();
    sim.destroy();
    clampView.destroy();
    urls.revoke();
    for (const u of thumbUrls) URL.revokeObjectURL(u);
    for (const u of cardUrls.values()) URL.revokeObjectURL(u);
    untip();
    node.remove();
  };
}

export default { render };
