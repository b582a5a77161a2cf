// neuronwidgets static host: renders exported widgets with no kernel and no network.
//
// The page holds each widget's state in ipywidgets' embed shape ({state, buffers: [{path,
// encoding: "base64", data}]}) and each widget class's ES module and CSS once. This host
// offers the anywidget model interface (get, set, save_changes, send, on, off) over that
// state, decodes buffers to DataView, imports each module from a Blob URL and calls render.
// There is no kernel: save_changes keeps changes in the page, send reaches nobody.

const readJSON = (id) => JSON.parse(document.getElementById(id).textContent);

function toDataView(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new DataView(bytes.buffer);
}

function putBuffers(state, buffers) {
  for (const { path, encoding, data } of buffers || []) {
    if (encoding !== "base64") throw new Error(`unsupported buffer encoding ${encoding}`);
    let node = state;
    for (const key of path.slice(0, -1)) node = node[key];
    node[path[path.length - 1]] = toDataView(data);
  }
  return state;
}

class StaticModel {
  constructor(id, state) {
    this.model_id = id;
    this.state = state;
    this.listeners = new Map();
  }
  get(key) {
    return this.state[key];
  }
  set(key, value) {
    const old = this.state[key];
    this.state[key] = value;
    if (old !== value) {
      this.emit(`change:${key}`, this, value);
      this.emit("change", this);
    }
  }
  save_changes() {}
  send(content) {
    console.info("[neuronwidgets] static page: no kernel to receive", content);
  }
  on(name, callback) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(callback);
  }
  off(name, callback) {
    if (name == null) this.listeners.clear();
    else if (callback == null) this.listeners.delete(name);
    else if (this.listeners.has(name)) this.listeners.get(name).delete(callback);
  }
  emit(name, ...args) {
    for (const callback of [...(this.listeners.get(name) || [])]) {
      try {
        callback(...args);
      } catch (err) {
        console.error(err);
      }
    }
  }
}

const modules = readJSON("nw-modules");
const loaded = new Map();

function load(id) {
  if (!loaded.has(id)) {
    const entry = modules[id];
    if (!entry) throw new Error(`no front-end module for ${id}`);
    if (entry.css) {
      const style = document.createElement("style");
      style.dataset.nwModule = id;
      style.textContent = entry.css;
      document.head.appendChild(style);
    }
    const url = URL.createObjectURL(new Blob([entry.esm], { type: "text/javascript" }));
    loaded.set(id, import(url).then(async (mod) => {
      URL.revokeObjectURL(url);
      let widget = mod.default;
      if (typeof widget === "function") widget = await widget();
      return widget;
    }));
  }
  return loaded.get(id);
}

async function main() {
  const embedded = readJSON("nw-state").state;
  const models = {};
  for (const [id, entry] of Object.entries(embedded)) {
    models[id] = new StaticModel(id, putBuffers(entry.state, entry.buffers));
  }
  const views = [...document.querySelectorAll(".nw-export-view[data-model-id]")];
  const initialized = new Set();
  for (const el of views) {
    const model = models[el.dataset.modelId];
    try {
      if (!model) throw new Error(`no state for widget ${el.dataset.modelId}`);
      const widget = await load(model.get("_anywidget_id"));
      if (widget.initialize && !initialized.has(model)) {
        initialized.add(model);
        await widget.initialize({ model });
      }
      await widget.render({ model, el });
    } catch (err) {
      console.error(err);
      const note = document.createElement("pre");
      note.className = "nw-export-error";
      note.textContent = `This widget could not be shown: ${err && err.message ? err.message : err}`;
      el.appendChild(note);
    }
  }
  document.body.dataset.nwReady = "1";
}

main();
