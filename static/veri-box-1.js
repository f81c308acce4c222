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

  // ---- light and dark ---------------------------------------------------------------------
  // base.html sets data-theme before the first paint from what was saved; without a saved
  // choice the page follows the system (prefers-color-scheme in the stylesheet).
  var THEME_KEY = "veri-box.theme";
  var darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  function effectiveTheme() {
    var set = document.documentElement.dataset.theme;
    if (set === "dark" || set === "light") return set;
    return darkQuery && darkQuery.matches ? "dark" : "light";
  }
  function showTheme() {
    var button = document.getElementById("theme-toggle");
    var theme = effectiveTheme();
    document.documentElement.dataset.effectiveTheme = theme;
    if (!button) return;
    button.setAttribute("aria-pressed", String(theme === "dark"));
    button.textContent = theme === "dark" ? "Light mode" : "Dark mode";
  }
  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("#theme-toggle");
    if (!button) return;
    var next = effectiveTheme() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try { localStorage.setItem(THEME_KEY, next); } catch (err) { /* private mode: this page only */ }
    showTheme();
    document.dispatchEvent(new CustomEvent("veri-box:theme"));
  });
  if (darkQuery && darkQuery.addEventListener) darkQuery.addEventListener("change", function () {
    showTheme();
    document.dispatchEvent(new CustomEvent("veri-box:theme"));
  });

  function store(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch (err) { /* private mode */ }
  }
  function recall(key) {
    try { return JSON.parse(localStorage.getItem(key) || "null"); } catch (err) { return null; }
  }

  // ---- jobs list: pick jobs to compare -----------------------------------------------------
  // The table refreshes itself (htmx swaps it every few seconds), so the picked ids live here
  // and are ticked again in each new table.
  // Kept for this tab (sessionStorage), so that picks survive a search or another page of the list.
  var PICKS_KEY = "veri-box.compare-picks";
  var picked = [];
  try { picked = JSON.parse(sessionStorage.getItem(PICKS_KEY) || "[]"); } catch (err) { picked = []; }
  if (!Array.isArray(picked)) picked = [];
  function savePicks() {
    try { sessionStorage.setItem(PICKS_KEY, JSON.stringify(picked)); } catch (err) { /* private mode */ }
  }
  function syncPicks() {
    var form = document.getElementById("compare-form");
    if (!form) return;
    document.querySelectorAll("input.pick-job").forEach(function (box) { box.checked = picked.indexOf(box.value) >= 0; });
    form.querySelector("input[name=jobs]").value = picked.join(",");
    var button = form.querySelector("button[type=submit]");
    button.disabled = picked.length < 2;
    button.textContent = picked.length ? "Compare " + picked.length + " jobs" : "Compare jobs";
    var clear = form.querySelector(".clear-picks");
    if (clear) clear.hidden = !picked.length;
  }
  document.addEventListener("change", function (e) {
    if (!e.target.classList || !e.target.classList.contains("pick-job")) return;
    var id = e.target.value;
    picked = picked.filter(function (p) { return p !== id; });
    if (e.target.checked) picked.push(id);
    savePicks();
    syncPicks();
  });
  document.addEventListener("click", function (e) {
    if (!e.target.classList || !e.target.classList.contains("clear-picks")) return;
    picked = [];
    savePicks();
    syncPicks();
  });
  document.addEventListener("htmx:afterSwap", syncPicks);
  // The ticked boxes would also submit themselves one by one (the form's way without script):
  // the picked ids go as one list, in the order they were ticked.
  document.addEventListener("submit", function (e) {
    if (e.target.id !== "compare-form" || !picked.length) return;
    e.preventDefault();
    var url = "/compare?jobs=" + picked.map(encodeURIComponent).join(",");
    picked = [];
    savePicks();
    location.href = url;
  });
  // "Compare with…" on a job's page opens the list with that job picked (first).
  var compareWith = new URLSearchParams(location.search).get("compare_with");
  if (compareWith) {
    picked = [compareWith].concat(picked.filter(function (p) { return p !== compareWith; }));
    savePicks();
  }

  // ---- metric charts ------------------------------------------------------------------------

  var POLL_MS = 2000;
  var MAX_POINTS = 1000;
  var TERMINAL = ["completed", "failed", "cancelled"];
  // What a run of each method is first judged by; `*` matches any text (per-function rewards,
  // throughput however a trainer names it).
  var DEFAULT_KEYS = {
    grpo: ["reward", "reward_std", "frac_reward_zero_std", "rewards/*/mean", "kl", "completions/mean_length",
      "*tokens_per_s*", "*tokens/s*"],
    sft_video_gen: ["loss", "learning_rate", "step_time", "*clips_per_s*", "*clips/s*"],
  };
  // Video loss is noise step to step: its trend is what a reader wants first.
  var DEFAULT_SMOOTHING = { grpo: 0, sft_video_gen: 0.9 };
  var STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7, 1e8];
  var COLORS = ["#2457c5", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];
  function tick(v) {
    if (v === null || v === undefined) return "";  // a log axis leaves some ticks unlabelled
    if (v === 0) return "0";
    var a = Math.abs(v);
    return a < 1e-3 || a >= 1e6 ? v.toExponential(1) : String(+v.toPrecision(4));
  }
  function clock(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return String(+s.toPrecision(3)) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60 >= 1 ? String(Math.round(s % 60)).padStart(2, "0") + "s" : "");
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }
  function globRe(pattern) {
    return new RegExp("^" + pattern.split("*").map(function (part) {
      return part.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
    }).join(".*") + "$");
  }
  function defaultKeys(method, available) {
    var out = [];
    (DEFAULT_KEYS[method] || ["loss", "reward"]).forEach(function (pattern) {
      var re = globRe(pattern);
      available.forEach(function (k) { if (re.test(k) && out.indexOf(k) < 0) out.push(k); });
    });
    return out.length ? out : available.slice(0, 4);
  }
  function group(key) {
    var slash = key.indexOf("/");
    return slash > 0 ? key.slice(0, slash) + "/*" : "general";
  }
  function cssVar(name, fallback) {
    var v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }
  function faint(color) { return color + "55"; }

  // TensorBoard's smoothing: an exponential moving average, debiased so that the first points
  // are not pulled towards zero. Gaps (null) are carried over, not averaged in.
  function ema(ys, weight) {
    if (!weight) return ys.slice();
    var out = new Array(ys.length), last = 0, n = 0;
    for (var i = 0; i < ys.length; i++) {
      var y = ys[i];
      if (y === null || y === undefined || !isFinite(y)) { out[i] = null; continue; }
      last = last * weight + (1 - weight) * y;
      n += 1;
      out[i] = last / (1 - Math.pow(weight, n));
    }
    return out;
  }

  // Wall time of a job at each step, from its `step_time` metric (seconds per step): between
  // two logged steps each step took the later one's step_time. The chart's points may be a
  // downsample, so this integrates over the gaps instead of summing the points.
  function timeline(series) {
    var s = series.step_time;
    if (!s || !s.x.length) return null;
    var steps = [0], times = [0], t = 0, prev = 0;
    for (var i = 0; i < s.x.length; i++) {
      t += Math.max(s.x[i] - prev, 0) * Math.max(s.y[i], 0);
      prev = s.x[i];
      steps.push(s.x[i]);
      times.push(t);
    }
    return { steps: steps, times: times, rate: s.y[s.y.length - 1] };
  }
  function timeAt(tl, step) {
    var lo = 0, hi = tl.steps.length - 1;
    if (step >= tl.steps[hi]) return tl.times[hi] + (step - tl.steps[hi]) * tl.rate;
    while (hi - lo > 1) {
      var mid = (lo + hi) >> 1;
      if (tl.steps[mid] <= step) lo = mid; else hi = mid;
    }
    var span = tl.steps[hi] - tl.steps[lo];
    return tl.times[lo] + (span ? (step - tl.steps[lo]) / span : 0) * (tl.times[hi] - tl.times[lo]);
  }

  // One job's metrics as the page has read them, polled until the job ends.
  function Source(job) {
    this.id = job.id;
    this.name = job.name;
    this.color = job.color;
    this.status = job.status || "";
    this.series = {};   // key -> {x: [], y: []}
    this.fetched = {};  // keys whose whole history (downsampled) has been read
    this.available = [];
    this.latest = -1;
  }
  Source.prototype.absorb = function (data) {
    var self = this;
    this.status = data.status;
    this.available = data.available_keys;
    data.metrics.forEach(function (point) {
      Object.keys(point.values).forEach(function (key) {
        var value = point.values[key];
        if (value === null || value === undefined) return;
        var s = self.series[key] || (self.series[key] = { x: [], y: [] });
        var n = s.x.length;
        if (n && s.x[n - 1] === point.step) { s.y[n - 1] = value; return; }
        if (n && s.x[n - 1] > point.step) return;
        s.x.push(point.step);
        s.y.push(value);
      });
      if (point.step > self.latest) self.latest = point.step;
    });
  };
  // Chart data for `keys` (downsampled to MAX_POINTS), or only the steps after `from`.
  Source.prototype.load = function (keys, from) {
    var self = this;
    var params = new URLSearchParams({ max_points: String(MAX_POINTS) });
    if (keys.length) params.set("keys", keys.join(","));
    if (from !== null) params.set("from_step", String(from));
    return fetch("/jobs/" + encodeURIComponent(this.id) + "/metrics.json?" + params.toString(), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (r) {
        if (!r.ok || (r.headers.get("content-type") || "").indexOf("json") < 0) return null;
        return r.json();
      })
      .then(function (data) {
        if (!data) return null;
        if (from === null) keys.forEach(function (k) { self.fetched[k] = true; });
        self.absorb(data);
        return data;
      });
  };
  Source.prototype.done = function () { return TERMINAL.indexOf(this.status) >= 0; };

  function initCharts(root) {
    var compare = root.dataset.compare === "true";
    var method = root.dataset.method || "grpo";
    var jobs = JSON.parse(root.dataset.jobs);
    var sources = jobs.map(function (j, i) { return new Source({ id: j.id, name: j.name, color: j.color || COLORS[i % COLORS.length], status: j.status }); });
    var keysKey = "veri-box.chart-keys." + (compare ? "compare." : "") + method;
    var optsKey = "veri-box.chart-options." + method;
    var storedKeys = recall(keysKey);
    var options = Object.assign({ smoothing: DEFAULT_SMOOTHING[method] || 0, log: false, x: "step" }, recall(optsKey) || {});
    var selected = Array.isArray(storedKeys) ? storedKeys : null;  // null: the method's defaults
    var charts = {};
    var grid = root.querySelector(".chart-grid");
    var picker = root.querySelector(".key-picker-body");
    var search = root.querySelector(".key-search");
    var smoothing = root.querySelector(".smoothing");
    var smoothingOut = root.querySelector(".smoothing-value");
    var logBox = root.querySelector(".log-y");
    var xSelect = root.querySelector(".x-axis");
    var note = root.querySelector(".no-metrics");

    function available() {
      var all = [];
      sources.forEach(function (s) { s.available.forEach(function (k) { if (all.indexOf(k) < 0) all.push(k); }); });
      return all.sort();
    }
    function wanted() {
      var all = available();
      if (!all.length) return (selected || []).slice();
      if (selected === null) return defaultKeys(method, all);
      var keys = selected.filter(function (k) { return all.indexOf(k) >= 0; });
      return keys.length ? keys : defaultKeys(method, all);
    }
    // The keys read from the server: those charted, and step_time when x is wall time.
    function needed() {
      var keys = wanted();
      if (options.x === "time" && keys.indexOf("step_time") < 0) keys.push("step_time");
      return keys;
    }
    function hasData(key) {
      return sources.some(function (s) { return s.series[key] && s.series[key].x.length; });
    }

    function showOptions() {
      smoothing.value = String(options.smoothing);
      smoothingOut.textContent = Number(options.smoothing).toFixed(2);
      logBox.checked = !!options.log;
      xSelect.value = options.x;
      root.dataset.smoothing = String(options.smoothing);
      root.dataset.x = options.x;
      root.dataset.log = String(!!options.log);
    }

    function renderPicker() {
      var all = available();
      root.querySelector(".key-count").textContent = String(all.length);
      var chosen = wanted();
      var signature = all.join("\n") + "|" + chosen.join("\n");
      if (picker.dataset.signature === signature) return;
      picker.dataset.signature = signature;
      picker.textContent = "";
      var groups = {};
      all.forEach(function (k) { (groups[group(k)] = groups[group(k)] || []).push(k); });
      Object.keys(groups).sort(function (a, b) {
        return a === "general" ? -1 : b === "general" ? 1 : a < b ? -1 : 1;
      }).forEach(function (name) {
        var set = document.createElement("fieldset");
        set.className = "key-group";
        set.dataset.group = name;
        var legend = document.createElement("legend");
        legend.textContent = name + " (" + groups[name].length + ")";
        set.appendChild(legend);
        groups[name].forEach(function (key) {
          var label = document.createElement("label");
          label.dataset.key = key;
          var box = document.createElement("input");
          box.type = "checkbox";
          box.value = key;
          box.checked = chosen.indexOf(key) >= 0;
          label.appendChild(box);
          label.appendChild(document.createTextNode(" " + key));
          set.appendChild(label);
        });
        picker.appendChild(set);
      });
      filterPicker();
    }
    function filterPicker() {
      var q = (search.value || "").trim().toLowerCase();
      picker.querySelectorAll(".key-group").forEach(function (set) {
        var any = false;
        set.querySelectorAll("label").forEach(function (label) {
          var match = !q || label.dataset.key.toLowerCase().indexOf(q) >= 0;
          label.hidden = !match;
          any = any || match;
        });
        set.hidden = !any;
      });
    }
    picker.addEventListener("change", function () {
      selected = Array.prototype.filter.call(picker.querySelectorAll("input"), function (i) { return i.checked; })
        .map(function (i) { return i.value; });
      store(keysKey, selected);
      refill().then(function () { renderCharts(true); });
    });
    search.addEventListener("input", filterPicker);
    smoothing.addEventListener("input", function () {
      options.smoothing = Number(smoothing.value);
      store(optsKey, options);
      showOptions();
      renderCharts(false);
    });
    logBox.addEventListener("change", function () {
      options.log = logBox.checked;
      store(optsKey, options);
      showOptions();
      renderCharts(true);
    });
    xSelect.addEventListener("change", function () {
      options.x = xSelect.value;
      store(optsKey, options);
      showOptions();
      refill().then(function () { renderCharts(true); });
    });
    root.querySelector(".reset-charts").addEventListener("click", function () {
      selected = null;
      options = { smoothing: DEFAULT_SMOOTHING[method] || 0, log: false, x: "step" };
      try { localStorage.removeItem(keysKey); localStorage.removeItem(optsKey); } catch (err) { /* private mode */ }
      showOptions();
      picker.dataset.signature = "";
      renderPicker();
      refill().then(function () { renderCharts(true); });
    });

    // Read the whole history of any needed key not read yet, from every job.
    function refill() {
      return Promise.all(sources.map(function (s) {
        var missing = needed().filter(function (k) { return !s.fetched[k]; });
        return missing.length ? s.load(missing, null) : null;
      }));
    }

    // uPlot's data for one key: x, then per job its raw values and (when smoothing) its
    // smoothed ones. Jobs are logged at different steps (or times): uPlot.join aligns them.
    function chartData(key) {
      var tables = [], meta = [];
      // A key with no value above zero (a loss that is always negative) stays linear.
      var log = options.log && sources.some(function (s) {
        return s.series[key] && s.series[key].y.some(function (v) { return v > 0; });
      });
      sources.forEach(function (s) {
        var data = s.series[key];
        if (!data || !data.x.length) return;
        var xs = data.x.slice();
        if (options.x === "time") {
          // A job that logs no step_time has no clock to put beside the others: left out.
          var tl = timeline(s.series);
          if (!tl) return;
          var prev = -Infinity;
          xs = xs.map(function (step) { var t = Math.max(timeAt(tl, step), prev + 1e-6); prev = t; return t; });
        }
        var raw = log ? data.y.map(function (v) { return v > 0 ? v : null; }) : data.y.slice();
        var table = [xs, raw];
        if (options.smoothing > 0) table.push(ema(raw, options.smoothing));
        tables.push(table);
        meta.push({ source: s, count: data.x.length });
      });
      var joined = tables.length === 1 ? tables[0] : uPlot.join(tables);
      return { data: joined, meta: meta, log: log };
    }

    function makeChart(key, index) {
      var built = chartData(key);
      var box = document.createElement("div");
      box.className = "chart";
      box.dataset.key = key;
      var title = document.createElement("h3");
      title.textContent = key;
      box.appendChild(title);
      grid.appendChild(box);
      var axisColor = cssVar("--muted", "#5f6b7a"), gridColor = cssVar("--line", "#dde2e8");
      var series = [{ label: options.x === "time" ? "time" : "step", value: function (u, v) {
        return v === null || v === undefined ? "–" : options.x === "time" ? clock(v) : String(v);
      } }];
      built.meta.forEach(function (m) {
        // One job on its own page: the key's colour; in a comparison: the job's.
        var color = compare ? m.source.color : COLORS[index % COLORS.length];
        var name = compare ? m.source.name : key;
        var few = m.count < 60;
        if (options.smoothing > 0) {
          series.push({ label: name + " (raw)", stroke: faint(color), width: 1, spanGaps: true, points: { show: false }, class: "raw" });
          series.push({ label: name, stroke: color, width: 2, spanGaps: true, points: { show: few } });
        } else {
          series.push({ label: name, stroke: color, width: 1.5, spanGaps: true, points: { show: few } });
        }
      });
      var opts = {
        width: Math.max(box.clientWidth, 240),
        height: 200,
        scales: { x: { time: false }, y: { distr: built.log ? 3 : 1 } },
        legend: { show: true },
        cursor: { drag: { x: true, y: false }, sync: { key: "veri-box-" + root.id } },
        series: series,
        axes: [
          { label: options.x === "time" ? "wall time (from step_time)" : "step", stroke: axisColor, grid: { stroke: gridColor },
            ticks: { stroke: gridColor },
            incrs: options.x === "time" ? undefined : STEP_INCRS,
            values: function (u, ticks) { return ticks.map(options.x === "time" ? clock : String); } },
          { size: 64, stroke: axisColor, grid: { stroke: gridColor }, ticks: { stroke: gridColor },
            values: function (u, ticks) { return ticks.map(tick); } },
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
      var chart = new uPlot(opts, built.data, box);
      describe(box, built);
      return chart;
    }

    // What the chart shows, for tests and for reading it without a mouse: the raw point
    // count, and the last plotted (smoothed, when smoothing) value of each job's line.
    function describe(box, built) {
      var cols = options.smoothing > 0 ? 2 : 1;  // per job: raw, then smoothed
      var points = 0, lasts = [];
      built.meta.forEach(function (m, i) {
        points += m.count;
        var ys = built.data[1 + i * cols + cols - 1] || [];
        for (var j = ys.length - 1; j >= 0; j--) {
          if (ys[j] !== null && ys[j] !== undefined) { lasts.push(+ys[j].toPrecision(6)); break; }
        }
      });
      box.dataset.points = String(points);
      box.dataset.jobs = String(built.meta.length);
      box.dataset.log = String(built.log);
      var xs = built.data[0] || [];
      box.dataset.xMax = xs.length ? String(+xs[xs.length - 1].toPrecision(6)) : "";
      box.dataset.last = lasts.join(",");
    }

    function renderCharts(rebuild) {
      var keys = wanted().filter(hasData);
      if (options.x === "time") keys = keys.filter(function (k) { return chartData(k).meta.length; });
      if (note) note.hidden = keys.length > 0;
      var untimed = sources.filter(function (s) { return !timeline(s.series); }).map(function (s) { return s.name; });
      var timeNote = root.querySelector(".time-note");
      if (timeNote) {
        timeNote.hidden = options.x !== "time" || !untimed.length;
        timeNote.textContent = "Not on the wall-time axis (no step_time logged): " + untimed.join(", ");
      }
      var current = Object.keys(charts);
      if (rebuild || current.join("\n") !== keys.join("\n")) {
        current.forEach(function (k) { charts[k].root.parentNode.remove(); charts[k].destroy(); });
        charts = {};
        keys.forEach(function (k, i) { charts[k] = makeChart(k, i); });
      } else {
        keys.forEach(function (k) {
          var built = chartData(k);
          // A job whose first point arrived since the chart was built needs a new chart.
          if (built.data.length !== charts[k].data.length) {
            charts[k].root.parentNode.remove(); charts[k].destroy();
            charts[k] = makeChart(k, keys.indexOf(k));
            return;
          }
          charts[k].setData(built.data, !charts[k].vbZoomed);
          describe(charts[k].root.parentNode, built);
        });
        // keep the grid's order as the keys' order
        keys.forEach(function (k) { grid.appendChild(charts[k].root.parentNode); });
      }
      var total = 0;
      keys.forEach(function (k) { total += Number(charts[k].root.parentNode.dataset.points); });
      root.dataset.points = String(total);
      root.dataset.latestStep = String(Math.max.apply(null, sources.map(function (s) { return s.latest; })));
    }

    function poll(first) {
      var live = sources.filter(function (s) { return first || !s.done(); });
      Promise.all(live.map(function (s) {
        return first ? s.load(needed(), null) : s.load(needed(), s.latest >= 0 ? s.latest + 1 : null);
      }))
        .then(function (answers) {
          // The first answer names the jobs' keys; read any wanted key not read yet.
          return refill().then(function () { return answers; });
        })
        .then(function (answers) {
          var any = answers.some(function (a) { return a; });
          if (any) {
            renderPicker();
            renderCharts(false);
          }
          if (sources.every(function (s) { return s.done(); }) && any) root.dataset.final = "true";
          else setTimeout(function () { poll(first && !any); }, POLL_MS);
        })
        .catch(function () { setTimeout(function () { poll(first); }, POLL_MS * 2); });
    }

    showOptions();
    var resetButton = root.querySelector(".reset-zoom");
    if (resetButton) resetButton.addEventListener("click", function () {
      root.dataset.zoomed = "false";
      renderCharts(true);
    });
    document.addEventListener("veri-box:theme", function () { renderCharts(true); });
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
    showTheme();
    syncPicks();
    document.querySelectorAll("[data-charts]").forEach(function (root) { if (window.uPlot) initCharts(root); });
  });
})();
