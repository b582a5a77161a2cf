// The neuron picker (layer, neuron, category, search) and the list of matching neurons.
import { h, clear } from "./core.js";

export function drawNeuronPicker(els, model, disabled) {
  const { layerSel, neuronIn, catSel, search } = els;
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
  layerSel.disabled = neuronIn.disabled = disabled;
}

export function drawNeuronMatches(matches, model, choose) {
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
