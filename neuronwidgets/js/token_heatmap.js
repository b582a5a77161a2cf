// TokenHeatmap: one neuron over the tokens of one input.
import { h, root, tooltip, watch } from "./core.js";
import { renderTokens, tokenData } from "./tokens.js";

function render({ model, el }) {
  const node = root(el, "token-heatmap");
  const head = h("div", "nw-head");
  const body = h("div", "nw-body");
  node.append(head, body);
  const untip = tooltip(node);
  const get = (k) => model.get(k);
  const draw = () => {
    head.textContent = `layer ${model.get("layer")} \u00b7 neuron ${model.get("neuron")}`;
    renderTokens(body, tokenData(get), {
      onToggle(expanded) {
        model.set("expanded", expanded);
        model.save_changes();
      },
    });
  };
  draw();
  const unwatch = watch(model, ["tokens", "patch", "values", "vmax", "grid", "image_token", "expanded", "layer", "neuron"], draw);
  return () => {
    unwatch();
    untip();
    node.remove();
  };
}

export default { render };
