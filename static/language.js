// The language switcher submits as soon as a language is picked; its button is
// then redundant and hidden (without JavaScript the button does the job).
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    const form = select.form;
    for (const button of form.querySelectorAll("[data-js-hide]")) button.hidden = true;
    select.addEventListener("change", () => form.submit());
  }
});
