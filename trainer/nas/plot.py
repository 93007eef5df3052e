"""The accuracy/latency plot of a search (matplotlib Agg canvas, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainer.nas.pareto import pareto_front
from trainer.nas.search import SearchResult


def pareto_plot(results: Sequence[SearchResult], path: str | Path, device: str | None = None) -> Path:
    """Write a PNG: OKS AP against median batch-1 latency for every result, the Pareto front drawn as a step
    line with each of its points labelled by its choice. ``device`` (default: the results' own) titles it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no search results to plot")
    device = device or ", ".join(sorted({r.device for r in results if r.device})) or "unknown device"
    front = pareto_front(results)
    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(
        [r.latency_ms_median for r in results],
        [r.ap for r in results],
        s=18,
        color="0.65",
        label=f"all ({len(results)})",
    )
    ax.step(
        [r.latency_ms_median for r in front],
        [r.ap for r in front],
        where="post",
        color="tab:red",
        marker="o",
        label=f"Pareto front ({len(front)})",
    )
    labels: dict[tuple[float, float], list[str]] = {}  # tied points share one label
    for r in front:
        labels.setdefault((r.latency_ms_median, r.ap), []).append(r.choice.key())
    for xy, keys in labels.items():
        ax.annotate(
            "\n".join(keys),
            xy,
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
            color="tab:red",
        )
    ax.set_xlabel("latency, median at batch 1 (ms), forward + postprocess")
    ax.set_ylabel("OKS AP (all categories)")
    ax.set_title(f"Accuracy vs latency on {device}")
    ax.grid(True, color="0.9")
    ax.legend(loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
