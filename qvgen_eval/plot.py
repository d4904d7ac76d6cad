"""Error-vs-timestep plot drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

SERIES_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: dict[str, list[tuple[float, float]]],
    y_range: tuple[float, float],
    t_max: float,
) -> None:
    x0, y0, x1, y1 = box
    lo, hi = y_range  # log10 bounds
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0, y0 - 28), title, fill=(0, 0, 0))

    def px(t: float, e: float) -> tuple[float, float]:
        # Time runs left to right as the sampler runs: t = t_max (pure noise) on the left.
        fx = (t_max - t) / t_max if t_max > 0 else 0.0
        fy = (math.log10(max(e, 1e-12)) - lo) / (hi - lo)
        return x0 + fx * (x1 - x0), y1 - min(max(fy, 0.0), 1.0) * (y1 - y0)

    for k in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = math.log10(m) + k
            if lo <= v <= hi:
                y = px(t_max, 10**v)[1]
                draw.line((x0, y, x1, y), fill=(225, 225, 225) if m > 1 else (190, 190, 190))
                draw.text((x0 - 44, y - 6), f"{m}e{k}", fill=(60, 60, 60))
    for t in range(0, int(t_max) + 1, 200):
        x = px(t, 1.0)[0]
        draw.line((x, y1, x, y1 + 4), fill=(0, 0, 0))
        draw.text((x - 10, y1 + 6), str(t), fill=(60, 60, 60))
    draw.text(((x0 + x1) // 2 - 50, y1 + 20), "timestep (sampling ->)", fill=(0, 0, 0))
    for i, (name, pts) in enumerate(series.items()):
        col = SERIES_COLORS[i % len(SERIES_COLORS)]
        xy = [px(t, e) for t, e in pts]
        if len(xy) > 1:
            draw.line(xy, fill=col, width=2)
        for x, y in xy:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=col)


def plot_error_vs_timestep(
    panels: dict[str, dict[str, list[tuple[float, float]]]], path: str | Path, t_max: float = 1000.0
) -> Path:
    """One panel per entry of ``panels`` (title -> {model: [(timestep, rel_error)]}), log-scale y."""
    if not panels:
        raise ValueError("plot_error_vs_timestep needs at least one panel")
    errs = [e for series in panels.values() for pts in series.values() for _, e in pts if e > 0]
    if errs:
        lo, hi = math.floor(math.log10(min(errs)) * 2) / 2, math.ceil(math.log10(max(errs)) * 2) / 2
        if hi - lo < 1:
            hi = lo + 1
    else:
        lo, hi = -3.0, 0.0
    pw, ph, ml, mt = 420, 300, 60, 60
    img = Image.new("RGB", (len(panels) * (pw + ml + 20) + 20, ph + mt + 80), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    names: list[str] = []
    for series in panels.values():
        names += [n for n in series if n not in names]
    for j, (title, series) in enumerate(panels.items()):
        x0 = ml + j * (pw + ml + 20)
        ordered = {n: series[n] for n in names if n in series}
        _panel(draw, (x0, mt, x0 + pw, mt + ph), title + "  (relative error, log scale)", ordered, (lo, hi), t_max)
    for i, n in enumerate(names):
        col = SERIES_COLORS[i % len(SERIES_COLORS)]
        x = ml + i * 140
        draw.rectangle((x, 10, x + 14, 20), fill=col)
        draw.text((x + 18, 9), n, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
