"""cluster/offline/wheelhouse.py without a network: Ray's wheel slimmed (a fake one built here), the
resolution walk over a canned pip report, the markers, the platform tags, and install.sh.

The script is not in a package (cluster/ is not one), so it is imported by path.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import lzma
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "cluster" / "offline" / "wheelhouse.py"


@pytest.fixture(scope="module")
def wh():
    spec = importlib.util.spec_from_file_location("ptmrec_wheelhouse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def an_elf() -> bytes | None:
    """A small real ELF shared object with symbols to strip: a stdlib extension module, if this Python has one."""
    import _json

    path = Path(getattr(_json, "__file__", "") or "")
    return path.read_bytes() if path.is_file() and path.read_bytes()[:4] == b"\x7fELF" else None


KEPT = [
    "ray/__init__.py",
    "ray/scripts/__init__.py",
    "ray/scripts/scripts.py",
    "ray/tune/__init__.py",
    "ray/data/__init__.py",
    "ray/data/dataset.py",
    "ray/dashboard/__init__.py",
    "ray/dashboard/client/build/index.html",
    "ray/dashboard/client/build/static/js/main.js",
    "ray/core/src/ray/gcs/gcs_server",
]
REMOVED = [
    "ray/jars/ray_dist.jar",
    "ray/rllib/__init__.py",
    "ray/rllib/algorithms/ppo.py",
    "ray/serve/__init__.py",
    "ray/serve/scripts.py",
    "ray/llm/__init__.py",
    "ray/setup-dev.py",
    "ray/tests/test_basic.py",
    "ray/tune/tests/test_tune.py",
    "ray/train/examples/mnist.py",
    "ray/data/tests/test_dataset.py",
    "ray/dashboard/client/build/static/js/main.js.map",
]
DIST = "ray-2.60.0.dist-info"


def fake_ray_wheel(tmp_path: Path) -> Path:
    """A wheel laid out like Ray's: the parts --slim removes and the parts it must keep, a valid RECORD."""
    files = {name: f"# {name}\n".encode() for name in KEPT + REMOVED}
    files["ray/scripts/scripts.py"] = b"def main():\n    print('ray cli')\n"
    files["ray/serve/scripts.py"] = b"def cli():\n    pass\n"
    files["ray/jars/ray_dist.jar"] = os.urandom(4096)
    files["ray/core/src/ray/gcs/gcs_server"] = an_elf() or b"#!/bin/sh\necho gcs\n"
    files[f"{DIST}/METADATA"] = b"Metadata-Version: 2.1\nName: ray\nVersion: 2.60.0\n"
    files[f"{DIST}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n"
    files[f"{DIST}/entry_points.txt"] = (b"[console_scripts]\nray = ray.scripts.scripts:main\n"
                                         b"serve = ray.serve.scripts:cli\n")
    files[f"{DIST}/top_level.txt"] = b"ray\n"
    rows = [(n, record_hash(d), str(len(d))) for n, d in files.items()]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows + [(f"{DIST}/RECORD", "", "")])
    files[f"{DIST}/RECORD"] = buf.getvalue().encode()
    wheel = tmp_path / "src" / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o100755 if name.endswith("gcs_server") else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return wheel


def check_wheel(wheel: Path) -> dict[str, bytes]:
    """The slimmed wheel: removed paths gone, kept paths there, RECORD exactly the files with right hashes."""
    with zipfile.ZipFile(wheel) as zf:
        assert zf.testzip() is None
        files = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
    for name in REMOVED:
        assert name not in files, name
    for name in KEPT:
        assert name in files, name
    rows = list(csv.reader(io.StringIO(files[f"{DIST}/RECORD"].decode())))
    recorded = {r[0]: r for r in rows}
    assert len(recorded) == len(rows), "RECORD lists a file twice"
    assert set(recorded) == set(files), "RECORD lists exactly the files of the wheel"
    for name, data in files.items():
        if name == f"{DIST}/RECORD":
            assert recorded[name][1:] == ["", ""]
            continue
        assert recorded[name][1] == record_hash(data), name
        assert recorded[name][2] == str(len(data)), name
    assert modes["ray/core/src/ray/gcs/gcs_server"] & 0o111, "the binary stays executable"
    assert list(files)[-1] == f"{DIST}/RECORD"
    entry_points = files[f"{DIST}/entry_points.txt"].decode()
    assert "ray = ray.scripts.scripts:main" in entry_points and "serve" not in entry_points
    return files


def pip_install(wheels: list[Path], site: Path) -> None:
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}  # no index, no find-links: nothing but the given files
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
                           "--disable-pip-version-check", "--quiet", "--target", str(site), *map(str, wheels)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def check_installed(site: Path) -> None:
    for name in KEPT:
        assert (site / name).is_file(), name
    for name in REMOVED:
        assert not (site / name).exists(), name
    for folder in ("ray/jars", "ray/rllib", "ray/serve", "ray/llm", "ray/tests"):
        assert not (site / folder).exists(), folder
    assert os.stat(site / "ray/core/src/ray/gcs/gcs_server").st_mode & stat.S_IXUSR
    assert (site / "bin" / "ray").is_file() and not (site / "bin" / "serve").exists()
    proc = subprocess.run([sys.executable, "-c", "import ray.data.dataset, ray.tune"], cwd=site,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_slim_wheel_installs_with_pip(wh, tmp_path):
    src = fake_ray_wheel(tmp_path)
    res = wh.slim_wheel(src, tmp_path / "out", fmt="whl")
    assert res.path == tmp_path / "out" / src.name
    assert sorted(res.removed) == sorted(REMOVED)
    assert res.entry_points_dropped == ["serve"]
    assert res.bytes_out < res.bytes_in
    files = check_wheel(res.path)
    elf = an_elf()
    if elf is not None and shutil.which("strip"):
        assert files["ray/core/src/ray/gcs/gcs_server"][:4] == b"\x7fELF"
        assert len(files["ray/core/src/ray/gcs/gcs_server"]) <= len(elf)
    pip_install([res.path], tmp_path / "site")
    check_installed(tmp_path / "site")


def test_slim_wheel_xz_and_install_sh(wh, tmp_path):
    src = fake_ray_wheel(tmp_path)
    house = tmp_path / "house"
    res = wh.slim_wheel(src, house, fmt="whl.xz")
    assert res.path == house / (src.name + ".xz")
    plain = tmp_path / src.name
    plain.write_bytes(lzma.decompress(res.path.read_bytes()))
    check_wheel(plain)

    (house / "install.sh").write_text(wh.INSTALL_SH)
    site = tmp_path / "site"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(house / "install.sh"), str(site)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(f'export PYTHONPATH="{site}')
    check_installed(site)
    assert not list(house.glob("*.whl")), "install.sh leaves the wheelhouse as it was"


def test_slim_drops_rules(wh):
    for name in REMOVED:
        assert wh.slim_drops(name), name
    for name in KEPT + ["ray/dashboard/client/build/examples/a.js", "ray/data/_internal/x.py", "other/tests/x.py"]:
        assert not wh.slim_drops(name), name


def report_item(name, version, requires=()):
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


def test_resolve_walks_for_the_target(wh, monkeypatch):
    """pip's candidates are re-walked with the target's markers; --have stops the walk; a dependency that
    pip left out (its marker was false for this interpreter) is resolved in a second round."""
    calls = []
    catalogue = {
        "ray": report_item("ray", "2.60.0", ["click>=7", "numpy>=1.20", "aiohttp>=3; extra == 'default'",
                                             "py-spy>=0.4; python_version >= '3.12' and extra == 'default'",
                                             "exceptiongroup; python_version < '3.11'",
                                             "memray; extra == 'observability'"]),
        "click": report_item("click", "8.1.0", ["colorama; platform_system == 'Windows'"]),
        "numpy": report_item("numpy", "2.0.0"),
        "aiohttp": report_item("aiohttp", "3.9.0", ["yarl"]),
        "yarl": report_item("yarl", "1.0"),
        "py-spy": report_item("py-spy", "0.4.1"),
        "hjson": report_item("hjson", "3.1.0"),
        "exceptiongroup": report_item("exceptiongroup", "1.2"),
    }

    def fake_dry_run(reqs, target, verbose):
        calls.append(sorted(r.key for r in reqs))
        out = {k: v for k, v in catalogue.items() if k not in ("py-spy", "exceptiongroup")}  # as on Python 3.11
        if any(r.key == "py-spy" for r in reqs):
            out["py-spy"] = catalogue["py-spy"]
        return out

    monkeypatch.setattr(wh, "dry_run", fake_dry_run)
    target = wh.Target("3.12", wh.expand_platforms(["manylinux_2_28_x86_64"]))
    roots = [wh.parse_req("ray[default]==2.60.0"), wh.parse_req("deepspeed==0.19.8")]
    local = {"deepspeed": {"version": "0.19.8", "requires": [wh.parse_req("hjson"), wh.parse_req("torch")]}}
    res = wh.resolve(roots, local, target, have={"numpy", "aiohttp", "torch"}, without=set())
    assert set(res.needed) == {"ray", "click", "py-spy", "deepspeed", "hjson"}
    assert res.needed["ray"]["extras"] == {"default"}
    assert set(res.have_needs) == {"numpy", "aiohttp", "torch"}
    assert len(calls) == 2 and "py-spy" in calls[1] and "deepspeed" not in calls[0] and "hjson" in calls[0]


def test_markers_and_platforms(wh):
    env = wh.target_env("3.12", wh.expand_platforms(["manylinux2014_x86_64"]))
    assert env["python_version"] == "3.12" and env["platform_machine"] == "x86_64" and env["sys_platform"] == "linux"
    true = ['python_version >= "3.12"', "python_version < '3.13' and sys_platform == 'linux'",
            '(platform_system == "Windows") or os_name == "posix"', 'python_version == "3.*"', '"linux" in sys_platform',
            'platform_machine not in "arm64 aarch64"', 'python_version ~= "3.10"']
    false = ['python_version < "3.12"', 'sys_platform == "darwin"', 'python_full_version >= "3.12.1"',
             'extra == "dev"', 'python_version > "3.12" and extra == "default"']
    for marker in true:
        assert wh.marker_true(marker, env), marker
    for marker in false:
        assert not wh.marker_true(marker, env), marker
    assert wh.marker_true('python_version >= "3.12" and extra == "default"', env, ["default"])
    assert wh.marker_true('extra == "Serve_GRPC"', env, ["serve-grpc"])

    tags = wh.expand_platforms(["manylinux_2_28_x86_64"])
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux1_x86_64" in tags and "manylinux_2_31_x86_64" not in tags
    assert wh.expand_platforms(["manylinux2014_aarch64"])[0] == "manylinux_2_17_aarch64"
    assert wh.expand_platforms(["macosx_11_0_arm64"]) == ["macosx_11_0_arm64"]


def test_requirements_of_pyproject(wh):
    reqs = [wh.parse_req(d) for d in wh.read_dependencies(REPO / "pyproject.toml")]
    by_key = {r.key: r for r in reqs}
    assert by_key["ray"].extras == {"train", "tune", "default"} and by_key["ray"].spec.startswith("==")
    assert "deepspeed" in by_key and "deepspeed" in wh.SDIST_BUILDS
    req = wh.parse_req('pydantic<3,>=2.5.0; python_version < "3.14" and extra == "tune"')
    assert (req.name, req.spec, req.marker) == ("pydantic", "<3,>=2.5.0", 'python_version < "3.14" and extra == "tune"')


def test_pip_error_is_one_line(wh):
    target = wh.Target("3.12", wh.expand_platforms(["manylinux_2_28_x86_64"]))
    msg = wh.pip_error("ERROR: Could not find a version that satisfies the requirement foo==1 (from versions: none)\n"
                       "ERROR: No matching distribution found for foo==1\n", "downloading the wheels", target)
    assert "\n" not in msg and "foo==1" in msg and "--platform manylinux_2_N_x86_64" in msg
