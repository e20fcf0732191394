// The list of conversations: the drawer on narrow screens, "Load more" (and
// infinite scroll), rename in place, delete, and titles kept in step everywhere
// (sidebar entry, page header, document title).

import { clone, postJSON, slot } from "./dom.js";
import * as undo from "./undo.js";

const sidebar = document.getElementById("sidebar");
const list = document.getElementById("conversation-list");
const emptyNote = document.getElementById("list-empty");
const loadMore = document.getElementById("load-more");
const toggle = document.getElementById("drawer-toggle");
const scrim = document.getElementById("scrim");
const main = document.getElementById("main");
const heading = document.getElementById("chat-title");
const headerActions = document.getElementById("chat-actions");

let current = null; // the open conversation's id (null on a new chat until it has one)
let onError = () => {};

export function init({ conversationId, reportError }) {
  current = conversationId;
  onError = reportError;
}

// --- the drawer --------------------------------------------------------------------------

const narrow = matchMedia("(max-width: 860px)");

function setDrawer(open) {
  document.body.classList.toggle("drawer-open", open);
  toggle.setAttribute("aria-expanded", String(open));
  toggle.setAttribute("aria-label", open ? "Hide conversations" : "Show conversations");
  scrim.hidden = !open;
  // While the drawer covers the page, the page behind it is out of reach.
  main.inert = open;
  if (open) sidebar.querySelector(".new-chat").focus();
}

function closeDrawer() {
  if (!document.body.classList.contains("drawer-open")) return;
  const focusWasInside = sidebar.contains(document.activeElement);
  setDrawer(false);
  if (focusWasInside) toggle.focus();
}

toggle.addEventListener("click", () => {
  if (document.body.classList.contains("drawer-open")) closeDrawer();
  else setDrawer(true);
});
scrim.addEventListener("click", closeDrawer);
document.getElementById("drawer-close").addEventListener("click", closeDrawer);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && document.body.classList.contains("drawer-open")) closeDrawer();
});
narrow.addEventListener("change", () => {
  if (!narrow.matches) setDrawer(false);
});

// --- entries -------------------------------------------------------------------------------

function entry(id) {
  return list.querySelector(`li[data-conversation-id="${id}"]`);
}

function titleOf(item) {
  return slot(item, "title").textContent;
}

function label(item, title) {
  slot(item, "title").textContent = title;
  item.querySelector('[data-action="rename"]').setAttribute("aria-label", `Rename “${title}”`);
  item.querySelector('[data-action="delete"]').setAttribute("aria-label", `Delete “${title}”`);
}

/** A conversation got a (new) title: show it wherever it appears. */
export function applyTitle(id, title) {
  const item = entry(id);
  if (item) label(item, title);
  if (id === current) {
    heading.textContent = title;
    document.title = `${title} · chatimg`;
  }
}

/** The page's conversation now exists (its first message was accepted). */
export function adopt(conversation) {
  current = conversation.id;
  headerActions.hidden = false;
  let item = entry(conversation.id);
  if (!item) {
    item = clone("tpl-conversation");
    item.dataset.conversationId = conversation.id;
    item.querySelector("a").href = conversation.url;
  }
  for (const link of list.querySelectorAll("a[aria-current]")) link.removeAttribute("aria-current");
  item.querySelector("a").setAttribute("aria-current", "page");
  label(item, conversation.title);
  list.prepend(item);
  emptyNote.hidden = true;
  applyTitle(conversation.id, conversation.title);
}

/** A message was sent here: it is now the most recent conversation. */
export function bump(id) {
  const item = entry(id);
  if (item && item !== list.firstElementChild) list.prepend(item);
}

// --- more pages ---------------------------------------------------------------------------

let loading = false;

async function loadNextPage() {
  const url = loadMore.dataset.url;
  if (loading || !url) return;
  loading = true;
  loadMore.disabled = true;
  loadMore.textContent = "Loading…";
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`The server answered ${response.status}.`);
    const page = await response.json();
    // Server-rendered entries (titles escaped by the template engine).
    const parsed = document.createElement("template");
    parsed.innerHTML = page.html;
    for (const item of [...parsed.content.children]) {
      // Skip one already listed (it moved to the top while the list was open).
      if (!entry(item.dataset.conversationId)) list.append(item);
    }
    loadMore.dataset.url = page.next || "";
    loadMore.hidden = !page.next;
  } catch (error) {
    onError("", `Could not load more conversations. ${error.message}`);
  } finally {
    loading = false;
    loadMore.disabled = false;
    loadMore.textContent = "Load more";
  }
}

loadMore.addEventListener("click", loadNextPage);
// Infinite scroll: the button loads the next page as soon as it scrolls into view.
new IntersectionObserver(
  (seen) => {
    if (seen.some((item) => item.isIntersecting) && !loadMore.hidden) loadNextPage();
  },
  { root: sidebar, rootMargin: "200px" },
).observe(loadMore);

// --- rename and delete --------------------------------------------------------------------

/**
 * Swap `shown` for a text field holding `title`: Enter or leaving the field saves,
 * Escape cancels. Resolves to the new title, or null when nothing changed.
 */
function editInPlace(shown, title, className) {
  return new Promise((resolve) => {
    const input = document.createElement("input");
    input.className = className;
    input.value = title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "Conversation title");
    shown.hidden = true;
    shown.after(input);
    input.focus();
    input.select();
    let done = false;
    const end = (value) => {
      if (done) return;
      done = true;
      input.remove();
      shown.hidden = false;
      resolve(value);
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        const value = input.value.trim();
        end(value && value !== title ? value : null);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation(); // not the drawer's Escape
        end(null);
      }
    });
    input.addEventListener("blur", () => {
      const value = input.value.trim();
      end(value && value !== title ? value : null);
    });
  });
}

async function rename(id, shown, className, focusAfter) {
  const item = entry(id);
  const before = item ? titleOf(item) : heading.textContent;
  const title = await editInPlace(shown, before, className);
  focusAfter?.focus();
  if (!title) return;
  applyTitle(id, title); // at once; put back if the server says no
  try {
    const saved = await postJSON(`/c/${id}/rename/`, { title });
    applyTitle(id, saved.title);
  } catch (error) {
    applyTitle(id, before);
    onError("", `Could not rename the conversation. ${error.message}`);
  }
}

/** Delete a conversation, with a few seconds to undo it (undo.js) instead of a native confirm. */
function remove(id) {
  const item = entry(id);
  const title = item ? titleOf(item) : heading.textContent;
  const open = id === current;
  const wasEmpty = emptyNote.hidden;
  undo.offer({
    message: `Deleted “${title}”.`,
    url: `/c/${id}/delete/`,
    hide: () => {
      if (item) item.hidden = true;
      emptyNote.hidden = [...list.children].some((li) => !li.hidden);
      if (open) main.classList.add("is-deleting");
      if (open) main.inert = true;
    },
    restore: () => {
      if (item) item.hidden = false;
      emptyNote.hidden = wasEmpty;
      main.classList.remove("is-deleting");
      main.inert = false;
      (item?.querySelector('[data-action="delete"]') || headerActions.querySelector('[data-action="delete"]'))?.focus();
    },
    commit: async () => {
      try {
        await postJSON(`/c/${id}/delete/`);
      } catch (error) {
        if (item) item.hidden = false;
        main.classList.remove("is-deleting");
        main.inert = false;
        onError("", `Could not delete the conversation. ${error.message}`);
        return;
      }
      localStorage.removeItem(`chatimg:draft:${id}`);
      if (open) {
        window.location.assign("/");
        return;
      }
      item?.remove();
      emptyNote.hidden = Boolean(list.children.length);
    },
  });
}

list.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const item = button.closest("li");
  const id = item.dataset.conversationId;
  if (button.dataset.action === "rename") {
    rename(id, item.querySelector(".conv-link"), "conv-rename", button);
  } else if (button.dataset.action === "delete") {
    remove(id);
  }
});

headerActions.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button || !current) return;
  if (button.dataset.action === "rename") rename(current, heading, "chat-title-input", button);
  else if (button.dataset.action === "delete") remove(current);
});
