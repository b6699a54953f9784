#!/usr/bin/env bash
# Chapters -> per-framework notebooks, and their test.
#
#   scripts/notebooks.sh build PY   chapters/*.md -> notebooks/<framework>/<chapter>.ipynb
#                                   (filter + jupytext), then execute each (nbconvert)
#   scripts/notebooks.sh test PY    fail if any notebook is out of date with its chapter or
#                                   the spec, then run every notebook with nbval in smoke mode
#   scripts/notebooks.sh check PY   only the out-of-date check (no execution)
#
# PY is the project's Python (make passes .venv/bin/python).  Environment:
#   D2LPORT_SMOKE=1      smoke settings (small subset, one epoch); `test` always sets it.
#                        `build` passes it through: unset, notebooks run the book's full
#                        settings on whatever device each framework sees.
#   FRAMEWORKS="torch tensorflow mxnet jax"   which notebooks (default: all four)
#   CHAPTERS="1_vgg 3_advanced_cnn"       which chapters (default: all of chapters/[0-9]*.md)
#   NB_TIMEOUT=seconds   per-cell limit when executing (default: none for build, 900 for test)
#   NB_JOBS=2            `test`: how many frameworks' notebook suites run at once
#   MXNET_KERNEL=name    the Jupyter kernel of MXNet's own environment (default d2lport-mxnet,
#                        which `make setup` registers in .venv from .venv-mxnet): the MXNet
#                        notebooks carry it and run in it; the others run in PY's own kernel.
#
# The filter (python -m d2lport.notebook md CHAPTER FRAMEWORK) keeps the code blocks of one
# framework (`#@tab` convention, see chapters/README.md); jupytext turns that Markdown into
# the notebook; `--update` keeps the cell ids of an existing notebook stable.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 build|test|check PYTHON" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
cmd=$1
PY=${2:-.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v "$PY" || true)
[[ -n $PY && -x $PY ]] || { echo "notebooks.sh: no Python at '${2:-}'" >&2; exit 2; }

FRAMEWORKS=${FRAMEWORKS:-"torch tensorflow mxnet jax"}
CHAPTERS=${CHAPTERS:-$("$PY" -m d2lport.notebook list)}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export D2LPORT_PROGRESS=0
export PYDEVD_DISABLE_FILE_VALIDATION=1

need() {
  "$PY" - "$@" <<'EOF' || exit 2
import importlib.util, sys
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"notebooks.sh: {', '.join(missing)} missing in {sys.executable}: "
             "pip install 'd2lport[notebooks]' (or make setup)")
EOF
}

seconds() { date +%s; }

MXNET_KERNEL=${MXNET_KERNEL:-d2lport-mxnet}
# The kernel a framework's notebooks name and run in: MXNet's lives in .venv-mxnet (numpy <
# 1.24), every other framework's in PY's environment ("python3" there).
kernel_for() { if [[ $1 == mxnet ]]; then echo "$MXNET_KERNEL"; else echo python3; fi; }
need_kernel() {
  [[ $(kernel_for "$1") == python3 ]] && return 0
  "$PY" -m jupyter kernelspec list 2>/dev/null | awk '{print $1}' | grep -qx "$(kernel_for "$1")" \
    || { echo "notebooks.sh: the Jupyter kernel '$(kernel_for "$1")' for the $1 notebooks is not" \
              "installed for $PY: run \`make setup\` (it builds .venv-mxnet and registers it)" >&2
         exit 2; }
}

case $cmd in
  build)
    need jupytext nbconvert nbclient ipykernel graphviz matplotlib
    command -v dot >/dev/null || { echo "notebooks.sh: Graphviz' dot is missing (apt-get install graphviz)" >&2; exit 2; }
    "$PY" -m d2lport.notebook sync
    start=$(seconds)
    for fw in $FRAMEWORKS; do
      need_kernel "$fw"
      kernel=$(kernel_for "$fw")
      mkdir -p "notebooks/$fw"
      for ch in $CHAPTERS; do
        out="notebooks/$fw/$ch.ipynb"
        t0=$(seconds)
        "$PY" -m d2lport.notebook md "chapters/$ch.md" "$fw" \
          | "$PY" -m jupytext --quiet --from md --to ipynb --set-kernel "$kernel" --update \
              --output "$out" -
        # nbconvert runs the kernel in the notebook's folder; no timing metadata, and the
        # previous run's cell metadata other than tags (what --update kept) is cleared.
        "$PY" -m jupyter nbconvert --log-level=WARN --to notebook --execute --inplace \
          --ExecutePreprocessor.kernel_name="$kernel" --ExecutePreprocessor.record_timing=False \
          --ExecutePreprocessor.timeout="${NB_TIMEOUT:--1}" \
          --ClearMetadataPreprocessor.enabled=True \
          --ClearMetadataPreprocessor.clear_notebook_metadata=False \
          --ClearMetadataPreprocessor.preserve_cell_metadata_mask=tags "$out"
        # TensorFlow's C++ log lines at import reach the output here but not under nbval
        "$PY" -m d2lport.notebook strip-logs "$out"
        echo "executed $out in $(( $(seconds) - t0 )) s (D2LPORT_SMOKE=${D2LPORT_SMOKE:-unset})"
      done
    done
    echo "notebooks built in $(( $(seconds) - start )) s"
    ;;
  check)
    need jupytext graphviz
    "$PY" -m d2lport.notebook check --frameworks "${FRAMEWORKS// /,}"
    ;;
  test)
    need jupytext nbval graphviz ipykernel
    start=$(seconds)
    "$PY" -m d2lport.notebook check --frameworks "${FRAMEWORKS// /,}"
    for fw in $FRAMEWORKS; do need_kernel "$fw"; done
    logs=$(mktemp -d)
    # One pytest (and one kernel per notebook) per framework: TensorFlow and MXNet never
    # meet in one process; MXNet's kernel is .venv-mxnet's Python.  NB_JOBS of them run at
    # once (default 2): much of a notebook's time is one thread (imports, XLA compiles,
    # worker processes starting), so two suites share two cores with little loss.  Each
    # suite's output is printed whole when it ends.
    test_one() {
      local fw=$1 kernel_opt t0
      t0=$(seconds)
      if [[ $(kernel_for "$fw") == python3 ]]; then kernel_opt=--nbval-current-env
      else kernel_opt=--nbval-kernel-name=$(kernel_for "$fw"); fi
      D2LPORT_SMOKE=1 "$PY" -m pytest -q -p no:cacheprovider --durations=8 --nbval "$kernel_opt" \
        --nbval-cell-timeout="${NB_TIMEOUT:-900}" "${@:2}" > "$logs/$fw.log" 2>&1 \
        && echo 0 > "$logs/$fw.rc" || echo 1 > "$logs/$fw.rc"
      echo "notebooks/$fw: $(( $(seconds) - t0 )) s" >> "$logs/$fw.log"
      cat "$logs/$fw.log"
    }
    # the longest suites first, so that the last to start is a short one
    order=$(for fw in jax tensorflow torch mxnet $FRAMEWORKS; do
              if [[ " $FRAMEWORKS " == *" $fw "* ]]; then echo "$fw"; fi; done | awk '!seen[$0]++')
    for fw in $order; do
      files=()
      for ch in $CHAPTERS; do files+=("notebooks/$fw/$ch.ipynb"); done
      while (( $(jobs -rp | wc -l) >= ${NB_JOBS:-2} )); do wait -n || true; done
      test_one "$fw" "${files[@]}" &
    done
    wait
    status=0
    for fw in $order; do
      [[ $(cat "$logs/$fw.rc" 2>/dev/null) == 0 ]] || { echo "notebooks/$fw: FAILED"; status=1; }
    done
    rm -rf "$logs"
    echo "notebook tests: $(( $(seconds) - start )) s in all"
    exit $status
    ;;
  *) usage ;;
esac
