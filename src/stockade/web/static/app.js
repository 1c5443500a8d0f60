// Stockade dashboard: the little behaviour the pages need (CSP-safe: no inline handlers, no eval).
(function () {
  "use strict";

  function announce(message) {
    var live = document.getElementById("live");
    if (live) { live.textContent = ""; window.setTimeout(function () { live.textContent = message; }, 50); }
  }

  // Modal dialogs: a link/button with data-open-dialog opens <dialog id=...> (the link works without JS).
  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-open-dialog]");
    if (opener) {
      var dialog = document.getElementById(opener.getAttribute("data-open-dialog"));
      if (dialog && typeof dialog.showModal === "function") {
        event.preventDefault();
        dialog.returnFocusTo = opener;
        dialog.showModal();
        var first = dialog.querySelector("input:not([type=hidden]), select, textarea, button");
        if (first) { first.focus(); }
      }
      return;
    }
    var closer = event.target.closest("[data-close-dialog]");
    if (closer) {
      var parent = closer.closest("dialog");
      if (parent) { parent.close(); }
      return;
    }
    var copier = event.target.closest("[data-copy-target]");
    if (copier) {
      var source = document.getElementById(copier.getAttribute("data-copy-target"));
      if (source) { copy(source.textContent.trim(), copier); }
    }
  });

  // A closed dialog forgets what was typed into it (secret values must not linger in the page).
  // ("close" does not bubble: listened for while capturing, so dialogs swapped in later are covered too.)
  document.addEventListener("close", function (event) {
    var dialog = event.target;
    if (!dialog || dialog.tagName !== "DIALOG") { return; }
    dialog.querySelectorAll("form").forEach(function (form) { form.reset(); });
    var back = dialog.returnFocusTo;
    if (back && !document.contains(back) && back.id) { back = document.getElementById(back.id); }
    if (back && document.contains(back)) { back.focus(); }
  }, true);

  function copy(text, button) {
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      announce("Copied to the clipboard");
      window.setTimeout(function () { button.textContent = label; }, 2000);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text) && done(); });
    } else if (fallbackCopy(text)) {
      done();
    }
  }

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }

  // Destructive forms ask first.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // htmx requests carry the session's CSRF token as a header too.
  document.addEventListener("htmx:configRequest", function (event) {
    var meta = document.querySelector("meta[name=csrf-token]");
    if (meta) { event.detail.headers["X-CSRF-Token"] = meta.getAttribute("content"); }
  });

  // A session that ended while a page polled: go to the sign-in page instead of swapping it in.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr.status >= 400) { event.detail.shouldSwap = false; }
  });

  // The minted token panel takes focus so screen readers announce it.
  var minted = document.getElementById("minted");
  if (minted) { minted.focus(); }
})();
