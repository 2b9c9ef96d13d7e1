"""The torch module: an ensemble of hierarchical networks stacked along a leading member axis.

Stacking the members (every parameter has shape ``(n_members, ...)``, the MLP uses batched
matrix products) trains the whole ensemble in one pass per mini-batch: on a CPU the Python
overhead of a step is paid once rather than once per member. Members share nothing: Adam's
updates are element-wise, so this is exactly ``n_members`` independent networks.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hierfit.model import get_family


class HierEnsemble(nn.Module):
    """``n_members`` networks ``eta = X beta + sum_t Z_t b_t[g] + mlp(features, embeddings)``.

    Parameters
    ----------
    config
        Plain-data hyper-parameters (saved with the fit): ``n_members``, ``n_x``,
        ``terms`` (list of ``{"n_groups", "k", "correlated"}``), ``levels`` (list of
        ``{"n_groups", "dim"}``), ``n_features``, ``hidden`` and ``family``. A term's
        ``children`` lists ``[child_term, [[j_parent, j_child], ...]]``: the next level's term
        that varies the same coefficients (used by the Laplace term, see :meth:`information`).

    Examples
    --------
    >>> cfg = dict(n_members=2, n_x=1, terms=[dict(n_groups=3, k=1, correlated=False)],
    ...            levels=[dict(n_groups=3, dim=2)], n_features=1, hidden=[8], family="gaussian")
    >>> net = HierEnsemble(cfg)
    >>> lin, nl = net(torch.ones(4, 1), [torch.ones(4, 1)], [torch.tensor([0, 1, 2, -1])],
    ...               torch.zeros(4, 1), [torch.tensor([0, 1, 2, -1])])
    >>> tuple(lin.shape), tuple(nl.shape)
    ((2, 4), (2, 4))
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        M = int(config["n_members"])
        self.beta = nn.Parameter(torch.zeros(M, int(config["n_x"])))
        self.b = nn.ParameterList()
        self.chol = nn.ParameterList()  # raw Cholesky factors: strict lower part, log of the diagonal
        for t, term in enumerate(config["terms"]):
            k = int(term["k"])
            self.b.append(nn.Parameter(torch.zeros(M, int(term["n_groups"]), k)))
            self.chol.append(nn.Parameter(torch.zeros(M, k, k)))
            self.register_buffer(f"tril_mask_{t}", torch.tril(torch.ones(k, k), -1) * float(bool(term["correlated"])))
            # each group's parent group (set from the hierarchy in training, saved with the weights)
            self.register_buffer(f"up_{t}", torch.zeros(int(term["n_groups"]), dtype=torch.long))
        self.emb = nn.ParameterList()
        self.emb_levels: list[int] = []
        for li, level in enumerate(config["levels"]):
            if int(level["dim"]) > 0:
                self.emb.append(nn.Parameter(torch.zeros(M, int(level["n_groups"]), int(level["dim"]))))
                self.emb_levels.append(li)
        n_in = int(config["n_features"]) + sum(int(lv["dim"]) for lv in config["levels"])
        widths = [n_in, *[int(h) for h in config["hidden"]], 1] if config["hidden"] else []
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, c) in enumerate(itertools.pairwise(widths)):
            bound = 1.0 / math.sqrt(max(a, 1))
            last = i == len(widths) - 2
            # the last layer starts small so the nonlinear part grows from ~0 next to the linear part
            W = torch.empty(M, a, c).uniform_(-bound, bound) * (0.1 if last else 1.0)
            self.weights.append(nn.Parameter(W))
            self.biases.append(nn.Parameter(torch.zeros(M, 1, c)))
        # the family's dispersion on the log scale: gaussian sigma (scaled units), negative-binomial theta
        self.log_sigma = nn.Parameter(torch.zeros(M))

    @property
    def n_members(self) -> int:
        return int(self.config["n_members"])

    def cholesky(self, t: int) -> torch.Tensor:
        """Lower-triangular ``L_t`` (members × k × k) with ``Sigma_t = L_t L_tᵀ`` (scaled units)."""
        raw = self.chol[t]
        mask = getattr(self, f"tril_mask_{t}")
        return torch.tril(raw, -1) * mask + torch.diag_embed(torch.exp(torch.diagonal(raw, dim1=-2, dim2=-1)))

    def linear(self, X: torch.Tensor, Z: list[torch.Tensor], term_index: list[torch.Tensor]) -> torch.Tensor:
        """Linear part (members × rows); group index -1 (unseen) contributes 0."""
        out = self.beta @ X.T
        for bt, Zt, idx in zip(self.b, Z, term_index):
            known = (idx >= 0).to(X.dtype)
            out = out + (bt[:, idx.clamp(min=0)] * Zt).sum(-1) * known
        return out

    def nonlinear(self, feats: torch.Tensor, level_index: list[torch.Tensor]) -> torch.Tensor:
        """MLP output (members × rows); an unseen group's embedding is the prior mean 0."""
        M, B = self.n_members, feats.shape[0]
        if not len(self.weights):
            return feats.new_zeros(M, B)
        parts = [feats.unsqueeze(0).expand(M, B, feats.shape[1])]
        for e, li in zip(self.emb, self.emb_levels):
            idx = level_index[li]
            known = (idx >= 0).to(feats.dtype)[None, :, None]
            parts.append(e[:, idx.clamp(min=0)] * known)
        h = torch.cat(parts, dim=-1)
        n_layers = len(self.weights)
        for i, (W, c) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(c, h, W)
            if i < n_layers - 1:
                h = F.silu(h)
        return h.squeeze(-1)

    def forward(
        self,
        X: torch.Tensor,
        Z: list[torch.Tensor],
        term_index: list[torch.Tensor],
        feats: torch.Tensor,
        level_index: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(linear, nonlinear)``, each members × rows, on the network's (scaled) link scale."""
        return self.linear(X, Z, term_index), self.nonlinear(feats, level_index)

    def information(self, info: list[torch.Tensor], chols: list[torch.Tensor]) -> list[torch.Tensor]:
        """Data information about each group's deviations, children integrated out.

        A parent's deviation is seen only through its children: child group ``c`` measures
        its parent's coefficient with precision ``h_c / (1 + h_c tau_c²)`` (its own information
        ``h_c`` blurred by its deviation's variance ``tau_c²``), so a parent's information is the
        sum of that over its children, computed bottom-up. For nested intercepts this makes
        the Laplace term the exact marginal likelihood; correlated coefficients are rescaled
        by the ratio on the diagonal. Without it (rows counted at every level) the upper
        levels' SDs would be biased low.
        """
        inv_var = torch.exp(-2 * self.log_sigma)
        # gaussian information is per unit of the (learned) residual variance
        H = [s * inv_var[:, None, None, None] if get_family(self.config["family"]).normal_errors else s for s in info]
        h_eff = [torch.diagonal(h, dim1=-2, dim2=-1) for h in H]  # members × groups × k
        terms = self.config["terms"]
        for t in reversed(range(len(terms))):  # levels are ordered parents first
            children = terms[t].get("children") or []
            if not children:
                continue
            h_t = h_eff[t].clone()
            for c, pairs in children:
                var_c = torch.diagonal(chols[c] @ chols[c].transpose(-1, -2), dim1=-2, dim2=-1)  # members × k_c
                up = getattr(self, f"up_{c}")
                for jp, jc in pairs:
                    h_c = h_eff[c][..., jc]
                    through = h_c / (1 + h_c * var_c[:, jc : jc + 1])
                    h_t[..., jp] = torch.zeros_like(h_t[..., jp]).index_add(1, up, through)
            diag = torch.diagonal(H[t], dim1=-2, dim2=-1)
            ratio = torch.where(diag > 0, h_t / diag.clamp(min=1e-30), torch.ones_like(diag)).sqrt()
            H[t] = H[t] * ratio[..., :, None] * ratio[..., None, :]
            h_eff[t] = h_t
        return H

    def penalty(
        self,
        info: list[torch.Tensor],
        active: list[torch.Tensor],
        *,
        variance: str,
        embedding_sd: float,
        weight_decay: float,
    ) -> torch.Tensor:
        """Negative log prior (members,), with the Laplace correction for ``variance="laplace"``.

        ``info[t]`` is ``S`` of :func:`hierfit.engines.neural._prep.information`
        (members × groups × k × k); ``active[t]`` counts the groups with training rows.
        """
        total = self.beta.new_zeros(self.n_members)
        chols = [self.cholesky(t) for t in range(len(self.b))]
        H = self.information(info, chols) if variance == "laplace" else []
        for t, bt in enumerate(self.b):
            L = chols[t]
            if L.shape[-1] == 1:  # the common single-coefficient term: no triangular solves
                l2 = L[:, 0, 0] ** 2
                total = total + 0.5 * (bt**2).sum(dim=(1, 2)) / l2
                if variance == "laplace":
                    total = total + 0.5 * torch.log1p(H[t][..., 0, 0] * l2[:, None]).sum(-1)
                else:
                    total = total + active[t] * self.chol[t][:, 0, 0]
                continue
            u = torch.linalg.solve_triangular(L, bt.transpose(1, 2), upper=False)
            total = total + 0.5 * (u**2).sum(dim=(1, 2))
            if variance == "laplace":
                Lx = L[:, None]
                A = Lx.transpose(-1, -2) @ H[t] @ Lx
                A = A + torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
                if A.shape[-1] == 1:
                    total = total + 0.5 * torch.log(A[..., 0, 0]).sum(-1)
                else:
                    chol = torch.linalg.cholesky(A)
                    total = total + torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(dim=(1, 2))
            else:
                log_diag = torch.diagonal(self.chol[t], dim1=-2, dim2=-1).sum(-1)
                total = total + active[t] * log_diag
        for e in self.emb:
            total = total + 0.5 * (e**2).sum(dim=(1, 2)) / embedding_sd**2
        for W in self.weights:
            total = total + 0.5 * weight_decay * (W**2).sum(dim=(1, 2))
        return total


def _gaussian_nll(eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, prior: torch.Tensor,
                  log_disp: torch.Tensor) -> torch.Tensor:
    # lme4's prior weights for a gaussian outcome: Var(y_i) = sigma^2 / w_i (rows of weight 0 count nothing)
    z = (y - eta) * torch.exp(-log_disp)[:, None]
    return prior * 0.5 * z**2 + (prior > 0).to(eta.dtype) * log_disp[:, None]


def _binomial_nll(eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, prior: torch.Tensor,
                  log_disp: torch.Tensor) -> torch.Tensor:
    # y successes of `trials` (1 for bernoulli): -log p^y (1-p)^(n-y) = n softplus(eta) - y eta
    return prior * (trials * F.softplus(eta) - y * eta)


def _poisson_nll(eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, prior: torch.Tensor,
                 log_disp: torch.Tensor) -> torch.Tensor:
    return prior * (torch.exp(eta) - y * eta)


def _negative_binomial_nll(eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, prior: torch.Tensor,
                           log_disp: torch.Tensor) -> torch.Tensor:
    """NB2 with size ``theta = exp(log_disp)``, every term kept (theta is learned): ``-log p(y)``
    ``= -[lgamma(y+th) - lgamma(th) + th log th + y eta - (y+th) log(th + e^eta)] + lgamma(y+1)``,
    with ``log(th + e^eta)`` as a logaddexp so a large count or size cannot overflow."""
    log_th = log_disp[:, None]
    th = torch.exp(log_th)
    log_sum = torch.logaddexp(log_th, eta)
    ll = torch.lgamma(y + th) - torch.lgamma(th) + th * log_th + y * eta - (y + th) * log_sum
    return -prior * ll


#: family name -> (per-row negative log-likelihood up to constants, whether it learns a dispersion):
#: the engine's translation of the family table into torch. The dispersion parameter
#: (``log_sigma``) is the gaussian residual SD or the negative-binomial size theta, as
#: ``Family.dispersion`` names it.
TORCH_FAMILIES: dict[str, tuple[Any, bool]] = {
    "gaussian": (_gaussian_nll, True),
    "bernoulli": (_binomial_nll, False),
    "binomial": (_binomial_nll, False),
    "poisson": (_poisson_nll, False),
    "negative_binomial": (_negative_binomial_nll, True),
}


def learns_sigma(family: str) -> bool:
    """Whether the family's torch likelihood has a dispersion (``log_sigma``: sigma or theta) to learn."""
    return TORCH_FAMILIES[family][1]


def negative_loglik(eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, prior: torch.Tensor,
                    log_sigma: torch.Tensor, family: str) -> torch.Tensor:
    """Per-row negative log-likelihood up to constants (members × rows), times the prior weights.

    ``trials`` are the binomial trials (1 elsewhere); ``prior`` the prior weights (lme4's
    ``weights``: each row's log-likelihood counts ``w_i`` times; gaussian: ``Var = sigma²/w_i``).
    """
    try:
        nll = TORCH_FAMILIES[family][0]
    except KeyError:
        raise ValueError(f"Engine 'neural' has no likelihood for family {family!r}.") from None
    return nll(eta, y, trials, prior, log_sigma)
