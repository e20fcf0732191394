// Edit and branch on the chat page (docs/protocol.md, "Edit and branch"): the
// "2 / 3" switchers on messages with versions, the inline editor of the person's
// own messages, and the frames that re-render the thread when the active branch
// changes. chat.js calls in through small hooks; the rest of the page knows
// nothing of branches.

import { newId } from "./dom.js";
import * as thread from "./thread.js";

const threadEl = document.getElementById("thread");
const pendingEdits = new Map(); // client_message_id -> {frame, article}
let hooks = { send: () => false, conversationId: () => null, refresh: () => {} };
let busy = false;

/** @param {{send: (frame: object) => boolean, conversationId: () => string|null, refresh: () => void}} wiring */
export function init(wiring) {
  hooks = wiring;
  threadEl.addEventListener("click", onClick);
  threadEl.addEventListener("keydown", onKeydown);
}

// --- versions ----------------------------------------------------------------------------

function versionsOf(article) {
  const box = article.querySelector(".versions");
  return (box?.dataset.versions || "").split(",").filter(Boolean).map(Number);
}

/** Show "i / n" on a message from its versions (sibling ids, oldest first). */
export function setVersions(article, versions) {
  const box = article.querySelector(".versions");
  if (!box) return;
  const ids = (versions || []).map(Number);
  box.dataset.versions = ids.join(",");
  box.hidden = ids.length < 2;
  const index = ids.indexOf(Number(article.dataset.messageId)) + 1;
  box.querySelector(".versions-label").textContent = ids.length > 1 ? `${index} / ${ids.length}` : "";
  refresh(busy);
}

/** Nothing switches or edits while an answer streams (the server refuses it too). */
export function refresh(isBusy) {
  busy = isBusy;
  for (const box of threadEl.querySelectorAll(".versions")) {
    const article = box.closest("article");
    const ids = versionsOf(article);
    const index = ids.indexOf(Number(article.dataset.messageId));
    box.querySelector(".version-prev").disabled = busy || index <= 0;
    box.querySelector(".version-next").disabled = busy || index < 0 || index >= ids.length - 1;
  }
  for (const button of threadEl.querySelectorAll('[data-action="edit"]')) {
    const article = button.closest("article");
    button.hidden = busy || !article.dataset.messageId || article.classList.contains("is-editing");
  }
}

function switchTo(article, step) {
  const ids = versionsOf(article);
  const target = ids[ids.indexOf(Number(article.dataset.messageId)) + step];
  if (!target || busy) return;
  const frame = { type: "branch.switch", conversation_id: hooks.conversationId(), message_id: target };
  if (hooks.send(frame)) {
    for (const button of article.querySelectorAll(".versions button")) button.disabled = true;
  }
}

/**
 * branch.switched: the thread from the message it replaces down is the new branch,
 * rendered by the server with the page's own templates (its answers' HTML is the
 * server's sanitised HTML; every text in it was escaped by the template).
 */
export function applySwitch(frame) {
  if (!frame.replaces_message_id) {
    if (frame.messages.length) window.location.reload(); // the whole thread changed
    else refresh(busy); // already the active branch
    return;
  }
  const from = threadEl.querySelector(`article[data-message-id="${frame.replaces_message_id}"]`);
  if (!from) {
    window.location.reload(); // this page does not show that branch: load the one that is
    return;
  }
  removeFrom(from);
  const fragment = document.createElement("template");
  fragment.innerHTML = frame.html;
  threadEl.append(fragment.content);
  thread.enhance(threadEl);
  thread.tickElapsed();
  hooks.refresh();
}

function removeFrom(article) {
  let node = article;
  while (node) {
    const next = node.nextElementSibling;
    if (node.tagName === "ARTICLE") node.remove();
    node = next;
  }
}

// --- editing a message ---------------------------------------------------------------------

function openEditor(article) {
  if (article.classList.contains("is-editing") || busy) return;
  const body = article.querySelector(".body");
  const form = document.createElement("form");
  form.className = "msg-editor";
  const area = document.createElement("textarea");
  area.name = "text";
  area.rows = 3;
  area.value = body.innerText.trim();
  area.setAttribute("aria-label", "Edit your message");
  area.maxLength = Number(document.getElementById("main").dataset.maxChars) || 8000;
  const buttons = document.createElement("div");
  buttons.className = "msg-editor-buttons";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "btn btn-small";
  cancel.dataset.action = "edit-cancel";
  cancel.textContent = "Cancel";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "btn btn-small btn-primary";
  save.dataset.action = "edit-save";
  save.textContent = "Save & submit";
  buttons.append(cancel, save);
  form.append(area, buttons);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitEdit(article);
  });
  article.classList.add("is-editing");
  body.hidden = true;
  article.querySelector(".msg-actions").hidden = true;
  body.after(form);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
  refresh(busy);
}

function closeEditor(article) {
  article.querySelector(".msg-editor")?.remove();
  article.classList.remove("is-editing");
  article.querySelector(".body").hidden = false;
  article.querySelector(".msg-actions").hidden = false;
  refresh(busy);
}

function submitEdit(article) {
  const form = article.querySelector(".msg-editor");
  const text = form.querySelector("textarea").value.trim();
  if (!text || busy) return;
  const frame = {
    type: "message.edit",
    conversation_id: hooks.conversationId(),
    message_id: Number(article.dataset.messageId),
    client_message_id: newId(),
    text,
  };
  if (!hooks.send(frame)) return;
  pendingEdits.set(frame.client_message_id, { frame, article });
  const save = form.querySelector('[data-action="edit-save"]');
  save.disabled = true;
  save.textContent = "Sending…";
}

/** After a reconnect: edits the server never acknowledged go again (idempotent by id). */
export function resend() {
  for (const { frame } of pendingEdits.values()) hooks.send(frame);
}

/** An error frame: true if it refused one of our edits (its editor opens again, text kept). */
export function refused(ref) {
  const pending = ref && pendingEdits.get(ref);
  if (!pending) return false;
  pendingEdits.delete(ref);
  const save = pending.article.querySelector('[data-action="edit-save"]');
  if (save) {
    save.disabled = false;
    save.textContent = "Save & submit";
  }
  return true;
}

/**
 * An edit was stored (message.accepted for ours, message.created for every tab):
 * the thread from the edited message down gives way to the new version.
 * Returns true if the frame was about an edit.
 */
export function applyEdit(frame) {
  if (!frame.replaces_message_id) return false;
  const known = threadEl.querySelector(`article.msg-user[data-message-id="${frame.message_id}"]`);
  if (known) return true;
  const pending = pendingEdits.get(frame.client_message_id);
  pendingEdits.delete(frame.client_message_id);
  const text = frame.text ?? pending?.frame.text ?? "";
  const old = threadEl.querySelector(`article[data-message-id="${frame.replaces_message_id}"]`);
  if (old) removeFrom(old);
  const article = thread.addUserMessage(text, frame.client_message_id);
  article.dataset.messageId = String(frame.message_id);
  article.classList.remove("is-pending");
  setVersions(article, frame.versions);
  thread.scrollToEnd();
  return true;
}

// --- events ----------------------------------------------------------------------------------

function onClick(event) {
  const button = event.target.closest("[data-action]");
  if (!button) return;
  const article = button.closest("article");
  switch (button.dataset.action) {
    case "version-prev":
      switchTo(article, -1);
      break;
    case "version-next":
      switchTo(article, 1);
      break;
    case "edit":
      openEditor(article);
      break;
    case "edit-cancel":
      closeEditor(article);
      break;
  }
}

function onKeydown(event) {
  const form = event.target.closest(".msg-editor");
  if (!form) return;
  if (event.key === "Escape") closeEditor(form.closest("article"));
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    submitEdit(form.closest("article"));
  }
}
