"""NeRF MLP and triplane query: mirrors `NeRFMLP` in upstream `tsr/models/network_utils.py` and
`TriplaneNeRFRenderer.query_triplane` in `tsr/models/nerf_renderer.py` (only the query; volume rendering is
left out, the service needs meshes, not videos).

Activations as upstream's config runs them: density_act = exp(density + density_bias), color =
sigmoid(features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


class NeRFMLP(nn.Module):
    """`layers` = Linear(in, n), act, (n_hidden_layers - 1) x [Linear(n, n), act], Linear(n, 4).

    Output channel 0 is the raw density, channels 1..3 the raw colour features.
    """

    def __init__(
        self, *, in_channels: int, n_neurons: int, n_hidden_layers: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"decoder activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        modules: list[nn.Module] = [nn.Linear(in_channels, n_neurons), act()]
        for _ in range(n_hidden_layers - 1):
            modules += [nn.Linear(n_neurons, n_neurons), act()]
        modules.append(nn.Linear(n_neurons, 4))
        self.layers = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


@dataclass(frozen=True)
class TriplaneQuery:
    """How world points read a triplane (upstream's renderer settings that the query uses)."""

    radius: float = 0.87  # the scene occupies the cube [-radius, radius]^3
    density_bias: float = -1.0  # density_act = exp(density + density_bias)

    def features(self, points: torch.Tensor, scene_code: torch.Tensor) -> torch.Tensor:
        """Bilinear triplane features at world points: points (N, 3), scene_code (3, C, H, W) -> (N, 3*C).

        Planes are read at (x, y), (x, z), (y, z); the first coordinate indexes columns (W), the second rows
        (H); outside the cube the features fade to zero (grid_sample, align_corners=False, zero padding).
        """
        r = self.radius
        uvw = (points + r) / (2 * r) * 2 - 1  # [-r, r] -> [-1, 1], in upstream's order of operations
        coords = torch.stack((uvw[:, [0, 1]], uvw[:, [0, 2]], uvw[:, [1, 2]]), dim=0)  # (3, N, 2)
        sampled = F.grid_sample(
            scene_code, coords.unsqueeze(1), mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (3, C, 1, N)
        n_features = scene_code.shape[0] * scene_code.shape[1]
        return sampled.squeeze(2).permute(2, 0, 1).reshape(points.shape[0], n_features)  # (N, 3*C)

    def __call__(
        self, decoder: NeRFMLP, points: torch.Tensor, scene_code: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Query N points (N, 3): dict of density (N, 1), features (N, 3), density_act (N, 1), color (N,
        3)."""
        out = decoder(self.features(points, scene_code))  # (N, 4)
        density, features = out[:, 0:1], out[:, 1:4]
        return {
            "density": density,
            "features": features,
            "density_act": torch.exp(density + self.density_bias),
            "color": torch.sigmoid(features),
        }

    def log_density(self, decoder: NeRFMLP, points: torch.Tensor, scene_code: torch.Tensor) -> torch.Tensor:
        """log(density_act) = density + density_bias at points (N, 3) -> (N,); skips the colour
        activations."""
        out = decoder(self.features(points, scene_code))  # (N, 4)
        return out[:, 0] + self.density_bias
