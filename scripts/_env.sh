# Shared by scripts/serve and scripts/test: make .venv with radloop installed.
# On machines without an NVIDIA GPU, torch is pinned to the CPU build (constraints/cpu.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RADLOOP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

ensure_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        "$PY" -m venv "$VENV"
    fi
    local constraints=()
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        constraints=(-c "$ROOT/constraints/cpu.txt")
    fi
    local stamp="$VENV/.radloop-installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || ! grep -qxF -- "$extras" "$stamp"; then
        echo "==> installing radloop$extras into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q "${constraints[@]}" -e "$ROOT$extras"
        echo "$extras" > "$stamp"
    fi
    # The prostate pipeline's network ships in the lavlab-taps wheel (MIT), which requires
    # onnxruntime-gpu; radloop already has everything else it needs, so install it without deps.
    if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.distribution('lavlab-taps')" 2>/dev/null; then
        echo "==> installing lavlab-taps 1.1.2 (--no-deps: not its onnxruntime-gpu requirement)"
        "$VENV/bin/python" -m pip install -q --no-deps lavlab-taps==1.1.2
    fi
}
