// Courier Board: the only script. Refreshes the parts marked data-refresh
// in place, and asks before a button marked "danger" submits its form.
"use strict";
(function () {
  function refresh(element) {
    var every = parseInt(element.getAttribute("data-every") || "3000", 10);
    setInterval(function () {
      if (document.hidden) return;
      fetch(element.getAttribute("data-refresh"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) { element.innerHTML = html; element.classList.remove("stale"); })
        .catch(function () { element.classList.add("stale"); });
    }, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("form").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var button = form.querySelector("button.danger");
        if (button && !window.confirm(button.textContent.trim() + "?")) event.preventDefault();
      });
    });
  });
})();
