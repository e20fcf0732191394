// Search in the sidebar (Ctrl/Cmd+K, arrows, Enter), and the header's Share and
// Export actions. The server renders the results (matches marked, everything
// escaped there); this module only moves that HTML in and handles the keys.

import { confirmCopied, copyText, postJSON } from "./dom.js";

const UUID = /\/c\/([0-9a-f-]{36})\//;
const currentConversation = () => UUID.exec(window.location.pathname)?.[1] || null;

// --- search -----------------------------------------------------------------------------

const input = document.getElementById("search");
const results = document.getElementById("search-results");
const status = document.getElementById("search-status");
const list = document.getElementById("conversation-list");
const heading = document.querySelector(".sidebar-heading");
const loadMore = document.getElementById("load-more");
const emptyNote = document.getElementById("list-empty");
const DEBOUNCE_MS = 150;

let timer = null;
let asked = 0; // the number of the latest request: older answers are dropped
let active = -1;
const hidden = new Map(); // element -> its hidden state before the search showed

function options() {
  return [...results.querySelectorAll('[role="option"]')];
}

function setActive(index) {
  const all = options();
  active = all.length ? (index + all.length) % all.length : -1;
  all.forEach((option, i) => option.setAttribute("aria-selected", String(i === active)));
  if (active >= 0) {
    input.setAttribute("aria-activedescendant", all[active].id);
    all[active].scrollIntoView({ block: "nearest" });
  } else {
    input.removeAttribute("aria-activedescendant");
  }
}

function showResults(show) {
  if (show === !results.hidden) return;
  results.hidden = !show;
  input.setAttribute("aria-expanded", String(show));
  // While results show, the normal list steps aside (and comes back as it was).
  for (const element of [list, heading, loadMore, emptyNote]) {
    if (!element) continue;
    if (show) {
      hidden.set(element, element.hidden);
      element.hidden = true;
    } else {
      element.hidden = hidden.get(element) ?? element.hidden;
    }
  }
}

async function run(query) {
  const number = ++asked;
  if (!query.trim()) {
    results.replaceChildren();
    showResults(false);
    setActive(-1);
    status.textContent = "";
    return;
  }
  const url = `${input.dataset.url}?${new URLSearchParams({ q: query })}`;
  let data;
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`The server answered ${response.status}.`);
    data = await response.json();
  } catch (error) {
    if (number !== asked) return;
    results.innerHTML = "";
    const note = document.createElement("li");
    note.className = "search-none";
    note.textContent = `Search failed: ${error.message}`;
    results.append(note);
    showResults(true);
    return;
  }
  if (number !== asked) return;
  // The server's own fragment: its text escaped there, only <mark> added.
  results.innerHTML = data.html;
  results.dataset.query = data.query;
  showResults(true);
  setActive(data.count ? 0 : -1);
  status.textContent = data.count
    ? `${data.count} conversation${data.count === 1 ? "" : "s"} found`
    : "No conversation found";
}

function clearSearch() {
  input.value = "";
  run("");
}

function open(option) {
  if (option) window.location.assign(option.dataset.url);
}

if (input) {
  input.form.addEventListener("submit", (event) => {
    // Enter opens the highlighted result; without results, the search page.
    if (active >= 0) {
      event.preventDefault();
      open(options()[active]);
    }
  });
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => run(input.value), DEBOUNCE_MS);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      if (results.hidden) return;
      event.preventDefault();
      setActive(active + (event.key === "ArrowDown" ? 1 : -1));
    } else if (event.key === "Escape" && input.value) {
      event.preventDefault();
      event.stopPropagation();
      clearSearch();
    }
  });
  results.addEventListener("mousemove", (event) => {
    const option = event.target.closest('[role="option"]');
    if (option) setActive(options().indexOf(option));
  });
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && !event.altKey && event.key.toLowerCase() === "k") {
      event.preventDefault();
      // On a phone the sidebar is a drawer: open it first.
      const toggle = document.getElementById("drawer-toggle");
      if (!input.checkVisibility?.() && toggle && toggle.getAttribute("aria-expanded") !== "true") {
        toggle.click();
      }
      input.focus();
      input.select();
    }
  });
  if (navigator.platform?.startsWith("Mac")) {
    document.querySelector(".search-key").textContent = "⌘K";
  }
}

// --- export -------------------------------------------------------------------------------

const exportMenu = document.querySelector(".export-menu");
exportMenu?.addEventListener("toggle", () => {
  // A new chat gets its id after the first message: the links follow the URL.
  const id = currentConversation();
  if (!id) return;
  for (const link of exportMenu.querySelectorAll("a[data-href]")) {
    link.href = link.dataset.href.replace("ID", id);
  }
});
exportMenu?.addEventListener("click", (event) => {
  if (event.target.closest("a")) exportMenu.open = false;
});

// --- share --------------------------------------------------------------------------------

const dialog = document.getElementById("share-dialog");
const shareButton = document.querySelector('#chat-actions [data-action="share"]');

if (dialog && shareButton) {
  const live = document.getElementById("share-live");
  const fresh = document.getElementById("share-new");
  const urlBox = document.getElementById("share-url");
  const expiry = document.getElementById("share-expiry");
  const openLink = document.getElementById("share-open");
  const error = document.getElementById("share-error");
  const create = document.getElementById("share-create");
  const revoke = document.getElementById("share-revoke");
  let share = null;

  const endpoint = () => dialog.dataset.urlTemplate.replace("ID", currentConversation());

  function show(current) {
    share = current;
    live.hidden = !share;
    fresh.hidden = Boolean(share);
    create.hidden = Boolean(share);
    revoke.hidden = !share;
    if (share) {
      urlBox.value = share.url;
      openLink.href = share.url;
      expiry.textContent = share.expires_at
        ? `The link stops working on ${new Date(share.expires_at).toLocaleString()}.`
        : "The link works until you stop sharing.";
    }
  }

  function fail(message) {
    error.textContent = message;
    error.hidden = false;
  }

  shareButton.addEventListener("click", async () => {
    if (!currentConversation()) return;
    error.hidden = true;
    show(null);
    dialog.showModal();
    try {
      const response = await fetch(endpoint(), { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`The server answered ${response.status}.`);
      const data = await response.json();
      show(data.shares[0] || null);
      (share ? urlBox : document.getElementById("share-days")).focus();
      if (share) urlBox.select();
    } catch (exc) {
      fail(`Could not load the links: ${exc.message}`);
    }
  });

  create.addEventListener("click", async () => {
    error.hidden = true;
    create.disabled = true;
    try {
      show(await postJSON(endpoint(), { days: document.getElementById("share-days").value }));
      urlBox.focus();
      urlBox.select();
    } catch (exc) {
      fail(`Could not create the link: ${exc.message}`);
    } finally {
      create.disabled = false;
    }
  });

  revoke.addEventListener("click", async () => {
    if (!share) return;
    error.hidden = true;
    try {
      await postJSON(share.revoke_url);
      show(null);
      create.focus();
    } catch (exc) {
      fail(`Could not stop sharing: ${exc.message}`);
    }
  });

  document.getElementById("share-copy").addEventListener("click", async (event) => {
    confirmCopied(event.currentTarget, await copyText(urlBox.value));
  });
  document.getElementById("share-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => shareButton.focus());
}
