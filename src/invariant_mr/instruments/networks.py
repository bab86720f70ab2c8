"""Networks of the invariant autoencoder: plain `nn.Module`s, no training logic.

The encoder is a linear map plus an MLP correction. The linear path lets the
network represent exactly the linear solutions (the right answer under linear
or polynomial mixing, where W-only monomials are linear in Z) and lets a
closed-form invariant solution be loaded as a warm start; the MLP path,
whose last layer starts at zero, adds the nonlinearity that other mixings need.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(d_in: int, d_out: int, hidden: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Z -> (hV, hW) = linear(Z) + mlp(Z), split into the confounded and the invariant block.

    With `linear_w`, the MLP correction feeds hV only, so hW is an affine
    function of Z: the right model class under linear and polynomial mixing,
    and one in which spurious invariant nonlinear functions of V cannot be built.
    """

    def __init__(
        self, d_in: int, dim_v: int, dim_w: int, hidden: int = 64, n_layers: int = 2, linear_w: bool = False
    ):
        super().__init__()
        self.dim_v, self.dim_w, self.linear_w = dim_v, dim_w, linear_w
        self.linear = nn.Linear(d_in, dim_v + dim_w)
        width = dim_v if linear_w else dim_v + dim_w
        self.correction = mlp(d_in, width, hidden, n_layers) if n_layers > 0 else None
        if self.correction is not None:
            # Start from the linear map alone, so a warm start is reproduced exactly at step 0.
            nn.init.zeros_(self.correction[-1].weight)
            nn.init.zeros_(self.correction[-1].bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.linear(z)
        hv, hw = h[:, : self.dim_v], h[:, self.dim_v :]
        if self.correction is not None:
            c = self.correction(z)
            hv = hv + c[:, : self.dim_v]
            if not self.linear_w:
                hw = hw + c[:, self.dim_v :]
        return hv, hw


class Decoder(nn.Module):
    """(hV, hW) -> Z_hat."""

    def __init__(self, dim_latent: int, d_out: int, hidden: int = 64, n_layers: int = 2):
        super().__init__()
        self.net = mlp(dim_latent, d_out, hidden, n_layers)

    def forward(self, hv: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([hv, hw], dim=1))


class RelevanceHead(nn.Module):
    """hW -> predicted exposure. Linear, because 2SLS uses hW linearly."""

    def __init__(self, dim_w: int):
        super().__init__()
        self.net = nn.Linear(dim_w, 1)

    def forward(self, hw: torch.Tensor) -> torch.Tensor:
        return self.net(hw).squeeze(1)


class InvariantAutoencoderNet(nn.Module):
    """Encoder, decoder and the optional relevance head in one module (one state dict)."""

    def __init__(
        self,
        d_in: int,
        dim_v: int,
        dim_w: int,
        hidden: int = 64,
        n_layers: int = 2,
        relevance: bool = False,
        linear_w: bool = False,
        encoder_layers: int | None = None,
    ):
        super().__init__()
        enc_layers = n_layers if encoder_layers is None else encoder_layers
        self.encoder = Encoder(d_in, dim_v, dim_w, hidden, enc_layers, linear_w)
        self.decoder = Decoder(dim_v + dim_w, d_in, hidden, n_layers)
        self.relevance = RelevanceHead(dim_w) if relevance else None
