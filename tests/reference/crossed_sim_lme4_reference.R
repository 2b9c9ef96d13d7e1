# lme4 fit of the simulated InstEval-sized crossed design (tests/reference/crossed_sim.py).
#   python tests/reference/crossed_sim.py /tmp/crossed_sim.csv
#   Rscript tests/reference/crossed_sim_lme4_reference.R /tmp/crossed_sim.csv tests/reference/crossed_sim_lme4_reference.json
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
df <- read.csv(args[1])
for (v in c("s", "d", "dept")) df[[v]] <- factor(df[[v]])
ctrl <- lmerControl(optimizer = "nloptwrap", calc.derivs = FALSE,
                    optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 0, ftol_rel = 0, maxeval = 1e5))
one <- function(reml) {
  t <- system.time(fit <- lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept), df, REML = reml, control = ctrl))
  vc <- as.data.frame(VarCorr(fit))
  list(model_id = if (reml) "crossed_sim_REML" else "crossed_sim_ML", REML = reml,
       formula = "y ~ service + (1 | s) + (1 | d) + (1 | dept)",
       fixef = as.list(fixef(fit)), se = as.list(sqrt(diag(as.matrix(vcov(fit))))),
       sd = setNames(as.list(vc$sdcor[vc$grp != "Residual"]), vc$grp[vc$grp != "Residual"]),
       sigma = sigma(fit), logLik = as.numeric(logLik(fit)), theta = unname(getME(fit, "theta")),
       theta_names = names(getME(fit, "theta")), time_elapsed_s = unname(t["elapsed"]))
}
out <- list(
  dataset = "simulated InstEval-sized crossed design (tests/reference/crossed_sim.py, numpy PCG64 seed 2026)",
  checksums = list(sum_y = sum(df$y), sum_s = sum(as.numeric(as.character(df$s))),
                   sum_d = sum(as.numeric(as.character(df$d))), n_s = nlevels(df$s), n_d = nlevels(df$d),
                   n_dept = nlevels(df$dept)),
  software = list(R = R.version.string, lme4 = as.character(packageVersion("lme4"))),
  generated = format(Sys.time(), "%Y-%m-%d %H:%M:%S UTC", tz = "UTC"),
  how_obtained = "lme4::lmer, nloptwrap BOBYQA at tight tolerances (xtol_abs 1e-12, ftol_abs 1e-14), by crossed_sim_lme4_reference.R",
  models = list(one(TRUE), one(FALSE)))
write_json(out, args[2], auto_unbox = TRUE, digits = NA, pretty = TRUE)
