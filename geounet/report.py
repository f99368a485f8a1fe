"""A run's ``run_report.json`` rendered as one static, self-contained HTML page.

The page has no script and loads nothing from the network: the CSS is inline and thumbnails
and outputs are linked by paths relative to the HTML file, so the folder can be zipped, moved
or served as is. One table row per input gives its status (done, skipped, failed with the
reason), its preview thumbnail, counts per class (features, area in m2, centerline length in m,
mean and max width in m), timing and links to every output; the header gives the workflow,
the model and the settings. On a narrow screen (a phone) each row becomes a card.

Links are only made to files that exist when the page is written; an output the report lists
but that is missing shows as "missing" rather than as a broken link.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from geounet.errors import InputError
from geounet.outputs import atomic_path

STATUSES = ("done", "skipped", "failed")

CSS = """
:root{--ok:#1a7f37;--skip:#8a6d00;--fail:#c62828;--line:#d0d7de;--muted:#57606a}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
  padding:12px;color:#1f2328;background:#fff}
h1{font-size:1.35em;margin:.2em 0 .4em}
.meta{display:flex;flex-wrap:wrap;gap:.3em 1.5em;color:var(--muted);margin-bottom:.6em}
.badge{display:inline-block;padding:.1em .55em;border-radius:1em;color:#fff;font-weight:600;
  font-size:.9em}
.done{background:var(--ok)}.skipped{background:var(--skip)}.failed{background:var(--fail)}
details{margin:.4em 0}
summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em;border-radius:6px}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:.45em .5em;text-align:left;
  vertical-align:top}
th{background:#f6f8fa;font-size:.9em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.items>tbody>tr>td{padding:.6em .5em}
.input{font-weight:600;word-break:break-all}
.reason{color:var(--fail);margin-top:.3em;word-break:break-word}
.skipped-reason{color:var(--skip)}
img.thumb{width:220px;max-width:100%;height:auto;border:1px solid var(--line);
  background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 0 0/16px 16px}
.classes{font-size:.9em;margin-top:.3em}
.classes th,.classes td{padding:.2em .4em}
ul.outputs{margin:0;padding-left:1.1em}
.missing{color:var(--muted);text-decoration:line-through}
@media (max-width:720px){
  .items thead{display:none}
  .items,.items>tbody,.items>tbody>tr,.items>tbody>tr>td{display:block;width:100%}
  .items>tbody>tr{border:1px solid var(--line);border-radius:8px;margin:0 0 12px;
    padding:.3em}
  .items>tbody>tr>td{border:0;padding:.3em .4em}
  .items>tbody>tr>td[data-label]::before{content:attr(data-label);display:block;
    font-size:.8em;color:var(--muted);text-transform:uppercase}
  img.thumb{width:100%}
}
"""


def load_report(report: str | Path | Mapping[str, Any]) -> tuple[dict, Path | None]:
    """The report dict and the folder its relative output paths start from (None for a dict)."""
    if isinstance(report, Mapping):
        return dict(report), None
    path = Path(report)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; give the run_report.json of a run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON report ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise InputError(f"{path}: not a run report (expected an object with an 'items' list)")
    return data, path.parent


def write_html_report(report: str | Path | Mapping[str, Any], html_path: str | Path) -> Path:
    """Render ``report`` (a ``run_report.json`` path or its dict) to ``html_path``.

    Output paths in the report are relative to the report's folder (the HTML file's folder
    when a dict is given). The file is written atomically and replaced if it exists.
    """
    html_path = Path(html_path)
    data, folder = load_report(report)
    folder = folder if folder is not None else html_path.parent
    page = _page(data, folder.resolve(), html_path.parent.resolve(),
                 report if not isinstance(report, Mapping) else None)
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return html_path


def _page(data: dict, folder: Path, html_dir: Path, json_path) -> str:
    title = f"geounet run: {data.get('workflow') or 'report'}"
    counts = data.get("counts") or {s: sum(1 for i in data["items"] if i.get("status") == s)
                                    for s in STATUSES}
    badges = " ".join(f'<span class="badge {s}">{int(counts.get(s, 0))} {s}</span>'
                      for s in STATUSES)
    meta = [f"started {_e(data.get('started'))}", f"finished {_e(data.get('finished'))}",
            f"{_number(data.get('seconds'), 1)} s"]
    if data.get("workflow_file"):
        meta.append(f"workflow file {_e(data['workflow_file'])}")
    if json_path is not None:
        meta.append(_link(Path(json_path).resolve(), html_dir, "run_report.json"))
    model = data.get("model") or {}
    model_html = ", ".join(x for x in (
        _e(Path(model["path"]).name) if model.get("path") else "",
        f"classes {_e(', '.join(model.get('class_names') or []))}"
        if model.get("class_names") else "",
        f"sha256 <code>{_e(str(model['sha256'])[:16])}</code>" if model.get("sha256") else "",
    ) if x)
    settings = json.dumps(data.get("settings") or {}, indent=2, sort_keys=True, default=str)
    rows = "\n".join(_row(item, folder, html_dir) for item in data["items"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<div class="meta">{''.join(f'<span>{m}</span>' for m in meta)}</div>
<p>{badges}</p>
<p><strong>Model:</strong> {model_html or 'not recorded'}</p>
<details><summary>Settings used</summary><pre>{_e(settings)}</pre></details>
<table class="items">
<thead><tr><th>Input</th><th>Preview</th><th>Results</th><th>Outputs</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def _row(item: dict, folder: Path, html_dir: Path) -> str:
    status = item.get("status") if item.get("status") in STATUSES else "failed"
    name = Path(str(item.get("input", "?"))).name
    reason = item.get("reason")
    reason_html = (f'<div class="reason{" skipped-reason" if status == "skipped" else ""}">'
                   f"{_e(reason)}</div>" if reason else "")
    timing = (f"{_number(item.get('seconds'), 1)} s, {int(item.get('attempts') or 1)} "
              f"attempt{'s' if (item.get('attempts') or 1) != 1 else ''}")
    outputs = {k: v for k, v in (item.get("outputs") or {}).items() if v}
    preview = outputs.get("preview")
    thumb = "no preview"
    if status == "failed":   # files there are an earlier run's, not of this input as it is
        links = "".join(f'<li><span class="missing">{_e(kind)}: {_e(Path(path).name)} '
                        f"({_e(_earlier(folder / path))})</span></li>"
                        for kind, path in outputs.items())
    else:
        if preview and (folder / preview).is_file():
            src = _relative(folder / preview, html_dir)
            thumb = (f'<a href="{_e(src)}"><img class="thumb" src="{_e(src)}" '
                     f'alt="preview of {_e(name)}"></a>')
        links = "".join(
            f"<li>{_link(folder / path, html_dir, f'{kind}: {Path(path).name}')}</li>"
            for kind, path in outputs.items())
    return f"""<tr class="item" data-status="{status}">
<td data-label="Input"><div class="input" title="{_e(item.get('input'))}">{_e(name)}</div>
<span class="badge {status}">{status}</span> <span class="timing">{timing}</span>
{reason_html}</td>
<td data-label="Preview">{thumb}</td>
<td data-label="Results">{_summary(item.get('summary'))}</td>
<td data-label="Outputs"><ul class="outputs">{links or '<li>none</li>'}</ul></td>
</tr>"""


def _summary(summary: dict | None) -> str:
    if not summary:
        return "-"
    totals = (f"{int(summary.get('features') or 0):,} features, "
              f"{_number(summary.get('area_m2'), 1)} m&sup2;")
    if summary.get("centerline_length_m") is not None:
        totals += f", centerlines {_number(summary['centerline_length_m'], 1)} m"
    classes = summary.get("classes") or {}
    if not classes:
        return f"<div>{totals}</div>"
    head = ("<tr><th>class</th><th class=num>features</th><th class=num>area m&sup2;</th>"
            "<th class=num>length m</th><th class=num>mean width m</th>"
            "<th class=num>max width m</th></tr>")
    body = "".join(
        f"<tr><td>{_e(name)}</td><td class=num>{int(c.get('features') or 0):,}</td>"
        f"<td class=num>{_number(c.get('area_m2'), 1)}</td>"
        f"<td class=num>{_number(c.get('length_m'), 1)}</td>"
        f"<td class=num>{_number(c.get('mean_width_m'), 2)}</td>"
        f"<td class=num>{_number(c.get('max_width_m'), 2)}</td></tr>"
        for name, c in classes.items())
    return f'<div>{totals}</div><table class="classes">{head}{body}</table>'


def _earlier(target: Path) -> str:
    """What a failed item's output name holds."""
    return "not written; the file there is an earlier run's" if target.exists() else \
        "not written"


def _link(target: Path, html_dir: Path, text: str) -> str:
    """A relative link to ``target``, or the text marked missing when it does not exist."""
    if not target.exists():
        return (f'<span class="missing" title="not found when the report was written">'
                f"{_e(text)} (missing)</span>")
    return f'<a href="{_e(_relative(target, html_dir))}">{_e(text)}</a>'


def _relative(target: Path, html_dir: Path) -> str:
    return quote(Path(os.path.relpath(target.resolve(), html_dir)).as_posix())


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return _e(value)


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)
