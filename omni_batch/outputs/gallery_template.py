"""The gallery page's fixed text: CSS, the filter script and the page frame. Nothing here is
user data; gallery.py escapes every value before it is placed into ``PAGE``.
"""

from __future__ import annotations

import base64
import hashlib

CSS = """
:root { color-scheme: light; --ink: #1d2330; --dim: #667085; --line: #e3e7ee; --bg: #f6f7f9;
  --ok: #12805c; --bad: #c0362c; --warn: #b45309; --run: #2f6fde; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg); }
[hidden] { display: none !important; }
header { position: sticky; top: 0; z-index: 3; background: #fff;
  border-bottom: 1px solid var(--line); padding: 10px 16px; display: flex; flex-wrap: wrap;
  gap: 6px 24px; align-items: baseline; }
h1 { font-size: 18px; margin: 0; }
h2 { font-size: 16px; margin: 24px 0 8px; }
.counts, #shown { color: var(--dim); }
.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; }
.filters label { color: var(--dim); }
select { font: inherit; padding: 2px 4px; }
main { padding: 12px 16px 40px; }
table.matrix { border-collapse: separate; border-spacing: 0; background: #fff;
  border: 1px solid var(--line); border-radius: 8px; }
.matrix th, .matrix td { border-bottom: 1px solid var(--line); vertical-align: top; padding: 10px; }
.matrix thead th { font-weight: 600; text-align: left; white-space: nowrap; background: #fafbfc; }
.matrix tbody th { text-align: left; font-weight: normal; width: 300px; min-width: 220px; }
.pid { font-weight: 600; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
  font-size: 12px; word-break: break-all; }
.prompt { margin: 4px 0; max-height: 9.8em; overflow: auto; white-space: pre-wrap; }
.chips { list-style: none; margin: 6px 0 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px; }
.chips li { background: #eef2f8; border-radius: 10px; padding: 1px 8px; font-size: 12px; }
.chips li.tag { background: #f3effa; }
.cell { display: flex; gap: 8px; align-items: flex-start; }
.tile { margin: 0; display: flex; flex-direction: column; gap: 4px; font-size: 12px; }
.tile video, .tile .slot { display: block; background: #111; border-radius: 6px; }
.tile .slot { display: flex; align-items: center; justify-content: center; color: #fff;
  font-weight: 600; background: #d9dde5; color: var(--dim); }
.tile.s-failed .slot { background: #fbe9e7; color: var(--bad); }
.meta { display: flex; flex-wrap: wrap; gap: 4px 8px; align-items: center; }
.badge { border-radius: 4px; padding: 0 6px; font-weight: 600; color: #fff;
  background: var(--dim); }
.badge.completed { background: var(--ok); } .badge.failed { background: var(--bad); }
.badge.running { background: var(--run); }
.vok { color: var(--ok); } .vbad { color: var(--warn); font-weight: 600; }
.tile.flagged video { outline: 3px solid var(--warn); outline-offset: 1px; }
.err { color: var(--bad); overflow-wrap: anywhere; max-height: 9em; overflow: auto; }
.dim { color: var(--dim); overflow-wrap: anywhere; }
.review { display: flex; flex-wrap: wrap; gap: 4px 8px; align-items: baseline; }
.pick { border-radius: 4px; padding: 0 6px; font-weight: 600; }
.pick.picked { background: #fff3c4; color: #7a5200; }
.pick.rejected { background: #eceef2; color: var(--dim); text-decoration: line-through; }
.score { color: #b7791f; letter-spacing: 1px; }
.note { font-style: italic; overflow-wrap: anywhere; white-space: pre-wrap; }
.summary { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.summary table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
.summary caption { text-align: left; font-weight: 600; padding: 4px 0; }
.summary th, .summary td { padding: 3px 10px; border-bottom: 1px solid var(--line);
  text-align: right; white-space: nowrap; }
.summary td:first-child, .summary th:first-child { text-align: left; max-width: 280px;
  overflow: hidden; text-overflow: ellipsis; }
"""

# Filters: a tile shows when it matches the status select and every tag select. Tag options
# carry their value behind "=" so that no tag value can collide with the "*" (all) option.
SCRIPT = """
(function () {
  "use strict";
  var tiles = Array.prototype.slice.call(document.querySelectorAll(".tile"));
  var groups = Array.prototype.slice.call(document.querySelectorAll("tr.group"));
  var status = document.getElementById("f-status");
  var tags = Array.prototype.slice.call(document.querySelectorAll("select[data-tag]"));
  var shown = document.getElementById("shown");
  function matches(tile) {
    var want = status.value, st = tile.dataset.status;
    if (want === "completed" && st !== "completed") return false;
    if (want === "failed" && st !== "failed") return false;
    if (want === "other" && (st === "completed" || st === "failed")) return false;
    if (want === "flagged" && tile.dataset.flag !== "1") return false;
    if (want === "picked" && tile.dataset.pick !== "picked") return false;
    for (var i = 0; i < tags.length; i++) {
      var value = tags[i].value;
      var mine = tile.getAttribute("data-t" + tags[i].dataset.tag) || "";
      if (value !== "*" && value !== "=" + mine) return false;
    }
    return true;
  }
  function apply() {
    var n = 0;
    tiles.forEach(function (tile) {
      var ok = matches(tile);
      tile.hidden = !ok;
      if (ok) n++;
    });
    groups.forEach(function (row) { row.hidden = !row.querySelector(".tile:not([hidden])"); });
    shown.textContent = n + " of " + tiles.length + " shown";
  }
  status.addEventListener("change", apply);
  tags.forEach(function (select) { select.addEventListener("change", apply); });
  apply();
})();
"""

SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()

# No network, by policy as well as by construction: only this page's own folder (videos,
# posters) and the one script whose hash is pinned here may load. file: lets a page opened from
# disk show its videos.
CSP = (
    "default-src 'none'; img-src 'self' file: data:; media-src 'self' file:; "
    f"style-src 'unsafe-inline'; script-src 'sha256-{SCRIPT_HASH}'; base-uri 'none'; "
    "form-action 'none'"
)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title} · omni-batch gallery</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<span class="counts">{counts}</span>
<div class="filters">
<label>status <select id="f-status">
<option value="all">all</option><option value="completed">completed</option>
<option value="failed">failed</option><option value="other">pending / running</option>
<option value="flagged">flagged by verify</option>
<option value="picked">picked in review</option>
</select></label>
{tag_filters}
<span id="shown"></span>
</div>
</header>
<main>
{matrix}
<h2>Summary</h2>
<div class="summary">
{summary}
</div>
</main>
<script>{script}</script>
</body>
</html>
"""
