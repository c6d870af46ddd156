// Forms with data-confirm ask before they submit (in place of inline onsubmit handlers,
// which the Content-Security-Policy forbids).
document.addEventListener("submit", function (event) {
  var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
}, true);
