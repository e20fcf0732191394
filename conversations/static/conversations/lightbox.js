// Click an image to see it large: a modal <dialog>, so focus stays inside it and
// Escape closes it natively; the close button, a click on the backdrop, and
// focus going back to where it was are added here.

const dialog = document.getElementById("lightbox");
const image = document.getElementById("lightbox-img");
const caption = document.getElementById("lightbox-caption");
const download = document.getElementById("lightbox-download");
const closeButton = document.getElementById("lightbox-close");
let opener = null;

/** Show the picture of an image card's item (.image-item), or of a card's first image. */
export function openLightbox(card) {
  const thumbnail = card.querySelector("img");
  const link = card.querySelector('[data-slot="download"]');
  opener = document.activeElement;
  image.src = thumbnail.currentSrc || thumbnail.src;
  image.alt = thumbnail.alt;
  const figure = card.closest("figure") || card;
  caption.textContent = figure.querySelector('[data-slot="caption"]')?.textContent || "";
  download.href = link.href;
  download.setAttribute("download", link.getAttribute("download") || "");
  dialog.showModal();
  closeButton.focus();
}

closeButton.addEventListener("click", () => dialog.close());
dialog.addEventListener("click", (event) => {
  if (event.target === dialog) dialog.close(); // the backdrop, not the picture
});
dialog.addEventListener("close", () => {
  image.removeAttribute("src");
  opener?.focus();
  opener = null;
});
