// Confirmation before destructive forms: <form data-confirm="Delete this?">.
// Without JavaScript the form simply submits.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
