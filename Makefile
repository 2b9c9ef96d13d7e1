# Two set-up commands on a fresh machine:
#   make demo  -- create .venv, install hierfit with every engine, run `hierfit demo`
#   make test  -- create/update .venv, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hierfit demo

# The suite runs on two workers (pytest-xdist, a test module's tests on one worker: they share
# its fixtures) while mypy checks the sources alongside; the exit status fails if either fails.
test: $(STAMP) browser
	@( $(PY) -m mypy src > .mypy.log 2>&1; echo $$? > .mypy.rc ) & \
	$(PY) -m pytest -n 2 --dist loadfile; status=$$?; wait; \
	echo "mypy src:"; cat .mypy.log; \
	if [ "$$(cat .mypy.rc)" != "0" ]; then status=1; fi; rm -f .mypy.log .mypy.rc; exit $$status

# The report's browser test needs Chromium and its driver: install Debian's when missing and
# we are root (as on CI); otherwise say why not (the test then skips with the same reason).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "browser: chromium and chromedriver found"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && apt-get install -y chromium chromium-driver; \
	else \
		echo "browser: chromium/chromedriver missing and not root (or no apt-get): not installing; the browser test will skip"; \
	fi

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
