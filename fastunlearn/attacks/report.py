"""An attack's ``report.html`` (and ``grid.png``): the attack success rate and every instance's images.

Self-contained like the run's report (:mod:`fastunlearn.eval.report`: its stylesheet, PNG as base64 ``data:``
URIs). Top to bottom:

1. the headline: which attack, on which model, for which concept, by which judge, how long it took;
2. the figures: ASR = (pre + post) / N, the pre-attack and post-attack shares, each with its count and 95 %
   Wilson interval (paraphrase: the share of the instances the base model draws as the concept, and how many
   were excluded), per prompt list where there are several;
3. the grid, one line per instance: the attacked model's image under the instance's own prompt, its image
   under the adversarial prompt (the same initial noise) — for ``paraphrase`` the base model's image and the
   attacked model's — and, as the label, the outcome and the decoded adversarial prompt (also in ``grid.png``);
4. the instances as a table (prompt, seed, outcome, iterations, adversarial prompt: text to copy);
5. the settings.

Prompts and adversarial prompts are user or model text: every one is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw

from fastunlearn.eval.grids import BACKGROUND, TEXT, _fit_text, _font, _to_uint8
from fastunlearn.eval.report import _CSS

#: Tiles are upscaled (nearest neighbour) to at least this many pixels, and larger images shown at this size.
_TILE = 64
_GREEN, _RED, _GREY = (19, 122, 58), (180, 35, 24), (107, 114, 128)


def outcome(ins: Any, attack: str) -> str:
    """A short word for an instance's outcome: ``pre``, ``post``, ``failed``, ``drawn``, ``erased``, ``excluded``."""
    if attack == "paraphrase":
        return "excluded" if ins.excluded else ("drawn" if ins.pre_success else "erased")
    return "pre" if ins.pre_success else ("post" if ins.post_success else "failed")


def _label(ins: Any, attack: str) -> str:
    word = {"pre": "success before any attack", "post": f"success after {ins.iterations} iterations",
            "failed": f"failed ({ins.iterations} iterations)", "drawn": "still drawn",
            "erased": "not drawn", "excluded": "excluded: the base model does not draw it"}[outcome(ins, attack)]
    text = ins.prompt if ins.adversarial_prompt is None else ins.adversarial_prompt
    return f"#{ins.index} · {word} · {text}"


def _tile(img: Any, size: int) -> Image.Image:
    return Image.fromarray(img).resize((size, size), Image.NEAREST if img.shape[0] < size else Image.BICUBIC)


def instance_grid(result: Any, max_rows: int | None = None) -> Image.Image:
    """One line per instance: two tiles (see the module docstring) and its label, coloured by outcome."""
    attack = result.attack
    rows = result.instances[:max_rows] if max_rows else result.instances
    left = result.images_base if attack == "paraphrase" and result.images_base is not None else result.images_before
    right = result.images_before if attack == "paraphrase" else result.images_after
    idx = [ins.index for ins in rows]
    a, b = (_to_uint8(left[idx]), _to_uint8(right[idx])) if idx else ([], [])
    size = max(_TILE, int(a[0].shape[0])) if idx else _TILE
    size = min(size, 128)
    gap = 6
    font = _font(14)
    head = _font(13)
    heads = ("base", "unlearned") if attack == "paraphrase" else ("prompt", "attack")
    labels = [_label(ins, attack) for ins in rows]
    text_w = min(900, int(max([font.getlength(t) for t in labels] + [200])) + 2 * gap)
    width = gap + 2 * (size + gap) + gap + text_w
    head_h = 22
    height = head_h + len(rows) * (size + gap) + gap
    canvas = Image.new("RGB", (width, max(height, head_h + gap)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(heads):
        draw.text((gap + c * (size + gap), 4), name, fill=TEXT, font=head)
    colour = {"pre": _GREEN, "post": _RED, "failed": _GREY, "drawn": _RED, "erased": _GREY, "excluded": _GREY}
    for r, ins in enumerate(rows):
        y = head_h + r * (size + gap)
        canvas.paste(_tile(a[r], size), (gap, y))
        canvas.paste(_tile(b[r], size), (gap + size + gap, y))
        x = gap + 2 * (size + gap) + gap
        draw.text((x, y + size // 2 - 8), _fit_text(draw, labels[r], font, text_w - gap),
                  fill=colour[outcome(ins, attack)], font=font)
    return canvas


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _pct(v: Any) -> str:
    return "—" if v is None else f"{v:.1%}"


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f"<span class='ci'>[{ci[0]:.1%}–{ci[1]:.1%}]</span>"


def _figure_rows(result: Any) -> list[tuple[str, Any, int, int, Sequence[float]]]:
    counts = {"pre": sum(i.pre_success for i in result.instances if not i.excluded),
              "post": sum(i.post_success for i in result.instances if not i.excluded)}
    if result.attack == "paraphrase":
        return [("ASR: instances the base model draws as the concept that the attacked model still draws",
                 result.asr, counts["pre"], result.n, result.ci95["asr"])]
    return [("ASR = (pre + post) / N", result.asr, counts["pre"] + counts["post"], result.n, result.ci95["asr"]),
            ("pre-attack: the instance's own prompt already draws the concept", result.asr_pre, counts["pre"],
             result.n, result.ci95["asr_pre"]),
            ("post-attack: drawn under the adversarial prompt", result.asr_post, counts["post"], result.n,
             result.ci95["asr_post"])]


def render(result: Any, grid_png: bytes | None = None) -> str:
    """The report as an HTML string."""
    e = html.escape
    title = f"{result.attack} against {result.model}"
    sub = " · ".join([f"concept {result.concept!r}", f"judge: {result.judge.get('description', result.judge.get('name'))}",
                      f"base {result.base}" if result.base else "no base model",
                      f"{result.wall_s:.1f} s"])
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body><main>", f"<h1>{e(title)}</h1><p class='sub'>{e(sub)}</p>"]
    cards = [("ASR", _pct(result.asr)), ("instances", str(result.n))]
    if result.attack == "paraphrase":
        cards.append(("excluded", str(result.n_excluded)))
    else:
        cards += [("pre-attack", _pct(result.asr_pre)), ("post-attack", _pct(result.asr_post))]
    parts.append("<div class='cards'>" + "".join(f"<div class='card'><div class='k'>{e(k)}</div><div class='v'>"
                                                 f"{e(v)}</div></div>" for k, v in cards) + "</div>")
    parts += ["<h2>Attack success rate</h2>",
              "<p class='note'>Each instance is a prompt and a seed (its initial noise). " + (
                  "Instances whose base-model image is not judged the concept are excluded; the rate is over the "
                  "others." if result.attack == "paraphrase" else
                  "An instance whose own prompt already draws the concept is a pre-attack success and is not "
                  "attacked; the others are attacked, and a post-attack success is an image under the adversarial "
                  "prompt, from the same noise, judged the concept.") + " Intervals: 95 % Wilson.</p>",
              "<table><tr><th>figure</th><th>share</th><th>count</th></tr>"]
    for label, v, k, n, ci in _figure_rows(result):
        parts.append(f"<tr><td>{e(label)}</td><td class='num'>{_pct(v)} {_ci(ci)}</td>"
                     f"<td class='num'>{k} / {n}</td></tr>")
    parts.append("</table>")
    if len(result.by_group) > 1:
        parts += ["<h2>Per prompt list</h2><table><tr><th>list</th><th>ASR</th><th>instances</th>"
                  "<th>excluded</th></tr>"]
        for g, f in result.by_group.items():
            parts.append(f"<tr><td>{e(g)}</td><td class='num'>{_pct(f['asr'])} {_ci(f['ci95']['asr'])}</td>"
                         f"<td class='num'>{f['n']}</td><td class='num'>{f['n_excluded']}</td></tr>")
        parts.append("</table>")
    if grid_png is None:
        grid_png = _png(instance_grid(result))
    uri = "data:image/png;base64," + base64.b64encode(grid_png).decode("ascii")
    what = ("left: the base model, right: the attacked model, both for the paraphrase" if result.attack == "paraphrase"
            else "left: the instance's own prompt, right: the adversarial prompt (labelled; soft prompts by their "
                 "nearest tokens, ≈), the same initial noise")
    parts += ["<h2>Instances</h2>", f"<p class='note'>{e(what)}. Green: the concept is drawn before any attack; "
              "red: drawn after the attack (or, for a paraphrase, still drawn); grey: not drawn.</p>",
              f"<img class='plot' alt='instances' src='{uri}'>",
              "<table><tr><th>#</th><th>prompt</th><th>seed</th><th>outcome</th><th>iterations</th>"
              "<th>adversarial prompt</th></tr>"]
    for ins in result.instances:
        parts.append(f"<tr><td class='num'>{ins.index}</td><td>{e(ins.prompt)}</td><td class='num'>{ins.seed}</td>"
                     f"<td>{e(outcome(ins, result.attack))}</td><td class='num'>{ins.iterations}</td>"
                     f"<td>{e(ins.adversarial_prompt or '')}</td></tr>")
    parts += ["</table><h2>Settings</h2>",
              f"<pre>{e(json.dumps(result.settings, indent=2, default=str, ensure_ascii=False))}</pre>",
              "</main></body></html>"]
    return "\n".join(parts)


def write_report(result: Any, out_dir: str | Path) -> Path:
    """Write ``out_dir/grid.png`` and ``out_dir/report.html``; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = _png(instance_grid(result))
    (out / "grid.png").write_bytes(grid)
    path = out / "report.html"
    path.write_text(render(result, grid), encoding="utf-8")
    return path


__all__ = ["write_report", "render", "instance_grid", "outcome"]
