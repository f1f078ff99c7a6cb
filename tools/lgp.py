"""The Latent Guidance Predictor: a per-pixel MLP from resized, concatenated U-Net taps plus a timestep encoding to the encoded edge map."""
import json
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

import sdmodels

HIDDEN = [512, 256, 128, 64]
TIME_DIM = 32


def tap_features(taps: List[torch.Tensor], size: List[int]) -> torch.Tensor:
    """F(z_t | c, t): every tap resized to `size` (bilinear, align_corners false), concatenated on channels."""
    return torch.cat([F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False) for t in taps], dim=1)


class LGP(nn.Module):
    """forward(taps, t) -> predicted encoded edge map [B, out, H, W] at the latent size.

    Input per pixel: the tap features of that pixel (tap order), then the sinusoidal encoding of t (cos half,
    then sin half, max period 10000, `time_dim` values). Layers: Linear + BatchNorm + ReLU for each hidden size,
    then Linear to `out` channels."""

    def __init__(self, in_channels: int, latent_size: int, time_dim: int = TIME_DIM, hidden: List[int] = HIDDEN,
                 out_channels: int = 4):
        super().__init__()
        self.in_channels = in_channels
        self.time_dim = time_dim
        self.latent_size = latent_size
        layers: List[nn.Module] = []
        c = in_channels + time_dim
        for h in hidden:
            layers += [nn.Linear(c, h), nn.BatchNorm1d(h), nn.ReLU()]
            c = h
        layers.append(nn.Linear(c, out_channels))
        self.mlp = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, taps: List[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        size = [self.latent_size, self.latent_size]
        f = tap_features(taps, size)
        b, c, h, w = f.shape
        if t.dim() == 0:
            t = t.expand(b)
        te = sdmodels.timestep_embedding(t, self.time_dim)
        x = torch.cat([f.permute(0, 2, 3, 1).reshape(b * h * w, c),
                       te[:, None, :].expand(b, h * w, self.time_dim).reshape(b * h * w, self.time_dim)], dim=1)
        y = self.mlp(x)
        return y.reshape(b, h, w, self.out_channels).permute(0, 3, 1, 2)


def describe(m: LGP, manifest: dict, extra: dict = None) -> dict:
    """The manifest's `lgp` section for this predictor."""
    d = {
        "input": "U-Net taps in manifest order, each resized to the latent size (bilinear, align_corners false), "
                 "concatenated on channels, then the time encoding; one MLP evaluation per latent pixel",
        "forward": "forward(taps: List[Tensor], t: Tensor[B]) -> Tensor[B, out_channels, H, W]",
        "in_channels": m.in_channels, "latent_size": m.latent_size,
        "taps": [t["name"] for t in manifest["taps"]],
        "time_encoding": {"type": "sinusoidal", "dim": m.time_dim, "max_period": 10000, "order": "cos,sin"},
        "hidden": [l.out_features for l in m.mlp if isinstance(l, nn.Linear)][:-1],
        "normalization": "batchnorm (eval mode at inference)", "out_channels": m.out_channels,
        "target": "VAE encoder mean x scaling_factor of the edge map (edges 1 on 0, 3 channels, mapped to [-1, 1])",
    }
    d.update(extra or {})
    return d


def save(m: LGP, path: str, description: dict) -> None:
    """Saves the predictor as TorchScript with its description inside (extra file lgp.json)."""
    was = m.training
    m.eval()
    torch.jit.save(torch.jit.script(m), path, _extra_files={"lgp.json": json.dumps(description)})
    m.train(was)
