// ExplanationCard: what a neuron does, how well that was checked, and what it fires on.
import { root, tooltip, watch } from "./core.js";
import { renderCard } from "./card.js";

function render({ model, el }) {
  const node = root(el, "explanation-card");
  const body = document.createElement("div");
  node.appendChild(body);
  const untip = tooltip(node);
  const urls = new Map();
  const draw = () => {
    renderCard(body, {
      header: model.get("header"),
      score: model.get("score"),
      exemplars: model.get("exemplars"),
      hist: model.get("hist"),
      vmax: model.get("vmax"),
      logits: model.get("logits"),
    }, urls);
  };
  draw();
  const unwatch = watch(model, ["header", "score", "exemplars", "hist", "vmax", "logits"], draw);
  return () => {
    unwatch();
    untip();
    for (const url of urls.values()) URL.revokeObjectURL(url);
    node.remove();
  };
}

export default { render };
