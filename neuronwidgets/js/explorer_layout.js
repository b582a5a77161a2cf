// The explorer's elements: the neuron picker, the input box (thumbnails, upload, prompt), the panels.
import { h } from "./core.js";

function labelled(text, input) {
  const l = h("label", null, text);
  l.appendChild(input);
  return l;
}

export function explorerLayout(node, isStatic) {
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
  pickBar.append(labelled("layer ", layerSel), labelled(" neuron ", neuronIn), labelled(" category ", catSel), search);
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
  const suggestions = h("div", "nw-ex-suggest");
  const status = h("div", "nw-status");
  status.setAttribute("aria-live", "polite");
  inputBox.append(thumbs, labelled("upload ", upload), prompt, suggestions, status);

  const main = h("div", "nw-ex-main");
  const left = h("div", "nw-ex-left");
  const patchEl = h("div", "nw-ex-patches");
  const tokenEl = h("div", "nw-ex-tokens");
  const simEl = h("div", "nw-ex-sim");
  const clampEl = h("div", "nw-ex-clamp"); // issue 25: the clamp slider and its before/after
  left.append(patchEl, tokenEl, simEl, clampEl);
  const cardEl = h("div", "nw-ex-card");
  main.append(left, cardEl);
  node.append(pickBar, matches, inputBox, main);
  if (isStatic) {
    upload.disabled = true;
    node.classList.add("nw-static");
  }
  return { layerSel, neuronIn, catSel, search, matches, thumbs, upload, prompt, suggestions, status, patchEl, tokenEl, simEl, cardEl, clampEl };
}
