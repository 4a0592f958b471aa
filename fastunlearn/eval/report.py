"""``report.html``: one self-contained page a person reads after an unlearning run.

Everything is embedded (PNG as base64 ``data:`` URIs, CSS inline), so the file can be mailed or archived
alone and opens without network access. Sections, top to bottom:

1. the headline: what was forgotten, from which model, by which method, how long it took, on what device;
2. before/after samples for every class side by side (the same seeded noise before and after, so each
   "after" image is the same draw as the "before" image above it); forgotten classes are flagged;
3. the metrics table, before → after, with the direction that is good for each metric and a coloured
   verdict (green: moved the right way, red: the wrong way, grey: unchanged). Directions: forget
   accuracy ↓, retain accuracy ↑, FID/KID ↓, membership-inference AUC → 0.5 (judged by |AUC − 0.5|);
4. the training curves (losses, constraint, λ) from the per-step history, as one matplotlib PNG;
5. the full configuration.

Metric dicts are those of :func:`fastunlearn.api.evaluate` (``forget_accuracy``, ``retain_accuracy`` or
``forget_share``, ``detail``), optionally extended with ``fid`` (:func:`fastunlearn.eval.fid.per_class_fid`),
``mia`` (:func:`fastunlearn.eval.mia.membership_auc`) and ``perf`` (:class:`fastunlearn.eval.perf.Measure`).
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

#: History keys that are bookkeeping, not curves.
_NOT_CURVES = {"step", "elapsed_s", "steps_per_s", "finite", "skipped", "skipped_total"}
#: Preferred curve order and titles; other numeric keys follow in their own order.
_CURVES = {"loss_forget": "forget loss L_f (inner, constrained)", "loss_retain": "retain loss L_r (outer objective)",
           "q_hat": "constraint q̂", "lambda": "λ (bi-level multiplier)", "grad_norm": "gradient norm"}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:30px 0 10px;border-bottom:1px solid #d9dce3;padding-bottom:6px}
.sub{color:#5a6272;margin:0 0 16px;font-size:14px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;min-width:118px}
.card .k{font-size:12px;color:#5a6272;text-transform:uppercase;letter-spacing:.04em}.card .v{font-size:19px;font-weight:600;margin-top:2px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e8;border-radius:8px;font-size:14px}
th,td{padding:6px 12px;text-align:left;border-bottom:1px solid #eceef2}th{background:#f0f2f5;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#137a3a;font-weight:600}.bad{color:#b42318;font-weight:600}.same{color:#6b7280}
.want{color:#5a6272;text-align:center}
.grid td{vertical-align:middle;padding:4px 10px}.grid img{image-rendering:pixelated;display:block}
.tag{display:inline-block;background:#b42318;color:#fff;border-radius:4px;font-size:11px;padding:1px 6px;margin-left:6px}
tr.forgot{background:#fff4f2}.cls{font-size:18px;font-weight:600;white-space:nowrap}
pre{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px;font-size:12.5px;overflow:auto}
.note{color:#5a6272;font-size:13px;margin:6px 0}
img.plot{max-width:100%;background:#fff;border:1px solid #dde1e8;border-radius:8px}
"""


def _png_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _strip(images: torch.Tensor, scale: int = 3, gap: int = 2, n: int = 8) -> Image.Image:
    """A horizontal strip of up to ``n`` images (``[N, 1|3, H, W]`` in [-1, 1]), nearest-neighbour upscaled."""
    x = ((images[:n].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    arr = x.permute(0, 2, 3, 1).numpy()
    h, w = arr.shape[1] * scale, arr.shape[2] * scale
    canvas = Image.new("RGB", (max(1, len(arr) * (w + gap) - gap), h), (255, 255, 255))
    for i, a in enumerate(arr):
        canvas.paste(Image.fromarray(a).resize((w, h), Image.NEAREST), (i * (w + gap), 0))
    return canvas


def _get(d: Mapping[str, Any] | None, path: str) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        if part in cur:
            cur = cur[part]
        elif part.isdigit() and int(part) in cur:  # in-memory dicts have int class keys, JSON has str
            cur = cur[int(part)]
        else:
            return None
    return cur


def _rows(before: Mapping[str, Any], after: Mapping[str, Any], forget_classes: Sequence[int]) -> list[tuple]:
    """(label, before, after, direction, kind, n) for every metric present in either dict."""
    rows: list[tuple] = []

    def add(label: str, path: str, direction: str, kind: str, n: str = "") -> None:
        b, a = _get(before, path), _get(after, path)
        if isinstance(b, (int, float)) or isinstance(a, (int, float)):
            rows.append((label, b, a, direction, kind, n))

    det = before.get("detail") or after.get("detail") or {}
    per = f"{det.get('n_per_class', '?')} / class" if det.get("n_per_class") else ""
    add("forget accuracy", "forget_accuracy", "down", "pct", per)
    add("retain accuracy", "retain_accuracy", "up", "pct", per)
    add("forget-class share (unconditional)", "forget_share", "down", "pct", str(det.get("n_samples", "")))
    fid = before.get("fid") or after.get("fid") or {}
    if fid:
        o = fid.get("overall", {})
        n = f"{o.get('n_real', '?')} real / {o.get('n_fake', '?')} gen"
        add("retain FID (judge features)", "fid.overall.fid", "down", "num", n)
        add("retain KID (judge features)", "fid.overall.kid_mean", "down", "num", n)
    mia = before.get("mia") or after.get("mia") or {}
    if mia:
        add("membership-inference AUC (forget set)", "mia.auc", "half", "num3",
            f"{mia.get('n_members', '?')} members / {mia.get('n_non_members', '?')} held out"
            + (f", SE ±{mia['auc_se']:.2f}" if isinstance(mia.get("auc_se"), float) else ""))
    return rows


def _fmt(v: Any, kind: str) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    return {"pct": f"{v:.1%}", "num3": f"{v:.3f}"}.get(kind, f"{v:,.2f}")


def _verdict(b: Any, a: Any, direction: str) -> tuple[str, str]:
    """(css class, symbol) for the change ``b → a`` judged against ``direction``."""
    if not isinstance(b, (int, float)) or not isinstance(a, (int, float)):
        return "same", ""
    if direction == "half":
        gain = abs(b - 0.5) - abs(a - 0.5)
    else:
        gain = (b - a) if direction == "down" else (a - b)
    if abs(a - b) < 1e-9 or abs(gain) < 1e-9:
        return "same", "="
    arrow = "▲" if a > b else "▼"
    return ("good", arrow) if gain > 0 else ("bad", arrow)


def _table(rows: list[tuple]) -> str:
    want = {"down": "↓ lower", "up": "↑ higher", "half": "→ 0.5"}
    out = ["<table><tr><th>metric</th><th>want</th><th>before</th><th>after</th><th>change</th><th>samples</th></tr>"]
    for label, b, a, direction, kind, n in rows:
        css, sym = _verdict(b, a, direction)
        if isinstance(b, (int, float)) and isinstance(a, (int, float)):
            delta = (f"{(a - b) * 100:+.1f} pts" if kind == "pct" else
                     f"{a - b:+.3f}" if kind == "num3" else f"{a - b:+,.2f}")
        else:
            delta = ""
        out.append(f"<tr><td>{html.escape(label)}</td><td class='want'>{want[direction]}</td>"
                   f"<td class='num'>{_fmt(b, kind)}</td><td class='num'>{_fmt(a, kind)}</td>"
                   f"<td class='num {css}'>{sym} {delta}</td><td class='num'>{html.escape(n)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _per_class_table(before: Mapping[str, Any], after: Mapping[str, Any], forget: Sequence[int]) -> str:
    """One row per class: judged accuracy before/after and, for retained classes, FID before/after."""
    det = before.get("detail") or after.get("detail") or {}
    classes = list(det.get("classes", []))
    if not classes:
        return ""
    fid = before.get("fid") or after.get("fid") or {}
    out = ["<table><tr><th>class</th><th>accuracy before</th><th>after</th><th>change</th>"
           "<th>FID before</th><th>after</th><th>change</th><th>FID samples (real / gen)</th></tr>"]
    for c in classes:
        forgotten = int(c) in forget
        cells = []
        for path, kind, direction in ((f"detail.accuracy_by_class.{c}", "pct", "down" if forgotten else "up"),
                                      (f"fid.by_class.{c}.fid", "num", "down")):
            b, a = _get(before, path), _get(after, path)
            css, sym = _verdict(b, a, direction)
            delta = "" if not (isinstance(a, (int, float)) and isinstance(b, (int, float))) else (
                f"{(a - b) * 100:+.1f} pts" if kind == "pct" else f"{a - b:+,.2f}")
            cells.append(f"<td class='num'>{_fmt(b, kind)}</td><td class='num'>{_fmt(a, kind)}</td>"
                         f"<td class='num {css}'>{sym} {delta}</td>")
        n = _get(before, f"fid.by_class.{c}") or _get(after, f"fid.by_class.{c}") or {}
        count = f"{n['n_real']} / {n['n_fake']}" if n else ("forgotten: no FID" if forgotten else "–")
        tag = "<span class='tag'>forgotten</span>" if forgotten else ""
        out.append(f"<tr class='{'forgot' if forgotten else ''}'><td>{html.escape(str(c))}{tag}</td>{''.join(cells)}"
                   f"<td class='num'>{count}</td></tr>")
    out.append("</table>")
    note = (f"<p class='note'>Accuracy on {det.get('n_per_class', '?')} generations per class; "
            "the forgotten class should fall, the others stay.</p>")
    return note + "\n".join(out)


def _grids(before: Mapping[Any, torch.Tensor], after: Mapping[Any, torch.Tensor], forget: Sequence[int]) -> str:
    out = ["<table class='grid'><tr><th>class</th><th>before unlearning</th><th>after unlearning</th></tr>"]
    for key in before:
        flag = _is_forgotten(key, forget)
        tag = "<span class='tag'>forgotten</span>" if flag else ""
        imgs_after = after.get(key)
        cell_after = (f"<img alt='class {html.escape(str(key))} after' src='{_png_uri(_strip(imgs_after))}'>"
                      if imgs_after is not None else "–")
        out.append(f"<tr class='{'forgot' if flag else ''}'><td class='cls'>{html.escape(str(key))}{tag}</td>"
                   f"<td><img alt='class {html.escape(str(key))} before' src='{_png_uri(_strip(before[key]))}'></td>"
                   f"<td>{cell_after}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _is_forgotten(key: Any, forget: Sequence[int]) -> bool:
    try:
        return int(key) in forget
    except (TypeError, ValueError):
        return False


def _curves(history: Sequence[Mapping[str, Any]]) -> Image.Image | None:
    """Training curves (one panel per numeric history key) as a PIL image, or None without history."""
    if not history:
        return None
    keys = [k for k in _CURVES if any(isinstance(h.get(k), (int, float)) for h in history)]
    keys += [k for k in history[0] if k not in _CURVES and k not in _NOT_CURVES
             and isinstance(history[0].get(k), (int, float))]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(keys) if len(keys) <= 4 else 3
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), dpi=110, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(h.get("step", i + 1), h[key]) for i, h in enumerate(history) if isinstance(h.get(key), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3, lw=1.6)
        ax.set_title(_CURVES.get(key, key), fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _cards(headline: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    cards = []
    for key, label in (("forget_accuracy", "forget accuracy"), ("retain_accuracy", "retain accuracy"),
                       ("forget_share", "forget-class share")):
        if isinstance(before.get(key), (int, float)) and isinstance(after.get(key), (int, float)):
            cards.append((label, f"{before[key]:.0%} → {after[key]:.0%}"))
    if isinstance(_get(before, "mia.auc"), float) and isinstance(_get(after, "mia.auc"), float):
        cards.append(("MIA AUC", f"{before['mia']['auc']:.2f} → {after['mia']['auc']:.2f}"))
    for key in ("method", "steps", "wall time", "device"):
        if headline.get(key) is not None:
            cards.append((key, str(headline[key])))
    return "<div class='cards'>" + "".join(
        f"<div class='card'><div class='k'>{html.escape(k)}</div><div class='v'>{html.escape(v)}</div></div>"
        for k, v in cards) + "</div>"


def render_report(*, config: Mapping[str, Any], metrics_before: Mapping[str, Any] | None,
                  metrics_after: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]],
                  images_before: Mapping[Any, torch.Tensor], images_after: Mapping[Any, torch.Tensor],
                  headline: Mapping[str, Any]) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    before, after = dict(metrics_before or {}), dict(metrics_after or {})
    forget = [int(c) for c in headline.get("forget_classes", [])]
    title = f"Forgot {headline.get('forgotten', '?')}"
    sub = " · ".join(str(x) for x in (
        f"model {headline['model']}" if headline.get("model") else None,
        f"method {headline['method']}" if headline.get("method") else None,
        headline.get("finished"),
    ) if x)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><main>",
             f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(sub)}</p>", _cards(headline, before, after)]
    if images_before:
        parts += ["<h2>Samples before and after</h2>",
                  "<p class='note'>The same seeded noise before and after: each image on the right is the same "
                  "draw as the one to its left.</p>", _grids(images_before, images_after, forget)]
    rows = _rows(before, after, forget)
    if rows:
        parts += ["<h2>Metrics</h2>", "<p class='note'>Green: moved the right way; red: the wrong way. Accuracy is "
                  "the judge classifier's on class-conditional generations; FID/KID compare generations of the "
                  "retained classes with held-out real images in the judge's feature space; the membership AUC is "
                  "judged by its distance to 0.5.</p>", _table(rows)]
        per_class = _per_class_table(before, after, forget)
        if per_class:
            parts += ["<h2>Per class</h2>", per_class]
    else:
        parts += ["<h2>Metrics</h2><p class='note'>Evaluation was skipped.</p>"]
    plot = _curves(history)
    if plot is not None:
        parts += ["<h2>Training curves</h2>", f"<img class='plot' alt='training curves' src='{_png_uri(plot)}'>"]
    parts += ["<h2>Configuration</h2>",
              f"<pre>{html.escape(json.dumps(dict(config), indent=2, default=str, ensure_ascii=False))}</pre>",
              "</main></body></html>"]
    return "\n".join(parts)


def write_report(out_dir: str | Path, *, config: Mapping[str, Any], metrics_before: Mapping[str, Any] | None,
                 metrics_after: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]],
                 images_before: Mapping[Any, torch.Tensor], images_after: Mapping[Any, torch.Tensor],
                 headline: Mapping[str, Any]) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    Args:
        config: the run's full configuration (e.g. ``UnlearnConfig.to_dict()`` or ``yaml.safe_load(config.yaml)``).
        metrics_before / metrics_after: evaluation dicts (see the module docstring); None when skipped.
        history: per-step metric dicts (the lines of ``metrics.jsonl``: ``step``, ``loss_forget``,
            ``loss_retain``, ``lambda``, ``q_hat``, ...).
        images_before / images_after: ``{class: Tensor[N, C, H, W] in [-1, 1]}``, first 8 shown per class.
        headline: ``forgotten`` (text), ``forget_classes`` (list of int, flags grid rows and directions of
            per-class rows), ``model``, ``method``, ``steps``, ``wall time``, ``device``, ``finished``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(render_report(config=config, metrics_before=metrics_before, metrics_after=metrics_after,
                                  history=history, images_before=images_before, images_after=images_after,
                                  headline=headline), encoding="utf-8")
    return path


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The per-step dicts of a ``metrics.jsonl`` file (empty list when it does not exist)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


__all__ = ["write_report", "render_report", "read_history"]
