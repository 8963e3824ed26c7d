// Huren web app: small progressive enhancements. Every page works without this script.
(function () {
  "use strict";
  // Buttons marked data-print print the page (timeline, access report).
  document.querySelectorAll("[data-print]").forEach(function (b) {
    b.hidden = false;
    b.addEventListener("click", function () { window.print(); });
  });
  // A form marked data-confirm asks once more before it is sent (break-glass).
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
  // The re-test reason list is only needed when "re-test" is chosen.
  document.querySelectorAll("select[data-focus-first]").forEach(function (s) { s.focus(); });
})();
