"""No folder of the repository stands in for an installed package (docs/CONTRACTS.md, "Import names").

`python -m`, `python -c` and pytest put the working directory first on sys.path; a folder there
with an ``__init__.py`` hides any installed package of the same name (Hugging Face's `kernels`,
which transformers imports, against our `kernels/`).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The two regular packages at the top of the repository: the library and the test suite.
TOP_LEVEL_PACKAGES = {"cinescene", "tests"}


def _importable_top_level() -> set[str]:
    """Names the repository root provides as regular packages or modules when it is on sys.path."""
    names = set()
    for entry in ROOT.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "__init__.py").exists():
            names.add(entry.name)
        elif entry.suffix == ".py":
            names.add(entry.stem)
    return names


def test_only_the_library_and_the_tests_are_regular_packages_at_the_root():
    packages = {n for n in _importable_top_level() if (ROOT / n).is_dir()}
    assert packages == TOP_LEVEL_PACKAGES


def test_no_root_name_is_an_installed_distributions_import_name():
    installed = importlib.metadata.packages_distributions()
    clashes = {
        name: installed[name]
        for name in _importable_top_level()
        if name in installed and set(installed[name]) != {"cinescene"}
    }
    assert not clashes


def test_mapped_folders_import_under_the_cinescene_namespace():
    import cinescene.kernels.attention
    import cinescene.kernels.provenance
    import cinescene.launch.cli

    assert Path(cinescene.kernels.attention.__file__).is_relative_to(ROOT / "kernels")
    assert Path(cinescene.launch.cli.__file__).is_relative_to(ROOT / "launch")


@pytest.mark.slow
def test_hugging_face_parts_import_from_the_project_root():
    code = (
        "from diffusers import AutoencoderKLWan, WanTransformer3DModel; "
        "from transformers import UMT5EncoderModel, CLIPModel; "
        "import kernels, sys; print(kernels.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not Path(out.stdout.strip()).is_relative_to(ROOT / "kernels")


@pytest.mark.slow
def test_a_python_m_cinescene_process_imports_every_installed_part_from_the_project_root():
    out = subprocess.run(
        [sys.executable, "-m", "cinescene", "env", "--json"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    facts = json.loads(out.stdout)
    components = {c["name"]: c for c in facts["components"]}
    for name in ("Wan VAE", "Wan DiT (diffusers)", "umT5 encoder", "CLIP"):
        assert components[name]["ok"], components[name]
    assert facts["versions"]["torch"] is not None
