// The admin's conversation transcript reuses the chat page's image cards: there,
// "Enlarge" opens the lightbox of chat.js, which the admin does not load. Here it
// opens the image itself in a new tab, through the app's own image URL.
document.addEventListener("click", (event) => {
  const button = event.target.closest('.chatimg-transcript [data-action="enlarge"]');
  if (!button) return;
  const image = button.closest("figure")?.querySelector("img");
  if (image) window.open(image.src, "_blank", "noopener");
});
