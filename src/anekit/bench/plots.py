"""PNG charts of bench records (matplotlib, Agg backend: no display needed): the kinds of chart, which
an experiment's `plot` draws, and `plot_record`, which calls it."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _maybe_logy(ax) -> None:
    """Log y when CPU-emulated and predicted engine throughputs are orders of magnitude apart."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
    ys += [pt.get_height() for pt in ax.patches if pt.get_height() > 0]
    if ys and max(ys) / min(ys) > 20:
        ax.set_yscale("log")


def _measured_label(rec: dict) -> str:
    return (
        "measured (engine)"
        if rec["measurement"] == "engine"
        else f"measured ({rec['backend']}, CPU emulation)"
    )


def _xy(points, key, value):
    pts = sorted(points, key=lambda p: p["params"][key])
    return [p["params"][key] for p in pts], [value(p) for p in pts]


def line_plot(rec: dict, key: str, xlabel: str, select, path: Path, title: str, logx: bool = True) -> Path:
    plt = _plt()
    pts = [p for p in rec["points"] if select(p)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x, y = _xy(pts, key, lambda p: p["tflops"])
    ax.plot(x, y, "o-", label=_measured_label(rec))
    if all(p["predicted"] for p in pts):
        x, yp = _xy(pts, key, lambda p: p["predicted"]["tflops"])
        ax.plot(x, yp, "s--", label=f"cost model, {rec['cost_model']['chip']} (predicted)")
    pub = [p for p in pts if p["published"]]
    if pub:
        ax.plot(
            [p["params"][key] for p in pub],
            [p["published"]["value"] for p in pub],
            "k^",
            label=f"published, {rec['cost_model']['chip']}",
        )
    if logx:
        ax.set_xscale("log", base=2)
    _maybe_logy(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("TFLOPS")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_record(rec: dict, out_dir: Path) -> list[Path]:
    """The charts for one record (none for skipped/failed records or experiments without a chart)."""
    from . import EXPERIMENTS

    if rec["status"] != "ok" or not rec["points"]:
        return []
    plot = EXPERIMENTS[rec["experiment"]].plot
    if plot is None:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return plot(rec, out_dir)


def bars(rec: dict, path: Path) -> Path:
    plt = _plt()
    pts = rec["points"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(pts)), 4.5))
    xs = range(len(pts))
    ax.bar([x - 0.2 for x in xs], [p["tflops"] for p in pts], width=0.4, label=_measured_label(rec))
    if all(p["predicted"] for p in pts):
        ax.bar(
            [x + 0.2 for x in xs],
            [p["predicted"]["tflops"] for p in pts],
            width=0.4,
            label=f"cost model, {rec['cost_model']['chip']} (predicted)",
        )
    _maybe_logy(ax)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([p["label"] for p in pts], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("TFLOPS")
    ax.set_title(rec["experiment"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def histogram(rec: dict, path: Path) -> Path:
    plt = _plt()
    p = rec["points"][0]
    samples = p["timing"].get("samples_ms") or [p["timing"]["median_ms"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.hist(samples, bins=40, alpha=0.8, label=_measured_label(rec))
    s = rec["summary"]
    for q in ("p50_ms", "p90_ms", "p99_ms"):
        if q in s:
            ax.axvline(s[q], ls="--", lw=1, color="k")
            ax.text(s[q], ax.get_ylim()[1] * 0.9, q[:3], fontsize=8)
    if p["predicted"]:
        ax.axvline(
            p["predicted"]["time_ms"],
            color="r",
            lw=1.5,
            label=f"cost model, {rec['cost_model']['chip']} (predicted)",
        )
    ax.set_xlabel("latency per evaluation (ms)")
    ax.set_ylabel("count")
    ax.set_title(f"Dispatch latency: {p['label']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
