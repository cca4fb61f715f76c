// Small progressive enhancements; every page works without this file.
document.addEventListener("htmx:afterSwap", function (e) {
  var focus = e.detail.target.querySelector("[data-autofocus]");
  if (focus) { focus.focus(); }
});

// -- billing pages (issue 7) ---------------------------------------------------------------------------------
// Form errors come back as 422 with the re-rendered component: let htmx swap them in like a 200.
if (window.htmx) {
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "422", swap: true },
    { code: "[45]..", swap: false, error: true },
    { code: "...", swap: false }
  ];
}

// A request htmx could not swap (403, 404, 500, network): say so instead of failing silently.
function servicepro_notice(text) {
  var main = document.getElementById("main");
  if (!main) { return; }
  var box = document.getElementById("htmx-notice");
  if (!box) {
    box = document.createElement("div");
    box.id = "htmx-notice";
    box.className = "flash flash-error";
    box.setAttribute("role", "alert");
    main.insertBefore(box, main.firstChild);
  }
  box.textContent = text;
}
document.addEventListener("htmx:responseError", function (e) {
  var status = e.detail.xhr ? e.detail.xhr.status : 0;
  servicepro_notice(status === 404 ? "That item no longer exists (404). Reload the page."
    : status === 403 ? "You are not allowed to do that (403)."
    : "Something went wrong (" + status + "). Nothing was changed; reload the page and try again.");
});
document.addEventListener("htmx:sendError", function () {
  servicepro_notice("The server could not be reached. Check your connection and try again.");
});

// Print buttons on printable pages (no inline script: the CSP allows only our own files).
document.addEventListener("click", function (e) {
  var btn = e.target.closest ? e.target.closest("[data-print]") : null;
  if (btn) { window.print(); }
});

// A swapped-in component can ask for focus (e.g. the result of "Pay now"): move focus there once, so screen
// readers and keyboards land on the news. (outerHTML swaps detach the old target, so look in the document.)
document.addEventListener("htmx:afterSettle", function () {
  var el = document.querySelector("[data-autofocus]");
  if (el) { el.removeAttribute("data-autofocus"); el.focus(); }
});

// -- pages that stay true after every action -------------------------------------------------------------------
// An action's answer raises "billing-changed" (HX-Trigger) when it changed billing figures. The page then fetches
// its own address once more and swaps in every region marked data-live (out of band, by id), so the summary
// cards, rows, tables, banner and navigation show what a reload would — without one. Requests made while one is
// in flight are queued into a single follow-up (htmx keeps the last), so a run's stream of updates stays cheap.
document.addEventListener("billing-changed", function () {
  if (!window.htmx) { return; }
  var ids = Array.prototype.map.call(document.querySelectorAll("[data-live][id]"), function (el) {
    return "#" + el.id;
  });
  if (!ids.length) { return; }
  htmx.ajax("GET", window.location.pathname + window.location.search,
    { source: document.body, target: document.body, swap: "none", selectOOB: ids.join(",") });
});
