// Deleting a conversation without the browser's native confirm: the entry goes
// at once and a bar offers Undo for a few seconds; only then is the delete sent.
// Leaving the page meanwhile sends it too (the person did ask for it). One
// deletion waits at a time: starting another sends the first.

const bar = document.getElementById("undo-bar");
const text = bar.querySelector(".undo-text");
const undoButton = document.getElementById("undo-button");
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

export const UNDO_SECONDS = 6;

let waiting = null; // {url, commit, restore, timer}

function close() {
  clearTimeout(waiting?.timer);
  waiting = null;
  bar.hidden = true;
}

/** Send the waiting deletion now. */
export function commitNow() {
  const job = waiting;
  if (!job) return;
  close();
  job.commit();
}

/**
 * Offer Undo for a deletion that the page already shows as done.
 * @param {{message: string, hide: () => void, restore: () => void, commit: () => void, url: string}} job
 */
export function offer(job) {
  commitNow();
  job.hide();
  text.textContent = job.message;
  bar.hidden = false;
  undoButton.focus();
  waiting = { ...job, timer: setTimeout(commitNow, UNDO_SECONDS * 1000) };
}

undoButton.addEventListener("click", () => {
  const job = waiting;
  if (!job) return;
  close();
  job.restore();
});

bar.addEventListener("keydown", (event) => {
  if (event.key === "Escape") undoButton.click();
});

// The page is going away (another conversation, a reload): send it without waiting.
window.addEventListener("pagehide", () => {
  const job = waiting;
  if (!job) return;
  close();
  navigator.sendBeacon(job.url, new URLSearchParams({ csrfmiddlewaretoken: csrf() }));
});
