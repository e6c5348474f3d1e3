"""The comparison's pictures: kNN curves over seeds, and the views of the same images under IDAA and pixel FGSM."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from idaa_transforms._grids import save_image_rows
from idaa_transforms.experiments.schedule import LABELS, VARIANTS, RunRecord

__all__ = ["write_views_grid", "write_knn_plot"]


def write_views_grid(rows: dict[str, Tensor], path: Path, pixel_eps: float, with_fgsm: bool = True) -> None:
    """x, G(x), R(x), IDAA x_adv and its difference, and (``with_fgsm``) pixel FGSM x_adv and its difference, with
    one gain around grey for the differences."""
    x = rows["x"]
    diffs = {"idaa": rows["idaa"] - x} | ({"fgsm": rows["fgsm"] - x} if with_fgsm else {})
    gain = 0.5 / float(max(d.abs().amax() for d in diffs.values()).clamp_min(1e-8))
    picture = [("x", x), ("G(x)", rows["reconstruction"]), ("R(x) x4", rows["residual"] * 4 + 0.5),
               ("IDAA x_adv", rows["idaa"]), (f"IDAA diff x{gain:.0f}", diffs["idaa"] * gain + 0.5)]
    title = "Same training images: x, its VAE decomposition and IDAA's view (latent eps)"
    if with_fgsm:
        picture += [("FGSM x_adv", rows["fgsm"]), (f"FGSM diff x{gain:.0f}", diffs["fgsm"] * gain + 0.5)]
        title = (f"Same training images: IDAA (latent eps) vs pixel FGSM (eps = {pixel_eps:.4f}, matched mean L2); "
                 f"differences share one gain around grey")
    save_image_rows(picture, path, title=title)


def write_knn_plot(equal_epochs: dict[str, list[RunRecord]], equal_time: dict[str, list[RunRecord]], path: Path,
                   epochs: int) -> None:
    """kNN accuracy per epoch (left, equal-epoch runs) and against training seconds (right, equal-time runs):
    the mean over seeds with a min-max band."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from idaa_transforms._files import atomic_write_bytes

    with_time = any(equal_time.values())  # without equal-time runs, no empty panel for them
    fig, axes = plt.subplots(1, 2 if with_time else 1, figsize=(11 if with_time else 6, 4), squeeze=False)
    left, right = axes[0][0], axes[0][-1] if with_time else None
    for i, variant in enumerate(VARIANTS):
        _plot_mean_band(left, equal_epochs.get(variant, []), False, f"C{i}", LABELS[variant])
        if right is not None:
            _plot_mean_band(right, equal_time.get(variant, []), True, f"C{i}", LABELS[variant])
    left.xaxis.get_major_locator().set_params(integer=True)
    left.set(xlabel="epoch", ylabel="kNN accuracy (%)", title=f"Equal epochs ({epochs})")
    if right is not None:
        right.set(xlabel="training seconds (mean over seeds)", ylabel="kNN accuracy (%)",
                  title="Equal wall-clock time")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Mean over seeds, band: min-max over seeds", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _plot_mean_band(ax, runs: Sequence[RunRecord], use_time: bool, color: str, label: str) -> None:
    curves = [[p for p in r.curve if p.knn_acc is not None] for r in runs]
    curves = [c for c in curves if c]
    if not curves:
        return
    length = min(len(c) for c in curves)
    xs = [sum(c[j].seconds if use_time else c[j].epoch for c in curves) / len(curves) for j in range(length)]
    ys = [[c[j].knn_acc for c in curves] for j in range(length)]
    ax.plot(xs, [sum(v) / len(v) for v in ys], color=color, marker="o", ms=3,
            label=f"{label} ({len(curves)} seeds, {runs[0].epochs} ep.)")
    ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], color=color, alpha=0.15)
