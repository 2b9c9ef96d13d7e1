"""Sampler health as :class:`hierfit.checks.Diagnostic` findings, each saying what to do next.

Checks (names in :data:`hierfit.checks.CHECKS`): ``divergences``, ``treedepth``, ``rhat``
(> 1.01 on any parameter) and ``ess`` (bulk or tail ESS below 100 per chain, the usual
rule of thumb: 400 for 4 chains).
"""

from __future__ import annotations

import numpy as np

from hierfit.checks import Diagnostic

RHAT_MAX = 1.01
ESS_PER_CHAIN = 100


def _worst(ds, largest: bool) -> tuple[str, float]:
    """The parameter (``name[index]``) with the largest/smallest finite value in a Dataset."""
    best_name, best = "", np.nan
    for name, da in ds.data_vars.items():
        vals = np.asarray(da, dtype=float)
        if not np.isfinite(vals).any():
            continue
        flat = np.where(np.isfinite(vals), vals, -np.inf if largest else np.inf)
        pos = int(np.argmax(flat) if largest else np.argmin(flat))
        v = float(flat.ravel()[pos])
        if np.isnan(best) or (v > best if largest else v < best):
            idx = np.unravel_index(pos, vals.shape) if vals.ndim else ()
            labels = [str(da.coords[d].values[i]) for d, i in zip(da.dims, idx)]
            best_name, best = (f"{name}[{', '.join(labels)}]" if labels else name), v
    return best_name, best


def sampler_diagnostics(idata, structure=None, *, max_treedepth: int = 10) -> list[Diagnostic]:
    """Divergences, tree depth, R-hat and ESS of an InferenceData's posterior.

    Examples
    --------
    >>> import arviz as az, numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> idata = az.from_dict(posterior={"mu": rng.normal(size=(4, 500))},
    ...                      sample_stats={"diverging": np.zeros((4, 500), bool)})
    >>> sampler_diagnostics(idata)
    []
    """
    import warnings

    import arviz as az

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # constant entries (a correlation matrix's unit diagonal) give NaN R-hat/ESS: skipped below
        warnings.simplefilter("ignore", RuntimeWarning)
        return _diagnose(idata, az, max_treedepth)


def _diagnose(idata, az, max_treedepth: int) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    stats = getattr(idata, "sample_stats", None)
    n_chains = int(idata.posterior.sizes["chain"])
    if stats is not None and "diverging" in stats:
        div = np.asarray(stats["diverging"], dtype=bool)
        if div.any():
            found.append(
                Diagnostic(
                    "divergences",
                    f"{int(div.sum())} of {div.size} post-warm-up transitions diverged, so the posterior may be "
                    "biased. Refit with a higher target_accept (e.g. target_accept=0.99); if they persist, give the "
                    "group-level SDs tighter priors (priors={'sd': hierfit.priors.half_normal(...)}) or drop a "
                    "level whose SD is near zero.",
                )
            )
    if stats is not None:
        hits = None
        for key in ("reached_max_treedepth", "maxdepth_reached"):
            if key in stats:
                hits = np.asarray(stats[key], dtype=bool)
                break
        if hits is None and "tree_depth" in stats:
            hits = np.asarray(stats["tree_depth"]) >= max_treedepth
        if hits is not None and hits.any():
            found.append(
                Diagnostic(
                    "treedepth",
                    f"{int(hits.sum())} of {hits.size} transitions hit the maximum tree depth: sampling is slow and "
                    "may explore poorly. Raise max_treedepth (e.g. max_treedepth=12), or rescale predictors so "
                    "coefficients have similar scales.",
                )
            )
    if n_chains > 1:
        rhat = az.rhat(idata.posterior)
        name, value = _worst(rhat, largest=True)
        if value > RHAT_MAX:
            found.append(
                Diagnostic(
                    "rhat",
                    f"R-hat is {value:.3f} for {name} (above {RHAT_MAX}): the chains disagree. Run longer "
                    "(more tune= and draws=), check for multimodality, and do not trust the estimates until "
                    "R-hat <= 1.01.",
                )
            )
    threshold = ESS_PER_CHAIN * n_chains
    for method in ("bulk", "tail"):
        ess = az.ess(idata.posterior, method=method)
        name, value = _worst(ess, largest=False)
        if value < threshold:
            found.append(
                Diagnostic(
                    "ess",
                    f"{method.capitalize()} effective sample size is {value:.0f} for {name} (below {threshold}, "
                    f"{ESS_PER_CHAIN} per chain): intervals are unreliable. Refit with more draws= (and chains=).",
                )
            )
    return found
