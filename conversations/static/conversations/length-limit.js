// The message box's length limit, said out loud instead of cutting a paste
// short: nothing is ever removed from the box; near the server's limit a
// counter shows, and over it the counter says by how much and Send waits.
// (The server still refuses a longer message: MAX_MESSAGE_CHARS.)

import { codePoints } from "./dom.js";

const main = document.getElementById("main");
const counter = document.getElementById("char-count");
const MAX = Number(main.dataset.maxChars) || Infinity;
const SHOW_FROM = 0.9; // of the limit

const format = (n) => n.toLocaleString("en-US");

/** True when the box holds more than the server accepts. */
export function over(text) {
  return codePoints(text) > MAX;
}

/** Bring the counter up to date with the box's text. */
export function update(input) {
  const length = codePoints(input.value);
  const isOver = length > MAX;
  counter.hidden = length < MAX * SHOW_FROM;
  counter.classList.toggle("is-over", isOver);
  counter.textContent = isOver
    ? `${format(length - MAX)} characters too long: the limit is ${format(MAX)}`
    : `${format(length)} / ${format(MAX)}`;
  if (isOver) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}
