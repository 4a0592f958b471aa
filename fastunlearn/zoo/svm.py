"""The second digits judge: an RBF-kernel support-vector machine on the raw 16×16 pixels.

It exists so that no utility figure rests on one judge alone, least of all the CNN the defaults were tuned
against (:mod:`fastunlearn.zoo.classifier`). It is of another model family (a kernel machine, no learned
features, no shift augmentation), fitted by scikit-learn's ``SVC`` (libsvm) on the digits *train* split
with the library's preprocessing (:mod:`fastunlearn.data.digits`: [-1, 1], 12×12 digit in a 2-px margin),
by ``python -m fastunlearn.zoo.train digits-svm`` (C and γ chosen by 5-fold cross-validation on the train
split only; ``training.json`` records the grid, the scores and the test accuracy).

What ships is the fitted model's numbers, not a pickle: ``svm.safetensors`` (support vectors, dual
coefficients, intercepts, support counts) and ``config.json`` (γ, C, classes). Prediction is
re-implemented here in torch, in float64, and equals scikit-learn's ``SVC(break_ties=True).predict``
(``tests/zoo/test_svm.py`` checks it image for image on the test split):

- one-vs-one decision for each class pair (i, j), i < j:
  d_ij(x) = Σ_{s ∈ SV_i} α^{(j-1)}_s K(x, s) + Σ_{s ∈ SV_j} α^{(i)}_s K(x, s) + b_ij,
  with K(x, s) = exp(−γ ‖x − s‖²) (libsvm's layout of ``dual_coef_``);
- scores (scikit-learn's ``decision_function_shape="ovr"``): votes_c + conf_c / (3 (|conf_c| + 1)), where
  votes_c counts the pairs c wins (d_ij > 0 votes i, else j) and conf_c sums ±d_ij; the confidence term is
  below 1/3 in size, so it only breaks ties between equal vote counts;
- prediction: the argmax of the scores.

The scores are what :func:`fastunlearn.eval.classifier.generation_accuracy` takes as "logits": their argmax
is the SVM's answer. Their softmax is *not* a calibrated probability, so only the SVM's accuracy is
reported, never its entropy or target probability.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastunlearn.errors import UserInputError

WEIGHTS_NAME = "svm.safetensors"
CONFIG_NAME = "config.json"


class DigitsSVM(nn.Module):
    """A fitted multi-class RBF SVM (libsvm one-vs-one) as a torch module: images → scores ``[N, C]``.

    Args:
        support_vectors: ``[S, D]`` (scikit-learn's ``support_vectors_``, grouped by class).
        dual_coef: ``[C-1, S]`` (``dual_coef_``).
        intercept: ``[C(C-1)/2]`` (``intercept_``, pairs in the order (0,1), (0,2), …, (C-2, C-1)).
        n_support: ``[C]`` support vectors per class (``n_support_``).
        gamma: the RBF width γ (``_gamma``).
        image_shape: the ``(C, H, W)`` the SVM was fitted on; inputs are flattened row-major.
    """

    def __init__(self, support_vectors: torch.Tensor, dual_coef: torch.Tensor, intercept: torch.Tensor,
                 n_support: torch.Tensor, gamma: float, image_shape: tuple[int, int, int] = (1, 16, 16),
                 config: dict[str, Any] | None = None):
        super().__init__()
        n_support = n_support.to(torch.long)
        num_classes = int(n_support.numel())
        n_sv = int(support_vectors.shape[0])
        pairs = [(i, j) for i in range(num_classes) for j in range(i + 1, num_classes)]
        if (int(n_support.sum()) != n_sv or tuple(dual_coef.shape) != (num_classes - 1, n_sv)
                or intercept.numel() != len(pairs)):
            raise UserInputError(
                f"inconsistent SVM parameters: {n_sv} support vectors, n_support sums to {int(n_support.sum())}, "
                f"dual_coef {tuple(dual_coef.shape)}, {intercept.numel()} intercepts for {num_classes} classes"
            )
        start = torch.cat([torch.zeros(1, dtype=torch.long), n_support.cumsum(0)])
        # One column per class pair: the coefficient each support vector carries in that pair's decision.
        weights = torch.zeros(n_sv, len(pairs), dtype=torch.float64)
        for p, (i, j) in enumerate(pairs):
            si, sj = slice(int(start[i]), int(start[i + 1])), slice(int(start[j]), int(start[j + 1]))
            weights[si, p] = dual_coef[j - 1, si].double()
            weights[sj, p] = dual_coef[i, sj].double()
        sign = torch.zeros(len(pairs), num_classes, dtype=torch.float64)  # +1 for i, -1 for j
        for p, (i, j) in enumerate(pairs):
            sign[p, i], sign[p, j] = 1.0, -1.0
        self.register_buffer("support_vectors", support_vectors.double().contiguous())
        self.register_buffer("dual_coef", dual_coef.double().contiguous())
        self.register_buffer("intercept", intercept.double().contiguous())
        self.register_buffer("n_support", n_support)
        self.register_buffer("pair_weights", weights)
        self.register_buffer("pair_sign", sign)
        self.gamma = float(gamma)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = num_classes
        self.config = dict(config or {})

    @property
    def device(self) -> torch.device:
        return self.support_vectors.device

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise UserInputError(
                f"the digits SVM judges images of shape [N, {', '.join(map(str, self.image_shape))}]; "
                f"got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], -1).to(device=self.device, dtype=torch.float64)

    def decision_pairs(self, x: torch.Tensor) -> torch.Tensor:
        """One-vs-one decision values ``[N, C(C-1)/2]`` (scikit-learn's ``decision_function_shape="ovo"``)."""
        flat = self._flat(x)
        # Exact distances (no ‖a‖² + ‖b‖² − 2ab cancellation), as libsvm sums (a − b)².
        dist2 = torch.cdist(flat, self.support_vectors, compute_mode="donot_use_mm_for_euclid_dist").square()
        kernel = torch.exp(-self.gamma * dist2)
        return kernel @ self.pair_weights + self.intercept

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``[N, C]`` (float32): one-vs-one votes plus a tie-breaking confidence below 1/3."""
        dec = self.decision_pairs(x)
        wins_i = (dec > 0).double()
        # Pair (i, j): a vote for i where d > 0, else for j; the confidence d counts for i and against j.
        votes = wins_i @ self.pair_sign.clamp(min=0) + (1.0 - wins_i) @ (-self.pair_sign).clamp(min=0)
        conf = dec @ self.pair_sign
        return (votes + conf / (3.0 * (conf.abs() + 1.0))).float()

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted classes ``[N]`` (int64, on ``x``'s device)."""
        out = [self(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)]
        if not out:
            return torch.empty(0, dtype=torch.long, device=x.device)
        return torch.cat(out).to(x.device)

    # -- files --------------------------------------------------------------------------------------------

    @classmethod
    def from_sklearn(cls, svc: Any, image_shape: tuple[int, int, int] = (1, 16, 16),
                     config: dict[str, Any] | None = None) -> "DigitsSVM":
        """From a fitted ``sklearn.svm.SVC(kernel="rbf")`` with classes 0…C-1."""
        classes = [int(c) for c in svc.classes_]
        if classes != list(range(len(classes))) or svc.kernel != "rbf":
            raise UserInputError(f"DigitsSVM takes an RBF SVC over classes 0..C-1; got {svc.kernel}, {classes}")
        return cls(torch.as_tensor(svc.support_vectors_), torch.as_tensor(svc.dual_coef_),
                   torch.as_tensor(svc.intercept_), torch.as_tensor(svc.n_support_),
                   float(svc._gamma), image_shape, config)

    def save_pretrained(self, directory: str | Path) -> None:
        """``svm.safetensors`` (support vectors as float32: they are preprocessed float32 pixels, so nothing is
        lost; coefficients and intercepts float64) and ``config.json``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"support_vectors": self.support_vectors.float().cpu().contiguous(),
                   "dual_coef": self.dual_coef.cpu().contiguous(),
                   "intercept": self.intercept.cpu().contiguous(),
                   "n_support": self.n_support.cpu().contiguous()}, str(directory / WEIGHTS_NAME))
        cfg = {"model": "DigitsSVM", "kernel": "rbf", "gamma": self.gamma, "image_shape": list(self.image_shape),
               "num_classes": self.num_classes, **self.config}
        (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DigitsSVM":
        """Load what :meth:`save_pretrained` wrote (safetensors + JSON: no pickle)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / WEIGHTS_NAME).is_file() or not (directory / CONFIG_NAME).is_file():
            raise UserInputError(f"{directory} holds no {WEIGHTS_NAME} + {CONFIG_NAME} (a DigitsSVM directory)")
        cfg = json.loads((directory / CONFIG_NAME).read_text())
        t = load_file(str(directory / WEIGHTS_NAME))
        extra = {k: v for k, v in cfg.items() if k not in ("model", "kernel", "gamma", "image_shape", "num_classes")}
        return cls(t["support_vectors"], t["dual_coef"], t["intercept"], t["n_support"], cfg["gamma"],
                   tuple(cfg["image_shape"]), extra)


__all__ = ["DigitsSVM"]
