// The message box: Enter sends, Shift+Enter starts a new line, it grows with its
// text, and an unsent draft survives a reload (localStorage, per conversation).
// Over the length limit it says so and waits (length-limit.js).

import * as limit from "./length-limit.js";

const form = document.getElementById("composer");
const input = document.getElementById("prompt");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");

const NEW_CHAT = "new";
let draftId = NEW_CHAT;
let busy = false;

const draftKey = (id) => `chatimg:draft:${id}`;

export function init({ conversationId, onSend, onStop }) {
  draftId = conversationId || NEW_CHAT;
  // Whatever was typed before this script ran wins over the saved draft.
  if (!input.value) input.value = localStorage.getItem(draftKey(draftId)) || "";
  grow();
  refresh();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    // Blank lines around the message go; indentation of a first code line stays.
    const text = input.value.replace(/^\s*\n/, "").trimEnd();
    if (!text.trim() || busy || limit.over(text)) return;
    onSend(text);
    input.value = "";
    saveDraft();
    grow();
    refresh();
  });
  stopButton.addEventListener("click", () => {
    stopButton.disabled = true; // one click is enough; the answer's end re-enables it
    onStop();
  });
}

input.addEventListener("keydown", (event) => {
  // isComposing: Enter also confirms an IME composition (Japanese, Chinese…).
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!sendButton.disabled) form.requestSubmit();
  }
});

input.addEventListener("input", () => {
  saveDraft();
  grow();
  refresh();
});

function saveDraft() {
  if (input.value) localStorage.setItem(draftKey(draftId), input.value);
  else localStorage.removeItem(draftKey(draftId));
}

/** A new chat got its id: its draft moves to the conversation's own key. */
export function adopt(conversationId) {
  localStorage.removeItem(draftKey(draftId));
  draftId = conversationId;
  saveDraft();
}

function grow() {
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight}px`;
}

function refresh() {
  limit.update(input);
  sendButton.disabled = busy || !input.value.trim() || limit.over(input.value);
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
  if (!busy) stopButton.disabled = false;
}

/** While an answer is being written: Stop instead of Send (typing the next one is fine). */
export function setBusy(value) {
  busy = value;
  refresh();
}

/**
 * Put text in the box, ready to edit: a suggestion (replaces what is there) or a
 * message the server refused (only into an empty box: never over a new draft).
 */
export function fill(text, { replace = false } = {}) {
  if (input.value.trim() && !replace) return;
  input.value = text;
  saveDraft();
  grow();
  refresh();
  input.focus();
}

export function focus() {
  input.focus();
}
