"""A small line-chart writer on Pillow (the project's one imaging dependency)."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    start = math.floor(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        if v >= lo - step * 1e-9:
            out.append(round(v, 10))
        v += step
    return out


def line_chart(path: str | Path, series: list[tuple[str, list[float], list[float]]], title: str, xlabel: str,
               ylabel: str, size=(900, 560)) -> Path:
    """Write a PNG with one line per (label, xs, ys) series, axes with ticks, and a legend."""
    w, h = size
    left, right, top, bottom = 80, 220, 50, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if y is not None and math.isfinite(y)]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 0.05
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _ticks(y0, y1):
        _, yy = px(x0, t)
        d.line([left - 4, yy, left, yy], fill="black")
        d.line([left, yy, w - right, yy], fill=(230, 230, 230))
        d.text((8, yy - 6), f"{t:.3g}", fill="black", font=font)
    for t in _ticks(x0, x1):
        xx, _ = px(t, y0)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 6, h - bottom + 8), f"{t:g}", fill="black", font=font)
    for i, (label, sx, sy) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        pts = [px(x, y) for x, y in zip(sx, sy) if y is not None and math.isfinite(y)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        ly = top + 10 + 18 * i
        d.line([w - right + 10, ly + 6, w - right + 35, ly + 6], fill=color, width=3)
        d.text((w - right + 40, ly), label, fill="black", font=font)
    d.text((left, 15), title, fill="black", font=font)
    d.text(((w - right + left) // 2 - 30, h - 25), xlabel, fill="black", font=font)
    d.text((8, top - 30), ylabel, fill="black", font=font)
    path = Path(path)
    img.save(path)
    return path
