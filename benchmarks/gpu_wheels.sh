#!/usr/bin/env bash
# Download, here (where pip reaches PyPI), the wheels that a CUDA machine without network
# access lacks for the full suite's FNO pairs: neuraloperator and the packages it imports
# that a stock PyTorch image does not hold. They land in .whl/ (ignored by git);
# `benchmarks/gpu_check.sh` installs them into /tmp/site there when neuraloperator is
# missing. Bring .whl along with the repository (about 30 MB).
#
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     (default 3.12: the GPU image's)
#
# The versions are those pacsim is tested with; only what `import neuralop` loads is
# fetched (neuraloperator's configuration helpers, configmypy/zencfg/ruamel, are not).
set -euo pipefail
PYVER=${1:-3.12}
DEST=${DEST:-.whl}
PY=${PY:-python3}
WHEELS=(
    neuraloperator==2.0.0 tensorly==0.10.0 tensorly-torch==0.5.0 opt-einsum==3.4.0
    wandb==0.31.0 platformdirs==4.14.8 pydantic==2.14.4 pydantic-core==2.50.5
    typing-inspection==0.4.5 annotated-types==0.8.0 typing-extensions==4.16.0
    opentelemetry-api==1.45.2 protobuf==7.36.2
)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
# every manylinux tag a current x86-64 Linux accepts: pip matches platform tags exactly
PLATFORMS=()
for n in 39 35 34 31 28 27 24 17 5; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}"
ls "$DEST"/*.whl | wc -l | xargs echo "wheels in $DEST:"
du -sh "$DEST"
