// The chat page's side of websocket protocol v1 (docs/protocol.md). This module
// wires the socket to the thread (thread.js), the composer (composer.js) and the
// conversation list (sidebar.js); each of those owns its part of the page.

import * as attachments from "./attachments.js";
import * as branches from "./branches.js";
import * as composer from "./composer.js";
import { confirmCopied, copyText, newId } from "./dom.js";
import { openLightbox } from "./lightbox.js";
import { editRequest, flashParent } from "./images.js";
import * as sidebar from "./sidebar.js";
import { Connection } from "./socket.js";
import * as thread from "./thread.js";

const main = document.getElementById("main");
const threadEl = document.getElementById("thread");
const connEl = document.getElementById("conn-status");
const errorBox = document.getElementById("composer-error");
const imagesLeft = document.getElementById("images-left");
const announcer = document.getElementById("announcer");
// The same plain sentences the server uses for answers rendered at page load.
const ERROR_TEXTS = JSON.parse(document.getElementById("error-texts").textContent);
const ANNOUNCE_CHARS = 1000;

let conversationId = main.dataset.conversationId || null;
const unacked = new Map(); // client_message_id -> message.send frame, resent after a reconnect
const attachedTo = new Map(); // client_message_id -> its attachments, back to the tray if refused
const resyncing = new Set(); // answers we asked the server to resend (after a gap)
let regenerating = false; // a turn.regenerate or turn.continue is on its way

const explain = (code) => ERROR_TEXTS[code] || ERROR_TEXTS[""];

// --- what the page shows -------------------------------------------------------------

function lastAnswer() {
  const answers = threadEl.querySelectorAll("article.msg-assistant");
  return answers[answers.length - 1] || null;
}

/** Send/Stop, and Regenerate/Retry/Continue on the last answer only, and only when nothing runs. */
function refreshControls() {
  const streaming = threadEl.querySelector('article.msg-assistant[data-status="streaming"]');
  const busy = Boolean(streaming) || unacked.size > 0 || regenerating;
  composer.setBusy(busy);
  const last = thread.lastArticle();
  const redo = '[data-action="regenerate"], [data-action="retry"], [data-action="continue"]';
  for (const button of threadEl.querySelectorAll(redo)) {
    const article = button.closest("article");
    const finished = ["complete", "cancelled"].includes(article.dataset.status);
    const canRedo = button.dataset.action === "retry" || finished;
    button.hidden = busy || article !== last || !canRedo;
  }
  branches.refresh(busy); // versions and Edit: not while an answer streams
}

function showError(code, detail = "") {
  const title = explain(code);
  errorBox.querySelector(".composer-error-title").textContent = title;
  errorBox.querySelector(".composer-error-detail").textContent = detail === title ? "" : detail;
  errorBox.hidden = false;
}

function hideError() {
  errorBox.hidden = true;
}

document.getElementById("composer-error-close").addEventListener("click", () => {
  hideError();
  composer.focus();
});

/** Tell screen readers once, at the end, rather than on every streamed word. */
function announce(text) {
  announcer.textContent = "";
  setTimeout(() => {
    announcer.textContent =
      text.length > ANNOUNCE_CHARS ? `${text.slice(0, ANNOUNCE_CHARS)}…` : text;
  }, 50);
}

function setConnection(state) {
  connEl.dataset.state = state;
  connEl.querySelector(".conn-text").textContent = state === "online" ? "" : "Reconnecting…";
}

function setImagesLeft(count) {
  imagesLeft.hidden = count === null || count === undefined;
  if (imagesLeft.hidden) return;
  imagesLeft.textContent =
    count === 0 ? "No images left today" : `${count} image${count === 1 ? "" : "s"} left today`;
}

function toLogin() {
  window.location.assign(`/login/?next=${encodeURIComponent(window.location.pathname)}`);
}

// --- frames from the server ------------------------------------------------------------

function subscribe(messageId, offset) {
  if (!conversationId) return;
  const frame = { type: "conversation.subscribe", conversation_id: conversationId };
  if (messageId) {
    frame.message_id = Number(messageId);
    frame.offset = offset;
  }
  connection.send(frame);
}

function finishAnswer(frame, status) {
  const article = thread.answer(frame.message_id);
  resyncing.delete(String(frame.message_id));
  // A catch-up after a reload or a reconnect repeats an end the page already shows.
  const known =
    article.dataset.status === status && Number(article.dataset.textLength) === frame.text_length;
  if (!known) {
    const failed = status === "failed" || status === "interrupted";
    const code = frame.code || "";
    thread.finish(article, {
      status,
      html: frame.html,
      textLength: frame.text_length,
      truncated: Boolean(frame.truncated),
      error: failed ? { title: explain(code), detail: frame.message || "" } : null,
    });
    if (frame.truncated) announce("The answer stopped at its length limit; Continue carries it on.");
    else if (status === "complete") announce(`Answer: ${thread.answerText(article)}`);
    else if (status === "cancelled") announce("Stopped. The answer so far is kept.");
    else announce(`The answer failed. ${explain(code)}`);
  }
  refreshControls();
}

const handlers = {
  "session.ready": () => {
    setConnection("online");
    // Catch up on the latest answer from what we have (the server sends exactly
    // the rest), then resend whatever the server never acknowledged.
    const last = lastAnswer();
    if (last) subscribe(last.dataset.messageId, Number(last.dataset.textLength || 0));
    else subscribe();
    for (const frame of unacked.values()) connection.send(frame);
    branches.resend();
  },
  "message.accepted": (frame) => {
    branches.applyEdit(frame); // an edit: the thread from the edited message gives way
    unacked.delete(frame.client_message_id);
    attachedTo.delete(frame.client_message_id);
    const mine = threadEl.querySelector(
      `article.msg-user[data-client-id="${CSS.escape(frame.client_message_id)}"]`,
    );
    if (mine) {
      mine.dataset.messageId = String(frame.message_id);
      mine.classList.remove("is-pending");
    }
    if (!conversationId) {
      conversationId = frame.conversation_id;
      window.history.replaceState(null, "", frame.conversation.url);
      sidebar.adopt(frame.conversation);
      composer.adopt(conversationId);
    } else {
      sidebar.bump(conversationId);
    }
    thread.answer(frame.assistant_message_id);
    refreshControls();
  },
  "message.created": (frame) => {
    if (branches.applyEdit(frame)) return;
    // Another tab or device asked: show its question (our own is already there).
    const known = threadEl.querySelector(
      `article.msg-user[data-message-id="${frame.message_id}"],` +
        `article.msg-user[data-client-id="${CSS.escape(frame.client_message_id)}"]`,
    );
    if (known) return;
    const article = thread.addUserMessage(frame.text, frame.client_message_id);
    attachments.render(article, frame.attachments);
    article.dataset.messageId = String(frame.message_id);
    article.classList.remove("is-pending");
  },
  "assistant.started": (frame) => {
    regenerating = false; // a Continue goes on in the same answer, without turn.regenerating
    const article = thread.answer(frame.message_id);
    if (article.dataset.status !== "streaming") thread.markStreaming(article);
    refreshControls();
  },
  "assistant.delta": (frame) => {
    const article = thread.answer(frame.message_id);
    const wasStreaming = article.dataset.status === "streaming";
    const result = thread.addDelta(article, frame.offset, frame.text);
    const id = String(frame.message_id);
    if (result === "gap") {
      // A frame was lost: ask for the rest once, from what we have.
      if (!resyncing.has(id)) {
        resyncing.add(id);
        subscribe(id, Number(article.dataset.textLength));
      }
      return;
    }
    if (result === "ok") resyncing.delete(id);
    if (!wasStreaming) refreshControls();
  },
  "tool.started": (frame) => {
    thread.showImageRunning(thread.answer(frame.message_id), frame);
    announce(`Generating an image: ${frame.prompt || ""}`);
  },
  "tool.completed": (frame) => {
    thread.showImage(thread.answer(frame.message_id), frame);
    if ("images_left_today" in frame) setImagesLeft(frame.images_left_today);
    announce("The image is ready.");
  },
  "tool.preview": (frame) => thread.showPreview(frame),
  "tool.failed": (frame) => {
    thread.showImageFailed(thread.answer(frame.message_id), frame);
    announce(`The image could not be made. ${frame.error?.message || ""}`);
  },
  "assistant.completed": (frame) => finishAnswer(frame, frame.status),
  "assistant.failed": (frame) =>
    finishAnswer(frame, frame.status === "interrupted" ? "interrupted" : "failed"),
  "conversation.state": (frame) => {
    if (frame.message_id && frame.status === "streaming") {
      const article = thread.answer(frame.message_id);
      if (article.dataset.status !== "streaming") thread.markStreaming(article);
      refreshControls();
    }
  },
  "conversation.updated": (frame) => sidebar.applyTitle(frame.conversation_id, frame.title),
  "turn.regenerating": (frame) => {
    regenerating = false;
    // The old answer is kept as a version: the new one shows "n / n".
    const fresh = thread.replaceAnswer(frame.replaces_message_id, frame.assistant_message_id);
    branches.setVersions(fresh, frame.versions);
    refreshControls();
  },
  "branch.switched": (frame) => branches.applySwitch(frame),
  error: (frame) => {
    branches.refused(frame.ref); // a refused edit: its editor stays open, text kept
    if (frame.code === "unauthenticated") {
      toLogin();
      return;
    }
    if (frame.code === "server_draining") {
      // This server is restarting: keep the message (unacked) and send it again
      // once reconnected, to another server or to this one when it is back.
      regenerating = false;
      connection.reconnectLater();
      refreshControls();
      return;
    }
    if (frame.ref && unacked.has(frame.ref)) {
      // Refused, so not stored: take the message back out of the thread and into the box.
      const { text } = unacked.get(frame.ref);
      unacked.delete(frame.ref);
      // Back into the tray to send again, unless they were the reason (not found).
      if (frame.code !== "attachment_not_found") attachments.restore(attachedTo.get(frame.ref));
      attachedTo.delete(frame.ref);
      threadEl.querySelector(`article.msg-user[data-client-id="${CSS.escape(frame.ref)}"]`)?.remove();
      composer.fill(text);
    } else {
      regenerating = false;
    }
    showError(frame.code, frame.message);
    refreshControls();
  },
};

function onFrame(frame) {
  // One page follows one conversation; anything else is not for this page.
  const other = frame.conversation_id && conversationId && frame.conversation_id !== conversationId;
  if (other) return;
  handlers[frame.type]?.(frame);
}

const scheme = window.location.protocol === "https:" ? "wss" : "ws";
const connection = new Connection(`${scheme}://${window.location.host}${main.dataset.wsPath}`, {
  onFrame,
  onState: setConnection,
  onUnauthenticated: toLogin,
});

// A handle for tests and for debugging from the console: window.chatimg.socket.close().
window.chatimg = {
  get socket() {
    return connection.socket;
  },
};

// --- what the person does ------------------------------------------------------------------

function send(text) {
  hideError();
  if (attachments.uploading()) {
    composer.fill(text);
    showError("", "Wait a moment: an image is still uploading.");
    return;
  }
  const clientId = newId();
  const attached = attachments.take();
  const frame = {
    type: "message.send",
    conversation_id: conversationId,
    client_message_id: clientId,
    text,
  };
  if (attached.length) frame.attachments = attached.map((item) => item.id);
  attachments.render(thread.addUserMessage(text, clientId), attached);
  if (attached.length) attachedTo.set(clientId, attached);
  unacked.set(clientId, frame);
  connection.send(frame); // if the socket is down, session.ready resends it
  thread.scrollToEnd();
  refreshControls();
}

/** Regenerate (or retry) the last answer, or carry on one cut off by its length limit. */
function regenerate(type = "turn.regenerate") {
  if (!conversationId) return;
  hideError();
  if (!connection.send({ type, conversation_id: conversationId })) {
    showError("", "Not connected. Try again once the connection is back.");
    return;
  }
  regenerating = true;
  refreshControls();
}

threadEl.addEventListener("click", async (event) => {
  const parentLink = event.target.closest("a[data-parent-id]");
  if (parentLink && flashParent(parentLink)) {
    event.preventDefault();
    return;
  }
  const suggestion = event.target.closest("[data-suggestion]");
  if (suggestion) {
    send(suggestion.textContent.trim()); // a suggestion is a question: ask it
    return;
  }
  const button = event.target.closest("[data-action]");
  if (!button) return;
  switch (button.dataset.action) {
    case "regenerate":
    case "retry":
      regenerate();
      break;
    case "continue":
      regenerate("turn.continue");
      break;
    case "copy":
      // The Markdown as written (people paste it elsewhere), not the rendered text.
      confirmCopied(button, await copyText(thread.answerSource(button.closest("article")).trim()));
      break;
    case "copy-code":
      confirmCopied(button, await copyText(button.closest(".code-block").querySelector("pre").innerText));
      break;
    case "enlarge":
      openLightbox(button.closest(".image-item") || button.closest("figure"));
      break;
    case "earlier":
      try {
        await thread.showEarlier(button);
      } catch (error) {
        showError("", `Could not load earlier messages. ${error.message}`);
      }
      break;
    case "edit-image":
      composer.fill(editRequest(button), { replace: true });
      break;
  }
});

sidebar.init({ conversationId, reportError: showError });
attachments.init({ reportError: showError, quota: setImagesLeft });
branches.init({
  send: (frame) => connection.send(frame),
  conversationId: () => conversationId,
  refresh: refreshControls,
});
composer.init({
  conversationId,
  onSend: send,
  onStop: () => {
    if (conversationId) connection.send({ type: "turn.cancel", conversation_id: conversationId });
  },
});
thread.enhance(threadEl);
thread.tickElapsed();
refreshControls();
thread.scrollToEnd();
attachments.revealAnchor(); // opened from the gallery at one image
// Not on touch screens: focusing would pop up the keyboard over the conversation.
if (matchMedia("(pointer: fine)").matches) composer.focus();
connection.connect();
main.dataset.ready = "true"; // the page is wired up (tests wait for this)
