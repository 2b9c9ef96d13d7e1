"""The engine-neutral parts of a saved fit as plain data: spec, tree of groups, encoding.

* The spec is its formula text and options (family and link names, national, hierarchy,
  priors, offset and weights columns) and is rebuilt by :func:`hierfit.model.make_spec`,
  which validates it again.
* The tree of groups keeps every level's name, grouping columns, parent and group labels in
  the manifest, and its parent indices and group sizes in ``hierarchy.npz``.
* The population encoding is formulaic's ``ModelSpec`` without pickle, as formulaic itself
  rebuilds one: the formula, the materializer settings, the state of its stateful transforms
  (spline knots, centring constants) and each factor's kind and categories; contrasts are
  part of the formula text (``C(x, contr.sum)``). The saved column names are checked against
  what the rebuilt spec makes for new data (:class:`~hierfit.design.DesignEncoding`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hierfit.design import DesignEncoding
from hierfit.design.hierarchy import Hierarchy, Level
from hierfit.engines.state import decode, encode
from hierfit.exceptions import HierfitError, PersistenceError
from hierfit.model import ModelSpec, make_spec
from hierfit.model.priors import Prior
from hierfit.storage import SavedFiles

HIERARCHY_FILE = "hierarchy.npz"


# ----------------------------------------------------------------------------- spec
def spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    """The spec as the arguments of :func:`make_spec`.

    Examples
    --------
    >>> from hierfit.priors import half_normal
    >>> s = make_spec("y ~ x + (1 | g)", family="bernoulli", link="probit", priors={"sd": half_normal(2)})
    >>> d = spec_to_json(s)
    >>> d["family"], d["link"], d["priors"]
    ('bernoulli', 'probit', {'sd': {'distribution': 'half_normal', 'params': {'sigma': 2.0}}})
    >>> spec_from_json(d, "hierfit.json") == s
    True
    """
    return {
        "formula": spec.text,
        "family": spec.family.name,
        "link": spec.family.link.name,
        "national": spec.national,
        "hierarchy": None if spec.hierarchy is None else list(spec.hierarchy),
        "priors": {target: {"distribution": p.distribution, "params": {k: v for k, v in p.params}} for target, p in spec.priors.items()},
        "offset": spec.offset,
        "weights": spec.weights,
    }


def spec_from_json(value: Any, where: str) -> ModelSpec:
    """The spec :func:`spec_to_json` wrote, validated by :func:`make_spec` again."""
    try:
        priors = {str(t): Prior(str(p["distribution"]), tuple((str(k), float(v)) for k, v in p["params"].items()))
                  for t, p in value["priors"].items()}
        columns = {k: None if value[k] is None else str(value[k]) for k in ("offset", "weights")}
        return make_spec(str(value["formula"]), family=str(value["family"]), link=str(value["link"]), national=str(value["national"]),
                         hierarchy=value["hierarchy"], priors=priors, **columns)
    except HierfitError as exc:
        raise PersistenceError(f"{where}: the saved model spec is not valid in this hierfit ({exc}).") from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise PersistenceError(f"{where}: the model spec is malformed ({type(exc).__name__}: {exc}).") from None


# ----------------------------------------------------------------------------- hierarchy
def hierarchy_to_json(hierarchy: Hierarchy) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The tree as manifest data plus its arrays (parent indices, sizes)."""
    levels, arrays = [], {}
    for lv in hierarchy.levels:
        levels.append({"name": lv.name, "columns": list(lv.factor.columns), "parent": lv.parent, "groups": list(lv.groups)})
        arrays[f"{lv.name}/sizes"] = np.asarray(lv.sizes, dtype=np.int64)
        if lv.parent_index is not None:
            arrays[f"{lv.name}/parent_index"] = np.asarray(lv.parent_index, dtype=np.int64)
    return {"national": hierarchy.national, "levels": levels, "crossed": [list(p) for p in hierarchy.crossed]}, arrays


def hierarchy_from_json(value: Any, arrays: dict[str, np.ndarray], spec: ModelSpec, files: SavedFiles) -> Hierarchy:
    """The tree :func:`hierarchy_to_json` wrote, checked against the spec and itself."""
    where = files.where(HIERARCHY_FILE)

    def bad(message: str) -> PersistenceError:
        return PersistenceError(f"{files.where('hierfit.json')} / {where}: {message}. The save is inconsistent; refit and save again.")

    factors = {f.level: f for f in spec.formula.factors}
    try:
        levels: list[Level] = []
        for entry in value["levels"]:
            name, parent = str(entry["name"]), entry["parent"]
            factor = factors.get(name)
            if factor is None or list(factor.columns) != list(entry["columns"]):
                raise bad(f"level {name!r} is not a grouping factor of the formula")
            groups = tuple(str(g) for g in entry["groups"])
            sizes = arrays[f"{name}/sizes"]
            parent_index = arrays.get(f"{name}/parent_index")
            if sizes.dtype.kind != "i" or sizes.shape != (len(groups),):
                raise bad(f"level {name!r} has {len(groups)} groups but sizes of shape {sizes.shape}")
            if parent is None:
                if parent_index is not None:
                    raise bad(f"top level {name!r} has parent indices")
            else:
                up = next((lv for lv in levels if lv.name == parent), None)
                if up is None or parent_index is None or parent_index.dtype.kind != "i" or parent_index.shape != (len(groups),):
                    raise bad(f"level {name!r} does not fit under {parent!r}")
                if len(groups) and (parent_index.min() < 0 or parent_index.max() >= up.n_groups):
                    raise bad(f"level {name!r} has parent indices outside {parent!r}'s groups")
            levels.append(Level(name, factor, None if parent is None else str(parent), groups, parent_index, sizes))
        if sorted(lv.name for lv in levels) != sorted(factors):
            raise bad("the levels are not those of the formula")
        crossed = tuple((str(a), str(b)) for a, b in value.get("crossed", []))  # saves before crossing was kept have none
        if any(a not in factors or b not in factors for a, b in crossed):
            raise bad("a crossed pair names a level that is not in the formula")
        return Hierarchy(str(value["national"]), tuple(levels), crossed)
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"malformed tree of groups ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------- encoding
def encoding_to_json(encoding: DesignEncoding) -> dict[str, Any]:
    """The population encoding as data (see the module docstring)."""
    ps: Any = encoding.population_spec
    encoder_state = {}
    for expr, (kind, state) in ps.encoder_state.items():
        # the contrasts object is "for introspection only" in formulaic: the categories and the
        # formula text determine the columns
        kept = {k: v for k, v in state.items() if k != "contrasts"}
        encoder_state[str(expr)] = {"kind": kind.value, "state": encode(kept, f"the encoder state of {expr!r}")}
    return {
        "formula": str(ps.formula),
        "columns": list(encoding.population_columns if encoding.population_columns is not None else ps.column_names),
        "dropped": list(encoding.dropped),
        "materializer": ps.materializer,
        "materializer_params": encode(ps.materializer_params or {}, "the materializer parameters"),
        "ensure_full_rank": bool(ps.ensure_full_rank),
        "na_action": ps.na_action.value,
        "output": ps.output,
        "cluster_by": ps.cluster_by.value,
        "transform_state": encode(ps.transform_state, "the state of the formula's transforms"),
        "encoder_state": encoder_state,
    }


def encoding_from_json(value: Any, spec: ModelSpec, hierarchy: Hierarchy, where: str) -> DesignEncoding:
    """A :class:`DesignEncoding` equal in effect to the saved one."""
    from formulaic import Formula
    from formulaic import ModelSpec as FormulaicSpec
    from formulaic.parser.types import Factor

    try:
        formula = Formula(spec.formula.population)
        if str(formula) != value["formula"]:
            raise PersistenceError(
                f"{where}: the population formula reads as {str(formula)!r} in this version of formulaic, but was "
                f"saved as {value['formula']!r}. Refit with this installation and save again."
            )
        encoder_state = {str(expr): (Factor.Kind(item["kind"]), decode(item["state"], where))
                         for expr, item in value["encoder_state"].items()}
        population_spec = FormulaicSpec(
            formula=formula,
            materializer=value["materializer"],
            materializer_params=decode(value["materializer_params"], where),
            ensure_full_rank=bool(value["ensure_full_rank"]),
            na_action=value["na_action"],
            output=value["output"],
            cluster_by=value["cluster_by"],
            transform_state=decode(value["transform_state"], where),
            encoder_state=encoder_state,
        )
        columns = tuple(str(c) for c in value["columns"])
        dropped = tuple(str(c) for c in value["dropped"])
    except PersistenceError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PersistenceError(f"{where}: the population encoding is malformed ({type(exc).__name__}: {exc}).") from None
    if not set(dropped) <= set(columns):
        raise PersistenceError(f"{where}: dropped columns {sorted(set(dropped) - set(columns))} are not population columns.")
    return DesignEncoding(spec, population_spec, hierarchy, dropped, columns)
