"""Stan code generated from a spec, and the data dict it reads (built from a design).

The program is the ``pymc`` engine's model written out: non-centred group effects
(``r_t = (diag_pre_multiply(sd_t, L_t) * z_t)'``), LKJ priors on correlated terms, the same
priors (their parameters are data, so one compiled program serves every data set of a spec).
For the gaussian family the group effects and normal-prior population coefficients are
integrated out exactly from the sufficient statistics ``W'ΩW, W'Ωy, y'Ωy`` (the math is in
:mod:`hierfit.engines.bayes.marginal`; ``Ω`` the prior weights, ``y`` net of the offset) and
drawn back in ``generated quantities``.

Every other case uses one per-row program, whatever the family: the family is a data flag, so
one compiled program (~90 s of C++ per new program) serves every family fitted with the same
group-level terms and prior families. Its likelihoods (vectorised; a loop over rows only when
there are prior weights, each row's log-likelihood times its weight):

=================  ===================================================================
family             likelihood
=================  ===================================================================
gaussian           ``y ~ normal(eta, sigma / sqrt(w))`` (weights scale the variance, as lme4)
bernoulli          ``y ~ binomial_logit(1, eta)`` (rows that share eta summed: binomial)
binomial           ``y ~ binomial_logit(trials, eta)``
poisson            ``y ~ poisson_log(eta)``
negative_binomial  ``y ~ neg_binomial_2_log(eta, theta)``, ``Var = mu + mu^2 / theta``, with
                   the prior on ``1 / sqrt(theta)`` (see :mod:`.priors`)
=================  ===================================================================

``eta = eta_offset + X beta + sum_t rows_dot_product(r_t[g_t], Z_t)``; the offset is zero
without one.

Examples
--------
>>> import hierfit
>>> code = stan_code(hierfit.make_spec("y ~ x1 + (1 + x1 | market) + (1 | market:submarket)"))
>>> "cholesky_factor_corr[2] L_market;" in code
True
"""

from __future__ import annotations

import numpy as np

from hierfit._version import __version__
from hierfit.design import Design
from hierfit.engines.bayes.structure import (
    BayesStructure,
    SufficientStats,
    TermInfo,
    _safe,
    make_structure,
    sufficient_stats,
)
from hierfit.exceptions import SpecError
from hierfit.formula import INTERCEPT
from hierfit.model import ModelSpec, make_spec

#: Stan sampling statement and data parameters per engine-neutral scale-prior family
_SCALE = {
    "half_normal": ("normal(0, {p}_sigma)", ("sigma",)),
    "exponential": ("exponential({p}_lam)", ("lam",)),
    "student_t": ("student_t({p}_nu, 0, {p}_sigma)", ("nu", "sigma")),
}


def term_shapes(spec: ModelSpec) -> list[TermInfo]:
    """Terms as the code sees them (group counts are data, so 0 here)."""
    levels = [t.level for t in spec.formula.group_terms]
    out = []
    for i, t in enumerate(spec.formula.group_terms):
        name = t.level if levels.count(t.level) == 1 else f"{t.level}{levels[: i + 1].count(t.level)}"
        out.append(TermInfo(_safe(name), t.level, t.coefficients, 0, 0, bool(t.correlated and len(t.coefficients) > 1)))
    return out


def _families(spec: ModelSpec) -> dict[str, str]:
    """Prior family per code-level target, from the spec alone (so the code never depends on data)."""
    pri = spec.priors
    fam = {"sigma": pri["sigma"].distribution if "sigma" in pri else "half_normal",
           "theta": pri["theta"].distribution if "theta" in pri else "half_normal"}
    loc = {p.distribution for k, p in pri.items() if k in (INTERCEPT, "b") or k.startswith("b:")}
    fam["beta_t"] = "student_t" if "student_t" in loc else ""
    for t in term_shapes(spec):
        key = f"sd:{t.level}"
        fam[f"sd_{t.name}"] = pri[key].distribution if key in pri else (pri["sd"].distribution if "sd" in pri else "half_normal")
    return fam


def _marginal(spec: ModelSpec, likelihood: str) -> bool:
    if likelihood not in ("auto", "marginal", "rows"):
        raise SpecError(f"Stan likelihood must be 'auto', 'marginal' or 'rows'; got {likelihood!r}.")
    if not spec.family.normal_errors and likelihood == "marginal":
        raise SpecError(f"likelihood='marginal' is exact only for the gaussian family; got family {spec.family.name!r}.")
    return spec.family.normal_errors and likelihood != "rows"


def stan_code(spec_or_design: str | ModelSpec | Design, data: object = None, *, likelihood: str = "auto",
              family: str = "gaussian") -> str:
    """Readable Stan program for a formula, a spec, or a design's spec.

    Parameters
    ----------
    spec_or_design
        A formula (``"y ~ x1 + (1 | market)"``, read with ``family``), a :class:`ModelSpec` or a
        :class:`Design`. ``data`` is accepted and not needed: the code depends on the spec only;
        the numbers come from :func:`stan_data`.
    likelihood
        ``"auto"``/``"marginal"`` (gaussian: effects integrated out) or ``"rows"`` (per row;
        always for non-gaussian families).

    Examples
    --------
    >>> code = stan_code("y ~ x1 + (1 | market)")
    >>> code.splitlines()[0].startswith("// Generated by hierfit")
    True
    """
    if isinstance(spec_or_design, str):
        spec = make_spec(spec_or_design, family=family)
    else:
        spec = spec_or_design.spec if isinstance(spec_or_design, Design) else spec_or_design
    terms = term_shapes(spec)
    fam = _families(spec)
    w = _Writer()
    group_terms = " + ".join(t.text for t in spec.formula.group_terms) or "none"
    w.line(f"// Generated by hierfit {__version__} for the group-level terms {group_terms}")
    w.line("// (the population columns, the outcome and the priors' parameters are data: see stan_data()).")
    w.line("// Group effects are non-centred: r_t = (diag_pre_multiply(sd_t, L_t) * z_t)'.")
    if _marginal(spec, likelihood):
        w.line("// Likelihood: the group effects and the normal-prior population coefficients are integrated out")
        w.line("// exactly, using the sufficient statistics W'W, W'y, y'y of W = [X, Z_term1, ...] (rows scaled by the")
        w.line("// square roots of any prior weights, y net of any offset); generated quantities draws them from")
        w.line("// their exact conditional posterior.")
        _marginal_program(w, terms, fam)
    else:
        w.line("// Likelihood: per row (or per cell of rows sharing covariates and groups), one program for every")
        w.line("// family: `family` is data (1 gaussian, 2 binomial -- bernoulli is 1 trial --, 3 poisson, 4 negative")
        w.line("// binomial, NB2).")
        _rows_program(w, terms, fam)
    return w.text()


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, s: str = "") -> None:
        self.lines.append(("  " * self.depth + s) if s else "")

    def open(self, s: str) -> None:
        self.line(f"{s} {{" if s else "{")
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        self.line("}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# -- shared blocks ------------------------------------------------------------------------------
def _prior_data(w: _Writer, terms: list[TermInfo], fam: dict[str, str], gaussian: bool) -> None:
    w.line("// prior parameters")
    w.line("vector[P] prior_beta_mu;")
    w.line("vector<lower=0>[P] prior_beta_sigma;")
    if fam["beta_t"]:
        w.line("vector<lower=0>[P] prior_beta_nu;  // student_t degrees of freedom (where used)")
    for t in terms:
        for p in _SCALE[fam[f"sd_{t.name}"]][1]:
            w.line(f"vector<lower=0>[{t.k}] prior_sd_{t.name}_{p};")
        if t.correlated:
            w.line(f"real<lower=0> prior_cor_{t.name}_eta;")
    if gaussian:
        for p in _SCALE[fam["sigma"]][1]:
            w.line(f"real<lower=0> prior_sigma_{p};")


def _scale_params(w: _Writer, terms: list[TermInfo], gaussian: bool) -> None:
    if gaussian:
        w.line("real<lower=0> sigma;  // residual SD")
    for t in terms:
        w.line(f"vector<lower=0>[{t.k}] sd_{t.name};  // SDs of the {t.level} coefficients ({', '.join(t.coefficients)})")
        if t.correlated:
            w.line(f"cholesky_factor_corr[{t.k}] L_{t.name};  // their correlation matrix, Cholesky factor")


def _scale_priors(w: _Writer, terms: list[TermInfo], fam: dict[str, str], gaussian: bool) -> None:
    if gaussian:
        w.line(f"sigma ~ {_SCALE[fam['sigma']][0].format(p='prior_sigma')};")
    for t in terms:
        w.line(f"sd_{t.name} ~ {_SCALE[fam[f'sd_{t.name}']][0].format(p=f'prior_sd_{t.name}')};")
        if t.correlated:
            w.line(f"L_{t.name} ~ lkj_corr_cholesky(prior_cor_{t.name}_eta);")


def _lambda(t: TermInfo) -> str:
    return f"diag_pre_multiply(sd_{t.name}, L_{t.name})" if t.correlated else f"diag_matrix(sd_{t.name})"


def _dims(terms: list[TermInfo]) -> str:
    return " + ".join(["P"] + [f"{t.k} * G_{t.name}" if t.k > 1 else f"G_{t.name}" for t in terms])


# -- gaussian, integrated out -------------------------------------------------------------------
def _marginal_program(w: _Writer, terms: list[TermInfo], fam: dict[str, str]) -> None:
    lam_sig = "".join(f", matrix Lambda_{t.name}, int G_{t.name}" for t in terms)
    lam_call = "".join(f", Lambda_{t.name}, G_{t.name}" for t in terms)
    lam_call_t = "".join(f", Lambda_{t.name}', G_{t.name}" for t in terms)
    w.open("functions")
    w.line("// The integrated coefficients are u_I = m_I + T z, z ~ N(0, I), where")
    w.line("// T = blockdiag(diag(s0), I_G (x) Lambda_term1, ...): each group's block of K columns gets Lambda.")
    w.line("// A * T: columns of A from `start`, block by block, times Lambda (O(rows * K^2) per group).")
    w.open("matrix scale_blocks(matrix A, int start, int G, matrix Lambda)")
    w.line("int K = cols(Lambda);")
    w.line("matrix[rows(A), cols(A)] B = A;")
    w.open("for (g in 1:G)")
    w.line("int s = start + (g - 1) * K;")
    w.line("B[:, s:(s + K - 1)] = A[:, s:(s + K - 1)] * Lambda;")
    w.close()
    w.line("return B;")
    w.close()
    w.line("// The same on a vector: Lambda * v[block g] (pass Lambda' to get T' v).")
    w.open("vector scale_vector_blocks(vector v, int start, int G, matrix Lambda)")
    w.line("int K = cols(Lambda);")
    w.line("vector[rows(v)] out = v;")
    w.open("for (g in 1:G)")
    w.line("int s = start + (g - 1) * K;")
    w.line("out[s:(s + K - 1)] = Lambda * v[s:(s + K - 1)];")
    w.close()
    w.line("return out;")
    w.close()
    w.line("// A * T for this model's terms")
    w.open(f"matrix right_T(matrix A, vector s0{lam_sig})")
    w.line("int off = rows(s0) + 1;")
    w.line("matrix[rows(A), cols(A)] B = A;")
    w.line("B[:, 1:(off - 1)] = diag_post_multiply(A[:, 1:(off - 1)], s0);")
    for t in terms:
        w.line(f"B = scale_blocks(B, off, G_{t.name}, Lambda_{t.name});")
        w.line(f"off += G_{t.name} * cols(Lambda_{t.name});")
    w.line("return B;")
    w.close()
    w.line("// T v (or T' v when called with each Lambda transposed)")
    w.open(f"vector T_vec(vector v, vector s0{lam_sig})")
    w.line("int off = rows(s0) + 1;")
    w.line("vector[rows(v)] out = v;")
    w.line("out[1:(off - 1)] = s0 .* v[1:(off - 1)];")
    for t in terms:
        w.line(f"out = scale_vector_blocks(out, off, G_{t.name}, Lambda_{t.name});")
        w.line(f"off += G_{t.name} * cols(Lambda_{t.name});")
    w.line("return out;")
    w.close()
    w.line("// Cholesky factor of the posterior precision of z: P = I + T' W_I'W_I T / sigma^2")
    w.open(f"matrix chol_P(matrix M, real sigma, vector s0{lam_sig})")
    w.line(f"matrix[rows(M), cols(M)] MT = right_T(M, s0{lam_call});")
    w.line(f"return cholesky_decompose(add_diag(symmetrize_from_lower_tri(right_T(MT', s0{lam_call})) / square(sigma), 1));")
    w.close()
    w.close()
    w.line()
    w.open("data")
    w.line("int<lower=1> N;  // rows")
    w.line("int<lower=1> P;  // population coefficients (columns of X)")
    w.line("int<lower=0> P_I;  // of which integrated out (normal prior) ...")
    w.line("array[P_I] int<lower=1, upper=P> idx_beta_I;")
    w.line("int<lower=0> P_S;  // ... and sampled (student_t prior)")
    w.line("array[P_S] int<lower=1, upper=P> idx_beta_S;")
    for t in terms:
        w.line(f"int<lower=1> G_{t.name};  // {t.level} groups; coefficients {', '.join(t.coefficients)}")
    w.line(f"// sufficient statistics of W = [X{''.join(f', Z_{t.name}' for t in terms)}] (group-major columns)")
    w.line(f"matrix[{_dims(terms)}, {_dims(terms)}] WtW;")
    w.line(f"vector[{_dims(terms)}] Wty;")
    w.line("real yty;")
    _prior_data(w, terms, fam, True)
    w.close()
    w.line()
    w.open("transformed data")
    w.line(f"int D = {_dims(terms)};  // all coefficients u = [beta, r_term1, ...]")
    w.line("int D_I = D - P + P_I;  // integrated coefficients u_I")
    w.line("array[D_I] int idx_I;  // their positions in u")
    w.line("idx_I[1:P_I] = idx_beta_I;")
    w.line("for (j in 1:(D - P)) idx_I[P_I + j] = P + j;")
    w.line("matrix[D_I, D_I] M_II = WtW[idx_I, idx_I];")
    w.line("vector[P_I] s0 = prior_beta_sigma[idx_beta_I];  // prior SDs of integrated population coefficients")
    w.line("vector[D] mu0 = rep_vector(0, D);  // prior mean of u")
    w.line("mu0[idx_beta_I] = prior_beta_mu[idx_beta_I];")
    w.close()
    w.line()
    w.open("parameters")
    _scale_params(w, terms, True)
    if fam["beta_t"]:
        w.line("vector[P_S] beta_S;  // population coefficients with student_t priors")
    w.close()
    w.line()
    w.open("model")
    w.line("// priors")
    _scale_priors(w, terms, fam, True)
    if fam["beta_t"]:
        w.line("beta_S ~ student_t(prior_beta_nu[idx_beta_S], prior_beta_mu[idx_beta_S], prior_beta_sigma[idx_beta_S]);")
    w.line("// marginal likelihood: y ~ N(W mu, sigma^2 I + W_I T T' W_I'), by Woodbury and the determinant lemma")
    w.open("")
    _marginal_pieces(w, terms, fam, lam_call, lam_call_t)
    w.line("real q = yty - 2 * dot_product(mu, Wty) + quad_form(WtW, mu);  // residual sum of squares at mu")
    w.line("target += -0.5 * N * log(2 * pi() * square(sigma)) - sum(log(diagonal(L_P)))")
    w.line("          - (q - dot_self(mdivide_left_tri_low(L_P, c)) / square(sigma)) / (2 * square(sigma));")
    w.close()
    w.close()
    w.line()
    w.open("generated quantities")
    w.line("vector[P] beta;  // population coefficients")
    for t in terms:
        w.line(f"matrix[G_{t.name}, {t.k}] r_{t.name};  // {t.level} effects, one row per group")
    w.open("")
    w.line("// exact conditional posterior: z ~ N(P^-1 c / sigma^2, P^-1)")
    _marginal_pieces(w, terms, fam, lam_call, lam_call_t)
    w.line("vector[D_I] e = to_vector(normal_rng(rep_vector(0, D_I), 1));")
    w.line("vector[D_I] z = mdivide_right_tri_low((mdivide_left_tri_low(L_P, c) / square(sigma) + e)', L_P)';")
    w.line("vector[D] u = mu;")
    w.line(f"u[idx_I] = mu[idx_I] + T_vec(z, s0{lam_call});")
    w.line("beta = u[1:P];")
    start = "P + 1"
    for t in terms:
        size = f"{t.k} * G_{t.name}" if t.k > 1 else f"G_{t.name}"
        w.line(f"r_{t.name} = to_matrix(u[({start}):({start} + {size} - 1)], {t.k}, G_{t.name})';")
        start = f"{start} + {size}"
    w.close()
    w.close()


def _marginal_pieces(w: _Writer, terms, fam, lam_call: str, lam_call_t: str) -> None:
    for t in terms:
        w.line(f"matrix[{t.k}, {t.k}] Lambda_{t.name} = {_lambda(t)};")
    w.line("vector[D] mu = mu0;  // mean of u: prior means, sampled coefficients, zeros for group effects")
    if fam["beta_t"]:
        w.line("mu[idx_beta_S] = beta_S;")
    w.line(f"vector[D_I] c = T_vec((Wty - WtW * mu)[idx_I], s0{lam_call_t});  // T' W_I'(y - W mu)")
    w.line(f"matrix[D_I, D_I] L_P = chol_P(M_II, sigma, s0{lam_call});")


# -- per-row likelihood -------------------------------------------------------------------------
#: family -> (the code of its `family` data flag, the sampling statement without and with weights)
FAMILY_CODES = {"gaussian": 1, "bernoulli": 2, "binomial": 2, "poisson": 3, "negative_binomial": 4}
_LIKELIHOOD = (
    (1, "y_real ~ normal(eta, sigma[1]);", "y_real ~ normal(eta, sigma[1] * inv_sqrt(weights));  // variance sigma^2 / w"),
    (2, "y_int ~ binomial_logit(trials, eta);", "target += weights[n] * binomial_logit_lpmf(y_int[n] | trials[n], eta[n]);"),
    (3, "y_int ~ poisson_log(eta);", "target += weights[n] * poisson_log_lpmf(y_int[n] | eta[n]);"),
    (4, "y_int ~ neg_binomial_2_log(eta, theta[1]);",
     "target += weights[n] * neg_binomial_2_log_lpmf(y_int[n] | eta[n], theta[1]);"),
)


def _rows_program(w: _Writer, terms: list[TermInfo], fam: dict[str, str]) -> None:
    w.open("data")
    w.line("int<lower=1> N;  // rows")
    w.line("int<lower=1> P;  // population coefficients")
    w.line("matrix[N, P] X;")
    w.line("int<lower=1, upper=4> family;")
    w.line("vector[family == 1 ? N : 0] y_real;  // gaussian outcome")
    w.line("array[family == 1 ? 0 : N] int<lower=0> y_int;  // successes or counts")
    w.line("array[family == 2 ? N : 0] int<lower=0> trials;  // binomial trials")
    w.line("vector[N] eta_offset;  // known part of the linear predictor (zeros without one)")
    w.line("int<lower=0, upper=1> weighted;")
    w.line("vector<lower=0>[N] weights;  // prior weights: each row's log-likelihood times w (gaussian: variance / w)")
    for t in terms:
        w.line(f"// {t.level}: coefficients {', '.join(t.coefficients)}")
        w.line(f"int<lower=1> G_{t.name};")
        w.line(f"array[N] int<lower=1, upper=G_{t.name}> g_{t.name};  // group of each row")
        w.line(f"matrix[N, {t.k}] Z_{t.name};  // columns multiplying the group coefficients")
    if fam["beta_t"]:
        w.line("int<lower=0> P_N;  // coefficients with normal priors ...")
        w.line("array[P_N] int<lower=1, upper=P> idx_beta_N;")
        w.line("int<lower=0> P_S;  // ... and with student_t priors")
        w.line("array[P_S] int<lower=1, upper=P> idx_beta_S;")
    _prior_data(w, terms, fam, True)
    for p in _SCALE[fam["theta"]][1]:
        w.line(f"real<lower=0> prior_theta_{p};  // of 1 / sqrt(theta)")
    w.close()
    w.line()
    w.open("parameters")
    w.line("vector[P] beta;  // population coefficients")
    w.line("vector<lower=0>[family == 1] sigma;  // residual SD (gaussian only)")
    w.line("vector<lower=0>[family == 4] inv_sqrt_theta;  // negative binomial only: 1 / sqrt(size)")
    _scale_params(w, terms, False)
    for t in terms:
        w.line(f"matrix[{t.k}, G_{t.name}] z_{t.name};  // standardised {t.level} effects")
    w.close()
    w.line()
    w.open("transformed parameters")
    w.line("vector[family == 4] theta = inv_square(inv_sqrt_theta);  // NB2 size: Var = mu + mu^2 / theta")
    for t in terms:
        w.line(f"matrix[G_{t.name}, {t.k}] r_{t.name} = ({_lambda(t)} * z_{t.name})';  // {t.level} effects")
    w.close()
    w.line()
    w.open("model")
    eta = " + ".join(["eta_offset + X * beta"] + [f"rows_dot_product(r_{t.name}[g_{t.name}], Z_{t.name})" for t in terms])
    w.line(f"vector[N] eta = {eta};")
    for code, plain, weighted in _LIKELIHOOD:
        w.open(f"{'if' if code == 1 else 'else if'} (family == {code})")
        # weights need each row's log-likelihood (a loop); the gaussian's scale its SD instead
        w.line(f"if (weighted) {weighted if code == 1 else 'for (n in 1:N) ' + weighted}")
        w.line(f"else {plain}")
        w.close()
    w.line("// priors")
    if fam["beta_t"]:
        w.line("beta[idx_beta_N] ~ normal(prior_beta_mu[idx_beta_N], prior_beta_sigma[idx_beta_N]);")
        w.line("beta[idx_beta_S] ~ student_t(prior_beta_nu[idx_beta_S], prior_beta_mu[idx_beta_S], prior_beta_sigma[idx_beta_S]);")
    else:
        w.line("beta ~ normal(prior_beta_mu, prior_beta_sigma);")
    for t in terms:
        w.line(f"to_vector(z_{t.name}) ~ std_normal();")
    _scale_priors(w, terms, fam, True)
    w.line(f"inv_sqrt_theta ~ {_SCALE[fam['theta']][0].format(p='prior_theta')};")
    w.close()


# -- data ---------------------------------------------------------------------------------------
def stan_data(design: Design, *, likelihood: str = "auto", structure: BayesStructure | None = None,
              stats: SufficientStats | None = None) -> dict:
    """The data dict :func:`stan_code`'s program reads, from a design (priors resolved on its data).

    ``structure`` (from :func:`make_structure` of the fitting rows) supplies the priors when
    ``design`` holds aggregated cells (:mod:`.aggregate`): the default priors are scaled to the
    rows, not to the cells. ``stats`` are the marginal program's sufficient statistics when they
    were gathered elsewhere (a streamed source, :mod:`.stream`; ``design`` then only scales the priors).

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.design import build_design
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=0)
    >>> d = build_design(hierfit.make_spec(sim.formula), sim.data)
    >>> data = stan_data(d)
    >>> data["N"], data["G_market"], data["WtW"].shape
    (30, 3, (15, 15))
    """
    spec = design.spec
    marginal = _marginal(spec, likelihood)
    if structure is None:
        structure = make_structure(design, marginal=marginal)
    if [t.name for t in structure.terms] != [t.name for t in term_shapes(spec)]:  # pragma: no cover - same naming rule
        raise SpecError("Internal error: term names of the design and the spec differ.")
    pri = structure.priors
    beta = pri.beta
    data: dict = {"N": int(design.n), "P": int(structure.p)}
    data["prior_beta_mu"] = np.array([p.param("mu") for p in beta], dtype=float)
    data["prior_beta_sigma"] = np.array([p.param("sigma") for p in beta], dtype=float)
    data["prior_beta_nu"] = np.array([dict(p.params).get("nu", 1.0) for p in beta], dtype=float)
    is_t = np.array([p.distribution == "student_t" for p in beta], dtype=bool)
    for t, sds, cor in zip(structure.terms, pri.sd, pri.cor):
        data[f"G_{t.name}"] = int(t.n_groups)
        for p in _SCALE[sds[0].distribution][1]:
            data[f"prior_sd_{t.name}_{p}"] = np.array([s.param(p) for s in sds], dtype=float)
        if len({s.distribution for s in sds}) > 1:  # pragma: no cover - one target per term
            raise SpecError(f"The SD priors of {t.level!r} mix families; set one with priors={{'sd:{t.level}': ...}}.")
        if cor is not None:
            data[f"prior_cor_{t.name}_eta"] = float(cor.param("eta"))
    if marginal:
        assert pri.sigma is not None, "the gaussian family has a residual SD"
        for p in _SCALE[pri.sigma.distribution][1]:
            data[f"prior_sigma_{p}"] = float(pri.sigma.param(p))
        stats = sufficient_stats(design) if stats is None else stats
        data["N"] = stats.n  # the rows that carry likelihood (positive weight)
        data["P_I"] = int(structure.integrated.sum())
        data["idx_beta_I"] = (structure.integrated_beta + 1).astype(int)
        data["P_S"] = int((~structure.integrated).sum())
        data["idx_beta_S"] = (structure.sampled_beta + 1).astype(int)
        data["WtW"], data["Wty"], data["yty"] = stats.WtW, stats.Wty, float(stats.yty)
        return data
    # one program for every family: the absent dispersion's prior gets placeholder parameters
    for name, prior in (("sigma", pri.sigma), ("theta", pri.theta)):
        for p in _SCALE[prior.distribution if prior is not None else "half_normal"][1]:
            data[f"prior_{name}_{p}"] = float(prior.param(p)) if prior is not None else 1.0
    family = spec.family
    code = FAMILY_CODES[family.name]
    data["family"] = code
    data["X"] = design.X
    y = np.asarray(design.y, dtype=float)
    data["y_real"] = y if code == 1 else np.zeros(0)
    data["y_int"] = np.round(y).astype(int) if code != 1 else np.zeros(0, dtype=int)
    trials = np.ones(design.n) if design.trials is None else design.trials
    data["trials"] = np.round(trials).astype(int) if code == 2 else np.zeros(0, dtype=int)
    data["eta_offset"] = np.zeros(design.n) if design.offset is None else np.asarray(design.offset, dtype=float)
    data["weighted"] = int(design.weights is not None)
    data["weights"] = np.ones(design.n) if design.weights is None else np.asarray(design.weights, dtype=float)
    for td, t in zip(design.terms, structure.terms):
        data[f"g_{t.name}"] = (design.group_index[td.level] + 1).astype(int)
        data[f"Z_{t.name}"] = td.Z
    data["P_N"], data["idx_beta_N"] = int((~is_t).sum()), (np.flatnonzero(~is_t) + 1).astype(int)
    data["P_S"], data["idx_beta_S"] = int(is_t.sum()), (np.flatnonzero(is_t) + 1).astype(int)
    return data
