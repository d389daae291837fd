"""Check, on this networked machine, that the wheels bench/gpu_wheels.sh brings are all the GPU machine lacks.

The GPU machine has no internet: bench/gpu_check.sh can only install the wheels it carries
(``.whl/``, the distributions of bench/gpu_requirements.txt) on top of what the machine's image
holds (`IMAGE`, its package list as read on 2026-11-17). This script plays that machine:

1. an empty venv under /tmp whose only packages are the image's — those of `IMAGE` that this
   interpreter has, with what they need, linked in through a ``.pth`` file at this machine's lock,
   except `IMAGE_PINS`: the image's own versions where they differ from the lock and a wheel exists
   for this interpreter (huggingface-hub 1.33, transformers 5.17, tokenizers 0.23.2), downloaded and
   installed instead. The image's torch 2.11 and numpy 2.5.2 are not played: torch's wheel with its
   CUDA libraries is gigabytes, and numpy 2.5 needs Python 3.12 (this machine has 3.11);
2. ``pip install --no-index --find-links WHEELS -r bench/gpu_requirements.txt`` into it, WHEELS
   holding the same versions built for this interpreter: pip must find every dependency in the
   wheels or the image, with no index to fall back on;
3. the dry run of the check (``bench/gpu_check.py --device cpu --preset tiny``) with that venv's Python,
   so an import that no metadata declares fails here too: every row must come back ok, and every
   distribution the run imported must be an image package (or one of theirs) or a wheel;
4. every requirement has a CPython 3.12 manylinux x86-64 wheel in ``.whl/`` (what the GPU machine runs),
   and pip installs exactly those files for CPython 3.12 with no index (``--dry-run``), as gpu_check.sh
   does there.

Results go to stdout, ``/tmp/fada-wheelcheck/result.json`` and ``bench/results/gpu_wheels_check.json`` (with the
date it ran; bench/results/scale_fixes.md quotes it).

    python bench/gpu_wheels_check.py            # after bash bench/gpu_wheels.sh; exit 1 on a failure
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "bench" / "gpu_requirements.txt"
WORK = Path("/tmp/fada-wheelcheck")
# the 'cuda' image of the GPU machines (nvidia-h100-x1, nvidia-h200), as read on 2026-11-17
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
# the image's versions (KINDS.md's pip list, 2026-11) that differ from constraints.txt and have a wheel for CPython 3.11
IMAGE_PINS = {"huggingface-hub": "1.33.0", "transformers": "5.17.0", "tokenizers": "0.23.2"}


def normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirements() -> list[str]:
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return [line for line in lines if line]


def with_dependencies(names: set[str]) -> set[str]:
    """``names`` and, recursively, what their installed versions here require (no extras): the image holds
    whatever its own packages need, though its list names only some of it (this lock's huggingface-hub
    needs httpx2, the image's older one does not)."""
    from packaging.requirements import Requirement

    installed = {normal(d.metadata["Name"]): d for d in metadata.distributions()}
    found, todo = set(), [n for n in names if n in installed]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for text in installed[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if normal(requirement.name) in installed:
                todo.append(normal(requirement.name))
    return found


def image_layer(site: Path) -> int:
    """Link the top-level files and folders of every `IMAGE` distribution this interpreter has (and of what
    they need) into ``site``."""
    image, linked = with_dependencies({normal(n) for n in IMAGE}) - set(IMAGE_PINS), 0
    for dist in metadata.distributions():
        if normal(dist.metadata["Name"]) not in image or not dist.files:
            continue
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files if not f.parts[0].startswith("..")}:
            target = site / top
            if (base / top).exists() and not target.exists():
                target.symlink_to(base / top)
        linked += 1
    return linked


def run(command: list[str], **kwargs) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    venv, site, wheels = WORK / "venv", WORK / "image-site", WORK / "wheels-local"
    site.mkdir(parents=True)
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    print(f"image stand-in: {image_layer(site)} of the image's {len(IMAGE)} distributions (this machine's lock)")
    pins = [f"{name}=={version}" for name, version in IMAGE_PINS.items()]
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(WORK / "pins"),
         *pins])  # fmt: skip
    run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--find-links", str(WORK / "pins"),
         "--target", str(site), *pins])  # fmt: skip
    (Path(purelib) / "fada_gpu_image.pth").write_text(str(site) + "\n")
    wanted = requirements()
    tag = sysconfig.get_config_var("py_version_nodot")
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
         *wanted])  # fmt: skip
    # 2. with no index: every dependency must come from the wheels or the image
    run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), *wanted])
    # 3. the dry run of the check with that Python alone
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HOME": str(WORK)}
    run([str(python), "bench/gpu_check.py", "--out", str(WORK / "dry"), "--device", "cpu", "--preset", "tiny"],
        cwd=ROOT, env=env)  # fmt: skip
    dry = json.loads((WORK / "dry" / "gpu.json").read_text())
    rows = {r["name"]: r["status"] for r in dry["rows"]}
    bad = [name for name, status in rows.items() if status != "ok"]
    allowed = with_dependencies({normal(n) for n in IMAGE}) | {normal(r.split("==")[0]) for r in wanted}
    stray = [n for n in dry["environment"]["imported"] if normal(n) not in allowed | {"fada"}]
    # 4. the GPU machine's wheels: each requirement for CPython 3.12, manylinux, x86-64, installable there
    files = sorted((ROOT / ".whl").glob("*.whl"))
    found = {normal(p.name.split("-")[0]): p.name for p in files}
    missing = [r for r in wanted if normal(r.split("==")[0]) not in found]
    wrong = [n for n in found.values() if not ("-cp312-" in n or "py3-none-" in n or "-abi3-" in n)]
    platforms = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64"]
    cp312 = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--no-index", "--no-deps",
                            "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", *platforms,
                            "--target", str(WORK / "cp312"), *map(str, files)],
                           capture_output=True, text=True)  # fmt: skip
    size = sum(p.stat().st_size for p in files) / 2**20
    versions = {k: v for k, v in dry["environment"].items() if k not in ("device", "preset", "seconds", "imported")}
    result = {
        "interpreter": f"cp{tag}", "dry_run_versions": versions, "wheels_installed_no_index": len(wanted),
        "dry_run_rows": rows, "rows_not_ok": bad, "imported": len(dry["environment"]["imported"]),
        "imported_not_provided": stray, "whl_files": len(files), "whl_mib": round(size, 1), "missing": missing,
        "not_cp312": wrong, "cp312_install_dry_run": "ok" if cp312.returncode == 0 else cp312.stderr.strip()[-300:],
    }  # fmt: skip
    (WORK / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    dated = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} | result
    (ROOT / "bench" / "results" / "gpu_wheels_check.json").write_text(json.dumps(dated, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if bad or stray or missing or wrong or cp312.returncode or len(rows) < 7:
        sys.exit(1)


if __name__ == "__main__":
    main()
