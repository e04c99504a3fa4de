// Progressive extras for the upload form: a preview of the chosen image, and drag and drop.
// The form works the same without this script.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload");
  const input = document.getElementById("image");
  const preview = document.getElementById("chosen");
  let shown = null;

  function showPreview() {
    if (shown) URL.revokeObjectURL(shown);
    const file = input.files && input.files[0];
    if (!file || !file.type.startsWith("image/")) { preview.hidden = true; shown = null; return; }
    shown = URL.createObjectURL(file);
    preview.src = shown;
    preview.alt = "Preview of " + file.name;
    preview.hidden = false;
  }

  input.addEventListener("change", showPreview);
  ["dragenter", "dragover"].forEach((type) => form.addEventListener(type, (event) => {
    event.preventDefault();
    form.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => form.addEventListener(type, () => form.classList.remove("dragging")));
  form.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      showPreview();
    }
  });
});
