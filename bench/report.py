"""The benchmark's output: rows of figures per target, the printed table (absolute
figures, ratios to direct and to nginx, the issue targets) and the saved JSON.
"""
import json
import os
from dataclasses import asdict, dataclass, field

OPS = {"<=": (lambda v, t: v <= t), ">=": (lambda v, t: v >= t)}
ADDED_FLOOR_MS = 0.05  # below this an added latency is within timer noise
SIGN = {"<=": "\u2264", ">=": "\u2265"}


@dataclass
class Row:
    group: str                 # scenario heading in the table, e.g. "1 KB JSON, c=1"
    metric: str                # e.g. "added p50"
    unit: str                  # "ms", "req/s", "MB/s", "MiB", ""
    values: dict               # target name -> number (or None, or a short string)
    kind: str = "abs"          # "abs": ratios to direct and nginx; "added": ratio to nginx
                               # only (direct is 0 by definition); "info": no ratios
    goal: list = None          # [(op, threshold, source)] for proxy targets, e.g. ("<=", 0.5, "#6")
    met: dict = field(default_factory=dict)   # proxy target -> [True/False per goal]

    def check(self, proxies):
        for name in proxies:
            v = self.values.get(name)
            if self.goal and isinstance(v, (int, float)):
                self.met[name] = [OPS[op](v, threshold) for op, threshold, _ in self.goal]


def fmt(v, unit="", added=False):
    if v is None:
        return "\u2014"
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool) and unit == "":
        return str(v)
    a = abs(v)
    if unit in ("req/s", "MB/s") or a >= 100:
        s = "%.0f" % v
    elif a >= 10:
        s = "%.1f" % v
    elif a >= 1:
        s = "%.2f" % v
    else:
        s = "%.3f" % v
    return ("+" + s if added and v >= 0 else s)


def ratio(a, b, floor=0.0):
    """a / b; "—" when b is missing or at most `floor` (an added latency of ~0 ms has no
    meaningful ratio: noise would make it 100x or negative)."""
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b <= floor:
        return "\u2014"
    r = a / b
    return ("%.2fx" % r) if r < 100 else ("%.0fx" % r)


def table(rows, target_names, proxies, header_lines):
    """target_names: the available targets, in column order; proxies: those that get
    ratio columns (every proxy but nginx, which is itself a reference)."""
    refs = [r for r in ("direct", "nginx") if r in target_names]
    cols = ["scenario", "metric"] + list(target_names)
    ratio_cols = []
    for p in proxies:
        for ref in refs:
            ratio_cols.append((p, ref))
            cols.append("%s/%s" % (p, ref))
    goal_target = "orproxy" if "orproxy" in proxies else (proxies[0] if proxies else None)
    cols.append("target (%s)" % goal_target if goal_target else "target")

    body, last_group = [], None
    for row in rows:
        row.check(proxies)
        metric = row.metric + (", " + row.unit if row.unit else "")
        cells = [row.group if row.group != last_group else "", metric]
        last_group = row.group
        for name in target_names:
            cells.append(fmt(row.values.get(name), row.unit, added=row.kind == "added"))
        for p, ref in ratio_cols:
            if (row.kind == "info" or (row.kind == "added" and ref == "direct")
                    or row.values.get(ref) is None):
                cells.append("")
            else:
                floor = ADDED_FLOOR_MS if row.kind == "added" else 0.0
                cells.append(ratio(row.values.get(p), row.values.get(ref), floor))
        goals = []
        for i, (op, threshold, source) in enumerate(row.goal or ()):
            text = "%s %s%g" % (source, SIGN[op], threshold)
            if goal_target in row.met:
                text += " " + ("ok" if row.met[goal_target][i] else "MISS")
            goals.append(text)
        cells.append("; ".join(goals))
        body.append(cells)

    widths = [max(len(c) for c in col) for col in zip(cols, *body)] if body else [len(c) for c in cols]
    left = 2  # scenario and metric are left-aligned, figures right-aligned

    def line(cells):
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            out.append(c.ljust(w) if i < left or i == len(cells) - 1 else c.rjust(w))
        return "  ".join(out).rstrip()

    out = list(header_lines) + ["", line(cols), line(["-" * w for w in widths])]
    last = None
    for row, cells in zip(rows, body):
        if row.group != last and last is not None:
            out.append("")
        last = row.group
        out.append(line(cells))
    return "\n".join(out)


def save_json(path, meta, targets, results, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {"meta": meta, "targets": targets, "results": results,
           "rows": [asdict(r) for r in rows]}
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    os.replace(path + ".tmp", path)
