// One redraw per message: changed keys mark panels dirty, a microtask draws them. The "live"
// panels (those showing the input's activations) wait while a newer request is in flight.
import { watch } from "./core.js";

export function panelScheduler(model, panels, live, isFresh, before) {
  const dirty = new Set(Object.keys(panels));
  let queued = false;
  function flush() {
    queued = false;
    before();
    const fresh = isFresh();
    for (const name of [...dirty]) {
      if (live.has(name) && !fresh) continue;
      dirty.delete(name);
      panels[name][1]();
    }
  }
  const mark = (name) => {
    if (name) dirty.add(name);
    if (!queued) {
      queued = true;
      queueMicrotask(flush);
    }
  };
  const cleanups = Object.entries(panels).map(([name, [keys]]) => watch(model, keys, () => mark(name)));
  return { flush, mark, cleanups };
}

// In a static export: the precomputed snapshot for a (layer, neuron, prompt) request, or null.
export function findSnapshot(snapshots, want) {
  const key = String(want.prompt).trim();
  return snapshots.find((s) => s.layer === want.layer && s.neuron === want.neuron && String(s.prompt).trim() === key) || null;
}
