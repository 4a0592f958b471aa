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
    judges = {"": "zoo:digits-classifier", "svm": "zoo:digits-svm"}
    n = {"forget_accuracy": 8, "retain_accuracy": 16, "forget_accuracy_svm": 8, "retain_accuracy_svm": 900}
    detail["also"] = {"svm": {"accuracy_by_class": {0: 1.0, 1: 1.0, 2: 1.0}}}
    before = {"forget_accuracy": 1.0, "retain_accuracy": 0.9375, "forget_accuracy_svm": 1.0,
              "retain_accuracy_svm": 0.98, "n": n, "judges": judges, "detail": detail,
              "fid": {"classes": [1, 2], "by_class": {1: {"fid": 10.0, "n_real": 36, "n_fake": 8},
                                                     2: {"fid": 12.0, "n_real": 36, "n_fake": 8}},
                      "overall": {"fid": 9.0, "kid_mean": 0.1, "kid_std": 0.03, "n_real": 72, "n_fake": 16}},
              "mia": {"auc": 0.62, "auc_se": 0.03, "n_members": 140, "n_non_members": 36}}
    after = {"forget_accuracy": 0.0, "retain_accuracy": 0.875, "forget_accuracy_svm": 0.0,
             "retain_accuracy_svm": 0.80, "n": n, "judges": judges,
             "detail": {**detail, "accuracy_by_class": {"0": 0.0, "1": 0.875, "2": 0.875},
                        "also": {"svm": {"accuracy_by_class": {"0": 0.0, "1": 0.75, "2": 1.0}}}},
             "fid": {**before["fid"], "overall": {"fid": 11.0, "kid_mean": 0.2, "kid_std": 0.04,
                                                  "n_real": 72, "n_fake": 16}},
             "mia": {"auc": 0.51, "auc_se": 0.03, "n_members": 140, "n_non_members": 36}}
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
    # forget accuracy fell 100 → 0 % of 8 (significant: good); MIA AUC moved to 0.5 beyond its SEs (good)
    assert "class='num good'>▼ -100.0 pts" in html
    assert "class='num good'>▼ -0.110" in html
    # the second judge's retain accuracy fell 98 → 80 % of 900: significant, bad
    assert "class='num bad'>▼ -18.0 pts" in html


def test_changes_within_the_noise_are_not_coloured(tmp_path):
    """Retain accuracy 93.75 → 87.5 % of 16 generations is noise; FID has no interval; per-class FID on 8
    generations is never coloured, whichever way it moves."""
    inputs = _inputs()
    after = inputs["metrics_after"]
    after["fid"] = {**after["fid"], "by_class": {1: {"fid": 30.0, "n_real": 36, "n_fake": 8},
                                                 2: {"fid": 2.0, "n_real": 36, "n_fake": 8}}}
    html = render_report(**inputs)
    assert "class='num same'>▼ -6.2 pts <span class='ns'>n.s.</span>" in html
    assert "class='num same'>▲ +2.00 <span class='ns'>no test</span>" in html  # overall FID 9 → 11
    assert "class='num same'>▲ +20.00" in html and "class='num same'>▼ -10.00" in html  # per-class FID
    assert "class='num bad'>▲ +20.00" not in html and "class='num good'>▼ -10.00" not in html


def test_counts_and_intervals_are_shown(tmp_path):
    html = render_report(**_inputs())
    # the Wilson interval and the count of each accuracy (0 of 8: [0.0 %, 32.4 %])
    assert "0.0% <span class='ci'>[0.0%, 32.4%]</span>" in html and "n=8 generations" in html
    assert "98.0% <span class='ci'>[96.9%, 98.7%]</span>" in html and "n=900 generations" in html
    # both judges are named, KID with its spread over subsets
    assert "SVM (zoo:digits-svm)" in html and "CNN (zoo:digits-classifier)" in html
    assert "0.100 ± 0.030" in html and "0.200 ± 0.040" in html
    assert "per class" in html and "forget acc. (SVM)" in html


def test_without_evaluation_or_history(tmp_path):
    inputs = _inputs()
    inputs.update(metrics_before=None, metrics_after=None, history=[], images_before={}, images_after={})
    html = render_report(**inputs)
    assert "Evaluation was skipped" in html and "<img" not in html


def test_read_history(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss_forget": 0.5}\n\n{"step": 2, "loss_forget": 0.4}\n')
    assert [h["step"] for h in read_history(tmp_path / "metrics.jsonl")] == [1, 2]
    assert read_history(tmp_path / "missing.jsonl") == []


def test_fid_and_kid_rows_of_both_sides():
    """The retained classes' FID/KID rows and an image-to-image evaluation's forget-side ones: KID significant only
    beyond twice the subsets' combined spread, worked out here; the retained KID's count names its subset size,
    the forget side's does not; FID has no test."""
    from fastunlearn.eval.report import _rows

    def side(fid, kid, std):
        overall = {"fid": fid, "kid_mean": kid, "kid_std": std, "n_real": 35, "n_fake": 35, "kid_subset_size": 35}
        return {"overall": overall}

    before = {"kind": "i2i", "fid": side(20.0, 0.010, 0.002), "fid_forget": side(30.0, 0.010, 0.002)}
    # retained: |Δ| 0.005 < 2·√(0.002² + 0.002²) = 0.0057 → not significant; forget: |Δ| 0.2 → significant
    after = {"kind": "i2i", "fid": side(21.0, 0.015, 0.002), "fid_forget": side(700.0, 0.210, 0.002)}
    rows = {r["label"]: r for r in _rows(before, after, [0])}
    fid_r, kid_r = rows["retain FID (completions vs originals)"], rows["retain KID (CNN features, unit-normalised)"]
    fid_f, kid_f = rows["forget FID (completions vs originals)"], rows["forget KID (completions vs originals)"]
    assert fid_r["significant"] is None and fid_f["significant"] is None
    assert kid_r["significant"] is False and kid_f["significant"] is True
    assert (kid_r["direction"], kid_f["direction"]) == ("down", "up")
    assert kid_r["n"] == "35 real / 35 gen, subsets of 35" and kid_f["n"] == "35 real / 35 completed"
    assert (fid_f["b"], fid_f["a"]) == (30.0, 700.0)
