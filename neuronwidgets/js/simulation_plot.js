// SimulationPlot: simulated against real activations, per patch or token and as a scatter.
import { h, root, tooltip, watch } from "./core.js";
import { createSimulationView, simulationData } from "./chart.js";

function render({ model, el }) {
  const node = root(el, "simulation-plot");
  const head = h("div", "nw-head");
  const body = h("div", "nw-body");
  node.append(head, body);
  const untip = tooltip(node);
  const view = createSimulationView(body, {
    onFocus(i) {
      model.set("focus", i);
      model.save_changes();
    },
  });
  const draw = () => {
    head.textContent = model.get("title") || "";
    view.update(simulationData((k) => model.get(k)));
  };
  draw();
  const unwatch = watch(model, ["real", "simulated", "group", "inputs", "labels", "corr", "n", "spec", "focus", "status", "grid", "real_max", "title"], draw);
  return () => {
    unwatch();
    untip();
    view.destroy();
    node.remove();
  };
}

export default { render };
