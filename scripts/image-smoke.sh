#!/usr/bin/env bash
# Build the OCI image of a Bento carrying a tiny model, run it, and check its answers.
#
#   scripts/image-smoke.sh        (or `make image-smoke`)
#
# Everything goes into a temporary BENTOML_HOME; the image and the container are removed at the end.
# The image is the real one (CUDA PyTorch from PyPI included: several GB, many minutes the first time);
# the tiny model runs on the CPU inside it. Prints how long each stage took and the image size.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /var/tmp/imgedit-smoke.XXXXXX)
export BENTOML_HOME=$work/bentoml HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true
port=${SMOKE_PORT:-3099}
container=imgedit-smoke-$$
image=""
stage_started=$(date +%s)

log() { printf '[image-smoke] %s\n' "$*" >&2; }
stage() {
  local now
  now=$(date +%s)
  log "$1 took $((now - stage_started)) s"
  stage_started=$now
}
cleanup() {
  podman rm -f "$container" >/dev/null 2>&1 || true
  if [[ -n "$image" ]]; then podman rmi -f "$image" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cd "$root"
python - "$work/tiny-ip2p" <<'PY'
import sys

from imgedit.model.tiny import build_tiny

build_tiny("tiny:instruct-pix2pix").pipeline.save_pretrained(sys.argv[1])
PY
imgedit import-model "$work/tiny-ip2p" --name tiny-ip2p --quiet >/dev/null
tag=$(bentoml build --arg model=bentoml:tiny-ip2p --output tag 2>/dev/null | sed -n 's/^__tag__://p')
stage "bentoml build ($tag)"

image="localhost/imgedit-smoke:${tag#*:}"
scripts/build-image.sh "$tag" "$image"
stage "image build"
size=$(podman image inspect --format '{{.Size}}' "$image")

podman run -d --rm --name "$container" -p "127.0.0.1:$port:3000" "$image" >/dev/null
for _ in $(seq 300); do
  if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then break; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { podman logs "$container" | tail -40 >&2; exit 1; }
stage "container start to ready"

cd "$work"
cp -r "$root/examples" .
curl -s -D headers.txt -o answer.json -X POST "http://127.0.0.1:$port/v1/images/edits" \
  -F "model=tiny-ip2p" \
  -F "image=@./examples/bear.png" \
  -F "prompt='this bear is wearing sportwear. holding a basketball, and bending one leg.'" \
  -F "size=256x256" \
  -F "output_format=png"
grep -qi '^x-request-id:' headers.txt
jq -r '.data[0].b64_json' answer.json | base64 --decode > gift-basket.png
python - "$port" <<'PY'
import base64
import io
import sys

from openai import OpenAI
from PIL import Image

assert Image.open("gift-basket.png").size == (256, 256), "curl: wrong image"
client = OpenAI(api_key="unused", base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", max_retries=0)
assert [model.id for model in client.models.list()] == ["tiny-ip2p"]
with open("examples/bear.png", "rb") as bear:
    result = client.images.edit(image=bear, prompt="make it snow", size="128x128", output_format="jpeg", n=2)
sizes = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size for item in result.data]
assert sizes == [(128, 128), (128, 128)], sizes
print("[image-smoke] curl and the openai SDK got the expected images", file=sys.stderr)
PY
stage "requests"
podman stop "$container" >/dev/null
awk -v size="$size" 'BEGIN { printf "[image-smoke] passed; image size %.2f GB\n", size / 1e9 }' >&2
