"""The review page's fixed text: the HTML frame, CSS and script served by `omni-batch review`.

Nothing here is user data: the script builds every element with textContent and attributes
(never HTML from data), so prompts, notes and ids are shown as text whatever they hold.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>omni-batch review</title>
<link rel="stylesheet" href="/app.css">
</head>
<body>
<header>
<div class="top"><h1 id="title">review</h1><span id="counts" class="dim"></span>
<span id="saved" class="dim" role="status" aria-live="polite"></span></div>
<div id="banner" class="banner" hidden></div>
<div class="controls">
<label>rows <select id="rows"></select></label>
<label>columns <select id="cols"></select></label>
<span id="filters" class="filters"></span>
<button id="compare-btn" type="button" disabled>compare (0)</button>
<button id="clear-btn" type="button">clear selection</button>
</div>
<p class="keys dim">Keys on a focused tile: <kbd>p</kbd> pick · <kbd>x</kbd> reject ·
<kbd>1</kbd>–<kbd>5</kbd> score (<kbd>0</kbd> clears) · <kbd>n</kbd> note (Enter saves) ·
<kbd>c</kbd> select to compare · <kbd>←</kbd><kbd>→</kbd> move · <kbd>space</kbd> play</p>
</header>
<main>
<div id="matrix" class="matrix-box"></div>
<h2>Summary</h2>
<div id="summary" class="summary"></div>
</main>
<div id="compare" class="overlay" hidden>
<div class="compare-bar"><strong>Compare</strong>
<button id="cmp-play" type="button">play all</button>
<button id="cmp-pause" type="button">pause all</button>
<button id="cmp-restart" type="button">restart</button>
<button id="cmp-close" type="button">close (Esc)</button></div>
<div id="compare-grid" class="compare-grid"></div>
</div>
<script src="/app.js"></script>
</body>
</html>
"""

CSS = """
:root { color-scheme: light; --ink: #1d2330; --dim: #667085; --line: #e3e7ee; --bg: #f6f7f9;
  --ok: #12805c; --bad: #c0362c; --run: #2f6fde; --gold: #b7791f; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg); }
[hidden] { display: none !important; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 8px 12px; }
.top { display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: baseline; }
h1 { font-size: 18px; margin: 0; overflow-wrap: anywhere; }
h2 { font-size: 16px; margin: 20px 0 8px; }
.dim { color: var(--dim); overflow-wrap: anywhere; }
.controls, .filters { display: flex; flex-wrap: wrap; gap: 6px 12px; align-items: center;
  margin-top: 6px; }
.controls label { color: var(--dim); max-width: 100%; }
select, button, textarea { font: inherit; max-width: 100%; }
button { padding: 2px 8px; border: 1px solid #c9ced8; border-radius: 6px; background: #fff;
  cursor: pointer; }
button:disabled { opacity: .5; cursor: default; }
.keys { margin: 6px 0 0; font-size: 12px; }
kbd { border: 1px solid #c9ced8; border-radius: 3px; padding: 0 3px; font-size: 11px; }
.banner { margin-top: 6px; padding: 6px 10px; background: #fff3c4; border-radius: 6px; }
main { padding: 12px; }
.matrix-box { max-width: 100%; overflow: auto; background: #fff; border: 1px solid var(--line);
  border-radius: 8px; max-height: 80vh; }
table.matrix { border-collapse: separate; border-spacing: 0; }
.matrix th, .matrix td { border-bottom: 1px solid var(--line); vertical-align: top; padding: 8px; }
.matrix thead th { position: sticky; top: 0; z-index: 1; background: #fafbfc; text-align: left;
  white-space: nowrap; }
.matrix tbody th { text-align: left; font-weight: normal; min-width: 160px; max-width: 280px; }
.rowkey { font-weight: 600; overflow-wrap: anywhere; }
.prompt { margin-top: 4px; max-height: 8em; overflow: auto; white-space: pre-wrap;
  overflow-wrap: anywhere; color: var(--dim); }
.cell { display: flex; gap: 8px; align-items: flex-start; }
.tile { margin: 0; width: 220px; display: flex; flex-direction: column; gap: 4px; font-size: 12px;
  border: 2px solid transparent; border-radius: 8px; padding: 4px; }
.tile:focus { outline: none; border-color: var(--run); }
.tile.picked { border-color: var(--gold); background: #fffaf0; }
.tile.rejected { opacity: .55; }
.tile.selected { box-shadow: 0 0 0 3px #9ec5ff; }
.tile video, .tile .slot { display: block; width: 100%; background: #111; border-radius: 6px; }
.tile .slot { display: flex; align-items: center; justify-content: center; background: #d9dde5;
  color: var(--dim); font-weight: 600; aspect-ratio: 16 / 9; }
.tile.s-failed .slot { background: #fbe9e7; color: var(--bad); }
.meta, .actions { display: flex; flex-wrap: wrap; gap: 4px 6px; align-items: center; }
.badge { border-radius: 4px; padding: 0 6px; font-weight: 600; color: #fff;
  background: var(--dim); }
.badge.completed { background: var(--ok); } .badge.failed { background: var(--bad); }
.badge.running { background: var(--run); }
.err { color: var(--bad); overflow-wrap: anywhere; max-height: 6em; overflow: auto; }
.pk[aria-pressed="true"] { background: #fff3c4; border-color: var(--gold); font-weight: 600; }
.rj[aria-pressed="true"] { background: #eceef2; font-weight: 600; }
.stars button { padding: 0 4px; border: none; color: #c9ced8; font-size: 15px; }
.stars button.on { color: var(--gold); }
.note { width: 100%; min-height: 2.2em; resize: vertical; font-size: 12px; }
.cmp { color: var(--dim); }
.summary { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.summary .box { max-width: 100%; overflow-x: auto; }
.summary table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
.summary caption { text-align: left; font-weight: 600; padding: 4px 0; }
.summary th, .summary td { padding: 3px 8px; border-bottom: 1px solid var(--line);
  text-align: right; white-space: nowrap; }
.summary td:first-child, .summary th:first-child { text-align: left; max-width: 200px;
  overflow: hidden; text-overflow: ellipsis; }
.overlay { position: fixed; inset: 0; z-index: 10; background: rgba(20, 24, 33, .92);
  color: #fff; padding: 10px; overflow: auto; }
.compare-bar { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 8px; }
.compare-grid { display: grid; gap: 8px;
  grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); }
.compare-grid figure { margin: 0; min-width: 0; }
.compare-grid video { width: 100%; max-height: 70vh; background: #000; border-radius: 6px; }
.compare-grid figcaption { font-size: 12px; overflow-wrap: anywhere; }
@media (max-width: 480px) {
  .matrix tbody th { min-width: 120px; max-width: 160px; }
  .tile { width: 180px; }
}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var data = null, selected = [], byId = {};
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function say(text) { $("saved").textContent = text; }

  // dimensions: what rows, columns, filters and summaries are made of
  function dims() {
    var out = [
      {key: "none", label: "(none)", of: function () { return "all"; }},
      {key: "prompt", label: "prompt", of: function (j) { return j.prompt_id; }},
      {key: "format", label: "ratio · duration",
       of: function (j) { return j.aspect_ratio + " · " + j.duration + " s"; }},
      {key: "aspect_ratio", label: "aspect ratio", of: function (j) { return j.aspect_ratio; }},
      {key: "duration", label: "duration", of: function (j) { return String(j.duration); }},
      {key: "status", label: "status", of: function (j) { return j.status; }},
      {key: "pick", label: "pick", of: function (j) { return j.pick || "unreviewed"; }},
      {key: "repeat", label: "take", of: function (j) { return "r" + j.repeat; }}
    ];
    data.vars.forEach(function (v) {
      out.push({key: "var:" + v, label: v, of: function (j) { return j.vars[v]; }});
    });
    data.tags.forEach(function (t) {
      out.push({key: "tag:" + t, label: "tag " + t, of: function (j) { return j.tags[t]; }});
    });
    return out;
  }
  var DIMS = [];
  function dim(key) {
    for (var i = 0; i < DIMS.length; i++) if (DIMS[i].key === key) return DIMS[i];
    return DIMS[0];
  }
  function values(d, jobs) {
    var seen = [], set = {};
    jobs.forEach(function (j) {
      var v = String(d.of(j)); if (!set.hasOwnProperty(v)) { set[v] = 1; seen.push(v); }
    });
    if (d.key === "prompt") return seen;  // manifest order
    return seen.sort(function (a, b) { return a.localeCompare(b, undefined, {numeric: true}); });
  }

  function shown() {
    var selects = Array.prototype.slice.call(document.querySelectorAll("select.filter"));
    return data.jobs.filter(function (j) {
      return selects.every(function (s) {
        return s.value === "*" || s.value === "=" + String(dim(s.dataset.dim).of(j));
      });
    });
  }

  function setup() {
    DIMS = dims();
    $("title").textContent = data.title;
    document.title = data.title + " · omni-batch review";
    ["rows", "cols"].forEach(function (id) {
      var select = $(id);
      DIMS.forEach(function (d) { select.appendChild(el("option", {value: d.key}, d.label)); });
    });
    var params = new URLSearchParams(location.hash.slice(1));
    $("rows").value = params.get("rows") || "prompt";
    $("cols").value = params.get("cols") || "format";
    var filterable = DIMS.filter(function (d) {
      return ["none", "prompt", "format", "repeat"].indexOf(d.key) < 0;
    });
    filterable.forEach(function (d) {
      var label = el("label", {}, d.label + " ");
      var select = el("select", {"class": "filter", "data-dim": d.key});
      select.appendChild(el("option", {value: "*"}, "all"));
      values(d, data.jobs).forEach(function (v) {
        select.appendChild(el("option", {value: "=" + v}, v === "" ? "(none)" : v));
      });
      label.appendChild(select);
      $("filters").appendChild(label);
      select.addEventListener("change", render);
    });
    $("rows").addEventListener("change", render);
    $("cols").addEventListener("change", render);
    $("compare-btn").addEventListener("click", openCompare);
    $("clear-btn").addEventListener("click", function () { selected = []; paintAll(); });
    $("cmp-close").addEventListener("click", closeCompare);
    $("cmp-play").addEventListener("click", function () { each(function (v) { v.play(); }); });
    $("cmp-pause").addEventListener("click", function () { each(function (v) { v.pause(); }); });
    $("cmp-restart").addEventListener("click", function () {
      each(function (v) { v.currentTime = 0; });
    });
    document.addEventListener("keydown", onKey);
    if (data.read_only) banner("A run is using this folder: reviews are read-only until it ends.");
  }

  function banner(text) { $("banner").textContent = text; $("banner").hidden = false; }

  function render() {
    location.replace("#rows=" + encodeURIComponent($("rows").value) +
                     "&cols=" + encodeURIComponent($("cols").value));
    var jobs = shown(), rd = dim($("rows").value), cd = dim($("cols").value);
    var rows = values(rd, jobs), cols = values(cd, jobs);
    var box = $("matrix");
    box.textContent = "";
    $("counts").textContent = jobs.length + " of " + data.jobs.length + " jobs shown";
    if (!jobs.length) { box.appendChild(el("p", {}, "No jobs match.")); summary(jobs); return; }
    var table = el("table", {"class": "matrix"}), head = el("tr");
    head.appendChild(el("th", {}, rd.label + " \\ " + cd.label));
    cols.forEach(function (c) { head.appendChild(el("th", {scope: "col"}, c)); });
    var thead = el("thead"); thead.appendChild(head); table.appendChild(thead);
    var tbody = el("tbody"), cells = {};
    rows.forEach(function (r) {
      var tr = el("tr", {"class": "group", "data-row": r}), th = el("th", {scope: "row"});
      th.appendChild(el("div", {"class": "rowkey"}, r));
      if (rd.key === "prompt") {
        var first = jobs.filter(function (j) { return j.prompt_id === r; })[0];
        th.appendChild(el("div", {"class": "prompt"}, first.prompt));
      }
      tr.appendChild(th);
      cols.forEach(function (c) {
        var td = el("td"), cell = el("div", {"class": "cell"});
        td.appendChild(cell); tr.appendChild(td); cells[r + "\u0000" + c] = cell;
      });
      tbody.appendChild(tr);
    });
    jobs.forEach(function (j) {
      cells[String(rd.of(j)) + "\u0000" + String(cd.of(j))].appendChild(tile(j));
    });
    table.appendChild(tbody);
    box.appendChild(table);
    summary(jobs);
  }

  function tile(j) {
    var fig = el("figure", {"class": "tile s-" + j.status, tabindex: "0", "data-job": j.job_id,
                            id: "job-" + j.job_id});
    if (j.video) {
      var video = el("video", {controls: "", preload: "metadata", playsinline: "",
                               src: "/video/" + encodeURIComponent(j.job_id)});
      if (j.poster) video.setAttribute("poster", "/poster/" + encodeURIComponent(j.job_id));
      fig.appendChild(video);
    } else {
      var word = j.status === "completed" ? "file missing" : (j.state || j.status);
      fig.appendChild(el("div", {"class": "slot"}, word));
    }
    var meta = el("div", {"class": "meta"});
    meta.appendChild(el("span", {"class": "badge " + j.status}, j.status));
    meta.appendChild(el("span", {}, "r" + j.repeat));
    if (j.latency_s !== null && j.status === "completed") {
      meta.appendChild(el("span", {}, Number(j.latency_s).toFixed(1) + " s"));
    }
    fig.appendChild(meta);
    if (j.status === "failed") {
      fig.appendChild(el("div", {"class": "err"},
        [j.error_type, j.http_status ? "HTTP " + j.http_status : "", j.error_message]
          .filter(Boolean).join(" · ")));
    }
    var actions = el("div", {"class": "actions"});
    var pk = el("button", {type: "button", "class": "pk", title: "pick (p)"}, "★ pick");
    var rj = el("button", {type: "button", "class": "rj", title: "reject (x)"}, "✗ reject");
    pk.addEventListener("click", function () { togglePick(j, "picked"); });
    rj.addEventListener("click", function () { togglePick(j, "rejected"); });
    actions.appendChild(pk); actions.appendChild(rj);
    var stars = el("span", {"class": "stars", role: "group", "aria-label": "score"});
    [1, 2, 3, 4, 5].forEach(function (n) {
      var b = el("button", {type: "button", "data-score": String(n), title: "score " + n +
                            " (" + n + ")", "aria-label": "score " + n}, "★");
      b.addEventListener("click", function () { setScore(j, n); });
      stars.appendChild(b);
    });
    actions.appendChild(stars);
    var cmp = el("label", {"class": "cmp"}), box = el("input", {type: "checkbox"});
    box.addEventListener("change", function () { toggleSelected(j.job_id); });
    cmp.appendChild(box); cmp.appendChild(document.createTextNode(" compare"));
    actions.appendChild(cmp);
    fig.appendChild(actions);
    var note = el("textarea", {"class": "note", rows: "1", maxlength: String(data.note_max),
                               placeholder: "note (n)", "aria-label": "note"});
    note.value = j.note || "";
    note.addEventListener("change", function () {
      if (note.value !== (j.note || "")) save(j, {note: note.value});
    });
    fig.appendChild(note);
    fig.appendChild(el("div", {"class": "dim"}, j.job_id));
    paint(fig, j);
    return fig;
  }

  function paint(fig, j) {
    fig.classList.toggle("picked", j.pick === "picked");
    fig.classList.toggle("rejected", j.pick === "rejected");
    fig.classList.toggle("selected", selected.indexOf(j.job_id) >= 0);
    fig.querySelector(".pk").setAttribute("aria-pressed", String(j.pick === "picked"));
    fig.querySelector(".rj").setAttribute("aria-pressed", String(j.pick === "rejected"));
    fig.dataset.pick = j.pick || "";
    fig.dataset.score = j.score === null || j.score === undefined ? "" : String(j.score);
    Array.prototype.forEach.call(fig.querySelectorAll(".stars button"), function (b) {
      b.classList.toggle("on", j.score !== null && Number(b.dataset.score) <= j.score);
    });
    fig.querySelector(".cmp input").checked = selected.indexOf(j.job_id) >= 0;
    var note = fig.querySelector(".note");
    if (document.activeElement !== note) note.value = j.note || "";
  }
  function figOf(id) { return document.querySelector('.tile[data-job="' + CSS.escape(id) + '"]'); }
  function paintAll() {
    data.jobs.forEach(function (j) { var f = figOf(j.job_id); if (f) paint(f, j); });
    var n = selected.length;
    $("compare-btn").textContent = "compare (" + n + ")";
    $("compare-btn").disabled = n < 2 || n > 4;
  }

  function save(j, fields) {
    var body = {job_ids: [j.job_id]};
    Object.keys(fields).forEach(function (k) { body[k] = fields[k]; });
    say("saving…");
    return fetch("/api/review", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Omni-Review": "1"},
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (answer) {
        return {ok: r.ok, status: r.status, answer: answer};
      });
    }).then(function (res) {
      if (!res.ok) {
        say("not saved: " + res.answer.error);
        if (res.status === 409) banner(res.answer.error);
        var f = figOf(j.job_id); if (f) paint(f, j);
        return;
      }
      res.answer.reviews.forEach(function (r) {
        var job = byId[r.job_id];
        job.pick = r.pick; job.score = r.score; job.note = r.note; job.reviewed_at = r.reviewed_at;
        var f = figOf(r.job_id); if (f) paint(f, job);
      });
      say("saved " + j.job_id);
      summary(shown());
    }, function () { say("not saved: the server did not answer"); });
  }
  function togglePick(j, what) { save(j, {pick: j.pick === what ? null : what}); }
  function setScore(j, n) { save(j, {score: j.score === n ? null : n}); }
  function toggleSelected(id) {
    var at = selected.indexOf(id);
    if (at >= 0) selected.splice(at, 1);
    else if (selected.length < 4) selected.push(id);
    else say("compare takes 2 to 4 tiles");
    paintAll();
  }

  function onKey(e) {
    if (!$("compare").hidden && e.key === "Escape") { closeCompare(); return; }
    var t = e.target;
    if (t && t.classList && t.classList.contains("note")) {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault(); t.blur(); t.closest(".tile").focus();
      } else if (e.key === "Escape") {
        t.value = byId[t.closest(".tile").dataset.job].note || ""; t.closest(".tile").focus();
      }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (t && (t.tagName === "SELECT" || t.tagName === "INPUT")) return;
    var fig = t && t.closest ? t.closest(".tile") : null;
    if (!fig) return;
    var j = byId[fig.dataset.job], k = e.key;
    if (k === "p") togglePick(j, "picked");
    else if (k === "x") togglePick(j, "rejected");
    else if (k >= "1" && k <= "5") setScore(j, Number(k));
    else if (k === "0") save(j, {score: null});
    else if (k === "n") { e.preventDefault(); fig.querySelector(".note").focus(); return; }
    else if (k === "c") toggleSelected(j.job_id);
    else if (k === "ArrowRight" || k === "ArrowLeft" || k === "j" || k === "k") {
      var all = Array.prototype.slice.call(document.querySelectorAll(".tile"));
      var next = all[all.indexOf(fig) + (k === "ArrowRight" || k === "j" ? 1 : -1)];
      if (next) { next.focus(); next.scrollIntoView({block: "nearest", inline: "nearest"}); }
    } else if (k === " " && t === fig) {
      var v = fig.querySelector("video"); if (v) { if (v.paused) v.play(); else v.pause(); }
    } else return;
    e.preventDefault();
  }

  // compare: 2-4 videos side by side, played, paused and sought together
  var syncing = false;
  function each(fn) {
    Array.prototype.forEach.call($("compare-grid").querySelectorAll("video"), fn);
  }
  function mirror(source, what) {
    if (syncing) return;
    syncing = true;
    each(function (v) {
      if (v === source) return;
      if (what === "seek" || Math.abs(v.currentTime - source.currentTime) > 0.25) {
        v.currentTime = source.currentTime;
      }
      if (what === "play" && v.paused) v.play();
      if (what === "pause" && !v.paused) v.pause();
    });
    syncing = false;
  }
  function openCompare() {
    var grid = $("compare-grid");
    grid.textContent = "";
    selected.forEach(function (id) {
      var j = byId[id], fig = el("figure", {"data-job": id});
      if (j.video) {
        var v = el("video", {controls: "", preload: "auto", playsinline: "", muted: "",
                             src: "/video/" + encodeURIComponent(id)});
        v.muted = true;
        v.addEventListener("play", function () { mirror(v, "play"); });
        v.addEventListener("pause", function () { mirror(v, "pause"); });
        v.addEventListener("seeked", function () { mirror(v, "seek"); });
        fig.appendChild(v);
      } else fig.appendChild(el("div", {"class": "slot"}, j.status));
      fig.appendChild(el("figcaption", {}, id + (j.pick ? " · " + j.pick : "") +
                         (j.score ? " · score " + j.score : "")));
      grid.appendChild(fig);
    });
    $("compare").hidden = false;
    $("cmp-close").focus();
  }
  function closeCompare() {
    each(function (v) { v.pause(); });
    $("compare").hidden = true;
    $("compare-grid").textContent = "";
  }

  function summary(jobs) {
    var out = $("summary");
    out.textContent = "";
    DIMS.filter(function (d) {
      return d.key.indexOf("var:") === 0 || d.key.indexOf("tag:") === 0 ||
        d.key === "aspect_ratio" || d.key === "duration";
    }).forEach(function (d) {
      var vs = values(d, jobs);
      if (vs.length < 2 && d.key.indexOf("var:") !== 0) return;
      var wrap = el("div", {"class": "box"}), table = el("table", {"data-dim": d.key});
      table.appendChild(el("caption", {}, "by " + d.label));
      var head = el("tr");
      ["value", "jobs", "success", "picked", "rejected", "mean score"].forEach(function (h) {
        head.appendChild(el("th", {}, h));
      });
      table.appendChild(head);
      vs.forEach(function (v) {
        var js = jobs.filter(function (j) { return String(d.of(j)) === v; });
        var done = js.filter(function (j) { return j.status === "completed"; }).length;
        var settled = js.filter(function (j) {
          return j.status === "completed" || j.status === "failed";
        }).length;
        var scores = js.filter(function (j) { return j.score; })
          .map(function (j) { return j.score; });
        var mean = scores.length ? (scores.reduce(function (a, b) { return a + b; }, 0) /
                                    scores.length).toFixed(2) : "—";
        var tr = el("tr", {"data-value": v});
        [v === "" ? "(none)" : v, js.length,
         settled ? Math.round(100 * done / settled) + " %" : "—",
         js.filter(function (j) { return j.pick === "picked"; }).length,
         js.filter(function (j) { return j.pick === "rejected"; }).length, mean
        ].forEach(function (c) { tr.appendChild(el("td", {}, c)); });
        table.appendChild(tr);
      });
      wrap.appendChild(table);
      out.appendChild(wrap);
    });
  }

  fetch("/api/jobs", {credentials: "same-origin"}).then(function (r) {
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  }).then(function (d) {
    data = d;
    data.jobs.forEach(function (j) { byId[j.job_id] = j; });
    setup();
    render();
    paintAll();
    document.body.dataset.ready = "1";
  }).catch(function (err) { banner("Could not load the jobs: " + err.message); });
})();
"""
