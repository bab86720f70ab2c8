"""Networks of the invariant autoencoder: plain `nn.Module`s, no training logic.

The encoder is a linear map plus an MLP correction. The linear path lets the
network represent exactly the linear solutions (the right answer under linear
or polynomial mixing, where W-only monomials are linear in Z) and lets a
closed-form invariant solution be loaded as a warm start; the MLP path,
whose last layer starts at zero, adds the nonlinearity that other mixings need.

The authors' recipe (issue 11, `InvariantAutoencoder.paper_recipe`) uses
other pieces, selected by name: a plain MLP encoder whose hidden layers are
Linear -> LayerNorm -> ReLU ("layernorm-mlp"), and a decoder that is a linear
map of all monomials of the codes up to a degree ("poly"), or the same
LayerNorm MLP.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

import torch
from torch import nn

#: Encoder and decoder kinds, by name (`InvariantAutoencoder(encoder=..., decoder=...)`).
ENCODER_KINDS = ("linear+mlp", "layernorm-mlp")
DECODER_KINDS = ("mlp", "poly", "layernorm-mlp")


def mlp(d_in: int, d_out: int, hidden: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def layernorm_mlp(d_in: int, d_out: int, hidden: int, n_layers: int) -> nn.Sequential:
    """`n_layers` hidden layers Linear -> LayerNorm -> ReLU, then a linear output layer (the authors' blocks)."""
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def monomial_exponents(dim: int, degree: int) -> list[tuple[int, ...]]:
    """Index tuples of the monomials of `dim` variables of degrees 1..`degree` (the constant excluded)."""
    return [c for deg in range(1, degree + 1) for c in combinations_with_replacement(range(dim), deg)]


def monomial_features(h: torch.Tensor, degree: int) -> torch.Tensor:
    """All monomials of the columns of h of degrees 1..`degree`: C(k + degree, degree) - 1 columns.

    The same order as `simulation.paper.monomials` without its constant column
    (lexicographic in the index tuples). Built degree by degree from blocks
    B_d[i], the degree-d monomials whose smallest index is i:
    B_d[i] = h_i * [B_{d-1}[i], ..., B_{d-1}[k-1]]; a few broadcast products
    instead of one gather per monomial, whose backward passes dominated training.
    """
    k = h.shape[1]
    blocks = [h[:, i : i + 1] for i in range(k)]
    out = list(blocks)
    for _ in range(2, degree + 1):
        tails = [torch.cat(blocks[i:], dim=1) for i in range(k)]
        blocks = [h[:, i : i + 1] * tails[i] for i in range(k)]
        out += blocks
    return torch.cat(out, dim=1)


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


class LayerNormEncoder(nn.Module):
    """Z -> (hV, hW) by one plain MLP with LayerNorm + ReLU hidden layers (the authors' encoder)."""

    def __init__(self, d_in: int, dim_v: int, dim_w: int, hidden: int = 64, n_layers: int = 2):
        super().__init__()
        self.dim_v, self.dim_w = dim_v, dim_w
        self.net = layernorm_mlp(d_in, dim_v + dim_w, hidden, n_layers)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(z)
        return h[:, : self.dim_v], h[:, self.dim_v :]


class Decoder(nn.Module):
    """(hV, hW) -> Z_hat by an MLP (SiLU, or LayerNorm + ReLU with `layernorm`)."""

    def __init__(self, dim_latent: int, d_out: int, hidden: int = 64, n_layers: int = 2, layernorm: bool = False):
        super().__init__()
        self.net = (layernorm_mlp if layernorm else mlp)(dim_latent, d_out, hidden, n_layers)

    def forward(self, hv: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([hv, hw], dim=1))


class PolynomialDecoder(nn.Module):
    """(hV, hW) -> Z_hat = linear map of all monomials of the codes up to `degree` (the bias is the constant).

    The authors' decoder for polynomial mixing: with the true degree it contains
    the mixing exactly, up to an affine map of the latents.
    """

    def __init__(self, dim_latent: int, d_out: int, degree: int = 3):
        super().__init__()
        self.degree = degree
        self.linear = nn.Linear(len(monomial_exponents(dim_latent, degree)), d_out)

    def forward(self, hv: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        return self.linear(monomial_features(torch.cat([hv, hw], dim=1), self.degree))


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
        encoder: str = "linear+mlp",
        decoder: str = "mlp",
        decoder_degree: int = 3,
    ):
        super().__init__()
        if encoder not in ENCODER_KINDS:
            raise ValueError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODER_KINDS)}")
        if decoder not in DECODER_KINDS:
            raise ValueError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODER_KINDS)}")
        enc_layers = n_layers if encoder_layers is None else encoder_layers
        if encoder == "linear+mlp":
            self.encoder = Encoder(d_in, dim_v, dim_w, hidden, enc_layers, linear_w)
        else:
            self.encoder = LayerNormEncoder(d_in, dim_v, dim_w, hidden, enc_layers)
        if decoder == "poly":
            self.decoder = PolynomialDecoder(dim_v + dim_w, d_in, decoder_degree)
        else:
            self.decoder = Decoder(dim_v + dim_w, d_in, hidden, n_layers, layernorm=decoder == "layernorm-mlp")
        self.relevance = RelevanceHead(dim_w) if relevance else None
