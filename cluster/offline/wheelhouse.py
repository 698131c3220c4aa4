#!/usr/bin/env python3
"""Build a wheelhouse of PTMRec's runtime dependencies for an air-gapped machine.

Reads pyproject.toml's project.dependencies, leaves out what the target already has (--have) and what
you don't want (--without), resolves the rest with their dependencies for the target's Python and
platform, downloads their wheels, builds deepspeed as a pure-Python wheel from its sdist (no ops, no
torch pulled), and optionally slims Ray's wheel (--slim). Writes DIR/install.sh and DIR/MANIFEST.txt.

    python cluster/offline/wheelhouse.py --out wheelhouse --python-version 3.12 --slim
    sh wheelhouse/install.sh /opt/site       # on the target: pip install --no-index --no-deps --target ...

Standard library only; pip (22.2 or newer) runs as a subprocess of this Python, and needs PyPI (or your
index) here, not on the target.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a Python that already holds torch, transformers and peft has anyway (their own dependencies), plus
# the small pure-Python packages of the project's list. A package named here is assumed present on the
# target together with everything it needs, so its dependencies are not followed either.
DEFAULT_HAVE = (
    "torch", "transformers", "peft", "numpy", "pillow", "pyyaml", "tqdm",
    # torch's
    "filelock", "typing-extensions", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec",
    "setuptools", "triton",
    # transformers' and peft's
    "huggingface-hub", "hf-xet", "tokenizers", "safetensors", "regex", "packaging", "psutil", "accelerate",
    "requests", "urllib3", "certifi", "idna", "charset-normalizer",
)
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"

# Packages with no wheel on PyPI, built here from their sdist: name -> environment of the build.
SDIST_BUILDS = {"deepspeed": {"DS_BUILD_OPS": "0"}}

# --slim: what goes out of Ray's wheel (paths inside the wheel).
SLIM_DROP_PREFIXES = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/")
SLIM_DROP_FILES = ("ray/setup-dev.py",)
SLIM_DROP_DIR_NAMES = ("tests", "examples")  # any folder of that name under ray/
SLIM_KEEP_PREFIXES = ("ray/dashboard/client/build/",)  # the dashboard's web app: no folder of it dropped
XZ_FILTERS = [{"id": lzma.FILTER_X86},  # branch converter: x86-64 code compresses better
              {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 128 << 20}]  # > the three Ray binaries together; ~1.5 GB to compress


class WheelhouseError(Exception):
    """An error to print as one line."""


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------- requirements

@dataclass(frozen=True)
class Req:
    name: str
    extras: frozenset = frozenset()
    spec: str = ""
    marker: str | None = None

    @property
    def key(self) -> str:
        return canon(self.name)

    def pip_arg(self, with_extras: bool = True) -> str:
        extras = f"[{','.join(sorted(self.extras))}]" if with_extras and self.extras else ""
        return f"{self.name}{extras}{self.spec}"

    def __str__(self) -> str:
        return self.pip_arg()


def _packaging(module: str, *names: str) -> tuple:
    """Names from `packaging` (PEP 508 requirements and markers), or from the copy pip vendors where it is
    not installed (importing pip's copy in-process upsets setuptools' distutils shim, so it is the fallback)."""
    import importlib

    try:
        found = importlib.import_module(f"packaging.{module}")
    except ImportError:
        found = importlib.import_module(f"pip._vendor.packaging.{module}")
    return tuple(getattr(found, n) for n in names)


def parse_req(text: str) -> Req:
    InvalidRequirement, Requirement = _packaging("requirements", "InvalidRequirement", "Requirement")
    try:
        r = Requirement(text)
    except InvalidRequirement:
        raise WheelhouseError(f"cannot read the requirement {text!r}") from None
    return Req(r.name, frozenset(canon(e) for e in r.extras), str(r.specifier), str(r.marker) if r.marker else None)


def read_dependencies(pyproject: Path) -> list[str]:
    text = pyproject.read_text()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the [project] table's dependencies array, read by hand
        section = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        array = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", section.group(1) if section else "", re.M | re.S)
        if not array:
            raise WheelhouseError(f"{pyproject}: no [project] dependencies")
        lines = [re.sub(r"#.*$", "", line) for line in array.group(1).splitlines()]
        return re.findall(r"""["']([^"']+)["']""", "\n".join(lines))
    deps = tomllib.loads(text).get("project", {}).get("dependencies")
    if deps is None:
        raise WheelhouseError(f"{pyproject}: no [project] dependencies")
    return list(deps)


# --------------------------------------------------------------------------------------------------- markers


def marker_true(marker: str | None, env: dict, extras=()) -> bool:
    """PEP 508 marker, evaluated for the target (pip's own `packaging`); true when any of `extras` (or none)
    makes it true."""
    if not marker:
        return True
    InvalidMarker, Marker, UndefinedEnvironmentName = _packaging("markers", "InvalidMarker", "Marker",
                                                                 "UndefinedEnvironmentName")
    try:
        parsed = Marker(marker)
        return any(parsed.evaluate({**env, "extra": e}) for e in (*extras, ""))
    except (InvalidMarker, UndefinedEnvironmentName):
        return True  # unreadable: follow it (a package too many is better than one missing)


def target_env(python_version: str, platforms: list[str]) -> dict:
    full = python_version if python_version.count(".") >= 2 else python_version + ".0"
    plat = platforms[0] if platforms else ""
    if plat.startswith("macosx"):
        system, sys_platform, os_name = "Darwin", "darwin", "posix"
    elif plat.startswith("win"):
        system, sys_platform, os_name = "Windows", "win32", "nt"
    else:
        system, sys_platform, os_name = "Linux", "linux", "posix"
    machine = re.sub(r"^(manylinux_\d+_\d+|manylinux\d+|musllinux_\d+_\d+|linux|macosx_\d+_\d+|win)_", "", plat)
    machine = {"amd64": "AMD64"}.get(machine, machine)
    return {"python_version": ".".join(full.split(".")[:2]), "python_full_version": full,
            "implementation_name": "cpython", "implementation_version": full,
            "platform_python_implementation": "CPython", "platform_system": system, "sys_platform": sys_platform,
            "os_name": os_name, "platform_machine": machine, "platform_release": "", "platform_version": ""}


def expand_platforms(platforms: list[str]) -> list[str]:
    """pip matches a platform tag exactly: manylinux_2_N_ARCH also admits every older manylinux tag (what
    pip itself accepts on a machine with glibc 2.N)."""
    legacy = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
    out: list[str] = []
    for plat in platforms:
        m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", plat) or re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", plat)
        if not m:
            out.append(plat)
            continue
        glibc = legacy.get(m.group(1)) or int(m.group(1))
        arch = m.group(2)
        tags = [f"manylinux_2_{n}_{arch}" for n in range(glibc, 4, -1)]
        tags += [f"{name}_{arch}" for name, n in legacy.items() if n <= glibc and arch in ("x86_64", "i686", "aarch64", "ppc64le", "s390x", "armv7l")
                 and (name != "manylinux1" or arch in ("x86_64", "i686"))]
        out += [t for t in tags if t not in out]
    return out


# ------------------------------------------------------------------------------------------------------ pip

@dataclass
class Target:
    python_version: str
    platforms: list[str]
    verbose: bool = False

    def pip_flags(self) -> list[str]:
        flags = ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", "cp"]
        for plat in self.platforms:
            flags += ["--platform", plat]
        return flags

    @property
    def label(self) -> str:
        newest = next((p for p in self.platforms if p.startswith("manylinux_2_")), self.platforms[0] if self.platforms else "")
        return f"cp{self.python_version.replace('.', '')[:3]} / {newest}"


def run_pip(args: list[str], *, env: dict | None = None, verbose: bool = False, what: str = "",
            target: Target | None = None) -> str:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    if verbose:
        print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if verbose and proc.stdout:
        print(proc.stdout, end="")
    if proc.returncode:
        raise WheelhouseError(pip_error(proc.stderr + proc.stdout, what, target))
    return proc.stdout


def pip_error(output: str, what: str, target: Target | None) -> str:
    missing = re.search(r"No matching distribution found for ([^\s]+)", output)
    if missing:
        name = missing.group(1)
        if target:
            arch = target_env(target.python_version, target.platforms)["platform_machine"] or "x86_64"
            return (f"pip found no wheel of {name} for {target.label} (while {what}); if the target's glibc is "
                    f"newer (ldd --version), pass --platform manylinux_2_N_{arch} with its N, or leave the "
                    f"package out with --without / --have")
        return f"pip found no distribution of {name} (while {what}); is PyPI (or your index) reachable?"
    if "ResolutionImpossible" in output or "conflicting dependencies" in output:
        conflict = " ".join(l.strip() for l in output.splitlines() if "depends on" in l or "requested" in l)
        return f"the requirements conflict for this target (while {what}): {conflict[:400]}"
    if "No module named pip" in output:
        return f"{sys.executable} has no pip: run this script with a Python that has pip (22.2 or newer)"
    last = [l.strip() for l in output.splitlines() if l.strip() and "is ignored: it is neither" not in l]
    tail = last[-1] if last else "no output"
    return f"pip failed while {what}: {tail} (rerun with --verbose for pip's whole output)"


def check_pip() -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    m = re.match(r"pip (\d+)\.(\d+)", out.stdout)
    if not m:
        raise WheelhouseError(f"{sys.executable} has no pip: run this script with a Python that has pip (22.2 or newer)")
    if (int(m.group(1)), int(m.group(2))) < (22, 2):
        raise WheelhouseError(f"pip {m.group(1)}.{m.group(2)} is too old (needs --dry-run --report): "
                              f"{sys.executable} -m pip install -U pip")


# -------------------------------------------------------------------------------------------------- resolve

@dataclass
class Resolution:
    needed: dict = field(default_factory=dict)     # key -> {"name", "version", "extras", "why"}
    have_needs: dict = field(default_factory=dict)  # key -> set of "spec (from parent)"
    without_needs: dict = field(default_factory=dict)


def dry_run(reqs: list[Req], target: Target, verbose: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        run_pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                 *target.pip_flags(), *(r.pip_arg() for r in reqs)],
                verbose=verbose, what="resolving the dependencies", target=target)
        data = json.loads(report.read_text())
    return {canon(item["metadata"]["name"]): item for item in data["install"]}


def resolve(roots: list[Req], local: dict, target: Target, have: set, without: set, verbose: bool = False) -> Resolution:
    """The closure of `roots` for the target, not following packages in `have` or `without`.

    pip evaluates markers with THIS interpreter's environment, so its answer is only the candidate set: the
    walk below re-evaluates every marker for the target, and anything the target needs that pip left out
    is added as a root and resolved again. `local` holds already-built packages (key -> requires_dist)."""
    env = target_env(target.python_version, target.platforms)
    extra_roots: list[Req] = []
    for _ in range(4):
        pip_roots = [r for r in roots if r.key not in local] + extra_roots
        for item in local.values():
            pip_roots += [r for r in item["requires"] if r.key not in have and r.key not in without and r.key not in local]
        pip_roots = [Req(r.name, r.extras, r.spec) for r in pip_roots]
        nodes = dry_run(pip_roots, target, verbose) if pip_roots else {}
        res, missing = Resolution(), []
        queue = [(r, "pyproject.toml") for r in roots]
        while queue:
            req, parent = queue.pop(0)
            key = req.key
            if key in have:
                res.have_needs.setdefault(key, set()).add(f"{req.pip_arg(False)} ({parent})")
                continue
            if key in without:
                res.without_needs.setdefault(key, set()).add(parent)
                continue
            if key in local:
                node = {"name": req.name, "version": local[key]["version"], "requires": local[key]["requires"]}
            elif key in nodes:
                meta = nodes[key]["metadata"]
                node = {"name": meta["name"], "version": meta["version"],
                        "requires": [parse_req(d) for d in meta.get("requires_dist") or []]}
            else:
                missing.append(req)
                continue
            seen = res.needed.get(key)
            if seen and req.extras <= seen["extras"]:
                continue
            if seen is None:
                seen = res.needed[key] = {"name": node["name"], "version": node["version"], "extras": set(), "why": parent}
            seen["extras"] |= req.extras
            for dep in node["requires"]:
                if marker_true(dep.marker, env, sorted(seen["extras"])):
                    queue.append((dep, node["name"]))
        if not missing:
            return res
        new = [r for r in missing if r.key not in {x.key for x in extra_roots}]
        if not new:
            break
        extra_roots += [Req(r.name, r.extras, r.spec) for r in new]
    raise WheelhouseError(f"pip's resolution for this Python kept leaving out {', '.join(map(str, missing))}, which "
                          f"Python {target.python_version} needs: name them in --have (the target has them) or --without")


# ------------------------------------------------------------------------------------------------ building

def wheel_metadata(wheel: Path) -> tuple[str, str, list[Req]]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = zf.read(name).decode("utf-8")
    headers = {}
    requires = []
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        if key == "Requires-Dist":
            requires.append(parse_req(value.strip()))
        else:
            headers.setdefault(key, value.strip())
    return headers.get("Name", ""), headers.get("Version", ""), requires


def build_sdist_wheel(req: Req, dest: Path, verbose: bool) -> Path:
    """deepspeed (and the like): `pip wheel --no-deps --no-build-isolation` from the sdist, ops not built, so
    the wheel is py3-none-any and nothing (torch) is installed to build it."""
    env = SDIST_BUILDS[req.key]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_pip(["wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "--no-binary", req.name,
                 "-w", tmp, req.pip_arg(False)], env=env, verbose=verbose,
                what=f"building {req.pip_arg(False)} from its sdist (needs setuptools and wheel in {sys.executable})")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1 or not wheels[0].name.endswith("-py3-none-any.whl"):
            raise WheelhouseError(f"building {req} gave {[w.name for w in wheels]}, not one py3-none-any wheel")
        out = dest / wheels[0].name
        shutil.move(str(wheels[0]), out)
    return out


def download(pins: list[str], dest: Path, target: Target, verbose: bool) -> None:
    run_pip(["download", "--no-deps", "--quiet", "-d", str(dest), *target.pip_flags(), *pins],
            verbose=verbose, what="downloading the wheels", target=target)


# ---------------------------------------------------------------------------------------------------- slim

@dataclass
class SlimResult:
    path: Path
    removed: list = field(default_factory=list)
    stripped: list = field(default_factory=list)
    bytes_in: int = 0      # unpacked size before
    bytes_out: int = 0     # unpacked size after
    entry_points_dropped: list = field(default_factory=list)


def slim_drops(name: str) -> bool:
    """Whether Ray's slimmed wheel leaves out this file (path inside the wheel)."""
    if not name.startswith("ray/"):
        return False
    if name in SLIM_DROP_FILES or name.startswith(SLIM_DROP_PREFIXES):
        return True
    if name.startswith("ray/dashboard/") and name.endswith(".map"):
        return True
    if name.startswith(SLIM_KEEP_PREFIXES):
        return False
    return any(part in SLIM_DROP_DIR_NAMES for part in name.split("/")[1:-1])


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _strip(data: bytes, strip: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "elf"
        path.write_bytes(data)
        proc = subprocess.run([strip, "--strip-unneeded", str(path)], capture_output=True, text=True)
        return path.read_bytes() if proc.returncode == 0 else data


def slim_wheel(wheel: Path, out_dir: Path, *, fmt: str = "whl", strip: str | None = "strip",
               drops=slim_drops) -> SlimResult:
    """Rewrite a wheel without the files `drops` names, ELF binaries stripped (`strip`, if found), RECORD
    rewritten (removed entries gone, hashes and sizes of every file recomputed), console scripts whose
    module is gone dropped from entry_points.txt, file modes kept.

    fmt "whl": a deflated wheel, `pip install`-able as it is. fmt "whl.xz": the same wheel stored
    (uncompressed) inside one xz stream, `<wheel>.xz`; solid compression with a dictionary larger than the
    wheel shares what the binaries have in common, about half the size of the deflated wheel for Ray;
    `xz -d` (or Python's lzma) gives the wheel back before `pip install`."""
    if fmt not in ("whl", "whl.xz"):
        raise ValueError(f"fmt {fmt!r}: 'whl' or 'whl.xz'")
    out_dir.mkdir(parents=True, exist_ok=True)
    res = SlimResult(out_dir / (wheel.name + (".xz" if fmt == "whl.xz" else "")))
    files = _kept_files(wheel, res, shutil.which(strip) if strip else None, drops)
    records = [n for n in files if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
    if len(records) != 1:
        raise WheelhouseError(f"{wheel.name}: not a wheel (no single *.dist-info/RECORD)")
    record = records[0]
    dist_info = record.rsplit("/", 1)[0]
    if f"{dist_info}/entry_points.txt" in files and res.removed:
        _drop_dead_entry_points(files, f"{dist_info}/entry_points.txt", res)
    rows = [(name, record_hash(data), str(len(data))) for name, (_, data) in files.items() if name != record]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows + [(record, "", "")])
    files[record] = (files[record][0], buf.getvalue().encode("utf-8"))
    res.bytes_out = sum(len(data) for _, data in files.values())
    _write_wheel(files, dist_info, record, res.path, fmt)
    return res


def _kept_files(wheel: Path, res: SlimResult, strip: str | None, drops) -> dict[str, tuple[zipfile.ZipInfo, bytes]]:
    """The wheel's files that `drops` keeps, ELF binaries stripped; what went is recorded in `res`."""
    files: dict[str, tuple[zipfile.ZipInfo, bytes]] = {}
    with zipfile.ZipFile(wheel) as zin:
        for info in zin.infolist():
            if info.is_dir():
                continue
            res.bytes_in += info.file_size
            if drops(info.filename):
                res.removed.append(info.filename)
                continue
            data = zin.read(info)
            if strip and data[:4] == b"\x7fELF":
                stripped = _strip(data, strip)
                if len(stripped) < len(data):
                    res.stripped.append((info.filename, len(data), len(stripped)))
                    data = stripped
            files[info.filename] = (info, data)
    return files


def _drop_dead_entry_points(files: dict, entry_points: str, res: SlimResult) -> None:
    """Remove the console scripts whose module the slimming removed (pip would install broken commands)."""
    info, data = files[entry_points]
    kept_lines = []
    for line in data.decode("utf-8").splitlines():
        m = re.match(r"\s*([^=\s]+)\s*=\s*([\w.]+)", line)
        if m and not line.lstrip().startswith(("[", "#")):
            mod = m.group(2).replace(".", "/")
            if mod + ".py" not in files and mod + "/__init__.py" not in files and \
                    any(r.startswith(mod + "/") or r == mod + ".py" for r in res.removed):
                res.entry_points_dropped.append(m.group(1))
                continue
        kept_lines.append(line)
    files[entry_points] = (info, ("\n".join(kept_lines) + "\n").encode("utf-8"))


def _write_wheel(files: dict, dist_info: str, record: str, path: Path, fmt: str) -> None:
    """Write `files` as a wheel at `path` (fmt "whl") or as a stored wheel inside one xz stream ("whl.xz")."""
    # ELF files first, largest together (what they share is then within the compressor's reach), the
    # .dist-info last as the wheel format asks.
    def order(name: str):
        data = files[name][1]
        elf = data[:4] == b"\x7fELF"
        return (name.startswith(dist_info + "/"), name == record, not elf, -len(data) if elf else 0, name)

    compression = zipfile.ZIP_DEFLATED if fmt == "whl" else zipfile.ZIP_STORED
    wheel_out = path if fmt == "whl" else Path(tempfile.mkdtemp()) / path.name[:-len(".xz")]
    try:
        with zipfile.ZipFile(wheel_out, "w", compression=compression, compresslevel=9 if fmt == "whl" else None) as zout:
            for name in sorted(files, key=order):
                old, data = files[name]
                info = zipfile.ZipInfo(name, date_time=old.date_time)
                info.external_attr = old.external_attr or (0o644 << 16)
                info.create_system = old.create_system
                info.compress_type = compression
                zout.writestr(info, data)
        if fmt == "whl.xz":
            size = wheel_out.stat().st_size  # a dictionary no larger than the input (memory: ~11x the dictionary)
            filters = [dict(f) for f in XZ_FILTERS]
            filters[-1]["dict_size"] = min(filters[-1]["dict_size"], max(1 << 20, 1 << (size - 1).bit_length()))
            with open(wheel_out, "rb") as src, lzma.open(path, "wb", format=lzma.FORMAT_XZ,
                                                           check=lzma.CHECK_CRC64, filters=filters) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    finally:
        if fmt == "whl.xz":
            shutil.rmtree(wheel_out.parent, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- output

INSTALL_SH = r"""#!/usr/bin/env bash
# Installs this wheelhouse without an index:  bash install.sh [TARGET_DIR]   (default /tmp/site)
# PYTHON=... picks the interpreter (default python3). Then use the printed export line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${1:-/tmp/site}
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shopt -s nullglob
wheels=("$here"/*.whl)
for x in "$here"/*.whl.xz; do   # slimmed wheels, xz-compressed: unpack to a wheel first
    out="$tmp/$(basename "$x" .xz)"
    "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"), 1 << 20)' "$x" "$out"
    wheels+=("$out")
done
"$py" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade --quiet --disable-pip-version-check \
    --target "$target" "${wheels[@]}"
# What these packages need from the target but did not find there (or found too old), as pip check says
# (a package left out with --without shows here too). Reported on stderr, not an error.
names=$(for w in "${wheels[@]}"; do n=$(basename "$w"); echo "${n%%-*}" | sed 's/[-_.]/[-_.]/g'; done | paste -sd'|')
PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" "$py" -m pip check --disable-pip-version-check 2>/dev/null \
    | grep -i -E "^($names) " | sed 's/^/pip check: /' >&2 || true
echo "export PYTHONPATH=\"$target\${PYTHONPATH:+:\$PYTHONPATH}\" PATH=\"$target/bin:\$PATH\""
"""


def human(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def write_manifest(out: Path, header: list[str]) -> int:
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != "MANIFEST.txt")
    total = sum(p.stat().st_size for p in files)
    width = max((len(p.name) for p in files), default=10)
    lines = [f"# {h}" for h in header]
    lines += [f"{p.name:<{width}}  {p.stat().st_size:>10}  {human(p.stat().st_size):>10}" for p in files]
    lines.append(f"{'total (' + str(len(files)) + ' files)':<{width}}  {total:>10}  {human(total):>10}")
    (out / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    return total


def split_names(values: list[str] | None) -> list[str]:
    return [canon(n) for v in values or [] for n in v.split(",") if n.strip()]


def build(args) -> int:
    check_pip()
    out = Path(args.out).resolve()
    given = [p.strip() for v in args.platform or [] for p in v.split(",") if p.strip()]
    platforms = expand_platforms(given or [DEFAULT_PLATFORM])
    target = Target(args.python_version, platforms, args.verbose)
    have = set(split_names(args.have)) if args.have is not None else set(map(canon, DEFAULT_HAVE))
    without = set(split_names(args.without))
    reqs = [parse_req(d) for d in read_dependencies(Path(args.pyproject))]
    env = target_env(target.python_version, platforms)
    reqs = [r for r in reqs if marker_true(r.marker, env)]

    skipped = [r for r in reqs if r.key in have]
    left_out = [r for r in reqs if r.key in without]
    roots = [r for r in reqs if r.key not in have and r.key not in without]
    print(f"target: CPython {target.python_version}, {platforms[0]} (and older tags)")
    print(f"skipped, the target has them (--have): {', '.join(str(r) for r in skipped) or '-'}")
    print(f"left out (--without): {', '.join(str(r) for r in left_out) or '-'}")

    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
        stage = Path(tmp)
        local = {}
        for r in roots:
            if r.key in SDIST_BUILDS:
                print(f"building {r} from its sdist ({' '.join(f'{k}={v}' for k, v in SDIST_BUILDS[r.key].items())}) ...", flush=True)
                wheel = build_sdist_wheel(r, stage, args.verbose)
                _, version, requires = wheel_metadata(wheel)
                local[r.key] = {"version": version, "requires": [q for q in requires if marker_true(q.marker, env)],
                                "wheel": wheel}
        print("resolving ...", flush=True)
        res = resolve(roots, local, target, have, without, args.verbose)
        pins = [f"{n['name']}=={n['version']}" for k, n in sorted(res.needed.items()) if k not in local]
        print(f"downloading {len(pins)} wheels ...", flush=True)
        if pins:
            download(pins, stage, target, args.verbose)
        wheels = sorted(stage.glob("*.whl"))
        got = {canon(re.split(r"-", w.name)[0]) for w in wheels}
        lost = sorted(set(res.needed) - got)
        if lost:
            raise WheelhouseError(f"pip downloaded no wheel for {', '.join(lost)}")

        out.mkdir(parents=True, exist_ok=True)
        for old in [*out.glob("*.whl"), *out.glob("*.whl.xz"), *out.glob("*.tar.xz"), out / "install.sh", out / "MANIFEST.txt"]:
            if old.is_file():
                old.unlink()
        notes = []
        for wheel in wheels:
            if args.slim and canon(wheel.name.split("-")[0]) == "ray":
                print(f"slimming {wheel.name} ({human(wheel.stat().st_size)}) ...", flush=True)
                r = slim_wheel(wheel, out, fmt=args.slim_format)
                notes.append(f"{wheel.name}: {human(wheel.stat().st_size)} -> {r.path.name} {human(r.path.stat().st_size)}; "
                             f"unpacked {human(r.bytes_in)} -> {human(r.bytes_out)}, {len(r.removed)} files removed, "
                             f"{len(r.stripped)} binaries stripped, console scripts dropped: {', '.join(r.entry_points_dropped) or '-'}")
                print("  " + notes[-1])
            else:
                shutil.copy2(wheel, out / wheel.name)
    (out / "install.sh").write_text(INSTALL_SH)
    (out / "install.sh").chmod(0o755)

    header = [f"PTMRec wheelhouse: CPython {target.python_version}, platforms {' '.join(platforms)}",
              f"built by: {Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}",
              "install: bash install.sh [TARGET_DIR]  (pip install --no-index --no-deps --target)",
              f"skipped (--have): {', '.join(str(r) for r in skipped) or '-'}",
              f"left out (--without): {', '.join(str(r) for r in left_out) or '-'}",
              *notes]
    if res.have_needs:
        needs = "; ".join(f"{', '.join(sorted(v))}" for _, v in sorted(res.have_needs.items()))
        header.append(f"the target must provide: {needs}")
        print(f"the target must provide (not in the wheelhouse): {', '.join(sorted(res.have_needs))}")
    dropped_needs = [f"{k} (by {', '.join(sorted(v - {'pyproject.toml'}))})"
                     for k, v in sorted(res.without_needs.items()) if v - {"pyproject.toml"}]
    if dropped_needs:
        print(f"warning: needed by packages of the wheelhouse but left out (--without): {'; '.join(dropped_needs)}")
    total = write_manifest(out, header)
    print(f"wrote {out}: {len(list(out.glob('*.whl*')))} packages, {human(total)} (MANIFEST.txt)")
    print(f"install on the target: bash {out}/install.sh /tmp/site   (copy the folder there first)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the wheelhouse folder (its *.whl, *.whl.xz, install.sh and MANIFEST.txt are replaced)")
    p.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="the target's Python, e.g. 3.12 (default: this one's)")
    p.add_argument("--platform", action="append",
                   help=f"the target's platform tag, repeatable or comma-separated (default {DEFAULT_PLATFORM}); "
                        "manylinux_2_N_ARCH also admits every older manylinux tag")
    p.add_argument("--have", help="comma-separated packages the target already has, with their dependencies "
                                  f"(replaces the default: {','.join(DEFAULT_HAVE)})")
    p.add_argument("--without", action="append", help="comma-separated packages to leave out (e.g. wandb,boto3)")
    p.add_argument("--slim", action="store_true", help="slim Ray's wheel (no Java jars, RLlib, Serve, LLM, tests, source maps; binaries stripped)")
    p.add_argument("--slim-format", choices=("whl.xz", "whl"), default="whl.xz",
                   help="whl.xz (default): the slimmed wheel xz-compressed, about half the size; whl: a plain wheel")
    p.add_argument("--pyproject", default=str(ROOT / "pyproject.toml"))
    p.add_argument("--verbose", "-v", action="store_true", help="show pip's commands and output")
    args = p.parse_args(argv)
    if args.have is not None:
        args.have = [args.have]
    try:
        return build(args)
    except WheelhouseError as e:
        print(f"wheelhouse: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
