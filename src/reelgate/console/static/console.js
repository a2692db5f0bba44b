// reelgate console: image pick / drag-and-drop through the upload flow, and small helpers.
// Everything else is htmx attributes in the templates.
(function () {
  "use strict";

  function csrfToken() {
    var headers = JSON.parse(document.body.getAttribute("hx-headers") || "{}");
    return headers["X-CSRF-Token"] || "";
  }

  function setValue(drop, url, label) {
    var hidden = drop.querySelector("input[type=hidden]");
    var preview = drop.querySelector("img.preview");
    var clear = drop.querySelector("button.clear");
    hidden.value = url || "";
    if (url) { preview.src = url; preview.hidden = false; clear.hidden = false; }
    else { preview.removeAttribute("src"); preview.hidden = true; clear.hidden = true; }
    drop.querySelector(".upload-state").textContent = label || "";
    // The price preview listens for this.
    document.body.dispatchEvent(new CustomEvent("rg:inputs"));
  }

  function upload(drop, file) {
    var state = drop.querySelector(".upload-state");
    state.textContent = "Uploading " + file.name + "…";
    state.classList.remove("error");
    var body = new FormData();
    body.append("file", file, file.name);
    fetch("/console/upload", {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "X-CSRF-Token": csrfToken() }
    }).then(function (r) {
      return r.json().then(function (data) { return { ok: r.ok, data: data }; });
    }).then(function (res) {
      if (!res.ok) { state.textContent = res.data.error || "Upload refused"; state.classList.add("error"); return; }
      setValue(drop, res.data.url, res.data.filename + " (" + Math.round(res.data.size / 1024) + " KiB)");
    }).catch(function () {
      state.textContent = "Upload failed: the server did not answer"; state.classList.add("error");
    });
  }

  function wire(root) {
    root.querySelectorAll(".drop").forEach(function (drop) {
      if (drop.dataset.wired) return;
      drop.dataset.wired = "1";
      drop.querySelector("input[type=file]").addEventListener("change", function (e) {
        if (e.target.files.length) upload(drop, e.target.files[0]);
      });
      drop.querySelector("button.clear").addEventListener("click", function () { setValue(drop, ""); });
      ["dragenter", "dragover"].forEach(function (t) {
        drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add("over"); });
      });
      ["dragleave", "drop"].forEach(function (t) {
        drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.remove("over"); });
      });
      drop.addEventListener("drop", function (e) {
        if (e.dataTransfer.files.length) upload(drop, e.dataTransfer.files[0]);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    wire(document);
    document.body.addEventListener("htmx:afterSwap", function (e) { wire(e.target); });
    // A new submission clears the messages of the previous one.
    document.body.addEventListener("htmx:beforeRequest", function (e) {
      if (e.target.id === "gen") {
        document.querySelectorAll(".field-error").forEach(function (p) { p.textContent = ""; });
      }
    });
  });
})();
