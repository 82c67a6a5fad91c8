"""report.html: one self-contained page (no network) per sweep.

Per model, a table of the combinations with their averaged metrics (click a header to sort it;
``report.html?sort=perplexity&dir=asc`` opens it sorted, and ``?click=perplexity`` clicks that header), and for each combination its outputs
side by side with the prompts.
"""

from __future__ import annotations

import html
from pathlib import Path

from chatbot_llm.sweep.metrics import METRICS

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; }
table.summary th { cursor: pointer; user-select: none; white-space: nowrap; }
table.summary th[aria-sort=ascending]::after { content: " \\25B2"; }
table.summary th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.outputs td { max-width: 40em; white-space: pre-wrap; }
.prompt { font-weight: 600; }
details { margin: .3em 0; } summary { cursor: pointer; }
.meta { color: #666; }
"""

SCRIPT = """
function sortTable(table, key, dir) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const idx = Array.from(table.tHead.rows[0].cells).findIndex(th => th.dataset.key === key);
  if (idx < 0) return;
  const value = r => { const c = r.cells[idx]; const v = c.dataset.value;
                       return v !== undefined && v !== '' && !isNaN(v) ? parseFloat(v) : c.textContent; };
  rows.sort((a, b) => { const x = value(a), y = value(b);
                        const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
                        return dir === 'desc' ? -c : c; });
  rows.forEach(r => body.appendChild(r));
  Array.from(table.tHead.rows[0].cells).forEach(th => th.removeAttribute('aria-sort'));
  table.tHead.rows[0].cells[idx].setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
}
document.querySelectorAll('table.summary').forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach(th => th.addEventListener('click', () => {
    const dir = th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc';
    sortTable(table, th.dataset.key, dir);
  }));
});
const params = new URLSearchParams(location.search);
if (params.get('sort')) {
  document.querySelectorAll('table.summary').forEach(t => sortTable(t, params.get('sort'), params.get('dir') || 'asc'));
}
// ?click=KEY,KEY,... clicks those headers in order, exactly as a reader would (used by the tests)
(params.get('click') || '').split(',').filter(Boolean).forEach(key =>
  document.querySelectorAll(`table.summary th[data-key="${key}"]`).forEach(th => th.click()));
"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f'<td class="num" data-value="{value!r}">{value:.4g}</td>'
    if isinstance(value, bool) or value is None:
        return f'<td data-value="">{html.escape(str(value))}</td>'
    if isinstance(value, int):
        return f'<td class="num" data-value="{value}">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def render(plan, summary: list[dict], rows: list[dict], rank_by: str | None) -> str:
    grid_names = list(plan.grid)
    columns = [*grid_names, "outputs", *METRICS]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>chatbot-llm sweep</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>chatbot-llm sweep</h1>",
        f'<p class="meta">{len(plan.models)} model(s) x {len(plan.cells) // max(1, len(plan.models))} combinations x '
        f"{len(plan.prompts)} prompts x {plan.samples} sample(s). Grid: "
        + html.escape(" ".join(f"{k}={','.join(map(str, v))}" for k, v in plan.grid.items()))
        + (f". Ranked by {html.escape(rank_by)}." if rank_by else ".")
        + " Metrics are means over a combination's outputs: distinct-n over generated tokens, repetition_4gram the share "
          "of 4-grams that repeat, mean_logprob and perplexity under the same model at temperature 1. "
          "Click a header to sort.</p>",
    ]
    outputs_by_cell: dict[str, list[dict]] = {}
    for row in rows:
        outputs_by_cell.setdefault(row["cell"], []).append(row)
    for model in plan.models:
        entries = [e for e in summary if e["model"] == model]
        parts.append(f'<h2 id="model-{html.escape(model)}">{html.escape(model)}</h2>')
        parts.append(f'<table class="summary" data-model="{html.escape(model)}"><thead><tr>'
                     + "".join(f'<th data-key="{c}">{c}</th>' for c in columns) + "<th data-key=\"cell\">read</th>"
                     + "</tr></thead><tbody>")
        for entry in entries:
            parts.append(f'<tr data-cell="{entry["cell"]}">' + "".join(_cell(entry[c]) for c in columns)
                         + f'<td><a href="#cell-{entry["cell"]}">read</a></td></tr>')
        parts.append("</tbody></table>")
        for entry in entries:
            shown = ", ".join(f"{k}={entry[k]}" for k in grid_names)
            parts.append(f'<details id="cell-{entry["cell"]}"><summary>{html.escape(shown)}</summary>')
            parts.append('<table class="outputs"><thead><tr><th>prompt</th>'
                         + "".join(f"<th>sample {s + 1}</th>" for s in range(plan.samples)) + "</tr></thead><tbody>")
            outputs = sorted(outputs_by_cell.get(entry["cell"], []), key=lambda r: (r["prompt_line"], r["sample"]))
            for line, prompt in plan.prompts:
                cells = [o for o in outputs if o["prompt_line"] == line]
                parts.append(f'<tr><td class="prompt">{html.escape(prompt)}</td>'
                             + "".join(f'<td title="{o["tokens"]} tokens, perplexity {o["perplexity"]:.1f}">'
                                       f'{html.escape(o["response"])}</td>' for o in cells) + "</tr>")
            parts.append("</tbody></table></details>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(plan, summary: list[dict], rows: list[dict], rank_by: str | None) -> Path:
    from chatbot_llm.sweep.run import REPORT, write_atomic

    path = Path(plan.out) / REPORT
    write_atomic(path, render(plan, summary, rows, rank_by))
    return path

