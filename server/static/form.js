// Progressive extras for the upload form: a preview of the chosen image, drag and drop, and each
// word's attention drawn over the image. The form works the same without this script.
"use strict";

// One small canvas per word: the uploaded image with that word's weights over the grid on top.
function drawAttention() {
  const data = document.getElementById("attention-data");
  const figure = document.getElementById("attention");
  const image = document.getElementById("uploaded");
  if (!data || !figure || !image) return;
  const looked = JSON.parse(data.textContent);
  const [rows, columns] = looked.grid;
  const strip = figure.querySelector(".strip");
  const width = 120, height = Math.round(width * image.naturalHeight / image.naturalWidth) || width;
  looked.tokens.forEach((word, index) => {
    const weights = looked.weights[index];
    const most = Math.max(...weights) || 1;
    const panel = document.createElement("div");
    panel.className = "word";
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "Attention for the word " + word);
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0, width, height);
    // Darken where the word did not look, so what it looked at stays visible.
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < columns; c++) {
        context.fillStyle = "rgba(0, 0, 0, " + (0.85 * (1 - weights[r * columns + c] / most)).toFixed(3) + ")";
        const x0 = Math.round(c * width / columns), y0 = Math.round(r * height / rows);
        context.fillRect(x0, y0, Math.round((c + 1) * width / columns) - x0, Math.round((r + 1) * height / rows) - y0);
      }
    }
    const label = document.createElement("span");
    label.textContent = word;
    panel.append(canvas, label);
    strip.append(panel);
  });
  figure.hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  const uploaded = document.getElementById("uploaded");
  if (uploaded) {
    if (uploaded.complete) drawAttention(); else uploaded.addEventListener("load", drawAttention);
  }
  const form = document.getElementById("upload");
  if (!form) return;
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
