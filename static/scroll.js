// A cue on tables wider than their box: <div class="scroll"> gets "more-left" and
// "more-right" while part of its table is out of sight on that side, and app.css fades
// that edge. Without JavaScript the box still scrolls, only without the cue.
document.addEventListener("DOMContentLoaded", () => {
  const update = (box) => {
    const hidden = box.scrollWidth - box.clientWidth;
    box.classList.toggle("more-left", hidden > 1 && box.scrollLeft > 1);
    box.classList.toggle("more-right", hidden > 1 && box.scrollLeft < hidden - 1);
  };
  const resized = new ResizeObserver((entries) => {
    for (const entry of entries) update(entry.target);
  });
  for (const box of document.querySelectorAll(".scroll")) {
    box.addEventListener("scroll", () => update(box), { passive: true });
    resized.observe(box);
    update(box);
  }
});
