// LM-head decoding lists (the tokens a neuron writes and reads, like Neuronpedia's logit
// lists) and the clamp panel's before/after next-token table. Every token text goes
// through textContent (h), never HTML.
import { h, showToken } from "./core.js";

const LOGIT_KIND_TITLES = {
  writes: "writes (down_proj column)",
  reads_up: "reads (up_proj row)",
  reads_gate: "reads (gate_proj row)",
};

function logitNumber(v) {
  if (!Number.isFinite(v)) return "n/a";
  const text = Math.abs(v) >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3)));
  return (v >= 0 ? "+" : "") + text;
}

function logitColumn(title, items, cls) {
  const col = h("div", `nw-logit-col ${cls}`);
  col.appendChild(h("div", "nw-logit-title", title));
  const list = h("ol", "nw-logit-list");
  for (const item of items || []) {
    const li = h("li", "nw-logit-item");
    li.appendChild(h("span", "nw-logit-tok", showToken(item.token)));
    li.appendChild(h("span", "nw-logit-val", logitNumber(item.logit)));
    li.dataset.tip = `token id ${item.token_id}  logit ${logitNumber(item.logit)}`;
    list.appendChild(li);
  }
  col.appendChild(list);
  return col;
}

// lists: {kind: {promoted: [{token, token_id, logit}], suppressed: [...]}}; kinds: which to show.
// Returns a block, or null when there is nothing to show.
export function renderLogitLists(lists, kinds) {
  const names = (kinds || ["writes", "reads_up", "reads_gate"]).filter((k) => lists && lists[k]);
  if (!names.length) return null;
  const block = h("div", "nw-logits");
  for (const kind of names) {
    const row = h("div", "nw-logit-row");
    row.appendChild(logitColumn("promoted", lists[kind].promoted, "nw-logit-pos"));
    row.appendChild(logitColumn("suppressed", lists[kind].suppressed, "nw-logit-neg"));
    const title = `LM-head decoding: ${LOGIT_KIND_TITLES[kind] || kind}`;
    if (kind === "writes") {
      block.append(h("div", "nw-section", title), row);
    } else {
      // what a neuron reads is shown folded: the card stays short
      const fold = h("details", "nw-logit-fold");
      fold.append(h("summary", "nw-section", title), row);
      block.appendChild(fold);
    }
  }
  return block;
}

function probText(p) {
  return Number.isFinite(p) ? `${(100 * p).toFixed(1)}%` : "n/a";
}

// change: {value, site, before: {answer, top: [{token, token_id, prob}]}, after: {...},
//          named: [{token, token_id, before, after}]} | {} ; returns a block.
export function renderClampChange(change) {
  const block = h("div", "nw-clamp-change");
  if (!change || !change.before) {
    block.appendChild(h("div", "nw-muted", "move the slider to clamp this neuron"));
    return block;
  }
  const answers = h("div", "nw-clamp-answers");
  answers.appendChild(h("div", "nw-clamp-answer", `unclamped: ${change.before.answer}`));
  answers.appendChild(h("div", "nw-clamp-answer", `clamped to ${change.value}: ${change.after.answer}`));
  block.appendChild(answers);
  const row = h("div", "nw-logit-row");
  for (const [title, side] of [["next token, unclamped", change.before], ["next token, clamped", change.after]]) {
    const col = h("div", "nw-logit-col");
    col.appendChild(h("div", "nw-logit-title", title));
    const list = h("ol", "nw-logit-list");
    for (const item of side.top || []) {
      const li = h("li", "nw-logit-item");
      li.appendChild(h("span", "nw-logit-tok", showToken(item.token)));
      li.appendChild(h("span", "nw-logit-val", probText(item.prob)));
      list.appendChild(li);
    }
    col.appendChild(list);
    row.appendChild(col);
  }
  block.appendChild(row);
  const named = change.named || [];
  if (named.length) {
    block.appendChild(h("div", "nw-logit-title", "tokens the decoding names"));
    const list = h("ol", "nw-logit-list");
    for (const item of named) {
      const li = h("li", "nw-logit-item");
      li.appendChild(h("span", "nw-logit-tok", showToken(item.token)));
      li.appendChild(h("span", "nw-logit-val", `${probText(item.before)} \u2192 ${probText(item.after)}`));
      list.appendChild(li);
    }
    block.appendChild(list);
  }
  return block;
}
