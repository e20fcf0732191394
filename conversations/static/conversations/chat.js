// The chat page's side of websocket protocol v1 (docs/protocol.md).
// Model text goes into the DOM as text; only the server's sanitised HTML
// (assistant.completed / assistant.failed `html`) is inserted as HTML.

const chat = document.getElementById("chat");
const messagesEl = document.getElementById("messages");
const form = document.getElementById("composer");
const input = document.getElementById("prompt");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const errorEl = document.getElementById("composer-error");
const connEl = document.getElementById("conn-status");

let conversationId = chat.dataset.conversationId || null;
let socket = null;
let retryDelay = 500;
let activeMessageId = null;
const unacked = new Map(); // client_message_id -> frame, resent after a reconnect
const draftKey = () => `chatimg:draft:${conversationId || "new"}`;

// --- rendering ---------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function articleFor(messageId) {
  let article = messagesEl.querySelector(`article[data-message-id="${messageId}"]`);
  if (!article) {
    article = el("article", "msg msg-assistant");
    article.dataset.messageId = String(messageId);
    article.dataset.textLength = "0";
    article.append(el("div", "body"));
    messagesEl.append(article);
  }
  return article;
}

function streamSegment(article) {
  const body = article.querySelector(".body");
  let last = body.lastElementChild;
  if (!last || !last.classList.contains("stream")) {
    last = el("div", "md stream");
    body.append(last);
  }
  return last;
}

function startStreaming(article) {
  if (article.dataset.status !== "streaming") {
    article.dataset.status = "streaming";
  }
  article.querySelector(".msg-note")?.remove();
  activeMessageId = article.dataset.messageId;
  setBusy(true);
}

function appendDelta(frame) {
  const article = articleFor(frame.message_id);
  const have = Number(article.dataset.textLength || 0);
  const end = frame.offset + frame.text.length;
  if (end <= have) return; // duplicate
  if (frame.offset > have) {
    // A gap: ask for the missing text again from what we have.
    subscribe(frame.message_id, have);
    return;
  }
  if (article.dataset.status !== "streaming") startStreaming(article);
  streamSegment(article).append(document.createTextNode(frame.text.slice(have - frame.offset)));
  article.dataset.textLength = String(end);
  scrollToEnd();
}

function toolCard(frame) {
  const figure = el("figure", "tool-card is-running");
  figure.dataset.toolCallId = String(frame.tool_call_id);
  const placeholder = el("div", "image-placeholder");
  placeholder.setAttribute("role", "status");
  placeholder.append(el("span", "spinner"), document.createTextNode(" Generating image…"));
  figure.append(placeholder, el("figcaption", "", frame.prompt || ""));
  return figure;
}

function findCard(frame) {
  return messagesEl.querySelector(`figure[data-tool-call-id="${frame.tool_call_id}"]`);
}

function onToolStarted(frame) {
  const article = articleFor(frame.message_id);
  if (findCard(frame)) return;
  article.querySelector(".body").append(toolCard(frame));
  scrollToEnd();
}

function onToolCompleted(frame) {
  const card = findCard(frame) || toolCard(frame);
  if (!card.isConnected) articleFor(frame.message_id).querySelector(".body").append(card);
  const image = frame.image;
  const link = el("a", "image-link");
  link.href = image.url;
  link.target = "_blank";
  link.rel = "noopener";
  const img = el("img");
  img.src = image.url;
  img.alt = image.prompt;
  img.width = image.width;
  img.height = image.height;
  link.append(img);
  card.className = "tool-card is-complete";
  card.replaceChildren(link, el("figcaption", "", image.revised_prompt || image.prompt));
  scrollToEnd();
}

function onToolFailed(frame) {
  const card = findCard(frame) || toolCard(frame);
  if (!card.isConnected) articleFor(frame.message_id).querySelector(".body").append(card);
  const caption = card.querySelector("figcaption");
  const failure = el("div", "image-failed", `Image failed: ${frame.error.message}`);
  failure.setAttribute("role", "alert");
  card.className = "tool-card is-failed";
  card.replaceChildren(failure, caption || el("figcaption"));
}

function onFinished(frame, status) {
  const article = articleFor(frame.message_id);
  article.dataset.status = status;
  article.dataset.textLength = String(frame.text_length);
  // Server-rendered, sanitised Markdown replaces the streamed plain text.
  article.querySelector(".body").innerHTML = frame.html;
  article.querySelector(".msg-note")?.remove();
  if (status !== "complete") {
    const note = status === "cancelled" ? "Stopped." : frame.message || "The answer failed.";
    article.append(el("p", `msg-note status-${status}`, note));
  }
  if (activeMessageId === String(frame.message_id)) activeMessageId = null;
  setBusy(false);
  scrollToEnd();
}

function addUserMessage(text) {
  document.getElementById("empty-state")?.remove();
  const article = el("article", "msg msg-user");
  const body = el("div", "body");
  body.append(el("p", "plain", text));
  article.append(body);
  messagesEl.append(article);
  scrollToEnd();
  return article;
}

function showNewConversation(conversation) {
  document.getElementById("chat-title").textContent = conversation.title;
  document.title = `${conversation.title} · chatimg`;
  const list = document.getElementById("conversation-list");
  list.querySelector("li.muted")?.remove();
  list.querySelectorAll("a[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
  const link = el("a", "", conversation.title);
  link.href = conversation.url;
  link.setAttribute("aria-current", "page");
  const item = el("li");
  item.append(link);
  list.prepend(item);
}

function scrollToEnd() {
  messagesEl.scrollTop = messagesEl.scrollHeight;
}

function setBusy(busy) {
  sendButton.disabled = busy;
  stopButton.hidden = !busy;
}

function showError(message) {
  errorEl.textContent = message;
  errorEl.hidden = !message;
}

// --- the socket ----------------------------------------------------------------

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
}

function subscribe(messageId, offset) {
  if (!conversationId) return;
  const frame = { type: "conversation.subscribe", conversation_id: conversationId };
  if (messageId !== undefined && messageId !== null) {
    frame.message_id = Number(messageId);
    frame.offset = offset;
  }
  send(frame);
}

function lastAssistant() {
  const all = messagesEl.querySelectorAll("article.msg-assistant[data-message-id]");
  return all.length ? all[all.length - 1] : null;
}

const handlers = {
  "session.ready": () => {
    connEl.textContent = "";
    retryDelay = 500;
    const last = lastAssistant();
    if (last) subscribe(last.dataset.messageId, Number(last.dataset.textLength || 0));
    else subscribe();
    for (const frame of unacked.values()) send(frame);
  },
  "message.accepted": (frame) => {
    unacked.delete(frame.client_message_id);
    const pending = messagesEl.querySelector(`article[data-client-id="${frame.client_message_id}"]`);
    if (pending) pending.dataset.messageId = String(frame.message_id);
    if (!conversationId) {
      conversationId = frame.conversation_id;
      history.replaceState(null, "", frame.conversation.url);
      showNewConversation(frame.conversation);
    }
    startStreaming(articleFor(frame.assistant_message_id));
  },
  "assistant.started": (frame) => startStreaming(articleFor(frame.message_id)),
  "assistant.delta": appendDelta,
  "tool.started": onToolStarted,
  "tool.completed": onToolCompleted,
  "tool.failed": onToolFailed,
  "assistant.completed": (frame) => onFinished(frame, frame.status),
  "assistant.failed": (frame) => onFinished(frame, "failed"),
  "conversation.state": (frame) => {
    if (frame.message_id && frame.status === "streaming") startStreaming(articleFor(frame.message_id));
  },
  error: (frame) => {
    if (frame.ref) unacked.delete(frame.ref);
    showError(frame.message);
    if (frame.code !== "turn_in_progress" && !activeMessageId) setBusy(false);
  },
  pong: () => {},
};

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${chat.dataset.wsPath}`);
  socket.addEventListener("message", (event) => {
    const frame = JSON.parse(event.data);
    handlers[frame.type]?.(frame);
  });
  socket.addEventListener("close", (event) => {
    if (event.code === 4401) {
      location.href = "/login/";
      return;
    }
    connEl.textContent = "Reconnecting…";
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  });
}

// --- the composer --------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || sendButton.disabled) return;
  showError("");
  const clientId = crypto.randomUUID();
  const frame = { type: "message.send", conversation_id: conversationId, client_message_id: clientId, text };
  addUserMessage(text).dataset.clientId = clientId;
  unacked.set(clientId, frame);
  send(frame);
  input.value = "";
  localStorage.removeItem(draftKey());
  setBusy(true);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

input.addEventListener("input", () => localStorage.setItem(draftKey(), input.value));
input.value = localStorage.getItem(draftKey()) || "";

stopButton.addEventListener("click", () => {
  if (conversationId) send({ type: "turn.cancel", conversation_id: conversationId });
});

const streaming = messagesEl.querySelector('article[data-status="streaming"]');
if (streaming) startStreaming(streaming);
connect();
