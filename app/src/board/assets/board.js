// Courier Board: the only script. Refreshes the parts marked data-refresh
// in place (the overview, an unfinished task, the campaigns), and asks
// before a button marked "danger" submits its form.
"use strict";
(function () {
  // A part is not replaced just after a press in it, nor while a form in it
  // has the focus (its button would be swapped under the click); a fragment
  // that says data-final (a finished task) is the last one fetched.
  function busy(element) {
    var active = document.activeElement;
    var pressed = Number(element.getAttribute("data-pressed") || 0);
    return Date.now() - pressed < 1500 ||
      (active && active !== document.body && element.contains(active) && active.closest("form") !== null);
  }
  function refresh(element) {
    var every = parseInt(element.getAttribute("data-every") || "3000", 10);
    element.addEventListener("pointerdown", function () {
      element.setAttribute("data-pressed", String(Date.now()));
    });
    var timer = setInterval(function () {
      if (document.hidden || busy(element)) return;
      fetch(element.getAttribute("data-refresh"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          element.innerHTML = html;
          element.classList.remove("stale");
          if (element.querySelector("[data-final]")) clearInterval(timer);
        })
        .catch(function () { element.classList.add("stale"); });
    }, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  });
  // On the document, so forms a refresh brought in ask too.
  document.addEventListener("submit", function (event) {
    var button = event.target.querySelector && event.target.querySelector("button.danger");
    if (button && !window.confirm(button.textContent.trim() + "?")) event.preventDefault();
  });
})();
