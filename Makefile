# The two commands a fresh machine needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-postgres lint bench clean claude-code codex

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev,fast]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bridgekeeper serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The database-facing tests again, on PostgreSQL: POSTGRES_URL names a server and a role
# that may create databases (each test gets its own). `.ci/run` starts one and runs this.
# The two fuzz modules exercise the translation, not the database: run once, on SQLite.
PG_TESTS := tests/admin tests/e2e tests/accounting tests/team tests/reliability tests/db tests/test_cli.py \
	--ignore=tests/reliability/test_mutation_fuzz.py --ignore=tests/reliability/test_answer_fuzz.py
test-postgres: $(STAMP)
	@test -n "$(POSTGRES_URL)" || { echo "usage: make test-postgres POSTGRES_URL=postgresql://user:password@host:5432/postgres"; exit 2; }
	$(BIN)/pip install -q -e '.[test,dev,fast,postgres]'
	BRIDGEKEEPER_TEST_POSTGRES='$(POSTGRES_URL)' $(BIN)/python -m pytest -q $(PYTEST_ARGS) $(PG_TESTS)

# The real Claude Code CLI for tests/e2e/test_claude_code_cli.py (skipped without it), from
# the npm registry, pinned; `.ci/run` installs it.
CLAUDE_CODE_VERSION := 2.1.197
claude-code:
	npm install --prefix .cache/claude-code --no-audit --no-fund --loglevel=error \
		@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)

# The real Codex CLI for tests/e2e/test_codex_cli.py (skipped without it), likewise.
CODEX_VERSION := 0.169.0
codex:
	npm install --prefix .cache/codex --no-audit --no-fund --loglevel=error \
		@openai/codex@$(CODEX_VERSION)

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
