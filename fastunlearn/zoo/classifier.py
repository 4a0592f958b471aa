"""The digits judge: a small CNN that classifies 16×16 digits.

It is the default judge of the embedded digits pipeline (generation accuracy, share of a
forgotten class among generations) and its penultimate features feed FID/KID. It is a
``diffusers`` ``ModelMixin`` + ``ConfigMixin`` so it saves and loads like every other
model of the project (``save_pretrained`` / ``from_pretrained``, safetensors).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class DigitsClassifier(ModelMixin, ConfigMixin):
    """Conv(32)-Conv(32)-pool-Conv(64)-Conv(64)-pool-FC(feature_dim)-FC(num_classes).

    Input ``[N, in_channels, 16, 16]`` in [-1, 1]; ``forward`` gives logits ``[N, num_classes]``,
    ``features`` the ``feature_dim``-wide penultimate activations (after ReLU), the space
    in which FID/KID compare generated and real digits.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, int] = (32, 64),
        feature_dim: int = 128,
        sample_size: int = 16,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        w1, w2 = widths
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, padding=1),
            nn.BatchNorm2d(w1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w1, w1, 3, padding=1),
            nn.BatchNorm2d(w1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1),
            nn.BatchNorm2d(w2),
            nn.ReLU(inplace=True),
            nn.Conv2d(w2, w2, 3, padding=1),
            nn.BatchNorm2d(w2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = sample_size // 4
        self.neck = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(w2 * side * side, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, feature_dim]`` (used for FID/KID)."""
        return self.neck(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]``."""
        return self.head(self.features(x))

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted classes ``[N]`` (int64, on ``x``'s device), in eval mode, batched."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [
            self(x[i : i + batch_size].to(device=device, dtype=torch.float32)).argmax(dim=1)
            for i in range(0, x.shape[0], batch_size)
        ]
        self.train(was_training)
        if not out:
            return torch.empty(0, dtype=torch.long, device=x.device)
        return torch.cat(out).to(x.device)
