// A table wider than the answer scrolls in its own box (.table-wrap); when it
// does, a line under it says so (on a phone the cut-off column is otherwise a
// mystery), the right edge fades, and its cells get room to be wide rather
// than tall. Measured at once where the box is in the page (the final swap:
// no jump), and again whenever its size changes.

const observer = new ResizeObserver((entries) => {
  for (const entry of entries) update(entry.target);
});

function update(wrap) {
  const hint = wrap.nextElementSibling?.classList.contains("table-hint") ? wrap.nextElementSibling : null;
  if (!hint || !wrap.isConnected) return;
  const scrolls = wrap.scrollWidth > wrap.clientWidth + 1;
  wrap.classList.toggle("scrolls", scrolls);
  hint.hidden = !scrolls;
}

/** Give a .table-wrap its hint line and keep both up to date. */
export function watchTable(wrap) {
  const columns = wrap.querySelector("tr")?.children.length || 0;
  const hint = document.createElement("p");
  hint.className = "table-hint";
  hint.hidden = true;
  hint.textContent = `Scroll sideways to see all ${columns} columns →`;
  wrap.after(hint);
  update(wrap);
  observer.observe(wrap);
}
