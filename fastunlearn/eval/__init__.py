"""Evaluation: what a run is measured by, and the files a person or an auditor reads afterwards.

- :mod:`~fastunlearn.eval.evaluate`: the run's before/after evaluation and its judge panel by image shape;
- :mod:`~fastunlearn.eval.judges`: the judges by name (``load_judge("zoo:digits-svm")``: the second,
  independent judge; ``"zoo:digits-classifier"``: the first);
- :mod:`~fastunlearn.eval.classifier`: judged generation accuracy per class (forget / retain accuracy) and the
  unconditional share of a class, by one judge and optionally others on the same generations;
- :mod:`~fastunlearn.eval.stats`: binomial (Wilson) intervals and the significance rule of the report;
- :mod:`~fastunlearn.eval.fid`: FID/KID (KID on L2-normalised features) in the judge's feature space via torchmetrics (Inception only from a
  local weight file), per retained class and overall;
- :mod:`~fastunlearn.eval.t2i`: the text-to-image evaluation (per prompt: judged class shares, paraphrases,
  CLIP score, nudity rate), in :mod:`~fastunlearn.eval.evaluate`'s schema;
- :mod:`~fastunlearn.eval.clip_score`: CLIPScore with a user-supplied CLIP model;
- :mod:`~fastunlearn.eval.nudity`: NudeNet's nudity rate (the optional ``[nudity]`` extra);
- :mod:`~fastunlearn.eval.mia`: loss-based membership-inference AUC of the forget set vs held-out images;
- :mod:`~fastunlearn.eval.perf`: wall time, throughput, peak memory;
- :mod:`~fastunlearn.eval.grids`: labelled PNG sample grids;
- :mod:`~fastunlearn.eval.report`: the self-contained ``report.html``;
- :mod:`~fastunlearn.eval.manifest`: ``manifest.json`` and :func:`~fastunlearn.eval.manifest.verify`.

Submodules are imported directly (``from fastunlearn.eval.fid import fid_kid``) so that loading one metric
does not pull in the dependencies (torchmetrics, scikit-learn, matplotlib) of all the others.
"""
