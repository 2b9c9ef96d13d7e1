"""The InstEval-sized crossed design whose lme4 fit is ``crossed_sim_lme4_reference.json``.

2,972 students crossed with 1,128 lecturers nested in 14 departments, 73,421 rows (the
shape of lme4's ``InstEval``), simulated with NumPy's PCG64 from seed 2026.  The reference
JSON keeps checksums of the data so that a change in NumPy's streams fails loudly instead of
comparing against another data set.  ``python tests/reference/crossed_sim.py out.csv``
writes the rows that ``crossed_sim_lme4_reference.R`` fits.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

N_ROWS, N_STUDENTS, N_LECTURERS, N_DEPTS = 73_421, 2_972, 1_128, 14
SEED = 2026


def crossed_data() -> pd.DataFrame:
    """The simulated rows: ``y ~ service + (1|s) + (1|d) + (1|dept)`` with known SDs."""
    rng = np.random.default_rng(SEED)
    dept_of_d = rng.integers(0, N_DEPTS, N_LECTURERS)
    s = rng.integers(0, N_STUDENTS, N_ROWS)
    d = rng.integers(0, N_LECTURERS, N_ROWS)
    service = rng.integers(0, 2, N_ROWS)
    y = (3.2 - 0.1 * service + rng.normal(0, 0.33, N_STUDENTS)[s] + rng.normal(0, 0.52, N_LECTURERS)[d]
         + rng.normal(0, 0.08, N_DEPTS)[dept_of_d[d]] + rng.normal(0, 1.18, N_ROWS))
    return pd.DataFrame({"y": y, "service": service.astype(float), "s": s, "d": d, "dept": dept_of_d[d]})


def checksums(df: pd.DataFrame) -> dict[str, float]:
    """What the reference records of the data it was fitted on."""
    return {"sum_y": float(df["y"].sum()), "sum_s": float(df["s"].sum()), "sum_d": float(df["d"].sum()),
            "n_s": int(df["s"].nunique()), "n_d": int(df["d"].nunique()), "n_dept": int(df["dept"].nunique())}


if __name__ == "__main__":
    frame = crossed_data()
    frame.to_csv(sys.argv[1], index=False, float_format="%.17g")
    print(checksums(frame))
