// report.html's behaviour: reads the sweep's data (JSON in the page) and draws everything from it.
"use strict";
const DATA = JSON.parse(document.getElementById("sweep-data").textContent);
const METRICS = Object.keys(DATA.metrics);
const GRID = Object.keys(DATA.grid);
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2b6cb0", "#d69e2e", "#c53030", "#38a169", "#805ad5", "#319795", "#d53f8c", "#718096"];  // cool to hot first
const SHAPES = ["circle", "square", "triangle", "diamond", "down", "cross"];
const SIZES = [4.5, 6.5, 8.5, 10.5, 12.5];
const FILLS = [1, 0, 0.45, 0.2];  // solid, hollow, then lighter fills
const Y_METRICS = ["distinct_2", "repetition_4gram", "distinct_1"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  children.forEach(c => node.append(c));
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
function fmt(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toPrecision(3);
}
function paramsText(row) { return GRID.map(k => `${k}=${row.params[k]}`).join(", "); }

// Which parameter each visual channel shows: those that vary, temperature, top_k and top_p first.
function encodings() {
  const preferred = ["temperature", "top_k", "top_p", "repetition_penalty"];
  const varying = GRID.filter(k => DATA.grid[k].length > 1)
    .sort((a, b) => (preferred.indexOf(a) + 1 || 99) - (preferred.indexOf(b) + 1 || 99));
  const [colour, shape, size, fill] = varying;
  const index = (k, row) => DATA.grid[k].indexOf(row.params[k]);
  return {
    colour, shape, size, fill,
    style(row) {
      return {
        colour: colour ? COLOURS[index(colour, row) % COLOURS.length] : COLOURS[0],
        shape: shape ? SHAPES[index(shape, row) % SHAPES.length] : "circle",
        r: size ? SIZES[Math.min(index(size, row), SIZES.length - 1)] : 6.5,
        fill: fill ? FILLS[index(fill, row) % FILLS.length] : 1,
      };
    },
  };
}

function marker(style, x, y) {
  const r = style.r, g = svg("g", {transform: `translate(${x},${y})`});
  let shape;
  if (style.shape === "circle") shape = svg("circle", {r});
  else if (style.shape === "square") shape = svg("rect", {x: -r * .85, y: -r * .85, width: r * 1.7, height: r * 1.7});
  else {
    const pts = {triangle: [[0, -r], [r, r * .8], [-r, r * .8]], down: [[0, r], [r, -r * .8], [-r, -r * .8]],
                 diamond: [[0, -r * 1.15], [r, 0], [0, r * 1.15], [-r, 0]],
                 cross: [[-r, -r * .35], [-r * .35, -r * .35], [-r * .35, -r], [r * .35, -r], [r * .35, -r * .35], [r, -r * .35],
                         [r, r * .35], [r * .35, r * .35], [r * .35, r], [-r * .35, r], [-r * .35, r * .35], [-r, r * .35]]}[style.shape];
    shape = svg("polygon", {points: pts.map(p => p.join(",")).join(" ")});
  }
  shape.setAttribute("fill", style.colour);
  shape.setAttribute("fill-opacity", style.fill === 0 ? 0.06 : style.fill);
  shape.setAttribute("stroke", style.colour);
  shape.setAttribute("stroke-width", 1.6);
  g.append(shape, svg("circle", {r: r + 3.5, class: "ring"}));
  return g;
}

function niceLogTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
    for (const m of [1, 2, 5]) { const v = m * 10 ** e; if (v >= lo && v <= hi) ticks.push(v); }
  return ticks.length >= 2 ? ticks : [lo, hi];
}
function linearTicks(lo, hi) {
  const step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10].find(s => (hi - lo) / s <= 6) || (hi - lo) / 5;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) ticks.push(+v.toFixed(6));
  return ticks;
}

class ModelView {
  constructor(model, enc) {
    this.model = model; this.enc = enc;
    this.rows = model.rows;
    this.byCell = Object.fromEntries(this.rows.map(r => [r.cell, r]));
    this.selected = this.rows.length ? this.rows[0].cell : null;
    this.ticked = [];
    this.yMetric = "distinct_2";
    this.prompt = DATA.prompts.length ? DATA.prompts[0][0] : null;
    this.root = el("section", {class: "model", "data-model": model.name, id: "model-" + model.name});
    this.build();
  }

  build() {
    const m = this.model;
    this.root.append(el("h2", {text: m.name}));
    if (!this.rows.length) { this.root.append(el("p", {class: "meta", text: "No finished combinations yet."})); return; }
    const top = el("div", {class: "top"});
    this.figure = el("figure", {class: "plot"});
    const ySelect = el("select", {class: "y-metric", "aria-label": "vertical axis"});
    Y_METRICS.forEach(k => ySelect.append(el("option", {value: k, text: k})));
    ySelect.addEventListener("change", () => { this.yMetric = ySelect.value; this.drawPlot(); });
    this.figure.append(el("label", {class: "hint", text: "vertical axis: "}, ySelect));
    this.plotHolder = el("div");
    this.legend = el("div", {class: "legend"});
    this.figure.append(this.plotHolder, this.legend);
    this.detail = el("aside", {class: "detail", "aria-live": "polite"});
    top.append(this.figure, this.detail);
    this.root.append(top);
    this.root.append(this.buildFilters());
    this.table = this.buildTable();
    this.root.append(this.table);
    this.matrix = el("div", {class: "matrix-holder"});
    this.root.append(el("h3", {text: "Side by side"}), this.matrix);
    this.drawPlot(); this.drawLegend(); this.applyFilters(); this.showDetail(this.selected); this.markRows(); this.drawMatrix();
  }

  // ---------------------------------------------------------------- plot
  drawPlot() {
    const W = 560, H = 380, L = 56, R = 16, T = 14, B = 46;
    const y = this.yMetric, rows = this.rows;
    const xs = rows.map(r => Math.max(r.metrics.perplexity, 1e-9)), ys = rows.map(r => r.metrics[y]);
    let x0 = Math.min(...xs) / 1.15, x1 = Math.max(...xs) * 1.15;
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    const pad = (y1 - y0) * 0.08 || 0.05; y0 = Math.max(0, y0 - pad); y1 = Math.min(y === "repetition_4gram" || y.startsWith("distinct") ? 1 : y1 + pad, y1 + pad);
    if (y1 <= y0) y1 = y0 + 0.1;
    const sx = v => L + (Math.log(v) - Math.log(x0)) / (Math.log(x1) - Math.log(x0)) * (W - L - R);
    const sy = v => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const root = svg("svg", {class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": `${this.model.name}: perplexity against ${y}`});
    const axis = svg("g", {class: "axis"});
    for (const t of niceLogTicks(x0, x1)) {
      axis.append(svg("line", {x1: sx(t), x2: sx(t), y1: T, y2: H - B}));
      const label = svg("text", {x: sx(t), y: H - B + 14, "text-anchor": "middle"}); label.textContent = fmt(t); axis.append(label);
    }
    for (const t of linearTicks(y0, y1)) {
      axis.append(svg("line", {x1: L, x2: W - R, y1: sy(t), y2: sy(t)}));
      const label = svg("text", {x: L - 6, y: sy(t) + 4, "text-anchor": "end"}); label.textContent = fmt(t); axis.append(label);
    }
    root.append(axis);
    const xl = svg("text", {x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", class: "label"});
    xl.textContent = "perplexity under the model (log scale): \u2190 more coherent";
    const better = DATA.metrics[y] === "higher" ? "\u2191 more varied" : "\u2193 fewer repeats";
    const yl = svg("text", {x: 14, y: (T + H - B) / 2, "text-anchor": "middle", class: "label",
                            transform: `rotate(-90 14 ${(T + H - B) / 2})`});
    yl.textContent = `${y}: ${better}`;
    root.append(xl, yl);
    this.points = {};
    // draw the best-ranked last, so it sits on top where points overlap
    for (const row of [...rows].reverse()) {
      const g = marker(this.enc.style(row), sx(Math.max(row.metrics.perplexity, 1e-9)), sy(row.metrics[y]));
      g.classList.add("point");
      g.dataset.cell = row.cell;
      const title = svg("title");
      title.textContent = `#${row.rank} ${paramsText(row)}\nperplexity ${fmt(row.metrics.perplexity)}, ${y} ${fmt(row.metrics[y])}`;
      g.append(title);
      g.addEventListener("mouseenter", () => this.preview(row.cell));
      g.addEventListener("mouseleave", () => this.preview(null));
      g.addEventListener("click", () => this.select(row.cell));
      root.append(g);
      this.points[row.cell] = g;
    }
    this.plotHolder.replaceChildren(root);
    this.markPoints(); this.applyFilters();
  }

  drawLegend() {
    const parts = [];
    const channel = (name, styleOf) => {
      if (!name) return;
      const box = el("div", {}, el("b", {text: name}));
      for (const value of DATA.grid[name]) {
        const item = el("span", {class: "item"});
        const icon = svg("svg", {width: 24, height: 24, viewBox: "-14 -14 28 28"});
        icon.append(marker(styleOf(value), 0, 0));
        item.append(icon, document.createTextNode(String(value)));
        box.append(item);
      }
      parts.push(box);
    };
    const base = {colour: "#555", shape: "circle", r: 6.5, fill: 1};
    const idx = (k, v) => DATA.grid[k].indexOf(v);
    const e = this.enc;
    channel(e.colour, v => ({...base, colour: COLOURS[idx(e.colour, v) % COLOURS.length]}));
    channel(e.shape, v => ({...base, shape: SHAPES[idx(e.shape, v) % SHAPES.length]}));
    channel(e.size, v => ({...base, r: SIZES[Math.min(idx(e.size, v), SIZES.length - 1)]}));
    channel(e.fill, v => ({...base, fill: FILLS[idx(e.fill, v) % FILLS.length]}));
    this.legend.replaceChildren(...parts);
  }

  // ---------------------------------------------------------------- selection
  preview(cell) {
    this.hovered = cell;
    this.showDetail(cell || this.selected);
    this.markRows(); this.markPoints();
  }
  select(cell) {
    this.selected = cell;
    this.showDetail(cell);
    this.markRows(); this.markPoints();
  }
  markRows() {
    for (const tr of this.table.tBodies[0].rows) {
      tr.classList.toggle("selected", tr.dataset.cell === this.selected);
      tr.setAttribute("aria-selected", tr.dataset.cell === this.selected ? "true" : "false");
      tr.classList.toggle("hover", tr.dataset.cell === this.hovered);
    }
  }
  markPoints() {
    for (const [cell, g] of Object.entries(this.points || {})) {
      g.classList.toggle("selected", cell === this.selected);
      g.classList.toggle("hover", cell === this.hovered);
    }
  }

  showDetail(cell) {
    const row = this.byCell[cell];
    if (!row) { this.detail.replaceChildren(el("p", {class: "hint", text: "Click a point or a row."})); return; }
    const head = el("h3", {class: "detail-title", text: `#${row.rank}  ${paramsText(row)}`});
    const summary = el("div", {class: "hint", text:
      `perplexity ${fmt(row.metrics.perplexity)} \u00b7 distinct-2 ${fmt(row.metrics.distinct_2)} \u00b7 ` +
      `repeated 4-grams ${fmt(row.metrics.repetition_4gram)} \u00b7 ${fmt(row.metrics.tokens)} tokens`});
    const select = el("select", {class: "prompt-select", "aria-label": "prompt"});
    for (const [line, text] of DATA.prompts) {
      const option = el("option", {value: line, text: `line ${line}: ${text.length > 70 ? text.slice(0, 70) + "\u2026" : text}`});
      if (line === this.prompt) option.selected = true;
      select.append(option);
    }
    select.addEventListener("change", () => { this.prompt = +select.value; this.showDetail(this.selected); });
    const outputs = el("div", {class: "outputs"});
    const prompt = (DATA.prompts.find(p => p[0] === this.prompt) || ["", ""])[1];
    outputs.append(el("div", {class: "prompt", text: prompt}));
    for (const [line, sample, text, tokens, ppl, finish] of row.outputs) {
      if (line !== this.prompt) continue;
      const about = el("span", {class: "about",
        text: `sample ${sample + 1} \u00b7 ${tokens} tokens \u00b7 perplexity ${fmt(ppl)} \u00b7 ended by ${finish}`});
      outputs.append(el("div", {class: "output", "data-sample": sample}, about, document.createTextNode(text || "(empty)")));
    }
    const snippet = (label, text, cls) => {
      const pre = el("pre", {class: "snippet " + cls, text});
      const button = el("button", {class: "copy", type: "button", text: "copy"});
      button.addEventListener("click", ev => { ev.stopPropagation(); copy(pre, button); });
      return [el("div", {class: "hint"}, document.createTextNode(label), button), pre];
    };
    const setting = el("details", {class: "setting", open: ""}, el("summary", {text: "use this setting"}),
      ...snippet(DATA.streams >= 2 && DATA.seed !== null
                 ? "run the prompt file (with the sweep's seed: sample 1 of each prompt again):" : "run a prompt file:",
                 row.batch, "batch"),
      ...snippet("chat:", row.chat, "chat"),
      ...snippet("as a preset file (TOML), for --config:", row.toml, "toml"),
      ...snippet("or write it for you (add --apply to make it the model's default):", row.preset, "preset"));
    this.detail.replaceChildren(head, summary, el("label", {class: "hint", text: "prompt: "}, select), outputs, setting);
  }

  // ---------------------------------------------------------------- table
  buildTable() {
    const table = el("table", {class: "summary", "data-model": this.model.name});
    const head = el("tr");
    head.append(el("th", {title: "tick 2 to 4 rows to read them side by side", text: "\u2713"}));
    head.append(el("th", {"data-key": "rank", title: DATA.rank_by ? `rank by ${DATA.rank_by}` : "grid order", text: "#"}));
    GRID.forEach(k => head.append(el("th", {"data-key": k, text: k})));
    METRICS.forEach(k => {
      const th = el("th", {"data-key": k, title: `${DATA.metrics[k]} is better`, text: k + (k === DATA.rank_by ? " \u2605" : "")});
      if (k === DATA.rank_by) th.classList.add("rank-by");
      head.append(th);
    });
    table.append(el("thead", {}, head));
    const body = el("tbody");
    const ranges = {};
    for (const k of METRICS) {
      const vs = this.rows.map(r => k === "perplexity" ? Math.log(Math.max(r.metrics[k], 1e-9)) : r.metrics[k]);
      ranges[k] = [Math.min(...vs), Math.max(...vs)];
    }
    for (const row of this.rows) {
      const tr = el("tr", {"data-cell": row.cell});
      const tick = el("input", {type: "checkbox", class: "tick", "aria-label": `compare #${row.rank}`});
      tick.addEventListener("click", ev => ev.stopPropagation());
      tick.addEventListener("change", () => this.toggleTick(row.cell, tick.checked));
      tr.append(el("td", {}, tick));
      tr.append(el("td", {class: "num", "data-value": row.rank, text: row.rank}));
      GRID.forEach(k => tr.append(el("td", {class: "num", "data-value": row.params[k], text: String(row.params[k])})));
      for (const k of METRICS) {
        const v = row.metrics[k];
        const td = el("td", {class: "num", "data-value": v, text: fmt(v)});
        const [lo, hi] = ranges[k];
        const x = k === "perplexity" ? Math.log(Math.max(v, 1e-9)) : v;
        const t = hi > lo ? (x - lo) / (hi - lo) : 0.5;
        const good = DATA.metrics[k] === "higher" ? t : 1 - t;
        td.style.backgroundColor = `hsla(${k === "seconds" || k === "tokens" ? 210 : 140}, 60%, 42%, ${(0.04 + 0.42 * good).toFixed(3)})`;
        if (DATA.samples > 1) {
          const s = row.spread[k];
          td.append(el("span", {class: "spread", title: `min to max over this row's outputs; standard deviation ${fmt(s.std)}`,
                                text: `${fmt(s.min)} \u2026 ${fmt(s.max)}`}));
        }
        tr.append(td);
      }
      tr.addEventListener("click", () => this.select(row.cell));
      tr.addEventListener("mouseenter", () => { this.hovered = row.cell; this.markPoints(); this.markRows(); });
      tr.addEventListener("mouseleave", () => { this.hovered = null; this.markPoints(); this.markRows(); });
      body.append(tr);
    }
    table.append(body);
    Array.from(head.cells).forEach(th => th.dataset.key && th.addEventListener("click", () => {
      sortTable(table, th.dataset.key, th.getAttribute("aria-sort") === "ascending" ? "desc" : "asc");
    }));
    return table;
  }

  buildFilters() {
    const box = el("div", {class: "filters"});
    this.noRepeats = el("input", {type: "checkbox", class: "filter-no-repeats"});
    this.maxPerplexity = el("input", {type: "number", class: "filter-max-perplexity", min: "0", step: "any", placeholder: "any"});
    this.shown = el("span", {class: "hint shown"});
    [this.noRepeats, this.maxPerplexity].forEach(i => i.addEventListener("input", () => this.applyFilters()));
    box.append(el("label", {}, this.noRepeats, document.createTextNode(" no repeated 4-grams")),
               el("label", {}, document.createTextNode("perplexity below "), this.maxPerplexity), this.shown);
    return box;
  }
  passes(row) {
    if (this.noRepeats && this.noRepeats.checked && row.metrics.repetition_4gram > 0) return false;
    const limit = this.maxPerplexity ? parseFloat(this.maxPerplexity.value) : NaN;
    return isNaN(limit) || row.metrics.perplexity < limit;
  }
  applyFilters() {
    if (!this.table) return;
    let shown = 0;
    for (const tr of this.table.tBodies[0].rows) {
      const ok = this.passes(this.byCell[tr.dataset.cell]);
      tr.hidden = !ok; shown += ok;
    }
    for (const [cell, g] of Object.entries(this.points || {})) g.classList.toggle("dim", !this.passes(this.byCell[cell]));
    this.shown.textContent = `${shown} of ${this.rows.length} combinations shown`;
  }

  // ---------------------------------------------------------------- side by side
  toggleTick(cell, on) {
    this.ticked = this.ticked.filter(c => c !== cell);
    if (on) this.ticked.push(cell);
    for (const box of this.table.querySelectorAll("input.tick"))
      box.disabled = !box.checked && this.ticked.length >= 4;
    this.drawMatrix();
  }
  drawMatrix() {
    if (this.ticked.length < 2) {
      this.matrix.replaceChildren(el("p", {class: "hint", text: this.ticked.length
        ? "Tick one more row (up to 4) to read them side by side."
        : "Tick 2 to 4 rows of the table to read their outputs side by side: prompts down, combinations across."}));
      return;
    }
    const rows = this.ticked.map(c => this.byCell[c]);
    const table = el("table", {class: "matrix"});
    const head = el("tr", {}, el("th", {text: "prompt"}));
    rows.forEach(r => head.append(el("th", {"data-cell": r.cell, text: `#${r.rank} ${paramsText(r)}`})));
    table.append(el("thead", {}, head));
    const body = el("tbody");
    for (const [line, prompt] of DATA.prompts) {
      const tr = el("tr", {"data-line": line}, el("td", {class: "prompt", text: prompt}));
      for (const r of rows) {
        const td = el("td", {"data-cell": r.cell});
        for (const [l, sample, text] of r.outputs)
          if (l === line) td.append(el("div", {class: "sample-text", "data-sample": sample, text: text || "(empty)"}));
        tr.append(td);
      }
      body.append(tr);
    }
    table.append(body);
    this.matrix.replaceChildren(table);
  }
}

function copy(pre, button) {
  const done = () => { button.textContent = "copied"; setTimeout(() => { button.textContent = "copy"; }, 1200); };
  const select = () => { const r = document.createRange(); r.selectNodeContents(pre);
                         const s = getSelection(); s.removeAllRanges(); s.addRange(r); button.textContent = "selected: Ctrl-C"; };
  if (navigator.clipboard) navigator.clipboard.writeText(pre.textContent).then(done, select); else select();
}

function sortTable(table, key, dir) {
  const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells);
  const idx = heads.findIndex(th => th.dataset.key === key);
  if (idx < 0) return;
  const value = r => { const v = r.cells[idx].dataset.value;
                       return v !== undefined && v !== "" && !isNaN(v) ? parseFloat(v) : r.cells[idx].textContent; };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => { const x = value(a), y = value(b);
                        const c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
                        return dir === "desc" ? -c : c; });
  rows.forEach(r => body.appendChild(r));
  heads.forEach(th => th.removeAttribute("aria-sort"));
  heads[idx].setAttribute("aria-sort", dir === "desc" ? "descending" : "ascending");
}

function meta() {
  const d = DATA, combos = d.models.length ? d.models[0].rows.length : 0;
  let text = `${d.models.length} model(s) \u00d7 ${combos} combinations \u00d7 ${d.prompts.length} prompts \u00d7 ` +
    `${d.samples} sample(s), seed ${d.seed}. Grid: ` + GRID.map(k => `${k}=${d.grid[k].join(",")}`).join(" ") +
    (d.rank_by ? `. Ranked by ${d.rank_by} (\u2605), best first.` : ".") +
    " Metrics are means over a combination's outputs: distinct-n over the generated tokens, repetition_4gram the " +
    "share of 4-grams that repeat, mean_logprob and perplexity under the same model at temperature 1." +
    (d.samples > 1 ? " Small numbers under a mean are the lowest and highest single output." : "");
  if (d.streams < 2) text += " These outputs were made before a sweep's first sample shared batch's random stream: " +
    "the batch command below gives these settings, not these exact texts.";
  document.getElementById("meta").textContent = text;
}

meta();
const encoding = encodings();
const holder = document.getElementById("models");
for (const model of DATA.models) holder.append(new ModelView(model, encoding).root);
const params = new URLSearchParams(location.search);
if (params.get("sort"))
  document.querySelectorAll("table.summary").forEach(t => sortTable(t, params.get("sort"), params.get("dir") || "asc"));
// ?click=KEY,KEY,... clicks those headers in order, exactly as a reader would
(params.get("click") || "").split(",").filter(Boolean).forEach(key =>
  document.querySelectorAll(`table.summary th[data-key="${key}"]`).forEach(th => th.click()));
