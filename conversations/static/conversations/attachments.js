// Images attached to the next message: chosen with the clip button, dropped on the
// composer, or pasted into it. Each is uploaded at once (POST /attachments/, the
// session cookie and the CSRF token), shown as a chip in the tray, and its id goes
// with the next message.send (docs/protocol.md). chat.js calls the small hooks below.

const form = document.getElementById("composer");
const area = form.closest(".composer-area");
const tray = document.getElementById("attachment-tray");
const button = document.getElementById("attach");
const picker = document.getElementById("attach-input");
const input = document.getElementById("prompt");
const chipTemplate = document.getElementById("tpl-attachment");
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

const uploadUrl = form.dataset.uploadUrl;
const maxBytes = Number(form.dataset.maxBytes);
const maxCount = Number(form.dataset.maxCount);
const TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];

let report = () => {};
let onQuota = () => {};

export function init({ reportError, quota }) {
  report = reportError;
  onQuota = quota;
  button.hidden = maxCount === 0;
}

function refreshTray() {
  tray.hidden = tray.children.length === 0;
}

function chipFor(file) {
  const chip = chipTemplate.content.firstElementChild.cloneNode(true);
  const preview = URL.createObjectURL(file);
  chip.querySelector('[data-slot="img"]').src = preview;
  chip.querySelector('[data-slot="img"]').alt = file.name || "Pasted image";
  chip.dataset.preview = preview;
  tray.append(chip);
  refreshTray();
  return chip;
}

function fail(chip, code, message) {
  chip.dataset.state = "failed";
  chip.querySelector('[data-slot="status"]').textContent = "Not attached";
  report(code, message);
}

async function upload(file) {
  if (tray.children.length >= maxCount) {
    report("too_many_attachments", `A message may carry at most ${maxCount} images.`);
    return;
  }
  const chip = chipFor(file);
  // Checked again by the server, which alone decides (the real type comes from the bytes).
  if (file.size > maxBytes) {
    fail(chip, "upload_too_large", `Images may be at most ${Math.floor(maxBytes / 1024)} KiB.`);
    return;
  }
  const body = new FormData();
  body.append("file", file, file.name || "pasted.png");
  let response;
  let payload = {};
  try {
    response = await fetch(uploadUrl, {
      method: "POST",
      body,
      headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
      credentials: "same-origin",
    });
    payload = await response.json().catch(() => ({}));
  } catch {
    fail(chip, "storage_unavailable", "The upload did not reach the server; try again.");
    return;
  }
  if (!chip.isConnected) return; // removed while it was uploading
  if (response.redirected || (response.ok && !payload.attachment)) {
    // Sent to the login page: the session ended.
    fail(chip, "unauthenticated", "Log in again to attach images.");
    return;
  }
  if (!response.ok) {
    fail(chip, payload.error?.code || "", payload.error?.message || `The upload failed (${response.status}).`);
    return;
  }
  const item = payload.attachment;
  chip.dataset.state = "ready";
  chip.dataset.attachmentId = item.id;
  chip.dataset.url = item.url;
  chip.dataset.width = item.width;
  chip.dataset.height = item.height;
  chip.querySelector('[data-slot="img"]').alt = "Attached image";
  if ("images_left_today" in payload) onQuota(payload.images_left_today);
}

function uploadAll(files) {
  for (const file of files) {
    if (TYPES.includes(file.type) || !file.type) upload(file);
    else report("upload_not_image", `${file.name} is not a PNG, JPEG, WebP or GIF image.`);
  }
  input.focus();
}

button.addEventListener("click", () => picker.click());
picker.addEventListener("change", () => {
  uploadAll([...picker.files]);
  picker.value = ""; // choosing the same file again is a new attachment
});

tray.addEventListener("click", (event) => {
  const remove = event.target.closest('[data-action="remove-attachment"]');
  if (!remove) return;
  const chip = remove.closest(".attachment-chip");
  URL.revokeObjectURL(chip.dataset.preview || "");
  chip.remove();
  refreshTray();
  input.focus();
});

// Drag and drop anywhere on the composer area.
const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
area.addEventListener("dragover", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
  area.classList.add("is-dropping");
});
area.addEventListener("dragleave", (event) => {
  if (!area.contains(event.relatedTarget)) area.classList.remove("is-dropping");
});
area.addEventListener("drop", (event) => {
  area.classList.remove("is-dropping");
  if (!carriesFiles(event)) return;
  event.preventDefault();
  uploadAll([...event.dataTransfer.files]);
});

// Pasting a picture (a screenshot, an image copied from a page) attaches it; text pastes as text.
input.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files || [])].filter((file) => TYPES.includes(file.type));
  if (!files.length) return;
  event.preventDefault();
  uploadAll(files);
});

/** True while an upload has not finished: the send waits for it. */
export function uploading() {
  return Boolean(tray.querySelector('.attachment-chip[data-state="uploading"]'));
}

/** The ready attachments for the message being sent; the tray empties (failed chips go too). */
export function take() {
  const items = [...tray.querySelectorAll('.attachment-chip[data-state="ready"]')].map((chip) => ({
    id: chip.dataset.attachmentId,
    url: chip.dataset.url,
    width: Number(chip.dataset.width),
    height: Number(chip.dataset.height),
  }));
  for (const chip of tray.querySelectorAll(".attachment-chip")) {
    URL.revokeObjectURL(chip.dataset.preview || "");
    chip.remove();
  }
  refreshTray();
  return items;
}

/** A refused send: its attachments go back into the tray, still uploaded. */
export function restore(items) {
  for (const item of items || []) {
    const chip = chipTemplate.content.firstElementChild.cloneNode(true);
    chip.dataset.state = "ready";
    chip.dataset.attachmentId = item.id;
    chip.dataset.url = item.url;
    chip.dataset.width = item.width;
    chip.dataset.height = item.height;
    chip.querySelector('[data-slot="img"]').src = `${item.url}thumb/`;
    tray.append(chip);
  }
  refreshTray();
}

/** Show a message's attached images under its text (as the server renders them). */
export function render(article, items) {
  if (!items?.length || article.querySelector(".msg-attachments")) return;
  const list = document.createElement("ul");
  list.className = "msg-attachments";
  list.setAttribute("aria-label", "Attached images");
  items.forEach((item, index) => {
    const link = document.createElement("a");
    link.href = item.url;
    link.target = "_blank";
    link.rel = "noopener";
    link.dataset.attachmentId = item.id;
    const img = document.createElement("img");
    img.src = `${item.url}thumb/`;
    img.alt = `Attached image ${index + 1}`;
    img.width = item.width;
    img.height = item.height;
    link.append(img);
    const entry = document.createElement("li");
    entry.append(link);
    list.append(entry);
  });
  article.querySelector(".body").append(list);
}

/** Opened from the gallery (#image-<id>): show that image rather than the end. */
export function revealAnchor() {
  const id = decodeURIComponent(window.location.hash.slice(1));
  if (!id.startsWith("image-")) return;
  const target = document.getElementById(id);
  if (!target) return;
  target.scrollIntoView({ block: "center" });
  target.classList.add("is-target");
}
