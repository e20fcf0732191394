// Image cards: one or several images per call (a grid, each with its own Download,
// Enlarge and Edit), "edited from" links to the parents, and the live previews of
// a card still being drawn. Built from the server's partials (chat.html templates).

import { clone, slot } from "./dom.js";

// Only the app's own image URLs become images (the server only sends those; this
// holds even if a frame ever carried something else).
export function isOwnURL(url) {
  try {
    return new URL(url, window.location.href).origin === window.location.origin;
  } catch {
    return false;
  }
}

function buildItem(image) {
  const item = clone("tpl-tool-image-item");
  item.id = `image-${image.id}`;
  item.dataset.imageId = String(image.id);
  const img = slot(item, "img");
  img.src = image.url;
  img.alt = image.prompt || "";
  img.width = image.width;
  img.height = image.height;
  const download = slot(item, "download");
  download.href = `${image.url}?download=1`;
  download.setAttribute("download", `chatimg-${String(image.id).slice(0, 8)}`);
  return item;
}

/** The card of a tool.completed frame, or null if an image is not on this site. */
export function buildCard(frame) {
  const images = frame.images || [frame.image];
  if (!images.every((image) => isOwnURL(image.url))) return null;
  const card = clone("tpl-tool-image");
  const grid = slot(card, "grid");
  grid.replaceChildren(...images.map(buildItem));
  card.classList.toggle("is-grid", images.length > 1);
  const first = images[0];
  slot(card, "caption").textContent = first.revised_prompt || first.prompt || "";
  const edited = slot(card, "edited-from");
  edited.replaceChildren();
  (first.parents || []).forEach((parent, position) => {
    edited.append(position ? ", " : "Edited from ");
    const link = document.createElement("a");
    link.href = `#image-${parent.id}`;
    link.dataset.parentId = String(parent.id);
    const prompt = parent.prompt || "an earlier image";
    link.textContent = `“${prompt.length > 48 ? `${prompt.slice(0, 47)}…` : prompt}”`;
    edited.append(link);
  });
  edited.hidden = !edited.childNodes.length;
  const notes = slot(card, "notes");
  for (const note of frame.notes || []) {
    const entry = document.createElement("li");
    entry.textContent = note;
    notes.append(entry);
  }
  notes.hidden = !notes.children.length;
  return card;
}

const PREVIEW = "data:image/jpeg;base64,";

/** A tool.preview frame on its running card: the newest partial image replaces the last. */
export function showPreview(card, frame) {
  if (!card || !card.classList.contains("is-running")) return;
  if (typeof frame.data_url !== "string" || !frame.data_url.startsWith(PREVIEW)) return;
  const key = frame.index * 100 + frame.partial;
  if (Number(card.dataset.previewKey ?? -1) >= key) return; // late or repeated: keep the newer
  card.dataset.previewKey = String(key);
  const img = slot(card, "preview");
  img.src = frame.data_url;
  img.hidden = false;
  img.dataset.index = String(frame.index);
  img.dataset.partial = String(frame.partial);
  card.classList.add("has-preview");
  slot(card, "status").textContent =
    frame.index > 0 ? `Drawing image ${frame.index + 1}…` : "Drawing…";
}

/** The message an Edit button puts in the composer: the image named, the change to type. */
export function editRequest(button) {
  const item = button.closest(".image-item");
  return `Edit image ${item.dataset.imageId}: `;
}

/** Following an "edited from" link: the parent scrolls into view and is outlined a moment. */
export function flashParent(link) {
  const target = document.getElementById(`image-${link.dataset.parentId}`);
  if (!target) return false;
  target.scrollIntoView({ block: "center", behavior: "smooth" });
  target.classList.add("is-flashed");
  setTimeout(() => target.classList.remove("is-flashed"), 1600);
  return true;
}
