"""environment.yml (conda users) and pyproject.toml (pip) declare the same dependencies."""
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict[str, str]:
    d = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = d["dependencies"] + [r for extra in d["optional-dependencies"].values() for r in extra]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = [line.strip()[2:] for line in lines[start + 1:] if line.strip().startswith("- ")]
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_same_packages_and_versions():
    py, env = _pyproject(), _environment()
    assert set(py) == set(env), (f"only in pyproject: {set(py) - set(env)}; "
                                 f"only in environment.yml: {set(env) - set(py)}")
    assert py == env


def test_torch_pin_matches_makefile():
    """The Makefile's pinned torch pair must fall inside the declared ranges."""
    mk = (ROOT / "Makefile").read_text()
    torch_v = re.search(r"torch==([\d.]+)", mk).group(1)
    vision_v = re.search(r"torchvision==([\d.]+)", mk).group(1)
    py = _pyproject()
    from packaging.specifiers import SpecifierSet

    assert torch_v in SpecifierSet(py["torch"][len("torch"):])
    assert vision_v in SpecifierSet(py["torchvision"][len("torchvision"):])
