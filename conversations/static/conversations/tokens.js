// The API token page: select the new token on focus, copy it with one click.
// (A module, not inline handlers: the Content-Security-Policy runs no inline script.)
const field = document.getElementById("new-token");
const button = document.getElementById("copy-token");

if (field) {
  field.addEventListener("focus", () => field.select());
}

if (field && button) {
  const label = button.textContent;
  button.addEventListener("click", async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
    } catch {
      // No clipboard API (plain http on another host): the text stays selected for Ctrl+C.
      return;
    }
    button.textContent = button.dataset.copied || "Copied";
    setTimeout(() => {
      button.textContent = label;
    }, 2000);
  });
}
