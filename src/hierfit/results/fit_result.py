"""FitResult: the one result type every engine's fit is wrapped in."""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from hierfit.checks import Diagnostic
from hierfit.design import NATIONAL_LEVEL, DesignEncoding, RowDesign
from hierfit.design.sources import SourceInfo, is_source
from hierfit.design.hierarchy import Hierarchy
from hierfit.engines.base import EngineFit
from hierfit.exceptions import SpecError, UnseenGroupsWarning
from hierfit.model import ModelSpec
from hierfit.results import marginal
from hierfit.results.marginal import By
from hierfit.results.variance_partition import DesignMoments, variance_partition

DEFAULT_LEVEL = 0.9
INTERVALS = ("confidence", "prediction")


def _check_level(level: float) -> float:
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise SpecError(f"The interval 'level' must be a number strictly between 0 and 1; got {level!r}.")
    return float(level)


@dataclass(eq=False)
class FitResult:
    """One fitted model, whatever the engine.

    Tables follow fixed schemas (see the methods); ``predict`` and ``decompose`` keep the rows
    and order of their input, and ``decompose(data).sum(axis=1) == predict(data, scale="link")``.

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=3)
    >>> fit = hierfit.fit("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)", sim.data, engine="ols")
    >>> parts = fit.decompose(sim.data)
    >>> bool(np.allclose(parts.sum(axis=1), fit.predict(sim.data)["prediction"]))
    True
    """

    spec: ModelSpec
    engine: str
    engine_fit: EngineFit
    encoding: DesignEncoding
    n_obs: int
    diagnostics: list[Diagnostic] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    moments: DesignMoments | None = None
    #: where the fitting rows were streamed from (``None``: a pandas DataFrame in memory)
    source: SourceInfo | None = None

    # -- tables -------------------------------------------------------------------------------
    @property
    def hierarchy(self) -> Hierarchy:
        """The tree of groups seen in fitting."""
        return self.encoding.hierarchy

    @property
    def statistics(self) -> dict[str, float]:
        """Fit statistics the engine provides (logLik, AIC, BIC, ... where defined)."""
        return dict(self.engine_fit.statistics)

    def fixed_effects(self, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """Population-level coefficients: ``term, estimate, std_error, lower, upper``."""
        return self.engine_fit.fixed_effects(_check_level(level))

    def variance_components(self) -> pd.DataFrame:
        """SDs and correlations per level plus the residual, as lme4's ``as.data.frame(VarCorr)``.

        Columns ``level, term1, term2, variance, sd_or_corr``; ``term2`` is empty on SD rows and
        names the second term on correlation rows (whose ``variance`` is the covariance).
        """
        return self.engine_fit.variance_components()

    def variance_partition(self, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """ICC per level, Nakagawa's marginal and conditional R² and each level's share of the
        variance, as R's ``performance`` defines them (:mod:`hierfit.results.variance_partition`).

        Columns ``quantity, level, estimate, lower, upper`` (posterior intervals for Bayesian
        engines, else NaN); gaussian and binomial (latent scale) outcomes.
        """
        return variance_partition(self, _check_level(level))

    # -- marginal effects (:mod:`hierfit.results.marginal`) -----------------------------------
    def predictions(self, data: pd.DataFrame, *, by: By = None, scale: Literal["response", "link"] = "response",
                    level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """Predicted means with intervals from the engine's own uncertainty: one per row of ``data``
        (``by=None``; a :func:`hierfit.datagrid` gives at-means predictions), or averaged over all
        rows (``by=True``) or within groups of columns (``by="market"``).

        Columns: the ``by`` columns, ``estimate, std_error, lower, upper`` and, for averages, ``n_rows``.
        ``predictions(data)["estimate"]`` equals ``predict(data)["prediction"]``.
        """
        return marginal.predictions(self, data, by=by, scale=scale, level=_check_level(level))

    def slopes(self, data: pd.DataFrame, variable: str, *, by: By = True, scale: Literal["response", "link"] = "response",
               level: float = DEFAULT_LEVEL, eps: float | None = None) -> pd.DataFrame:
        """Average marginal effect of a numeric ``variable`` on the mean (a centred numerical
        derivative of the engine's own prediction, step ``eps``; default 1e-4 of the variable's
        range, 0.1 for trees), over all rows or ``by`` groups (``None``: per row).

        Columns ``term``, the ``by`` columns, ``estimate, std_error, lower, upper`` (and ``n_rows``).
        """
        return marginal.slopes(self, data, variable, by=by, scale=scale, level=_check_level(level), eps=eps)

    def comparisons(self, data: pd.DataFrame, variable: str, *, values: Any = None,
                    comparison: Literal["difference", "ratio"] = "difference", by: By = True,
                    scale: Literal["response", "link"] = "response", level: float = DEFAULT_LEVEL) -> pd.DataFrame:
        """The mean with ``variable`` at ``hi`` against ``lo``: a difference or a ratio (of the averages).

        ``values``: ``None`` (numeric: ``+1`` centred on each row; categorical or grouping: every
        level against the first), a number ``d`` (``+d``) or a pair ``(lo, hi)``. Columns ``term,
        contrast``, the ``by`` columns, ``estimate, std_error, lower, upper`` (and ``n_rows``).
        """
        return marginal.comparisons(self, data, variable, values=values, comparison=comparison, by=by, scale=scale,
                                    level=_check_level(level))

    def group_effects(
        self, kind: Literal["deviation", "total", "both"] = "both", level: float = DEFAULT_LEVEL
    ) -> pd.DataFrame:
        """Every group's effect: its deviation from its parent, and/or its total.

        Columns ``level, group, parent, term, kind, estimate, std_error, lower, upper, n_rows``.
        The national root is the first row(s) (``level == "national"``); its ``n_rows`` is
        every fitted row.
        """
        if kind not in ("deviation", "total", "both"):
            raise SpecError(f"'kind' must be one of: both, deviation, total. Got {kind!r}.")
        table = self.engine_fit.group_effects(_check_level(level))
        # The root holds every fitted row; a tree without levels has no sizes to sum, so the
        # count comes from here, which knows it for every engine.
        table.loc[table["level"] == NATIONAL_LEVEL, "n_rows"] = self.n_obs
        if kind != "both":
            table = table[table["kind"] == kind].reset_index(drop=True)
        return table

    # -- rows ---------------------------------------------------------------------------------
    def _design(self, data: pd.DataFrame) -> RowDesign:
        design = self.encoding.apply(data)
        if design.unseen:
            parts = []
            for lv, groups in design.unseen.items():
                names = ", ".join(f"{g!r} ({n} rows)" for g, n in list(groups.items())[:5])
                more = f" and {len(groups) - 5} more" if len(groups) > 5 else ""
                parts.append(f"{lv}: {names}{more}")
            warnings.warn(
                "Groups not seen in fitting; their rows use the deepest known ancestor's effects "
                "(see the 'level_used' column): " + "; ".join(parts),
                UnseenGroupsWarning,
                stacklevel=3,
            )
        return design

    def decompose(self, data: pd.DataFrame | Any, *, out: str | Path | None = None,
                  batch_size: int | None = None) -> pd.DataFrame | Any:
        """Per-row additive parts on the link scale, indexed like ``data``.

        Columns: ``national``, one per level and coefficient (``market[Intercept]``,
        ``market[x1]``, ...), ``population`` (the population-level predictors), and for engines
        with one, ``nonlinear``. Unseen groups contribute 0 at their level.

        ``data`` may also be a streaming source (:mod:`hierfit.results.streaming`): a Dask
        DataFrame gives a Dask DataFrame; Parquet files are written to the folder ``out``.
        """
        if is_source(data):
            from hierfit.results.streaming import apply_to_source

            return apply_to_source(self, data, "decompose", out=out, batch_size=batch_size)
        design = self._design(data)
        parts = self.engine_fit.contributions(design)
        parts.index = data.index
        return parts

    def predict(
        self,
        data: pd.DataFrame,
        interval: Literal["confidence", "prediction"] | None = None,
        level: float = DEFAULT_LEVEL,
        scale: Literal["response", "link"] = "response",
        *,
        out: str | Path | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame | Any:
        """Predictions for ``data`` (same rows and order), falling back for unseen groups.

        ``data`` may also be a streaming source (:mod:`hierfit.results.streaming`), predicted
        batch by batch: a Dask DataFrame gives a Dask DataFrame (or, with ``out=``, a Parquet
        folder); Parquet files are written to the folder ``out``, one output file per input file.

        Parameters
        ----------
        interval
            ``None`` (no bounds), ``"confidence"`` (uncertainty of the mean) or
            ``"prediction"`` (adds outcome noise). NaN bounds for engines without uncertainty.
        level
            Interval probability, default 0.9.
        scale
            ``"response"`` (default: the mean -- a probability, an expected count) or
            ``"link"`` (the linear predictor; equals the sum of :meth:`decompose`). Confidence
            intervals come on either scale; prediction intervals bound the outcome, so on the
            link scale only for an identity link.

        Returns
        -------
        DataFrame with ``prediction`` (and ``lower``, ``upper``) and ``level_used``.
        """
        if is_source(data):
            from hierfit.results.streaming import apply_to_source

            return apply_to_source(self, data, "predict", out=out, batch_size=batch_size, interval=interval, level=level,
                                   scale=scale)
        if interval not in (None, *INTERVALS):
            raise SpecError(f"'interval' must be None, 'confidence' or 'prediction'; got {interval!r}.")
        if scale not in ("response", "link"):
            raise SpecError(f"'scale' must be 'response' or 'link'; got {scale!r}.")
        level = _check_level(level)
        family = self.spec.family
        if interval == "prediction" and scale == "link" and family.link.name != "identity":
            raise SpecError(
                f"Prediction intervals bound the outcome, which has no {family.link.name}-scale value; ask for "
                "interval='prediction' on scale='response', or interval='confidence' for the linear predictor."
            )
        design = self._design(data)
        eta = self.engine_fit.contributions(design).to_numpy().sum(axis=1)
        pred = eta if scale == "link" else family.inverse_link(eta)
        table = pd.DataFrame({"prediction": pred}, index=data.index)
        if interval is not None:
            bounds = self.engine_fit.interval(design, interval, level, scale)
            if bounds is None:
                marginal.warn_without_uncertainty(self.engine, "'lower' and 'upper' are", stacklevel=3)
                table["lower"] = np.nan
                table["upper"] = np.nan
            else:
                table["lower"], table["upper"] = bounds
        table["level_used"] = design.level_used()
        return table

    def native(self) -> Any:
        """The engine's own fitted object (InferenceData, booster, torch module, ...)."""
        return self.engine_fit.native()

    # -- text ---------------------------------------------------------------------------------
    def summary(self) -> str:
        """A printable summary: spec, tree, fixed effects, variance components, diagnostics."""
        lines = [
            f"hierfit fit -- engine '{self.engine}', family '{self.spec.family}'",
            f"formula: {self.spec.text}",
            f"rows: {self.n_obs}" + ("" if self.source is None else
                                     f" (streamed from {self.source.description}, batches of up to {self.source.batch_size:,} rows)"),
            "",
            "hierarchy:",
            self.hierarchy.describe(),
            "",
            "fixed effects:",
            self.fixed_effects().to_string(index=False, float_format=lambda v: f"{v:.4g}"),
        ]
        vc = self.variance_components()
        if len(vc):
            lines += ["", "variance components:", vc.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
        stats = {k: v for k, v in self.statistics.items() if np.isfinite(v)}
        if stats:
            lines += ["", "statistics: " + ", ".join(f"{k}={v:.6g}" for k, v in stats.items())]
        extra = getattr(self.engine_fit, "summary_lines", None)
        if callable(extra):
            lines += ["", *extra()]
        if self.diagnostics:
            lines += ["", "diagnostics:", *(f"  {d}" for d in self.diagnostics)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<FitResult engine={self.engine!r} formula={self.spec.text!r} n_obs={self.n_obs}>"

    def _repr_html_(self) -> str:
        """Jupyter's display: spec, fixed effects, variance components, tree and diagnostics."""
        from hierfit.results import notebook

        blocks = [notebook.block("fixed effects", notebook.table(self.fixed_effects()))]
        vc = self.variance_components()
        if len(vc):
            blocks.append(notebook.block("variance components", notebook.table(vc)))
        blocks.append(notebook.block("hierarchy", f"<pre>{html.escape(self.hierarchy.describe())}</pre>", open_=False))
        facts = [f"formula {self.spec.text}", f"{self.n_obs} rows"]
        facts += [f"{k} {v:.6g}" for k, v in self.statistics.items() if k in ("loglik", "aic", "bic") and np.isfinite(v)]
        return notebook.fragment(f"hierfit fit: engine '{self.engine}', family '{self.spec.family}'", facts, blocks,
                                 [str(d) for d in self.diagnostics if d.severity != "ignore"])

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save to folder ``path`` (format: :mod:`hierfit.results.persistence`); reload with :func:`hierfit.load`.

        The save is atomic: readers of ``path`` see the previous save or this one, never a
        mix. An existing hierfit save at ``path`` is replaced only with ``overwrite=True``;
        a folder holding other files is refused. Nothing is pickled: a saved fit is data.
        """
        from hierfit.results.persistence import save_fit

        return save_fit(self, path, overwrite=overwrite)
