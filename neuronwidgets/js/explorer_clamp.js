// The explorer's clamp panel (issue 25): a slider that sets the current neuron to a value at
// every position; the kernel re-generates the answer and sends the next-token probabilities
// before and after, drawn by renderClampChange. Requests are debounced and sent as
// {type: "clamp", value, clamp_seq}; a reply whose seq is older than the latest request is not drawn.
import { h, clear, debounce } from "./core.js";
import { renderClampChange } from "./logits.js";

const CLAMP_WAIT_MS = 200;

export function createClampView(el, isStatic, send) {
  clear(el);
  const box = h("div", "nw-clamp");
  box.appendChild(h("div", "nw-section", "clamp this neuron"));
  const bar = h("div", "nw-clamp-bar");
  const slider = h("input", "nw-clamp-slider");
  slider.type = "range";
  slider.setAttribute("aria-label", "clamp value");
  const shown = h("span", "nw-clamp-value", "0");
  const reset = h("button", "nw-clamp-reset", "clear");
  reset.title = "forget the clamp (a value of 0 is an ablation, not 'unclamped')";
  reset.type = "button";
  bar.append(h("span", null, "value "), slider, shown, reset);
  const result = h("div", "nw-clamp-result");
  box.append(bar, result);
  el.appendChild(box);
  let latest = 0;
  if (isStatic) {
    slider.disabled = true;
    reset.disabled = true;
  }
  const request = debounce(() => {
    latest += 1;
    result.classList.add("nw-muted");
    send({ type: "clamp", value: Number(slider.value), clamp_seq: latest });
  }, CLAMP_WAIT_MS);
  slider.addEventListener("input", () => {
    shown.textContent = slider.value;
    if (!isStatic) request();
  });
  reset.addEventListener("click", () => {
    request.cancel();
    latest += 1; // a reply still on its way is stale now
    result.classList.remove("nw-muted");
    clear(result);
    result.appendChild(renderClampChange({}));
  });
  return {
    // view: the kernel's last clamp; current: {layer, neuron} shown now (a view of another neuron is not drawn)
    update(range, view, current) {
      if (Array.isArray(range) && range.length === 3) {
        slider.min = String(range[0]);
        slider.max = String(range[1]);
        slider.step = String(range[2]);
      }
      if (!isStatic && view && view.seq != null && view.seq < latest) return; // stale reply
      const mine = view && view.before && view.layer === current.layer && view.neuron === current.neuron;
      result.classList.remove("nw-muted");
      clear(result);
      if (mine) {
        if (isStatic) {
          slider.value = String(view.value);
          shown.textContent = String(view.value);
        }
        result.appendChild(renderClampChange(view));
      } else if (isStatic) {
        result.appendChild(h("div", "nw-muted", "clamping needs a running kernel"));
      } else {
        result.appendChild(renderClampChange({}));
      }
    },
    destroy() {
      request.cancel();
    },
  };
}
