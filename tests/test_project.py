"""The project sets itself up: environment.yml and pyproject.toml describe one environment, CI runs `make test`."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def makefile_extras() -> list[str]:
    """The extras `make setup` installs: the `pip install -e '.[a,b]'` line of the Makefile."""
    m = re.search(r"pip install[^\n]*-e\s+'?\.\[([\w,\s-]+)\]'?", (ROOT / "Makefile").read_text())
    assert m, "the Makefile no longer installs the package with extras"
    return [e.strip() for e in m.group(1).split(",")]


def requirements(lines) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines]
    by_name = {canonicalize_name(r.name): r for r in reqs}
    assert len(by_name) == len(reqs), f"a dependency is listed twice: {sorted(r.name for r in reqs)}"
    return by_name


def pyproject_requirements() -> dict[str, Requirement]:
    """The dependencies of the environment `make setup` builds: the package's own plus the extras it installs."""
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    return requirements(project["dependencies"] + [d for name in makefile_extras() for d in extras[name]])


def environment_yml() -> tuple[str | None, dict[str, Requirement]]:
    """(python spec, dependencies) of environment.yml: its pip list plus any conda package besides python/pip."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python, lines = None, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            lines += dep.get("pip", [])
        elif re.match(r"python\b", dep):
            python = dep
        elif dep != "pip":
            lines.append(dep)
    return python, requirements(lines)


def test_environment_yml_and_pyproject_name_the_same_dependencies():
    want, (_, got) = pyproject_requirements(), environment_yml()
    assert sorted(got) == sorted(want), (f"only in environment.yml: {sorted(set(got) - set(want))}; "
                                         f"only in pyproject.toml: {sorted(set(want) - set(got))}")
    for name, req in want.items():
        assert SpecifierSet(str(got[name].specifier)) == req.specifier, \
            f"{name}: pyproject.toml says {req.specifier}, environment.yml says {got[name].specifier}"
        assert got[name].extras == req.extras and got[name].marker == req.marker, name


def test_optional_extras_left_out_of_the_environment_are_optional():
    """Extras `make setup` does not install (e.g. CUDA-only `triton`) may be missing from environment.yml,
    but nothing the package itself needs."""
    extras = pyproject()["project"]["optional-dependencies"]
    assert {"notebooks", "dev"} <= set(makefile_extras()) <= set(extras)


def test_environment_python_satisfies_requires_python():
    python, _ = environment_yml()
    assert python, "environment.yml pins no python"
    version = re.search(r"(\d+\.\d+)", python).group(1)
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(version + ".0")


def test_ci_runs_make_test():
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run must be executable"
    commands = [shlex.split(line) for line in script.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert ["make", "test"] in [c[:2] for c in commands], commands
    assert re.search(r"^test:.*\n\t.*pytest", (ROOT / "Makefile").read_text(), re.M), "make test runs pytest"


def test_console_script_exists():
    target = pyproject()["project"]["scripts"]["moe-lab"]
    module, _, function = target.partition(":")
    mod = importlib.import_module(module)
    assert callable(getattr(mod, function))


def test_package_tolerances_are_the_tests(rtol):
    """`moe-lab check` (make sweep) judges with the tolerances the tests use."""
    from moe_lab.check import TOLERANCE

    assert TOLERANCE == rtol
