# Sourced by the other launch scripts: creates .venv when there is none and installs nopejax
# with the extras given in NOPEJAX_EXTRAS (default: none). Python 3.11, pip and git suffice.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    python3 -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  source "$ROOT/.venv/bin/activate"
fi
EXTRAS="${NOPEJAX_EXTRAS:-}"
python -m pip install -q --disable-pip-version-check -e "$ROOT${EXTRAS:+[$EXTRAS]}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
cd "$ROOT"
