// Drag-and-drop reordering of table rows: <tbody data-reorder="form-id"> with
// <tr data-id="...">. When a drag ends with a new order, the ids go into the
// form's "order" field and the form is submitted (the server re-renders the page).
// Without JavaScript the Move up / Move down buttons do the same one step at a time.
document.addEventListener("DOMContentLoaded", () => {
  for (const body of document.querySelectorAll("tbody[data-reorder]")) {
    const form = document.getElementById(body.dataset.reorder);
    const order = () => Array.from(body.querySelectorAll("tr[data-id]"), (r) => r.dataset.id).join(",");
    if (!form || body.querySelectorAll("tr[data-id]").length < 2) continue;
    body.classList.add("reorderable");
    let dragged = null;
    let before = "";
    for (const row of body.querySelectorAll("tr[data-id]")) {
      row.draggable = true;
      row.addEventListener("dragstart", (event) => {
        dragged = row;
        before = order();
        row.classList.add("dragging");
        event.dataTransfer.effectAllowed = "move";
        event.dataTransfer.setData("text/plain", row.dataset.id);
      });
      row.addEventListener("dragover", (event) => {
        if (!dragged) return;
        event.preventDefault();
        if (dragged === row) return;
        const box = row.getBoundingClientRect();
        const after = event.clientY > box.top + box.height / 2;
        body.insertBefore(dragged, after ? row.nextSibling : row);
      });
      row.addEventListener("drop", (event) => event.preventDefault());
      row.addEventListener("dragend", () => {
        row.classList.remove("dragging");
        dragged = null;
        const now = order();
        if (now !== before) {
          form.elements.order.value = now;
          form.submit();
        }
      });
    }
  }
});
