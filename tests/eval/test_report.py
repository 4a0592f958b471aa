"""report.html: one self-contained page that parses, with every embedded image decodable."""
from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import torch
from PIL import Image

from fastunlearn.eval.report import read_history, render_report, write_report


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.text, self.open = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("link", "script") or (tag != "img" and "src" in a):
            self.links.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _inputs():
    g = torch.Generator().manual_seed(0)
    imgs = {c: torch.rand(8, 1, 16, 16, generator=g) * 2 - 1 for c in range(3)}
    detail = {"classes": [0, 1, 2], "n_per_class": 8, "accuracy_by_class": {0: 1.0, 1: 1.0, 2: 0.875}}
    before = {"forget_accuracy": 1.0, "retain_accuracy": 0.9375, "detail": detail,
              "fid": {"classes": [1, 2], "by_class": {1: {"fid": 10.0, "n_real": 36, "n_fake": 8},
                                                     2: {"fid": 12.0, "n_real": 36, "n_fake": 8}},
                      "overall": {"fid": 9.0, "kid_mean": 1.0, "n_real": 72, "n_fake": 16}},
              "mia": {"auc": 0.62, "n_members": 140, "n_non_members": 36}}
    after = {"forget_accuracy": 0.0, "retain_accuracy": 0.875,
             "detail": {**detail, "accuracy_by_class": {"0": 0.0, "1": 0.875, "2": 0.875}},
             "fid": {**before["fid"], "overall": {"fid": 11.0, "kid_mean": 2.0, "n_real": 72, "n_fake": 16}},
             "mia": {"auc": 0.51, "n_members": 140, "n_non_members": 36}}
    history = [{"step": s, "loss_forget": 1 / s, "loss_retain": 0.1, "lambda": 0.1 * s, "q_hat": 0.01, "finite": 1.0}
               for s in range(1, 6)]
    return dict(config={"model": "zoo:digits-ddpm", "forget": "class:0", "options": {"eta": 0.1}},
                metrics_before=before, metrics_after=after, history=history, images_before=imgs,
                images_after=imgs, headline={"forgotten": "digit class 0", "forget_classes": [0],
                                             "method": "erasediff", "steps": 5, "wall time": "3 s", "device": "cpu"})


def test_report_parses_and_every_image_decodes(tmp_path):
    path = write_report(tmp_path, **_inputs())
    assert path == tmp_path / "report.html"
    parser = _Collect()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.links == []  # self-contained: no external scripts, styles or sources
    assert len(parser.images) == 3 * 2 + 1  # before + after strip per class, one curves figure
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.width > 0 and img.height > 0
    text = " ".join(parser.text)
    for needle in ("Forgot digit class 0", "forget accuracy", "retain FID", "membership-inference AUC",
                   "Training curves", "Configuration", "forgotten"):
        assert needle in text


def test_directions_are_judged(tmp_path):
    html = render_report(**_inputs())
    # forget accuracy fell (good), retain accuracy fell (bad), FID rose (bad), MIA AUC moved to 0.5 (good)
    assert "class='num good'>▼ -100.0 pts" in html
    assert "class='num bad'>▼ -6.2 pts" in html
    assert "class='num bad'>▲ +2.00" in html
    assert "class='num good'>▼ -0.110" in html


def test_without_evaluation_or_history(tmp_path):
    inputs = _inputs()
    inputs.update(metrics_before=None, metrics_after=None, history=[], images_before={}, images_after={})
    html = render_report(**inputs)
    assert "Evaluation was skipped" in html and "<img" not in html


def test_read_history(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss_forget": 0.5}\n\n{"step": 2, "loss_forget": 0.4}\n')
    assert [h["step"] for h in read_history(tmp_path / "metrics.jsonl")] == [1, 2]
    assert read_history(tmp_path / "missing.jsonl") == []
