// Launch dashboard: the little behaviour htmx does not cover (no framework, no CDN).
(function () {
  // Tracebacks and log tails open scrolled to their last line, where the error is.
  function scrollToEnd(root) {
    root.querySelectorAll("pre[data-scroll-end]").forEach(function (pre) {
      pre.scrollTop = pre.scrollHeight;
    });
  }
  // Copy buttons: data-copy names the element whose text is copied.
  function onClick(event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.innerText.trim();
    var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand("copy");
      done();
    }
  }
  document.addEventListener("DOMContentLoaded", function () { scrollToEnd(document); });
  document.addEventListener("htmx:afterSettle", function (event) { scrollToEnd(event.target); });
  document.addEventListener("toggle", function (event) { if (event.target.open) scrollToEnd(event.target); }, true);
  document.addEventListener("click", onClick);
  // Live parts poll only while the tab is visible: a hidden tab sends nothing, and the tab
  // coming back refreshes them at once.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var trigger = event.detail.requestConfig && event.detail.requestConfig.triggeringEvent;
    if (document.visibilityState !== "visible" && (!trigger || trigger.type !== "submit")) event.preventDefault();
  });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") document.dispatchEvent(new Event("launch:visible"));
  });
})();
