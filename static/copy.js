// Copy-to-clipboard buttons: <button data-copy="element-id" data-copied="Copied" hidden>.
// The buttons stay hidden without JavaScript; the text can still be selected by hand.
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) continue;
    button.hidden = false;
    const label = button.textContent;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = button.dataset.copied || label;
        setTimeout(() => { button.textContent = label; }, 2000);
      } catch (err) {
        window.getSelection().selectAllChildren(source);
      }
    });
  }
});
