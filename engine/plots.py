"""Figures as PNGs a person can read (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .metrics import PHASES  # noqa: E402

# Light grey = not represented, blue = dedicated dimension, red = superposition (the paper's palette);
# black = diverged (no phase: training blew up there).
PHASE_COLORS = ("#d9d9d9", "#3b75af", "#c44e52", "#000000")


def _phase_panel(ax, density, rel_importance, phases, title):
    cmap = ListedColormap(PHASE_COLORS)
    # phases is (len(density), len(rel_importance)); x = density, y = relative importance.
    ax.pcolormesh(_edges(density), _edges(rel_importance), np.asarray(phases).T, cmap=cmap, vmin=-0.5,
                  vmax=len(PHASES) - 0.5, shading="flat")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("feature density (1 - S)")
    ax.set_ylabel("relative importance of the extra feature")
    ax.set_title(title)


def _edges(centres):
    """Cell edges for log-spaced centres (geometric midpoints)."""
    c = np.log10(np.asarray(centres, float))
    if len(c) == 1:
        return 10 ** np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return 10 ** np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def phase_diagram(path: Path, density, rel_importance, empirical, theory, title: str, agreement: float,
                  trained_label: str = "trained models") -> None:
    """Empirical and analytic phase maps side by side, same axes, one legend for the three phases."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharex=True, sharey=True, constrained_layout=True)
    _phase_panel(axes[0], density, rel_importance, empirical, trained_label)
    _phase_panel(axes[1], density, rel_importance, theory, "analytic theory")
    shown = set(np.unique(empirical)) | set(np.unique(theory)) | {0, 1, 2}  # "diverged" only when present
    handles = [Patch(color=c, label=p) for k, (c, p) in enumerate(zip(PHASE_COLORS, PHASES)) if k in shown]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"{title} — agreement {agreement:.1%} of grid cells" if np.isfinite(agreement)
                 else f"{title} — every cell diverged")
    save(fig, path, dpi=120)


def save(fig, path: Path, dpi: int = 130) -> None:
    """Write ``fig`` as a PNG at ``path`` (parents created; atomically, like every run file) and free it."""
    from .store import write_with
    try:
        write_with(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def feature_arrows(ax, W, colors, lim: float, lw: float = 2.0) -> None:
    """Columns of a 2-D embedding W (2, n) as arrows from the origin, colors (n,), over the unit
    circle, on square axes [-lim, lim] without ticks (the paper's geometry panels). Feature 0 is
    drawn last, on top."""
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls=":", color="0.7"))
    for i in reversed(range(W.shape[1])):
        ax.annotate("", xy=(W[0, i], W[1, i]), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=colors[i], lw=lw, shrinkA=0, shrinkB=0))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def fraction_line(ax, value: float, label: str, **kw) -> None:
    """A dashed horizontal line at ``value`` labelled at the right edge of the axes."""
    ax.axhline(value, color="0.45", lw=0.8, ls="--", zorder=0, **kw)
    ax.annotate(label, xy=(1.0, value), xycoords=("axes fraction", "data"), xytext=(4, 0),
                textcoords="offset points", va="center", fontsize=8, color="0.3")
