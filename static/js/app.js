// Small progressive enhancement; every page works without it.
(function () {
  "use strict";

  // Live sync progress: poll the JSON endpoint while a run is queued or running, then reload
  // once so the history, counts and health tiles show the finished run.
  function watchProgress(box) {
    var url = box.getAttribute("data-progress-url");
    if (!url || box.getAttribute("data-active") !== "1") return;
    var bar = box.querySelector("[role=progressbar]");
    var fill = bar && bar.querySelector("span");
    function set(name, value) {
      var el = box.querySelector('[data-field="' + name + '"]');
      if (el) el.textContent = value;
    }
    function tick() {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          var run = data && (data.run !== undefined ? data.run : data);
          if (!run) return setTimeout(tick, 3000);
          if (fill) fill.style.width = run.percent + "%";
          if (bar) bar.setAttribute("aria-valuenow", run.percent);
          set("state_label", run.state_label);
          set("done", run.done);
          set("total", run.total || "?");
          set("percent", run.percent);
          set("progress_text", run.progress_text);
          set("phases_text", run.phases_text);
          if (bar && run.progress_text) bar.setAttribute("aria-valuetext", run.progress_text);
          if (run.active) {
            setTimeout(tick, 1500);
          } else {
            box.setAttribute("data-active", "0");
            window.location.reload();
          }
        })
        .catch(function () { setTimeout(tick, 3000); });
    }
    setTimeout(tick, 1000);
  }

  // "Select all" checkboxes for bulk actions.
  function wireCheckAll(master) {
    var name = master.getAttribute("data-check-all");
    master.addEventListener("change", function () {
      var form = master.form || document;
      form.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (box) {
        box.checked = master.checked;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-progress-url]").forEach(watchProgress);
    document.querySelectorAll("[data-check-all]").forEach(wireCheckAll);
  });
})();
