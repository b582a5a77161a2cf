// PatchHeatmap: one neuron over the image's patch grid; click a patch for its top neurons.
import { h, root, tooltip, watch } from "./core.js";
import { renderPatches, patchData, imageUrls } from "./patches.js";

function render({ model, el }) {
  const node = root(el, "patch-heatmap");
  const head = h("div", "nw-head");
  const body = h("div", "nw-body");
  node.append(head, body);
  const untip = tooltip(node);
  const urls = imageUrls();
  const set = (key, value) => {
    model.set(key, value);
    model.save_changes();
  };
  const draw = () => {
    head.textContent = `layer ${model.get("layer")} \u00b7 neuron ${model.get("neuron")}`;
    renderPatches(body, patchData((k) => model.get(k), urls.get(model.get("image"))), {
      onCmap: (v) => set("cmap", v),
      onOpacity: (v) => set("opacity", v),
      onSelect: (p) => set("selected", p),
    });
  };
  draw();
  const unwatch = watch(model, ["image", "values", "grid", "vmax", "cmap", "opacity", "selected", "top_ids", "top_values", "k", "layer", "neuron"], draw);
  return () => {
    unwatch();
    untip();
    urls.revoke();
    node.remove();
  };
}

export default { render };
