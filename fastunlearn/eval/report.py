"""``report.html``: one self-contained page a person reads after an unlearning run.

Everything is embedded (PNG as base64 ``data:`` URIs, CSS inline), so the file can be mailed or archived
alone and opens without network access. Sections, top to bottom:

1. the headline: what was forgotten, from which model, by which method, how long it took, on what device;
2. before/after samples for every class side by side (the same seeded noise before and after, so each
   "after" image is the same draw as the "before" image above it); forgotten classes are flagged;
3. the metrics table, before → after, each judge's accuracies with their 95 % Wilson interval and sample
   count, with the direction that is good for each metric and a coloured verdict (green: moved the right
   way, red: the wrong way) only where a test at 95 % calls the change significant (grey "n.s." within the
   noise, "no test" where none exists, as for FID). Directions: forget accuracy ↓, retain accuracy ↑,
   FID/KID ↓, membership-inference AUC → 0.5 (judged by |AUC − 0.5|); per-class FID is never coloured;
4. the training curves (losses, constraint, λ) from the per-step history, as one matplotlib PNG;
5. the full configuration.

A text-to-image evaluation (``kind`` ``"t2i"``, :func:`fastunlearn.eval.t2i.evaluate_t2i`) is shown per prompt:
the samples one row per prompt (its text, before | after, the erased prompts and their paraphrases flagged),
the headline adds the paraphrases' share of the forgotten class, the NudeNet nudity rate and the CLIP scores
(CLIP: coloured when the two means differ by more than 1.96 standard errors), and a per-prompt table replaces
the per-class one. Prompts are user text: every one is HTML-escaped.

An image-to-image evaluation (``kind`` ``"i2i"``, :func:`fastunlearn.eval.i2i.evaluate_i2i`) shows per class the
masked held-out inputs beside their completions before and after, the encoder's t-SNE before and after
(:func:`fastunlearn.eval.i2i.tsne_image`), and adds to the metrics the forget side's FID/KID (want ↑) and the
completions' cosine similarity to their originals per side (forget ↓, retain ↑; coloured like CLIP scores).

Metric dicts are those of :func:`fastunlearn.eval.evaluate.evaluate` (``forget_accuracy``, ``retain_accuracy``
or ``forget_share``, the second judge's ``*_svm``, ``n``, ``judges``, ``detail``), optionally extended with ``fid`` (:func:`fastunlearn.eval.fid.per_class_fid`),
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

import math

import torch
from PIL import Image

from fastunlearn.eval.stats import Z95, proportion_change_significant, wilson_interval

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
.ci{color:#5a6272;font-size:12px}.ns{color:#8a909c;font-size:11px;font-weight:400}
.grid td{vertical-align:middle;padding:4px 10px}.grid img{image-rendering:pixelated;display:block}
.tag{display:inline-block;background:#b42318;color:#fff;border-radius:4px;font-size:11px;padding:1px 6px;margin-left:6px}
tr.forgot{background:#fff4f2}.cls{font-size:18px;font-weight:600;white-space:nowrap}
.prompt{font-size:14px;font-weight:600;max-width:320px;overflow-wrap:anywhere}
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


def _mean_change_significant(before: Mapping[str, Any], after: Mapping[str, Any], key: str) -> bool | None:
    """Whether a mean metric's change is significant at 95 %: |a − b| > z·√(se_b² + se_a²), each standard error read
    back from its normal interval (``ci95``); None when either figure or interval is missing."""
    b, a = before.get(key), after.get(key)
    cb, ca = (before.get("ci95") or {}).get(key), (after.get("ci95") or {}).get(key)
    se_b = (cb[1] - cb[0]) / (2 * Z95) if cb else None
    se_a = (ca[1] - ca[0]) / (2 * Z95) if ca else None
    if all(_num(v) for v in (b, a, se_b, se_a)) and (se_b or se_a):
        return abs(a - b) > Z95 * math.sqrt(se_b * se_b + se_a * se_a)
    return None


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: Headline accuracy keys: (key, label, direction). ``_svm`` keys are the second judge's.
_RATES = (("forget_accuracy", "forget accuracy", "down"), ("retain_accuracy", "retain accuracy", "up"),
          ("forget_share", "forget-class share (unconditional)", "down"),
          ("paraphrase_forget_share", "paraphrases: forgotten-class share", "down"))
#: Text-to-image headline keys beyond the judges': (key, label, direction, kind).
_T2I_KEYS = (("nudity_rate", "nudity rate (forget prompts)", "down", "pct"),
             ("paraphrase_nudity_rate", "nudity rate (paraphrases)", "down", "pct"),
             ("clip_score_forget", "CLIP score (forget prompts)", "down", "num"),
             ("clip_score_retain", "CLIP score (retained prompts)", "up", "num"))


def _judge_label(metrics: Mapping[str, Any], suffix: str) -> str:
    ref = (metrics.get("judges") or {}).get(suffix)
    short = {"": "CNN", "svm": "SVM"}.get(suffix, suffix)
    return f"{short} ({ref})" if ref else short


def _rows(before: Mapping[str, Any], after: Mapping[str, Any], forget_classes: Sequence[int]) -> list[dict]:
    """One dict per metric present in either dict: ``label``, ``judge``, ``b``, ``a``, ``direction``, ``kind``,
    ``b_text`` / ``a_text`` (value with its ± or interval), ``n`` (sample count text) and ``significant``
    (True / False from a test, None when there is no test: never coloured)."""
    rows: list[dict] = []
    n_b, n_a = before.get("n") or {}, after.get("n") or {}
    det = before.get("detail") or after.get("detail") or {}
    suffixes = [""] + [s for s in (before.get("judges") or after.get("judges") or {}) if s]
    for suffix in suffixes:
        for base, label, direction in _RATES:
            key = f"{base}_{suffix}" if suffix else base
            b, a = before.get(key), after.get(key)
            if not (_num(b) or _num(a)):
                continue
            nb, na = n_b.get(key), n_a.get(key)
            if nb is None and na is None:  # a metrics dict without counts: derive them from the protocol
                nb = na = _count_from_detail(det, base, forget_classes)
            sig = (proportion_change_significant(b, nb, a, na) if _num(b) and _num(a) and nb and na else None)
            rows.append(dict(label=label, judge=_judge_label(before or after, suffix), b=b, a=a, direction=direction,
                             kind="pct", b_text=_rate_cell(b, nb), a_text=_rate_cell(a, na),
                             n=f"n={nb or na} generations" if (nb or na) else "",
                             significant=sig))
    rows += _t2i_rows(before, after)
    i2i = "i2i" in (before.get("kind"), after.get("kind"))
    rows += _fid_kid_rows(before, after, "fid", direction="down", made="gen", kid_subsets=True,
                          fid_label="retain FID (completions vs originals)" if i2i else "retain FID (CNN features)",
                          kid_label="retain KID (CNN features, unit-normalised)")
    if i2i:
        rows += _i2i_rows(before, after)
    mia = before.get("mia") or after.get("mia") or {}
    if mia:
        b, a = _get(before, "mia.auc"), _get(after, "mia.auc")
        seb, sea = _get(before, "mia.auc_se"), _get(after, "mia.auc_se")
        sig = None
        if all(_num(v) for v in (b, a, seb, sea)):
            sig = abs(abs(b - 0.5) - abs(a - 0.5)) > Z95 * math.sqrt(seb * seb + sea * sea)
        rows.append(dict(label="membership-inference AUC (forget set)", judge="loss-based", b=b, a=a,
                         direction="half", kind="num3", b_text=_pm(b, seb, 1, 3), a_text=_pm(a, sea, 1, 3),
                         n=f"{mia.get('n_members', '?')} members / {mia.get('n_non_members', '?')} held out",
                         significant=sig))
    return rows


def _t2i_rows(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict]:
    """The nudity rates (Wilson intervals, two-proportion test) and CLIP scores (mean with its ci95; a change
    is significant when |Δ| > 1.96 · √(se_b² + se_a²), se = half the interval / 1.96) of a t2i evaluation."""
    rows: list[dict] = []
    n_b, n_a = before.get("n") or {}, after.get("n") or {}
    clip = _get(before, "detail.clip.model") or _get(after, "detail.clip.model")
    for key, label, direction, kind in _T2I_KEYS:
        b, a = before.get(key), after.get(key)
        if not (_num(b) or _num(a)):
            continue
        nb, na = n_b.get(key), n_a.get(key)
        if kind == "pct":
            sig = proportion_change_significant(b, nb, a, na) if _num(b) and _num(a) and nb and na else None
            rows.append(dict(label=label, judge="NudeNet (exposed parts, score > 0.45)", b=b, a=a,
                             direction=direction, kind="pct", b_text=_rate_cell(b, nb), a_text=_rate_cell(a, na),
                             n=f"n={nb or na} generations" if (nb or na) else "", significant=sig))
            continue
        cb, ca = (before.get("ci95") or {}).get(key), (after.get("ci95") or {}).get(key)
        sig = _mean_change_significant(before, after, key)
        rows.append(dict(label=label, judge=f"CLIP ({clip})" if clip else "CLIP", b=b, a=a, direction=direction,
                         kind="num", b_text=_ci_cell(b, cb), a_text=_ci_cell(a, ca),
                         n=f"n={nb or na} generations" if (nb or na) else "", significant=sig))
    return rows


#: Image-to-image headline means: (key, label, direction).
_I2I_MEANS = (("cosine_forget", "cosine similarity, completion vs original (forget)", "down"),
              ("cosine_retain", "cosine similarity, completion vs original (retained)", "up"))


def _fid_kid_rows(before: Mapping[str, Any], after: Mapping[str, Any], key: str, *, direction: str, made: str,
                  kid_subsets: bool, fid_label: str, kid_label: str) -> list[dict]:
    """The FID row (no test) and the KID row (significant beyond twice the subsets' spread) of one side's
    ``key`` (``fid``: the retained classes; ``fid_forget``: the forget side of an image-to-image evaluation);
    ``made`` names the generated images in the row's count, ``kid_subsets`` adds the KID subset size to it."""
    fid = before.get(key) or after.get(key) or {}
    if not fid:
        return []
    judge = _judge_label(before or after, "")
    o = fid.get("overall", {})
    n = f"{o.get('n_real', '?')} real / {o.get('n_fake', '?')} {made}"
    b, a = _get(before, f"{key}.overall.fid"), _get(after, f"{key}.overall.fid")
    rows = [dict(label=fid_label, judge=judge, b=b, a=a, direction=direction, kind="num", b_text=_fmt(b, "num"),
                 a_text=_fmt(a, "num"), n=n, significant=None)]
    kb, ka = _get(before, f"{key}.overall.kid_mean"), _get(after, f"{key}.overall.kid_mean")
    sb, sa = _get(before, f"{key}.overall.kid_std"), _get(after, f"{key}.overall.kid_std")
    if _num(kb) or _num(ka):
        sig = None
        if all(_num(v) for v in (kb, ka, sb, sa)) and (sb or sa):
            sig = abs(ka - kb) > 2 * math.sqrt(sb * sb + sa * sa)
        if kid_subsets and o.get("kid_subset_size"):
            n += f", subsets of {o['kid_subset_size']}"
        rows.append(dict(label=kid_label, judge=judge, b=kb, a=ka, direction=direction, kind="num3",
                         b_text=_pm(kb, sb, 1, 3), a_text=_pm(ka, sa, 1, 3), n=n, significant=sig))
    return rows


def _i2i_rows(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict]:
    """The forget side's FID (no test) and KID (significant beyond twice the subsets' spread), want ↑, and the
    completions' mean cosine similarity to their originals per side (significant when |Δ| > 1.96 ·
    √(se_b² + se_a²), se = half the interval / 1.96), of an image-to-image evaluation."""
    judge = _judge_label(before or after, "")
    rows = _fid_kid_rows(before, after, "fid_forget", direction="up", made="completed", kid_subsets=False,
                         fid_label="forget FID (completions vs originals)",
                         kid_label="forget KID (completions vs originals)")
    n_b, n_a = before.get("n") or {}, after.get("n") or {}
    for key, label, direction in _I2I_MEANS:
        b, a = before.get(key), after.get(key)
        if not (_num(b) or _num(a)):
            continue
        cb, ca = (before.get("ci95") or {}).get(key), (after.get("ci95") or {}).get(key)
        sig = _mean_change_significant(before, after, key)
        rows.append(dict(label=label, judge=judge + " features", b=b, a=a, direction=direction, kind="num3",
                         b_text=_ci_cell(b, cb, 3), a_text=_ci_cell(a, ca, 3),
                         n=f"n={n_b.get(key) or n_a.get(key)} completions", significant=sig))
    return rows


def _ci_cell(v: Any, ci: Any, digits: int = 2) -> str:
    if not _num(v):
        return "–"
    text = f"{v:.{digits}f}"
    return text + (f" <span class='ci'>[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]</span>" if ci else "")


def _count_from_detail(det: Mapping[str, Any], base: str, forget_classes: Sequence[int]) -> int | None:
    if base == "forget_share":
        return det.get("n_samples")
    per, classes = det.get("n_per_class"), det.get("classes") or []
    if not per or not classes:
        return None
    forgotten = sum(1 for c in classes if int(c) in forget_classes)
    return per * (forgotten if base == "forget_accuracy" else len(classes) - forgotten) or None


def _pm(v: Any, err: Any, factor: float = 1.0, digits: int = 2) -> str:
    if not _num(v):
        return "–"
    text = f"{v * factor:,.{digits}f}"
    return text + (f" ± {err * factor:.{digits}f}" if _num(err) else "")


def _rate_cell(p: Any, n: int | None) -> str:
    if not _num(p):
        return "–"
    if not n:
        return f"{p:.1%}"
    lo, hi = wilson_interval(round(p * n), n)
    return f"{p:.1%} <span class='ci'>[{lo:.1%}, {hi:.1%}]</span>"


def _fmt(v: Any, kind: str) -> str:
    if not _num(v):
        return "–"
    return {"pct": f"{v:.1%}", "num3": f"{v:.3f}"}.get(kind, f"{v:,.2f}")


def _verdict(b: Any, a: Any, direction: str, significant: bool | None = True) -> tuple[str, str]:
    """(css class, symbol) for the change ``b → a`` judged against ``direction``; grey unless ``significant``
    (None: no test exists for this figure; False: within its sampling noise)."""
    if not _num(b) or not _num(a):
        return "same", ""
    if direction == "half":
        gain = abs(b - 0.5) - abs(a - 0.5)
    else:
        gain = (b - a) if direction == "down" else (a - b)
    if abs(a - b) < 1e-9 or abs(gain) < 1e-9:
        return "same", "="
    arrow = "▲" if a > b else "▼"
    if not significant:
        return "same", arrow
    return ("good", arrow) if gain > 0 else ("bad", arrow)


def _delta(b: Any, a: Any, kind: str) -> str:
    if not (_num(a) and _num(b)):
        return ""
    return f"{(a - b) * 100:+.1f} pts" if kind == "pct" else f"{a - b:+.3f}" if kind == "num3" else f"{a - b:+,.2f}"


def _table(rows: list[dict]) -> str:
    want = {"down": "↓ lower", "up": "↑ higher", "half": "→ 0.5"}
    out = ["<table><tr><th>metric</th><th>judge</th><th>want</th><th>before</th><th>after</th><th>change</th>"
           "<th>samples</th></tr>"]
    for r in rows:
        css, sym = _verdict(r["b"], r["a"], r["direction"], r["significant"])
        tag = {None: " <span class='ns'>no test</span>", False: " <span class='ns'>n.s.</span>"}.get(r["significant"], "")
        if not (_num(r["b"]) and _num(r["a"])):
            tag = ""
        out.append(f"<tr><td>{html.escape(r['label'])}</td><td>{html.escape(r['judge'])}</td>"
                   f"<td class='want'>{want[r['direction']]}</td>"
                   f"<td class='num'>{r['b_text']}</td><td class='num'>{r['a_text']}</td>"
                   f"<td class='num {css}'>{sym} {_delta(r['b'], r['a'], r['kind'])}{tag}</td>"
                   f"<td class='num'>{html.escape(r['n'])}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _per_class_table(before: Mapping[str, Any], after: Mapping[str, Any], forget: Sequence[int]) -> str:
    """One row per class: each judge's accuracy before/after (coloured only when a two-proportion test at 95 %
    calls the change significant) and, for retained classes, FID before/after (never coloured: per-class FID
    on a few dozen generations has no interval here and is biased at n < 128 features)."""
    det = before.get("detail") or after.get("detail") or {}
    classes = list(det.get("classes", []))
    if not classes:
        return ""
    per = det.get("n_per_class")
    others = [s for s in (before.get("judges") or after.get("judges") or {}) if s]
    head = "".join(f"<th>{html.escape(_judge_label(before or after, s).split(' ')[0])} accuracy before</th>"
                   "<th>after</th><th>change</th>" for s in ["", *others])
    out = [f"<table><tr><th>class</th>{head}<th>FID before</th><th>after</th><th>change</th>"
           "<th>FID samples (real / gen)</th></tr>"]
    for c in classes:
        forgotten = int(c) in forget
        cells = []
        paths = [f"detail.accuracy_by_class.{c}"] + [f"detail.also.{s}.accuracy_by_class.{c}" for s in others]
        for path in paths:
            b, a = _get(before, path), _get(after, path)
            sig = proportion_change_significant(b, per, a, per) if _num(b) and _num(a) and per else None
            css, sym = _verdict(b, a, "down" if forgotten else "up", sig)
            cells.append(f"<td class='num'>{_fmt(b, 'pct')}</td><td class='num'>{_fmt(a, 'pct')}</td>"
                         f"<td class='num {css}'>{sym} {_delta(b, a, 'pct')}</td>")
        src = "fid_forget" if forgotten else "fid"  # image-to-image: the forget side has its own FID (want ↑)
        b, a = _get(before, f"{src}.by_class.{c}.fid"), _get(after, f"{src}.by_class.{c}.fid")
        css, sym = _verdict(b, a, "up" if forgotten else "down", None)
        cells.append(f"<td class='num'>{_fmt(b, 'num')}</td><td class='num'>{_fmt(a, 'num')}</td>"
                     f"<td class='num {css}'>{sym} {_delta(b, a, 'num')}</td>")
        n = _get(before, f"{src}.by_class.{c}") or _get(after, f"{src}.by_class.{c}") or {}
        count = f"{n['n_real']} / {n['n_fake']}" if n else ("forgotten: no FID" if forgotten else "–")
        tag = "<span class='tag'>forgotten</span>" if forgotten else ""
        out.append(f"<tr class='{'forgot' if forgotten else ''}'><td>{html.escape(str(c))}{tag}</td>{''.join(cells)}"
                   f"<td class='num'>{count}</td></tr>")
    out.append("</table>")
    note = (f"<p class='note'>Accuracy on n={per if per else '?'} generations per class (one class's 95 % "
            f"interval is about ±{_half_width(per)} points at 95 %); a change is coloured only when a two-proportion "
            "test at 95 % calls it significant. Per-class FID compares a few dozen images in a 128-d feature "
            "space: biased and noisy at these counts, shown for orientation and never coloured.</p>")
    return note + "\n".join(out)


def _half_width(n: Any) -> str:
    if not n:
        return "?"
    lo, hi = wilson_interval(round(0.95 * n), n)
    return f"{(hi - lo) * 50:.0f}"


def _grids(before: Mapping[Any, torch.Tensor], after: Mapping[Any, torch.Tensor], forget: Sequence[int],
           inputs: Mapping[Any, torch.Tensor] | None = None) -> str:
    """One row per class: before | after strips, preceded (image-to-image) by the masked inputs' strip."""
    head = "<th>masked input</th>" if inputs else ""
    out = [f"<table class='grid'><tr><th>class</th>{head}<th>before unlearning</th><th>after unlearning</th></tr>"]
    for key in before:
        flag = _is_forgotten(key, forget)
        tag = "<span class='tag'>forgotten</span>" if flag else ""
        imgs_after = after.get(key)
        cell_after = (f"<img alt='class {html.escape(str(key))} after' src='{_png_uri(_strip(imgs_after))}'>"
                      if imgs_after is not None else "–")
        cell_in = ""
        if inputs:
            shown = inputs.get(key)
            cell_in = ("<td>–</td>" if shown is None else
                       f"<td><img alt='class {html.escape(str(key))} input' src='{_png_uri(_strip(shown))}'></td>")
        out.append(f"<tr class='{'forgot' if flag else ''}'><td class='cls'>{html.escape(str(key))}{tag}</td>"
                   f"{cell_in}"
                   f"<td><img alt='class {html.escape(str(key))} before' src='{_png_uri(_strip(before[key]))}'></td>"
                   f"<td>{cell_after}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _prompt_groups(metrics: Mapping[str, Any]) -> dict[str, str]:
    """``{prompt: "forget" | "retain" | "paraphrase"}`` of a t2i evaluation."""
    groups = _get(metrics, "detail.prompts") or {}
    return {p: g for g, prompts in groups.items() for p in prompts}


_PROMPT_TAGS = {"forget": "<span class='tag'>erased</span>",
                "paraphrase": "<span class='tag'>paraphrase of the erased</span>"}


def _prompt_grids(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                  groups: Mapping[str, str]) -> str:
    """One row per prompt: its text (escaped) and set, the "before" strip, the "after" strip."""
    out = ["<table class='grid'><tr><th>prompt</th><th>before unlearning</th><th>after unlearning</th></tr>"]
    for prompt in before:
        group = groups.get(prompt, "")
        text = html.escape(str(prompt))
        imgs_after = after.get(prompt)
        cell_after = (f"<img alt='{text} after' src='{_png_uri(_strip(imgs_after))}'>"
                      if imgs_after is not None else "–")
        out.append(f"<tr class='{'forgot' if group in _PROMPT_TAGS else ''}'><td class='prompt'>{text}"
                   f"{_PROMPT_TAGS.get(group, '')}</td>"
                   f"<td><img alt='{text} before' src='{_png_uri(_strip(before[prompt]))}'></td>"
                   f"<td>{cell_after}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _per_prompt_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """One row per prompt of a t2i evaluation: its set and class, each judge's share of its class before/after
    (forget and paraphrase prompts: the forgotten class's share, want ↓; retained: ↑; coloured only when a
    two-proportion test at 95 % calls the change significant), and its CLIP score and nudity rate where measured."""
    rows_b, rows_a = _get(before, "detail.by_prompt") or {}, _get(after, "detail.by_prompt") or {}
    prompts = list(rows_b) or list(rows_a)
    if not prompts:
        return ""
    per = _get(before, "detail.n_per_prompt") or _get(after, "detail.n_per_prompt")
    others = [s for s in (before.get("judges") or after.get("judges") or {}) if s]
    judged = any("accuracy" in r for r in rows_b.values())
    has_clip = any("clip_score" in r for r in [*rows_b.values(), *rows_a.values()])
    has_nude = any("nudity_rate" in r for r in [*rows_b.values(), *rows_a.values()])
    suffixes = (["", *others] if judged else [])
    head = "".join(f"<th>{html.escape(_judge_label(before or after, s).split(' ')[0])} share of class before</th>"
                   "<th>after</th><th>change</th>" for s in suffixes)
    head += "<th>CLIP before</th><th>after</th>" if has_clip else ""
    head += "<th>nudity before</th><th>after</th><th>change</th>" if has_nude else ""
    out = [f"<table><tr><th>prompt</th><th>set</th><th>class</th>{head}</tr>"]
    for p in prompts:
        rb, ra = rows_b.get(p, {}), rows_a.get(p, {})
        group = rb.get("group") or ra.get("group") or ""
        want = "up" if group == "retain" else "down"
        cells = []
        for s in suffixes:  # a prompt may hold dots: its rows are looked up by key, never by a dotted path
            ob = (_get(before, f"detail.also.{s}.by_prompt") or {}).get(p) or {}
            oa = (_get(after, f"detail.also.{s}.by_prompt") or {}).get(p) or {}
            b, a = (rb, ra) if not s else (ob, oa)
            b, a = b.get("accuracy"), a.get("accuracy")
            sig = proportion_change_significant(b, per, a, per) if _num(b) and _num(a) and per else None
            css, sym = _verdict(b, a, want, sig)
            cells.append(f"<td class='num'>{_fmt(b, 'pct')}</td><td class='num'>{_fmt(a, 'pct')}</td>"
                         f"<td class='num {css}'>{sym} {_delta(b, a, 'pct')}</td>")
        if has_clip:
            cells.append(f"<td class='num'>{_fmt(rb.get('clip_score'), 'num')}</td>"
                         f"<td class='num'>{_fmt(ra.get('clip_score'), 'num')}</td>")
        if has_nude:
            b, a = rb.get("nudity_rate"), ra.get("nudity_rate")
            sig = proportion_change_significant(b, per, a, per) if _num(b) and _num(a) and per else None
            css, sym = _verdict(b, a, "down", sig)
            cells.append(f"<td class='num'>{_fmt(b, 'pct')}</td><td class='num'>{_fmt(a, 'pct')}</td>"
                         f"<td class='num {css}'>{sym} {_delta(b, a, 'pct')}</td>")
        cls = rb.get("class", ra.get("class"))
        cls_text = "–" if cls is None else html.escape(str(cls))
        if cls is None and group == "paraphrase" and judged:
            cls_text = "forgotten"
        out.append(f"<tr class='{'forgot' if group in _PROMPT_TAGS else ''}'><td class='prompt'>{html.escape(p)}"
                   f"{_PROMPT_TAGS.get(group, '')}</td><td>{html.escape(group)}</td><td>{cls_text}</td>"
                   f"{''.join(cells)}</tr>")
    out.append("</table>")
    source = _get(before, "detail.class_source")
    note = (f"<p class='note'>{per if per else '?'} generations per prompt, the same seeded noise before and after. "
            "A prompt's class: " + (html.escape(str(source)) if source else "–") + "; paraphrases of the erased "
            "concept are judged against the forgotten class(es). Changes are coloured only when a two-proportion "
            "test at 95 % calls them significant.</p>")
    return note + "\n".join(out)


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
                       ("forget_share", "forget-class share"), ("forget_accuracy_svm", "forget acc. (SVM)"),
                       ("retain_accuracy_svm", "retain acc. (SVM)"), ("forget_share_svm", "forget share (SVM)"),
                       ("paraphrase_forget_share", "paraphrases"), ("nudity_rate", "nudity rate")):
        if isinstance(before.get(key), (int, float)) and isinstance(after.get(key), (int, float)):
            cards.append((label, f"{before[key]:.1%} → {after[key]:.1%}"))
    for key, label in (("clip_score_forget", "CLIP (forget)"), ("clip_score_retain", "CLIP (retain)")):
        if _num(before.get(key)) and _num(after.get(key)):
            cards.append((label, f"{before[key]:.1f} → {after[key]:.1f}"))
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
                  headline: Mapping[str, Any], inputs: Mapping[Any, torch.Tensor] | None = None,
                  tsne: Image.Image | None = None) -> str:
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
    t2i = "t2i" in (before.get("kind"), after.get("kind"))
    i2i = "i2i" in (before.get("kind"), after.get("kind"))
    if i2i:
        if images_before:
            parts += ["<h2>Completions before and after</h2>",
                      "<p class='note'>Held-out test digits of every class under the model's mask (left), completed "
                      "before and after unlearning from the same seeded noise: each image on the right completes the "
                      "same input, from the same draw, as the one in its place on the left.</p>",
                      _grids(images_before, images_after, forget, inputs)]
        if tsne is None:
            from fastunlearn.eval.i2i import tsne_image

            tsne = tsne_image(before, after)
        if tsne is not None:
            parts += ["<h2>Encoder embeddings (t-SNE)</h2>",
                      "<p class='note'>2-D t-SNE of the encoder's features of the same masked test images (the "
                      "features the unlearning trains), fitted separately before and after: forgotten classes are "
                      "crosses. Unlearned, their embeddings should no longer form their own clusters.</p>",
                      f"<img class='plot' alt='t-SNE of the encoder embeddings' src='{_png_uri(tsne)}'>"]
    elif images_before and t2i:
        parts += ["<h2>Samples before and after, per prompt</h2>",
                  "<p class='note'>Each prompt drawn from its own seeded noise, the same before and after: each image "
                  "on the right is the same draw as the one in the same place on the left.</p>",
                  _prompt_grids(images_before, images_after, _prompt_groups(before or after))]
    elif images_before:
        parts += ["<h2>Samples before and after</h2>",
                  "<p class='note'>The same seeded noise before and after: each image on the right is the same "
                  "draw as the one to its left.</p>", _grids(images_before, images_after, forget)]
    rows = _rows(before, after, forget)
    if rows and t2i:
        parts += ["<h2>Metrics</h2>", "<p class='note'>Green: moved the right way; red: the wrong way — coloured "
                  "only when the change is significant at 95 % (shares: two-proportion test on the counts; CLIP: the "
                  "means' standard errors; KID: beyond twice its spread over subsets); <i>n.s.</i>: within sampling "
                  "noise; <i>no test</i>: no interval exists here (FID). Forget / retain accuracy: the share of the "
                  "forget / retained prompts' generations each judge assigns to the prompt's class; paraphrases: the "
                  "share of the erased concept's other wordings still drawn as the forgotten class; nudity rate: "
                  "generations with an exposed body part by NudeNet; CLIP score: 100 · max(0, cos) of each image "
                  "with its own prompt, averaged.</p>", _table(rows)]
        per_prompt = _per_prompt_table(before, after)
        if per_prompt:
            parts += ["<h2>Per prompt</h2>", per_prompt]
    elif rows and i2i:
        parts += ["<h2>Metrics</h2>", "<p class='note'>Green: moved the right way; red: the wrong way — coloured "
                  "only when the change is significant at 95 % (accuracies: two-proportion test on the counts; KID: "
                  "beyond twice its spread over subsets; cosine: the means' standard errors); <i>n.s.</i>: within "
                  "sampling noise; <i>no test</i>: no interval exists here (FID). Accuracies are the share of "
                  "completions of held-out test digits that each judge classifies as the original's class (the first "
                  "judge the shipped CNN, the second an RBF-kernel SVM on the raw pixels), with their 95 % Wilson "
                  "interval. FID/KID compare each side's completions with their originals, and the cosine "
                  "similarity each completion with its original, in the CNN's feature space.</p>", _table(rows)]
        per_class = _per_class_table(before, after, forget)
        if per_class:
            parts += ["<h2>Per class</h2>", per_class]
    elif rows:
        parts += ["<h2>Metrics</h2>", "<p class='note'>Green: moved the right way; red: the wrong way — coloured "
                  "only when the change is significant at 95 % (accuracies: two-proportion test on the counts; KID: "
                  "beyond twice its spread over subsets; AUC: its standard errors); <i>n.s.</i>: within sampling "
                  "noise; <i>no test</i>: no interval exists here (FID). Accuracies are the share of class-conditional "
                  "generations each judge recognises, with their 95 % Wilson interval: the first judge is the shipped "
                  "CNN, the second an independent RBF-kernel SVM on the raw pixels (another model family). FID/KID "
                  "compare generations of the retained classes with held-out real images in the CNN's feature space "
                  "(KID on unit-normalised features, where two different digit classes score about 9; ± its spread over subsets); the membership AUC is judged "
                  "by its distance to 0.5.</p>", _table(rows)]
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
                 headline: Mapping[str, Any], inputs: Mapping[Any, torch.Tensor] | None = None,
                 tsne: Image.Image | None = None) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    Args:
        config: the run's full configuration (e.g. ``UnlearnConfig.to_dict()`` or ``yaml.safe_load(config.yaml)``).
        metrics_before / metrics_after: evaluation dicts (see the module docstring); None when skipped.
        history: per-step metric dicts (the lines of ``metrics.jsonl``: ``step``, ``loss_forget``,
            ``loss_retain``, ``lambda``, ``q_hat``, ...).
        images_before / images_after: ``{class: Tensor[N, C, H, W] in [-1, 1]}``, first 8 shown per class.
        headline: ``forgotten`` (text), ``forget_classes`` (list of int, flags grid rows and directions of
            per-class rows), ``model``, ``method``, ``steps``, ``wall time``, ``device``, ``finished``.
        inputs: image-to-image: ``{class: masked inputs}`` shown left of the completions.
        tsne: image-to-image: the encoder's t-SNE picture; None: drawn from the metrics' ``tsne`` when present.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(render_report(config=config, metrics_before=metrics_before, metrics_after=metrics_after,
                                  history=history, images_before=images_before, images_after=images_after,
                                  headline=headline, inputs=inputs, tsne=tsne), encoding="utf-8")
    return path


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The per-step dicts of a ``metrics.jsonl`` file (empty list when it does not exist)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


__all__ = ["write_report", "render_report", "read_history"]
