// A streaming answer shown as Markdown while it grows (docs/architecture.md,
// "Rendering as it streams"; docs/security.md, "Markdown in the page").
//
// The server's sanitised HTML stays the final word: when the answer ends it
// replaces all of this. Until then the page renders the text itself, as the
// server would: markdown-it 14.1.0 (the JavaScript original that the server's
// markdown-it-py 4 ports) with the same options (CommonMark + tables, raw HTML
// off, no linkify), then DOMPurify with the server's own allow-list, which the
// page receives as JSON (rendering.client_policy): the same tags, the same
// attributes per tag, the same URL schemes, rel and target on every link. Only
// the sanitiser's output, a DOM fragment built in an inert document, ever
// enters the page. Code blocks are plain until the server's highlighted HTML
// arrives (same box, same font: only colours change).
//
// Cost: each segment is parsed again at most once per animation frame (less
// often when that gets expensive, below), and only the top-level blocks whose
// HTML changed (usually the last) are sanitised and put into the DOM again.

import "./vendor/markdown-it.min.js";
import "./vendor/purify.min.js";

const policy = JSON.parse(document.getElementById("render-policy").textContent);

const md = globalThis.markdownit("commonmark", { html: false, linkify: false }).enable("table");
// Column alignment as `align` (allowed) instead of `style`, as rendering.py does.
md.core.ruler.push("align_cells", (state) => {
  for (const token of state.tokens) {
    if (token.type !== "th_open" && token.type !== "td_open") continue;
    const style = token.attrGet("style") || "";
    if (!style.startsWith("text-align:")) continue;
    token.attrs = token.attrs.filter(([name]) => name !== "style");
    token.attrSet("align", style.slice("text-align:".length));
  }
});

// --- the sanitiser: the server's nh3 allow-list, enforced by DOMPurify ---------------

const purify = globalThis.DOMPurify(window);
const allowedAttributes = new Map(
  Object.entries(policy.attributes).map(([tag, names]) => [tag, new Set(names)]),
);
const allowedClasses = new Map(
  Object.entries(policy.classes).map(([tag, names]) => [tag, new Set(names)]),
);
const schemes = policy.url_schemes.map((s) => s.replace(/[^a-z0-9+.-]/gi, "")).join("|");
const config = {
  ALLOWED_TAGS: policy.tags,
  ALLOWED_ATTR: [...new Set([...allowedAttributes.values()].flatMap((set) => [...set]).concat("class"))],
  // An allowed scheme, or a relative URL (as nh3 lets those through).
  ALLOWED_URI_REGEXP: new RegExp(`^(?:(?:${schemes}):|[^a-z]|[a-z+.\\-]+(?:[^a-z+.\\-:]|$))`, "i"),
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  ALLOW_UNKNOWN_PROTOCOLS: false,
  FORBID_CONTENTS: ["script", "style"],
  RETURN_DOM_FRAGMENT: true,
};

purify.addHook("uponSanitizeAttribute", (node, data) => {
  const tag = node.nodeName.toLowerCase();
  const name = data.attrName;
  const perTag = allowedAttributes.get(tag);
  if (name === "class" && allowedClasses.has(tag)) return; // filtered below
  if (!perTag || !perTag.has(name)) data.keepAttr = false;
});

purify.addHook("afterSanitizeAttributes", (node) => {
  const tag = node.nodeName.toLowerCase();
  const classes = allowedClasses.get(tag);
  if (classes && node.hasAttribute("class")) {
    const kept = [...node.classList].filter((name) => classes.has(name));
    if (kept.length) node.setAttribute("class", kept.join(" "));
    else node.removeAttribute("class");
  }
  if (tag === "a") {
    node.setAttribute("target", policy.link_target);
    node.setAttribute("rel", policy.link_rel);
  }
});

/** Untrusted HTML to a DOM fragment holding only what the server's sanitiser keeps. */
export function sanitize(html) {
  return purify.sanitize(html, config);
}

/** Markdown to a sanitised DOM fragment, as the server renders it (without highlighting). */
export function render(text) {
  return sanitize(md.render(text));
}

// --- blocks -------------------------------------------------------------------------

/** The token ranges of the top-level blocks (a paragraph, a list, a table, a fence…). */
function topLevelBlocks(tokens) {
  const ranges = [];
  let start = 0;
  for (let i = 0; i < tokens.length; i += 1) {
    const token = tokens[i];
    if (token.level === 0 && token.nesting <= 0) {
      ranges.push([start, i + 1]);
      start = i + 1;
    }
  }
  return ranges;
}

const segments = new WeakMap(); // segment element -> {source, blocks: [{html, nodes}]}
const dirty = new Set();
let frameRequested = false;
let decorate = () => {};

/** What to do to freshly rendered blocks before they go in (code block headers, table boxes). */
export function setDecorator(fn) {
  decorate = fn;
}

function state(segment) {
  let entry = segments.get(segment);
  if (!entry) {
    // A segment the server rendered at page load holds its text as text.
    entry = { source: segment.textContent, blocks: [] };
    segment.textContent = "";
    segments.set(segment, entry);
  }
  return entry;
}

/** The Markdown a streaming segment holds so far. */
export function sourceOf(segment) {
  return segments.get(segment)?.source ?? segment.textContent;
}

/** Add streamed text to a segment; it is rendered at the next animation frame. */
export function append(segment, text) {
  state(segment).source += text;
  schedule(segment);
}

/** Render a segment the server sent as plain text (a reload during streaming). */
export function adopt(segment) {
  state(segment);
  schedule(segment);
}

// Rendering takes at most about a quarter of the time: after a render that took
// T ms the next waits 3T (a frame for a short answer; a 50 KB one, whose parse
// alone takes milliseconds, renders a few times a second instead).
const BUSY_SHARE = 0.25;
let nextAt = 0;

function schedule(segment) {
  dirty.add(segment);
  if (frameRequested || document.hidden) return; // a hidden tab renders when shown
  frameRequested = true;
  const wait = nextAt - performance.now();
  if (wait > 0) setTimeout(() => requestAnimationFrame(renderDirty), wait);
  else requestAnimationFrame(renderDirty);
}

function renderDirty() {
  frameRequested = false;
  const start = performance.now();
  for (const segment of dirty) renderNow(segment);
  dirty.clear();
  const took = performance.now() - start;
  nextAt = performance.now() + (took * (1 - BUSY_SHARE)) / BUSY_SHARE;
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && dirty.size) renderDirty();
});

/** Bring a segment's DOM up to its source now, touching only the blocks that changed. */
export function renderNow(segment) {
  dirty.delete(segment);
  if (!segment.isConnected) return;
  const entry = state(segment);
  const env = {};
  const tokens = md.parse(entry.source, env);
  const ranges = topLevelBlocks(tokens);
  const next = [];
  let anchor = null; // the last node of the blocks kept or placed so far
  ranges.forEach(([start, end], index) => {
    const html = md.renderer.render(tokens.slice(start, end), md.options, env);
    const old = entry.blocks[index];
    if (old && old.html === html) {
      next.push(old);
      anchor = old.nodes[old.nodes.length - 1] || anchor;
      return;
    }
    if (old) for (const node of old.nodes) node.remove();
    const fragment = sanitize(html);
    const holder = document.createElement("div");
    holder.className = "md";
    holder.append(fragment);
    decorate(holder);
    const nodes = [...holder.childNodes];
    if (anchor) anchor.after(...nodes);
    else segment.prepend(...nodes);
    if (nodes.length) anchor = nodes[nodes.length - 1];
    next.push({ html, nodes });
  });
  for (const old of entry.blocks.slice(ranges.length)) for (const node of old.nodes) node.remove();
  entry.blocks = next;
}
