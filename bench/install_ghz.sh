#!/usr/bin/env bash
# Install the pinned ghz load generator into a project-local GOBIN (idempotent).
set -euo pipefail

GHZ_VERSION="${GHZ_VERSION:-v0.120.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GOBIN_DIR="${ROOT}/bench/.tools/bin"
GHZ="${GOBIN_DIR}/ghz"
# `go install` builds ghz without its release ldflags (`ghz --version` says "dev"),
# so the installed version is recorded in a stamp file next to the binary.
STAMP="${GOBIN_DIR}/ghz.version"

if [[ -x "${GHZ}" && -f "${STAMP}" && "$(cat "${STAMP}")" == "${GHZ_VERSION}" ]]; then
    echo "ghz ${GHZ_VERSION} already installed at ${GHZ}"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "install_ghz.sh: 'go' not found on PATH; install Go >= 1.21" >&2
    exit 1
fi

mkdir -p "${GOBIN_DIR}"
echo "installing ghz ${GHZ_VERSION} into ${GOBIN_DIR} ..."
GOBIN="${GOBIN_DIR}" GOFLAGS="-buildvcs=false" \
    go install "github.com/bojand/ghz/cmd/ghz@${GHZ_VERSION}"
echo "${GHZ_VERSION}" > "${STAMP}"
echo "ghz ${GHZ_VERSION} installed at ${GHZ}"
