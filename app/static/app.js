// Small progressive enhancements; every page works without this file.
document.addEventListener("htmx:afterSwap", function (e) {
  var focus = e.detail.target.querySelector("[data-autofocus]");
  if (focus) { focus.focus(); }
});
