// The input picker: image thumbnails and the prompt suggestions.
import { h, clear, blobUrl, showToken } from "./core.js";

// Draws the thumbnails; `urls` collects the blob URLs made (the caller revokes them).
export function drawThumbnails(thumbs, model, isStatic, urls, pick) {
  for (const u of urls.splice(0)) URL.revokeObjectURL(u);
  clear(thumbs);
  const current = model.get("image_index");
  (model.get("images") || []).forEach((im, i) => {
    const b = h("button", "nw-thumb");
    b.type = "button";
    b.dataset.tip = String(im.label);
    b.dataset.index = String(i);
    const url = blobUrl(im.thumb, "image/png");
    if (url) {
      urls.push(url);
      const img = h("img");
      img.alt = String(im.label);
      img.src = url;
      b.appendChild(img);
    } else {
      b.textContent = String(im.label);
    }
    if (i === current) b.classList.add("nw-current");
    b.disabled = isStatic && i !== current;
    b.addEventListener("click", () => !isStatic && pick(i));
    thumbs.appendChild(b);
  });
}

export function drawPromptSuggestions(suggestions, model, isStatic, usePrompt) {
  clear(suggestions);
  const list = model.get("prompts") || [];
  if (!list.length) return;
  suggestions.appendChild(h("span", "nw-muted", isStatic ? "precomputed prompts: " : "try: "));
  for (const p of list) {
    const b = h("button", "nw-suggest", showToken(p));
    b.title = showToken(p); // prompts that differ only at the end look alike when cut short
    b.dataset.prompt = p;
    b.type = "button";
    b.addEventListener("click", () => usePrompt(p));
    suggestions.appendChild(b);
  }
}
