"""What the regressor and the classifier share: parameters, the fit, prediction, output, pickling.

* **Parameters.** ``engine_options`` is a dict, so scikit-learn could not search over one option
  of it; ``get_params(deep=True)`` also reports each option as ``engine_options__<name>`` and
  ``set_params(engine_options__<name>=v)`` sets it in a copy of the dict (the caller's dict is
  never changed), which is what ``GridSearchCV`` and a ``Pipeline`` step's
  ``model__engine_options__<name>`` need.
* **Unseen groups.** Held-out groups are the point of leave-groups-out validation, so a warning
  per fold would only be noise: ``predict`` collects them in ``unseen_groups_`` (since the last
  fit), and ``unseen_groups="warn"`` or ``"error"`` asks for a warning or an error instead.
* **Pickling.** scikit-learn pickles estimators (joblib workers, ``check_estimators_pickle``);
  hierfit never pickles a fit. The fitted ``result_`` travels as hierfit's own save format --
  the bytes of the files :meth:`FitResult.save` writes -- and is rebuilt by
  :func:`hierfit.load`, which verifies every file's checksum first.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from hierfit.api import fit as hierfit_fit
from hierfit.evaluate.splits import array_column_names
from hierfit.exceptions import DataError, PersistenceError, SpecError, UnseenGroupsWarning
from hierfit.formula import parse_formula
from hierfit.results import FitResult, load_fit
from hierfit.sklearn._frame import auto_formula, group_columns, response_name, to_frame

OPTIONS_PREFIX = "engine_options__"
UNSEEN_POLICIES = ("collect", "error", "warn")
OUTPUTS = ("default", "pandas")
#: keywords of hierfit.fit that are not engine options (passing one in engine_options would clash)
_FIT_KEYWORDS = ("checks", "engine", "family", "hierarchy", "link", "national", "offset", "priors", "weights")
#: the key under which a pickled estimator carries its fit's saved files
_SAVED = "_hierfit_saved_fit"


class HierarchicalBase(BaseEstimator):
    """The shared machinery of :class:`~hierfit.sklearn.HierarchicalRegressor` and
    :class:`~hierfit.sklearn.HierarchicalClassifier` (not used on its own)."""

    formula: str | None
    engine: str
    link: str | None
    groups: Any
    national: str
    hierarchy: Any
    priors: Any
    engine_options: Mapping[str, Any] | None
    checks: Mapping[str, str] | None
    unseen_groups: str

    # -- parameters ---------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters; with ``deep``, also ``engine_options__<name>`` per option."""
        params = super().get_params(deep=deep)
        if deep and isinstance(self.engine_options, Mapping):
            params.update({OPTIONS_PREFIX + str(k): v for k, v in self.engine_options.items()})
        return params

    def set_params(self, **params: Any) -> HierarchicalBase:
        """Set parameters; ``engine_options__<name>=value`` sets one engine option (in a copy of the dict)."""
        options = {k.removeprefix(OPTIONS_PREFIX): params.pop(k) for k in list(params) if k.startswith(OPTIONS_PREFIX)}
        super().set_params(**params)  # a new engine_options dict, if given, comes first
        if options:
            current = self.engine_options if self.engine_options is not None else {}
            if not isinstance(current, Mapping):
                raise SpecError(f"'engine_options' must be a dict to set {sorted(options)} in it; it is {current!r}.")
            self.engine_options = {**current, **options}
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # Grouping columns are categorical: scikit-learn's checks then feed integer-coded
        # columns, so a grouping column has several rows per group, as real group labels do.
        tags.input_tags.categorical = True
        return tags

    # -- fitting ------------------------------------------------------------------------------
    def _fit_hierfit(self, X: Any, y: Any, family: str) -> None:
        """Fit ``family`` on ``X`` and the (already encoded) response ``y``; sets the fitted attributes."""
        X, _ = validate_data(self, X, y, reset=True, skip_check_array=True)  # names, n_features_in_, y given
        if self.unseen_groups not in UNSEEN_POLICIES:
            raise SpecError(f"'unseen_groups' must be one of: {', '.join(UNSEEN_POLICIES)}. Got {self.unseen_groups!r}.")
        options = self._engine_options()
        frame = to_frame(X, min_rows=2)
        formula, response = self._formula(list(frame.columns))
        if len(y) != len(frame):
            raise DataError(f"X has {len(frame)} rows and y has {len(y)} values; give one y value per row of X.")
        frame[response] = np.asarray(y)
        with warnings.catch_warnings(record=True) as caught:
            result = hierfit_fit(formula, frame, engine=self.engine, family=family, link=self.link, national=self.national,
                                 hierarchy=self.hierarchy, priors=self.priors, checks=self.checks, **options)
        for w in caught:  # data checks and fit warnings, pointed at the caller's fit() rather than at this module
            warnings.warn(w.message, stacklevel=3)
        self.result_: FitResult = result
        self.formula_: str = formula
        self.unseen_groups_: list[str] = []

    def _engine_options(self) -> dict[str, Any]:
        options = self.engine_options if self.engine_options is not None else {}
        if not isinstance(options, Mapping):
            raise SpecError(f"'engine_options' must be a dict of the engine's options, e.g. {{'reml': False}}; got {options!r}.")
        clash = sorted(set(map(str, options)) & set(_FIT_KEYWORDS))
        if clash:
            raise SpecError(
                f"'engine_options' holds {', '.join(clash)}, which are not engine options. Engine, family, link, national, "
                "hierarchy, priors and checks are the estimator's own parameters; an offset goes in the formula as "
                "offset(column); prior weights are not taken (they are not scikit-learn's sample weights)."
            )
        return {str(k): v for k, v in options.items()}

    def _formula(self, columns: list[str]) -> tuple[str, str]:
        """The formula to fit and the name of its response column."""
        if self.formula is None:
            response = response_name(columns)
            return auto_formula(response, columns, group_columns(self.groups, columns)), response
        if self.groups is not None:
            raise SpecError(
                f"Pass 'groups' (to build a formula from the columns of X) or 'formula', not both; the formula "
                f"{self.formula!r} names its grouping columns in its group-level terms. Drop groups={self.groups!r}."
            )
        if not isinstance(self.formula, str):
            raise SpecError(f"'formula' must be formula text such as 'y ~ x1 + (1 | market)'; got {type(self.formula).__name__}.")
        response = parse_formula(self.formula).response
        if response in columns:
            raise DataError(
                f"X has a column {response!r}, the response of the formula {self.formula!r}: the response comes from "
                "fit(X, y)'s y. Drop it from X, or name the response otherwise in the formula."
            )
        return self.formula, response

    # -- prediction ---------------------------------------------------------------------------
    def _predict_hierfit(self, X: Any) -> tuple[np.ndarray, pd.Index]:
        """The fit's prediction (the expected outcome) for every row of ``X`` and ``X``'s index, collecting unseen groups."""
        check_is_fitted(self, "result_")
        if not isinstance(X, pd.DataFrame):
            # 2-D first, so a 1-D X gets scikit-learn's "Reshape your data" before the feature count
            X = check_array(X, dtype=None, ensure_all_finite=False, input_name="X")
        X = validate_data(self, X, reset=False, skip_check_array=True)
        names = list(getattr(self, "feature_names_in_", array_column_names(self.n_features_in_)))
        frame = to_frame(X, names)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnseenGroupsWarning)  # recorded, whatever the caller's filters say
            table = self.result_.predict(frame)
        self._sort_warnings(caught)
        return table["prediction"].to_numpy(dtype=float), frame.index

    def _sort_warnings(self, caught: list[warnings.WarningMessage]) -> None:
        unseen = []
        for w in caught:
            if issubclass(w.category, UnseenGroupsWarning):
                unseen.append(str(w.message))
            else:
                warnings.warn(w.message, stacklevel=4)  # anything else reaches the caller as it would have
        self.unseen_groups_.extend(unseen)
        if unseen and self.unseen_groups == "error":
            raise DataError(f"{unseen[0]} (unseen_groups='error': use 'collect' or 'warn' to predict such rows from their "
                            "deepest known ancestor, or fit with those groups).")
        if self.unseen_groups == "warn":
            for message in unseen:
                warnings.warn(message, UnseenGroupsWarning, stacklevel=4)

    # -- output -------------------------------------------------------------------------------
    def set_output(self, *, transform: str | None = None) -> HierarchicalBase:
        """``transform="pandas"``: ``predict`` (and ``predict_proba``) return pandas objects indexed like ``X``;
        ``"default"``: NumPy arrays. ``None`` leaves the setting as it is.

        Predictions are not transforms, so scikit-learn's global ``transform_output`` is not consulted.
        """
        if transform is None:
            return self
        if transform not in OUTPUTS:
            raise SpecError(f"set_output(transform=...) must be one of: {', '.join(OUTPUTS)}, or None. Got {transform!r}.")
        # the attribute scikit-learn's own set_output uses: clone() copies it
        self._sklearn_output_config = {**getattr(self, "_sklearn_output_config", {}), "transform": transform}
        return self

    def _pandas_output(self) -> bool:
        return getattr(self, "_sklearn_output_config", {}).get("transform") == "pandas"

    # -- pickling -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the live estimator keeps its result_
        result = state.pop("result_", None)
        if result is not None:
            state[_SAVED] = saved_files(result)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        files = state.pop(_SAVED, None)
        super().__setstate__(state)
        if files is not None:
            self.result_ = fit_from_files(files)


def saved_files(result: FitResult) -> dict[str, bytes]:
    """The files of ``result.save()``, by path relative to the save folder."""
    with tempfile.TemporaryDirectory(prefix="hierfit-sklearn-") as tmp:
        root = result.save(Path(tmp) / "fit")
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fit_from_files(files: Any) -> FitResult:
    """The fit :func:`saved_files` gave, through :func:`hierfit.load` (every checksum verified)."""
    if not isinstance(files, Mapping) or not all(isinstance(k, str) and isinstance(v, bytes) for k, v in files.items()):
        raise PersistenceError("A pickled hierfit estimator carries its fit as {path: bytes}; this one does not. Refit it.")
    with tempfile.TemporaryDirectory(prefix="hierfit-sklearn-") as tmp:
        root = Path(tmp) / "fit"
        for name, data in files.items():
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise PersistenceError(f"A pickled hierfit estimator names a file outside its save: {name!r}. Refit it.")
            path = root.joinpath(*rel.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return load_fit(root)
