#!/usr/bin/env bash
# Install MLServer (pinned in bench/mlserver-requirements.txt) into its own virtualenv,
# bench/.venv-mlserver (gitignored), with the scikit-learn and joblib versions of the
# project's .venv, which pickles the model MLServer loads. Idempotent: does nothing when
# the virtualenv was made from the same requirements and versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/bench/.venv-mlserver"
REQUIREMENTS="${ROOT}/bench/mlserver-requirements.txt"
STAMP="${VENV}/.installed"
# The project's interpreter: it gives the scikit-learn and joblib versions to match, and
# it makes the virtualenv (MLServer 1.7.1 wants Python >= 3.9, < 3.13).
PROJECT_PYTHON="${PROJECT_PYTHON:-${ROOT}/.venv/bin/python}"

pins="$("${PROJECT_PYTHON}" -c '
import joblib, sklearn
print(f"scikit-learn=={sklearn.__version__}")
print(f"joblib=={joblib.__version__}")')"
want="$( (cat "${REQUIREMENTS}"; echo "${pins}") | sha256sum | cut -d' ' -f1)"
if [[ -x "${VENV}/bin/mlserver" && -f "${STAMP}" && "$(cat "${STAMP}")" == "${want}" ]]; then
    echo "MLServer already installed in ${VENV}"
    exit 0
fi

base="$("${PROJECT_PYTHON}" -c 'import sys; print(sys._base_executable)')"
echo "installing MLServer into ${VENV} (${pins//$'\n'/, }) ..."
rm -rf "${VENV}"
"${base}" -m venv "${VENV}"
"${VENV}/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086  # one argument per pin
"${VENV}/bin/python" -m pip install -q -r "${REQUIREMENTS}" ${pins}
"${VENV}/bin/mlserver" --version
echo "${want}" > "${STAMP}"
echo "MLServer installed in ${VENV}"
