// The line form: what a client named Maria would read for each auto-reply, as it is typed.
(() => {
  "use strict";
  const lineName = () => (document.getElementById("lf-name") || {}).value || "";
  const fill = (template) =>
    template.replace(/\{(client_name|line_name|position)\}/g, (_, key) =>
      key === "client_name" ? "Maria" : key === "line_name" ? lineName() : "3");
  const update = (box) => {
    const preview = document.querySelector(`[data-preview-of="${box.id}"]`);
    if (!preview) return;
    preview.textContent = box.value.trim() ? `Maria reads: ${fill(box.value)}` : "(not sent)";
  };
  const boxes = Array.from(document.querySelectorAll("textarea[data-template]"));
  boxes.forEach((box) => { box.addEventListener("input", () => update(box)); update(box); });
  const name = document.getElementById("lf-name");
  if (name) name.addEventListener("input", () => boxes.forEach(update));
})();
