// The conversation thread in the DOM: messages, streaming text, image cards and
// the final rendering. Model text goes in as text, or as the Markdown of a
// streaming answer rendered and sanitised with the server's own allow-list
// (markdown-stream.js); the server's sanitised HTML of a finished answer (`html`
// of assistant.completed and assistant.failed) then replaces it.

import { clone, codePoints, dropCodePoints, icon, slot } from "./dom.js";
import { buildCard, showPreview as showCardPreview } from "./images.js";
import * as markdown from "./markdown-stream.js";
import { watchTable } from "./tables.js";

const thread = document.getElementById("thread");
const scroller = document.getElementById("messages");
const jumpButton = document.getElementById("jump");

function findAnswer(messageId) {
  return thread.querySelector(`article.msg-assistant[data-message-id="${messageId}"]`);
}

export function lastArticle() {
  return thread.querySelector("article:last-of-type");
}

function removeEmptyState() {
  document.getElementById("empty-state")?.remove();
}

export function addUserMessage(text, clientId) {
  removeEmptyState();
  const article = clone("tpl-user");
  article.removeAttribute("data-message-id");
  article.dataset.clientId = clientId;
  article.classList.add("is-pending");
  article.querySelector(".plain").textContent = text;
  thread.append(article);
  return article;
}

/** The answer with this id, created (streaming, at the end of the thread) if missing. */
export function answer(messageId) {
  let article = findAnswer(messageId);
  if (!article) {
    removeEmptyState();
    article = clone("tpl-assistant");
    article.dataset.messageId = String(messageId);
    article.dataset.textLength = "0";
    markStreaming(article);
    thread.append(article);
  }
  return article;
}

/** A new answer takes the place of the one it regenerates (or goes at the end). */
export function replaceAnswer(oldId, newId) {
  const old = findAnswer(oldId);
  if (!old) return answer(newId);
  const fresh = findAnswer(newId) || clone("tpl-assistant");
  fresh.dataset.messageId = String(newId);
  fresh.dataset.textLength = fresh.dataset.textLength || "0";
  markStreaming(fresh);
  pending.delete(old);
  old.replaceWith(fresh);
  return fresh;
}

export function markStreaming(article) {
  article.dataset.status = "streaming";
  article.setAttribute("aria-busy", "true");
  article.querySelector(".msg-note")?.remove();
  article.querySelector(".msg-error")?.remove();
  article.querySelector(".msg-actions").hidden = true;
}

// --- streaming text ----------------------------------------------------------------
//
// Deltas arrive in bursts (the server coalesces tokens over tens of ms). Each
// animation frame reveals a share of what is waiting, so the text grows evenly;
// the share grows with the backlog, so the display is never more than a few
// frames behind. The received length (for resume offsets) is tracked at once.

const pending = new Map(); // article -> text received but not shown yet
const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
let frameRequested = false;

/**
 * Add a delta to an answer. Returns "ok", "duplicate" (already have it) or "gap"
 * (text is missing before it: the caller resubscribes from what we have).
 */
export function addDelta(article, offset, text) {
  const have = Number(article.dataset.textLength || 0);
  const end = offset + codePoints(text);
  if (end <= have) return "duplicate";
  if (offset > have) return "gap";
  if (article.dataset.status !== "streaming") markStreaming(article);
  article.dataset.textLength = String(end);
  const fresh = dropCodePoints(text, have - offset);
  sources.set(article, answerSource(article) + fresh);
  if (!smooth || document.hidden) {
    flush(article);
    write(article, fresh);
  } else {
    pending.set(article, (pending.get(article) || "") + fresh);
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(revealSome);
    }
  }
  return "ok";
}

function revealSome() {
  frameRequested = false;
  for (const [article, text] of pending) {
    const chars = Array.from(text);
    const count = Math.max(3, Math.ceil(chars.length / 6));
    write(article, chars.slice(0, count).join(""));
    if (chars.length > count) pending.set(article, chars.slice(count).join(""));
    else pending.delete(article);
  }
  if (pending.size) {
    frameRequested = true;
    requestAnimationFrame(revealSome);
  }
}

/** Show everything received for this answer now (before a card, or at the end). */
function flush(article) {
  const text = pending.get(article);
  pending.delete(article);
  if (text) write(article, text);
}

// A background tab gets no animation frames: show its text straight away.
document.addEventListener("visibilitychange", () => {
  if (document.hidden) for (const article of [...pending.keys()]) flush(article);
});

function write(article, text) {
  const body = article.querySelector(".body");
  let segment = body.lastElementChild;
  if (!segment || !segment.classList.contains("stream")) {
    segment = document.createElement("div");
    segment.className = "md stream";
    body.append(segment);
  }
  markdown.append(segment, text); // rendered as Markdown at the next animation frame
}

// The Markdown source of each answer, for Copy: the server's text at page load
// (data-source), plus every delta received since.
const sources = new WeakMap();

/** The answer's Markdown as the model wrote it (what Copy puts on the clipboard). */
export function answerSource(article) {
  return sources.get(article) ?? article.dataset.source ?? "";
}

/** The answer's text as the person reads it (for Copy): Markdown parts, not card labels. */
export function answerText(article) {
  return [...article.querySelectorAll(".body > .md")]
    .map((part) => part.innerText.trim())
    .filter(Boolean)
    .join("\n\n");
}

// --- image cards ------------------------------------------------------------------------

function findCard(toolCallId) {
  return thread.querySelector(`figure[data-tool-call-id="${toolCallId}"]`);
}

function placeCard(article, toolCallId, card) {
  card.dataset.toolCallId = String(toolCallId);
  const old = findCard(toolCallId);
  if (old) {
    old.replaceWith(card);
  } else {
    flush(article);
    article.querySelector(".body").append(card);
  }
}

export function showImageRunning(article, frame) {
  if (findCard(frame.tool_call_id)) return;
  const card = clone("tpl-tool-running");
  card.dataset.startedAt = String(Date.now() / 1000);
  slot(card, "prompt").textContent = frame.prompt || "";
  placeCard(article, frame.tool_call_id, card);
  tickElapsed();
}

export function showImage(article, frame) {
  const card = buildCard(frame);
  if (!card) {
    showImageFailed(article, { ...frame, error: { message: "The image is not on this site." } });
    return;
  }
  placeCard(article, frame.tool_call_id, card);
  tickElapsed();
}

/** A partial image while the card's image is drawn (tool.preview). */
export function showPreview(frame) {
  showCardPreview(findCard(frame.tool_call_id), frame);
}

export function showImageFailed(article, frame) {
  const old = findCard(frame.tool_call_id);
  const card = clone("tpl-tool-failed");
  slot(card, "reason").textContent = frame.error?.message || "The image could not be made.";
  slot(card, "prompt").textContent = old?.querySelector('[data-slot="prompt"]')?.textContent || "";
  placeCard(article, frame.tool_call_id, card);
  tickElapsed();
}

// One timer for every "Generating image…" card: seconds since the call started
// (the server's created_at for a card rendered at page load, so a reload keeps counting).
let ticker = null;

export function tickElapsed() {
  const cards = thread.querySelectorAll(".tool-card.is-running[data-started-at]");
  const now = Date.now() / 1000;
  for (const card of cards) {
    const started = Number(card.dataset.startedAt);
    if (!started) continue;
    const seconds = Math.max(0, Math.floor(now - started));
    slot(card, "elapsed").textContent =
      seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  }
  if (cards.length && !ticker) ticker = setInterval(tickElapsed, 1000);
  if (!cards.length && ticker) {
    clearInterval(ticker);
    ticker = null;
  }
}

// --- the end of an answer ----------------------------------------------------------------

/**
 * Put an answer in its final state: the server's HTML, then "Stopped" or the error.
 * @param {{status: string, html: string, textLength: number, truncated?: boolean, error?: {title: string, detail: string}}} end
 */
export function finish(article, end) {
  pending.delete(article);
  article.dataset.status = end.status;
  article.dataset.textLength = String(end.textLength);
  article.removeAttribute("aria-busy");
  const body = article.querySelector(".body");
  body.innerHTML = end.html; // sanitised by the server (conversations/rendering.py)
  enhance(body);
  article.querySelector(".msg-note")?.remove();
  article.querySelector(".msg-error")?.remove();
  const actions = article.querySelector(".msg-actions");
  if (end.status === "cancelled") actions.before(clone("tpl-stopped"));
  if (end.truncated) actions.before(clone("tpl-truncated"));
  if (end.error) {
    const box = clone("tpl-error");
    slot(box, "title").textContent = end.error.title;
    slot(box, "detail").textContent = end.error.detail;
    actions.before(box);
  }
  actions.querySelector('[data-action="copy"]').hidden = !answerText(article);
  actions.hidden = false;
  tickElapsed();
}

// Streaming segments the server sent as text (a reload mid-answer) render as Markdown too.
markdown.setDecorator(enhance);
for (const segment of thread.querySelectorAll(".md.stream")) markdown.adopt(segment);

/** Code blocks get a header with the language and a Copy button; tables scroll in a box. */
export function enhance(root) {
  for (const pre of root.querySelectorAll(".md pre")) {
    if (pre.parentElement.classList.contains("code-block")) continue;
    const block = document.createElement("div");
    block.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    const language = /language-([\w+#.-]+)/.exec(pre.querySelector("code")?.className || "");
    const label = document.createElement("span");
    label.textContent = language ? language[1] : "";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "btn";
    copy.dataset.action = "copy-code";
    copy.setAttribute("aria-label", "Copy code");
    const text = document.createElement("span");
    text.className = "btn-label";
    text.textContent = "Copy";
    copy.append(icon("copy", 14), text);
    head.append(label, copy);
    pre.replaceWith(block);
    block.append(head, pre);
  }
  for (const table of root.querySelectorAll(".md table")) {
    if (table.parentElement.classList.contains("table-wrap")) continue;
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    table.replaceWith(wrap);
    wrap.append(table);
    watchTable(wrap);
  }
}

/**
 * "Show earlier messages": the page opens with the latest messages only; this puts
 * the ones before them at the top of the thread, the reader's place kept.
 */
export async function showEarlier(button) {
  const url = button.dataset.url;
  if (!url || button.disabled) return;
  button.disabled = true;
  button.textContent = "Loading…";
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`The server answered ${response.status}.`);
    const page = await response.json();
    // The server's own partials, as at page load (model text sanitised there).
    const parsed = document.createElement("template");
    parsed.innerHTML = page.html;
    enhance(parsed.content);
    const height = scroller.scrollHeight;
    button.after(parsed.content);
    scroller.scrollTop += scroller.scrollHeight - height;
    button.dataset.url = page.next || "";
    button.hidden = !page.next;
  } finally {
    button.disabled = false;
    button.textContent = "Show earlier messages";
  }
}

// --- following the end of the thread -------------------------------------------------------
//
// While the reader is at the bottom, growing content keeps them there; once they
// scroll up to read, nothing moves under them and a button offers the way back.

let pinned = true;

scroller.addEventListener("scroll", () => {
  pinned = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  jumpButton.hidden = pinned;
});

new ResizeObserver(() => {
  if (pinned) scroller.scrollTop = scroller.scrollHeight;
}).observe(thread);

export function scrollToEnd() {
  pinned = true;
  jumpButton.hidden = true;
  scroller.scrollTop = scroller.scrollHeight;
}

jumpButton.addEventListener("click", scrollToEnd);
