/* veri-box dashboard behaviour: live charts (uPlot), log follow, upload progress, filters.
   No build step; everything else is htmx attributes in the templates. */
(function () {
  "use strict";

  // Filter forms submit themselves when a select changes.
  document.addEventListener("change", function (e) {
    var form = e.target.form;
    if (form && form.hasAttribute("data-autosubmit")) form.requestSubmit();
  });

  // Upload progress on multipart htmx forms, and a clean form after a successful upload.
  document.addEventListener("htmx:xhr:progress", function (e) {
    var bar = e.target.querySelector && e.target.querySelector("progress.upload-progress");
    if (!bar || !e.detail.total) return;
    bar.hidden = false;
    bar.value = Math.round((e.detail.loaded / e.detail.total) * 100);
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.detail.elt;
    if (!form || !form.classList || !form.classList.contains("upload")) return;
    var bar = form.querySelector("progress.upload-progress");
    if (bar) { bar.hidden = true; bar.value = 0; }
    if (e.detail.successful && !e.detail.xhr.responseText.includes('class="error-box"')) form.reset();
  });

  // The log follows new lines unless the reader scrolled up or unticked "follow".
  document.addEventListener("htmx:sseMessage", function (e) {
    var log = document.getElementById("log");
    if (!log || !log.contains(e.target) && e.target !== log) return;
    log.dataset.lines = String(log.children.length);
    var follow = document.getElementById("log-follow");
    if (!follow || follow.checked) log.scrollTop = log.scrollHeight;
  });

  // ---- metric charts --------------------------------------------------------------------

  var POLL_MS = 2000;
  var MAX_POINTS = 1000;
  var TERMINAL = ["completed", "failed", "cancelled"];
  // Whole steps only on the x axis; tiny and huge values in short scientific notation.
  var STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7, 1e8];
  function tick(v) {
    if (v === 0) return "0";
    var a = Math.abs(v);
    return a < 1e-3 || a >= 1e6 ? v.toExponential(1) : String(+v.toPrecision(4));
  }
  var COLORS = ["#2457c5", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490"];

  function initCharts(root) {
    var jobId = root.dataset.job;
    var stored = null;
    try { stored = JSON.parse(localStorage.getItem("veri-box.chart-keys") || "null"); } catch (err) { stored = null; }
    var selected = Array.isArray(stored) ? stored : JSON.parse(root.dataset.defaultKeys);
    var series = {};   // key -> {x: [], y: []}
    var fetched = {};  // keys whose whole history (downsampled) has been read
    var charts = {};   // key -> uPlot
    var available = [];
    var latest = -1;
    var status = root.dataset.status;
    var grid = document.getElementById("chart-grid");
    var picker = document.getElementById("key-picker");

    // The keys charted: the chosen ones this job has, else its first four.
    function wanted() {
      if (!available.length) return selected.slice();
      var keys = selected.filter(function (k) { return available.indexOf(k) >= 0; });
      return keys.length ? keys : available.slice(0, 4);
    }

    function shown() {
      return wanted().filter(function (k) { return series[k] && series[k].x.length; });
    }

    function renderPicker() {
      document.getElementById("key-count").textContent = String(available.length);
      var have = Array.prototype.map.call(picker.querySelectorAll("input"), function (i) { return i.value; });
      if (have.join("\n") === available.join("\n")) return;
      picker.textContent = "";
      available.forEach(function (key) {
        var label = document.createElement("label");
        var box = document.createElement("input");
        box.type = "checkbox";
        box.value = key;
        box.checked = selected.indexOf(key) >= 0;
        box.addEventListener("change", function () {
          selected = Array.prototype.filter.call(picker.querySelectorAll("input"), function (i) { return i.checked; })
            .map(function (i) { return i.value; });
          try { localStorage.setItem("veri-box.chart-keys", JSON.stringify(selected)); } catch (err) { /* private mode */ }
          var missing = wanted().filter(function (k) { return !fetched[k]; });
          if (missing.length) load(missing, null).then(function () { renderCharts(true); });
          else renderCharts(true);
        });
        label.appendChild(box);
        label.appendChild(document.createTextNode(" " + key));
        picker.appendChild(label);
      });
    }

    function makeChart(key, index) {
      var box = document.createElement("div");
      box.className = "chart";
      box.dataset.key = key;
      var title = document.createElement("h3");
      title.textContent = key;
      box.appendChild(title);
      grid.appendChild(box);
      var width = Math.max(box.clientWidth, 240);
      var opts = {
        width: width,
        height: 200,
        scales: { x: { time: false } },
        legend: { show: true },
        cursor: { drag: { x: true, y: false }, sync: { key: "veri-box-" + jobId } },
        series: [
          { label: "step" },
          { label: key, stroke: COLORS[index % COLORS.length], width: 1.5, spanGaps: true,
            points: { show: series[key].x.length < 60 } },
        ],
        axes: [
          { label: "step", incrs: STEP_INCRS, values: function (u, ticks) { return ticks.map(String); } },
          { size: 64, values: function (u, ticks) { return ticks.map(tick); } },
        ],
        hooks: {
          // Zoomed when the x scale no longer spans the data (a drag-select narrowed it).
          setScale: [function (u, scaleKey) {
            var xs = u.data[0];
            if (scaleKey !== "x" || !xs.length) return;
            u.vbZoomed = u.scales.x.min > xs[0] || u.scales.x.max < xs[xs.length - 1];
            root.dataset.zoomed = String(Object.keys(charts).some(function (k) { return charts[k].vbZoomed; }) || u.vbZoomed);
          }],
        },
      };
      var chart = new uPlot(opts, [series[key].x.slice(), series[key].y.slice()], box);

      return chart;
    }

    function renderCharts(rebuild) {
      var keys = shown();
      var note = document.getElementById("no-metrics");
      if (note) note.hidden = keys.length > 0;
      var current = Object.keys(charts);
      if (rebuild || current.join("\n") !== keys.join("\n")) {
        current.forEach(function (k) { charts[k].root.parentNode.remove(); charts[k].destroy(); });
        charts = {};
        keys.forEach(function (k, i) { charts[k] = makeChart(k, i); });
      } else {
        keys.forEach(function (k) {
          charts[k].setData([series[k].x.slice(), series[k].y.slice()], !charts[k].vbZoomed);
        });
      }
      var total = 0;
      keys.forEach(function (k) {
        charts[k].root.parentNode.dataset.points = String(series[k].x.length);
        total += series[k].x.length;
      });
      root.dataset.points = String(total);
      root.dataset.latestStep = String(latest);
    }

    function absorb(data) {
      status = data.status;
      root.dataset.status = status;
      available = data.available_keys;
      data.metrics.forEach(function (point) {
        Object.keys(point.values).forEach(function (key) {
          var value = point.values[key];
          if (value === null || value === undefined) return;
          var s = series[key] || (series[key] = { x: [], y: [] });
          var n = s.x.length;
          if (n && s.x[n - 1] === point.step) { s.y[n - 1] = value; return; }
          if (n && s.x[n - 1] > point.step) return;
          s.x.push(point.step);
          s.y.push(value);
        });
        if (point.step > latest) latest = point.step;
      });
    }

    // Chart data for `keys` (downsampled to MAX_POINTS), or only the steps after `from`.
    function load(keys, from) {
      var params = new URLSearchParams({ max_points: String(MAX_POINTS) });
      if (keys.length) params.set("keys", keys.join(","));
      if (from !== null) params.set("from_step", String(from));
      return fetch("/jobs/" + encodeURIComponent(jobId) + "/metrics.json?" + params.toString(), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (r) {
          if (!r.ok || (r.headers.get("content-type") || "").indexOf("json") < 0) return null;
          return r.json();
        })
        .then(function (data) {
          if (!data) return null;
          if (from === null) keys.forEach(function (k) { fetched[k] = true; });
          absorb(data);
          return data;
        });
    }

    function poll(first) {
      var keys = wanted();
      var step = first ? load(keys, null) : load(keys, latest >= 0 ? latest + 1 : null);
      step
        .then(function (data) {
          // The first answer names the job's keys; read any wanted key not read yet.
          var missing = wanted().filter(function (k) { return !fetched[k]; });
          if (data && missing.length) return load(missing, null).then(function () { return data; });
          return data;
        })
        .then(function (data) {
          if (data) {
            renderPicker();
            renderCharts(false);
          }
          if (!data || TERMINAL.indexOf(status) < 0) setTimeout(poll, POLL_MS);
          else root.dataset.final = "true";
        })
        .catch(function () { setTimeout(poll, POLL_MS * 2); });
    }

    var resetButton = document.getElementById("reset-zoom");
    if (resetButton) resetButton.addEventListener("click", function () {
      root.dataset.zoomed = "false";
      renderCharts(true);
    });
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () {
        Object.keys(charts).forEach(function (k) {
          var box = charts[k].root.parentNode;
          charts[k].setSize({ width: Math.max(box.clientWidth, 240), height: 200 });
        });
      }, 150);
    });
    poll(true);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = document.getElementById("charts");
    if (root && window.uPlot) initCharts(root);
  });
})();
