// The gallery's conversation filter applies as soon as it is chosen (the button
// is there without scripts).
const select = document.getElementById("gallery-conversation");
select?.addEventListener("change", () => select.form.requestSubmit());
