// Small DOM and text helpers shared by the chat modules.

/** A fresh copy of a <template> from chat.html (blank copies of the server's partials). */
export function clone(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

/** The element marked data-slot="name" inside root (the parts a template leaves blank). */
export function slot(root, name) {
  return root.querySelector(`[data-slot="${name}"]`);
}

// Protocol offsets count Unicode code points, not UTF-16 units: an emoji is one
// character to the server and two to String.length.
export function codePoints(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

export function dropCodePoints(text, count) {
  if (count <= 0) return text;
  return Array.from(text).slice(count).join("");
}

/** An id for client_message_id; crypto.randomUUID needs a secure context, this does not. */
export function newId() {
  if (crypto.randomUUID && window.isSecureContext) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (plain http) or no permission: the old way still works.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

/** Show "Copied" on a button for a moment; its accessible name says so too. */
export function confirmCopied(button, ok) {
  const label = button.getAttribute("aria-label");
  const text = button.querySelector(".btn-label");
  button.classList.add("is-done");
  button.setAttribute("aria-label", ok ? "Copied" : "Could not copy");
  if (text) text.textContent = ok ? "Copied" : "Could not copy";
  const use = button.querySelector("use");
  use?.setAttribute("href", ok ? "#i-check" : "#i-alert");
  setTimeout(() => {
    button.classList.remove("is-done");
    if (label) button.setAttribute("aria-label", label);
    if (text) text.textContent = "Copy";
    use?.setAttribute("href", "#i-copy");
  }, 1500);
}

/** POST a form body to one of the app's endpoints and return its JSON. */
export async function postJSON(url, fields = {}) {
  const token = document.querySelector('meta[name="csrf-token"]').content;
  const response = await fetch(url, {
    method: "POST",
    headers: { Accept: "application/json", "X-CSRFToken": token },
    body: new URLSearchParams(fields),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `The server answered ${response.status}.`);
  return data;
}

/** An icon from the page's SVG sprite (templates/_icons.html). */
export function icon(name, size = 16) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "icon");
  svg.setAttribute("width", String(size));
  svg.setAttribute("height", String(size));
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}
