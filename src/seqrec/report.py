"""A run report a person would rather look at than metrics.jsonl: one PNG and an HTML page embedding it.

The PNG holds training loss and validation NDCG@10 / HR@10 against epoch (top row) and against
wall-clock minutes (middle row), the best epoch marked on every curve, a table of the test metrics next
to the popularity baseline's, and each run's configuration (the values that differ from the defaults).
Several runs overlay, one colour each. The HTML page embeds the PNG (base64, one self-contained file)
and adds the full test tables and each run's complete config and command line.

Reads only the run directory's files (metrics.jsonl, results.json, config.yaml, command.txt); a run
still training has no results.json, and its report shows the curves so far. Needs matplotlib
(``pip install 'seqrec[plot]'``).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seqrec.config import RunConfig, config_to_dict
from seqrec.errors import DataError

CURVE_K = 10  # validation curves show NDCG@K and HR@K at this cut-off (the papers' headline metric)


@dataclass(frozen=True)
class RunLog:
    """What a run directory records, read once.

    Attributes:
        path: the run directory.
        label: short name for legends (the directory name, with its parent when names repeat).
        records: metrics.jsonl records in epoch order (one per epoch).
        results: results.json (best epoch, valid/test/popularity metrics), or None while training.
        config: config.yaml as a nested dict.
        command: command.txt, or None.
    """

    path: Path
    label: str
    records: tuple[dict[str, Any], ...]
    results: dict[str, Any] | None
    config: dict[str, Any]
    command: str | None

    @property
    def select_metric(self) -> str:
        return str(self.config.get("eval", {}).get("select_metric", "ndcg@10"))

    @property
    def best_epoch(self) -> int | None:
        """results.json's best epoch; while training, the best validated epoch so far."""
        if self.results is not None:
            return int(self.results["best_epoch"])
        validated = [r for r in self.records if self.select_metric in r.get("valid", {})]
        return max(validated, key=lambda r: r["valid"][self.select_metric])["epoch"] if validated else None

    def minutes(self) -> tuple[list[float], bool]:
        """Wall-clock minutes at the end of each record, and whether they are measured (not estimated).

        Records of older runs lack ``wall_seconds``; their time is estimated as training plus validation
        time (what wall_seconds adds is startup and checkpoint writing).
        """
        if all("wall_seconds" in r for r in self.records):
            return [r["wall_seconds"] / 60 for r in self.records], True
        out, evals = [], 0.0
        for r in self.records:
            evals += r.get("eval_seconds", 0.0) if "valid" in r else 0.0
            out.append((r["train_seconds"] + evals) / 60)
        return out, False


def read_run(path: str | Path, label: str | None = None) -> RunLog:
    """Reads one run directory; FileNotFoundError/ValueError name the file and line at fault."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory not found: {path}")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: not found; is {path} a run directory (seqrec train --out)?")
    lines = metrics.read_text(encoding="utf-8").splitlines()
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                break  # a record torn by a kill mid-append, as the training loop treats it
            raise DataError(f"{metrics}:{lineno}: not a JSON record ({exc.msg})", path=metrics, line=lineno) from exc
    if not records:
        raise DataError(f"{metrics}: no epoch records yet", path=metrics)
    results_path = path / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else None
    config_path = path / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    command_path = path / "command.txt"
    command = command_path.read_text(encoding="utf-8").strip() if command_path.is_file() else None
    return RunLog(path, label or path.name, tuple(records), results, config or {}, command)


def read_runs(paths: Sequence[str | Path]) -> list[RunLog]:
    """Reads several runs; labels get the parent directory where the directory names repeat."""
    paths = [Path(p) for p in paths]
    names = [p.resolve().name for p in paths]
    labels = [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]
    return [read_run(p, label) for p, label in zip(paths, labels, strict=True)]


def write_report(runs: Sequence[str | Path], out: str | Path) -> tuple[Path, Path]:
    """Writes ``out`` + ``.png`` and ``out`` + ``.html`` for one run or an overlay of several.

    Args:
        runs: run directories.
        out: output path without suffix (a suffix .png/.html is replaced); parent folders are created.

    Returns:
        The PNG and HTML paths.
    """
    if not runs:
        raise ValueError("seqrec report needs at least one run directory")
    logs = read_runs(runs)
    out = Path(out)
    if out.suffix in (".png", ".html"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    png, page = out.with_name(out.name + ".png"), out.with_name(out.name + ".html")
    data = plot_runs(logs)
    png.write_bytes(data)
    page.write_text(html_page(logs, data), encoding="utf-8")
    return png, page


# ---- the figure

def plot_runs(logs: Sequence[RunLog]) -> bytes:
    """The report figure as PNG bytes (matplotlib's object API: no pyplot, no global backend state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError("seqrec report needs matplotlib: pip install 'seqrec[plot]'") from exc

    colors = [f"C{i % 10}" for i in range(len(logs))]
    table = _table_rows(logs, colors)
    config_blocks = _config_blocks(logs, colors)
    text_rows = max(len(lines) for _, _, lines in config_blocks)
    curves_h, table_h, text_h = 7.6, 0.3 * (len(table[1]) + 1) + 0.5, 0.19 * text_rows + 0.9
    fig = Figure(figsize=(15, curves_h + table_h + text_h), layout="constrained", dpi=100)
    grid = fig.add_gridspec(4, 3, height_ratios=[curves_h / 2, curves_h / 2, table_h, text_h])
    measured = True
    metric_names = [("train_loss", "training loss"), (f"ndcg@{CURVE_K}", f"validation NDCG@{CURVE_K}"),
                    (f"hr@{CURVE_K}", f"validation HR@{CURVE_K}")]
    for row, axis_name in enumerate(("epoch", "minutes")):
        for col, (key, title) in enumerate(metric_names):
            ax = fig.add_subplot(grid[row, col])
            for log, color in zip(logs, colors, strict=True):
                minutes, exact = log.minutes()
                measured &= exact
                xs_all = [r["epoch"] for r in log.records] if axis_name == "epoch" else minutes
                _plot_curve(ax, log, key, xs_all, color)
            ax.set_title(f"{title} by {'epoch' if axis_name == 'epoch' else 'wall-clock time'}", fontsize=11)
            ax.set_xlabel("epoch" if axis_name == "epoch" else "wall-clock minutes")
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
            if key == "train_loss" and _spread(logs) > 20:
                ax.set_yscale("log")  # losses of different objectives differ by orders of magnitude
                ax.set_ylabel(f"{title} (log scale)")
            if axis_name == "epoch":
                ax.xaxis.get_major_locator().set_params(integer=True)
    if not measured:
        fig.text(0.99, 0.0, "wall-clock minutes estimated as training + validation time (older runs "
                 "record no wall_seconds)", ha="right", va="bottom", fontsize=8, color="0.4")
    handles = [_legend_handle(color) for color in colors]
    labels = [log.label for log in logs]
    fig.legend(handles + [_best_handle()], labels + ["best epoch (model selection)"], loc="outside upper center",
               ncols=min(len(labels) + 1, 5), fontsize=10, frameon=False)
    _metrics_table(fig.add_subplot(grid[2, :]), table)
    _config_text(fig.add_subplot(grid[3, :]), config_blocks)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _spread(logs: Sequence[RunLog]) -> float:
    """Ratio of the largest to the smallest positive training loss over all runs (0 if any is <= 0: no log scale)."""
    losses = [r["train_loss"] for log in logs for r in log.records if "train_loss" in r]
    return max(losses) / min(losses) if losses and min(losses) > 0 else 0.0


def _plot_curve(ax: Any, log: RunLog, key: str, xs_all: list[float], color: str) -> None:
    if key == "train_loss":
        # a record without a loss (another toolkit's log converted to a run directory) has no point here
        points = [(x, r["train_loss"], r["epoch"]) for x, r in zip(xs_all, log.records, strict=True)
                  if "train_loss" in r]
    else:
        points = [(x, r["valid"][key], r["epoch"]) for x, r in zip(xs_all, log.records, strict=True)
                  if key in r.get("valid", {})]
    if not points:
        return
    xs, ys, epochs = zip(*points, strict=True)
    ax.plot(xs, ys, color=color, marker="o" if len(xs) <= 40 else None, markersize=3, linewidth=1.5)
    best = log.best_epoch
    if best in epochs:
        i = epochs.index(best)
        ax.axvline(xs[i], color=color, linestyle=":", linewidth=1)
        ax.plot([xs[i]], [ys[i]], marker="*", markersize=14, color=color, markeredgecolor="black", linestyle="none")


def _legend_handle(color: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker="o", markersize=3, linewidth=1.5)


def _best_handle() -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color="0.3", marker="*", markersize=12, markeredgecolor="black", linestyle=":")


def _table_metrics(logs: Sequence[RunLog]) -> list[str]:
    """HR/NDCG at 10 and at the largest cut-off the runs share, and MRR."""
    shared = None
    for log in logs:
        if log.results is not None:
            keys = set(log.results["test"])
            shared = keys if shared is None else shared & keys
    if not shared:
        return []
    ks = sorted({int(k.split("@")[1]) for k in shared if "@" in k})
    chosen = [k for k in (CURVE_K, ks[-1] if ks else None) if k in ks]
    names = [f"{m}@{k}" for k in dict.fromkeys(chosen) for m in ("hr", "ndcg")]
    return names + (["mrr"] if "mrr" in shared else [])


def _table_rows(logs: Sequence[RunLog], colors: list[str]) -> tuple[list[str], list[list[str]], list[str], list[str]]:
    """Header, rows, row shades and label colours of the test table (no rows before any results.json)."""
    names = _table_metrics(logs)
    if not names:
        return [], [], [], []
    done = [log for log in logs if log.results is not None]
    pops = [log.results["popularity"]["test"] for log in done]
    shared_pop = all(pop == pops[0] for pop in pops)  # the same data: one baseline row for all runs
    rows, shades, label_colors = [], [], []

    def add(cells: list[str], shade: str, color: str) -> None:
        rows.append(cells)
        shades.append(shade)
        label_colors.append(color)

    for log, color in zip(logs, colors, strict=True):
        if log.results is None:
            add([f"{log.label}: still training, no test metrics yet", *[""] * (len(names) + 1)], "white", color)
            continue
        res, pop = log.results, log.results["popularity"]["test"]
        ratio = res["test"].get(f"ndcg@{CURVE_K}", float("nan")) / max(pop.get(f"ndcg@{CURVE_K}", 0), 1e-12)
        add([f"{log.label} (best epoch {res['best_epoch']} of {res['epochs_run']})",
             *(f"{res['test'][n]:.4f}" for n in names), f"{ratio:.2f}x"], "white", color)
        if not shared_pop:
            add(["    popularity baseline", *(f"{pop[n]:.4f}" for n in names), ""], "0.93", "0.3")
    if shared_pop:
        add(["popularity baseline" + (" (same for every run)" if len(done) > 1 else ""),
             *(f"{pops[0][n]:.4f}" for n in names), "1.00x"], "0.93", "0.3")
    header = ["run", *(n.upper() for n in names), f"NDCG@{CURVE_K} vs popularity"]
    return header, rows, shades, label_colors


def _metrics_table(ax: Any, table_rows: tuple[list[str], list[list[str]], list[str], list[str]]) -> None:
    ax.axis("off")
    ax.set_title("test metrics of the selected model (best validation epoch) next to the popularity baseline",
                 fontsize=11, loc="left")
    header, rows, shades, label_colors = table_rows
    if not rows:
        ax.text(0, 0.5, "no results.json yet: the run is still training (curves so far above)", fontsize=10,
                va="center", transform=ax.transAxes)
        return
    # Left-aligned throughout: the numbers all have four decimals, so their columns line up anyway.
    table = ax.table(cellText=rows, colLabels=header, cellColours=[[s] * len(header) for s in shades],
                     loc="upper left", cellLoc="left", colLoc="left",
                     colWidths=[0.34] + [0.08] * (len(header) - 2) + [0.17])
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1, 1.3)
    for (r, c), cell in table.get_celld().items():
        if r == 0:
            cell.set_text_props(fontweight="bold")
        elif c == 0:
            cell.get_text().set_color(label_colors[r - 1])


def _config_lines(log: RunLog) -> list[str]:
    """The run's config values that differ from the defaults, as ``section.key = value`` lines."""
    defaults = config_to_dict(RunConfig())
    lines = []
    for section, values in log.config.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if defaults.get(section, {}).get(key, object()) != value:
                lines.append(f"{section}.{key} = {value}")
    return lines


def _config_blocks(logs: Sequence[RunLog], colors: list[str]) -> list[tuple[str, str, list[str]]]:
    """(title, colour, lines) per text column: each run's own values, then the values every run shares.

    One run: its non-default values. Several: what tells them apart first, each run's column holding
    the non-default values not shared by every run, and one last column for those they all share.
    """
    per_run = [_config_lines(log) for log in logs]
    if len(logs) == 1:
        return [(logs[0].label, colors[0], per_run[0] or ["(all defaults)"])]
    shared = [line for line in per_run[0] if all(line in lines for lines in per_run[1:])]
    blocks = [(log.label, color, [x for x in lines if x not in shared] or ["(only the shared values)"])
              for log, color, lines in zip(logs, colors, per_run, strict=True)]
    return blocks + [("shared by every run", "0.2", shared or ["(none)"])]


def _shorten(text: str, width: int) -> str:
    """Middle-truncates ``text`` to ``width`` characters (paths keep their file name)."""
    if len(text) <= width:
        return text
    keep = width - 3
    return text[: keep // 2] + "..." + text[len(text) - (keep - keep // 2):]


def _config_text(ax: Any, blocks: list[tuple[str, str, list[str]]]) -> None:
    from matplotlib.transforms import offset_copy

    ax.axis("off")
    ax.set_title("configuration (values that differ from the defaults; the full config is in the HTML page)",
                 fontsize=11, loc="left")
    n = len(blocks)
    width = 140 // n  # characters of 9-point monospace that fit a column of the 15-inch figure (~150 in all)
    below_label = offset_copy(ax.transAxes, fig=ax.figure, y=-15, units="points")
    for i, (title, color, lines) in enumerate(blocks):
        ax.text(i / n, 1.0, _shorten(title, width - 2), color=color, fontsize=10, fontweight="bold", va="top",
                ha="left", transform=ax.transAxes)
        ax.text(i / n, 1.0, "\n".join(_fit_line(line, width) for line in lines), family="monospace", fontsize=9,
                va="top", ha="left", transform=below_label)


def _fit_line(line: str, width: int) -> str:
    """A ``section.key = value`` line in ``width`` characters: the section goes first, then the middle."""
    if len(line) > width and "." in line.split(" = ", 1)[0]:
        line = line.split(".", 1)[1]
    return _shorten(line, width)


# ---- the page

def html_page(logs: Sequence[RunLog], png: bytes) -> str:
    """A self-contained HTML page: the PNG (base64), full test tables, each run's config and command."""
    esc = html.escape
    title = "seqrec report: " + ", ".join(log.label for log in logs)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1500px} img{max-width:100%}"
        " table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        " td:first-child,th:first-child{text-align:left} pre{background:#f6f6f6;padding:1em;overflow:auto}</style>",
        "</head><body>", f"<h1>{esc(title)}</h1>",
        f'<img alt="training loss and validation curves, test metrics and configuration" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">',
    ]
    for log in logs:
        parts.append(f"<h2>{esc(log.label)}</h2><p>run directory: <code>{esc(str(log.path))}</code></p>")
        if log.command:
            parts.append(f"<p>command: <code>{esc(log.command)}</code></p>")
        if log.results is None:
            parts.append("<p>no results.json yet: the run is still training.</p>")
        else:
            res = log.results
            parts.append(f"<p>best epoch {res['best_epoch']} of {res['epochs_run']}; "
                         f"{res.get('wall_seconds', res['train_seconds']) / 60:.1f} wall-clock minutes</p>")
            names = list(res["test"])
            rows = [("validation (best epoch)", res["valid"]), ("test", res["test"]),
                    ("popularity (test)", res["popularity"]["test"])]
            parts.append("<table><tr><th></th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>")
            for name, values in rows:
                parts.append(f"<tr><td>{esc(name)}</td>"
                             + "".join(f"<td>{values[n]:.4f}</td>" if n in values else "<td></td>" for n in names)
                             + "</tr>")
            parts.append("</table>")
        config_text = yaml.safe_dump(log.config, sort_keys=False) if log.config else "(no config.yaml)"
        parts.append(f"<details><summary>full config</summary><pre>{esc(config_text)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

