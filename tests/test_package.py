"""The public surface: exports, typing marker, docs examples that must not rot."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import maas_tune

ROOT = Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_every_name_resolves():
    assert maas_tune.__all__ == sorted(maas_tune.__all__)
    for name in maas_tune.__all__:
        assert getattr(maas_tune, name) is not None


def test_package_is_typed_and_versioned():
    assert (Path(maas_tune.__file__).parent / "py.typed").is_file()
    assert re.fullmatch(r"\d+\.\d+\.\d+", maas_tune.__version__)


def test_importing_the_package_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, maas_tune; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, maas_tune, maas_tune.decoders; print('torch' in sys.modules); "
        "from maas_tune import DecT; print('torch' in sys.modules, DecT.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "DecT"]


def test_dir_lists_the_lazily_loaded_names():
    import maas_tune.decoders

    assert set(maas_tune.__all__) <= set(dir(maas_tune))
    assert set(maas_tune.decoders.__all__) <= set(dir(maas_tune.decoders))
    assert maas_tune.decoders.DecT is maas_tune.DecT
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        maas_tune.decoders.Nope  # noqa: B018


@pytest.mark.model
def test_quickstart_example_runs(gemma, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    accuracy = module.main(provider=gemma, cache=tmp_path / "q.sqlite", n_test=40)
    out = capsys.readouterr().out
    assert 0.0 <= accuracy <= 1.0
    assert "budget: 32 of 64 training queries spent" in out


@pytest.mark.model
def test_readme_python_example_runs(gemma, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(maas_tune, "TransformersProvider", lambda *a, **k: gemma, raising=False)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's example
    assert namespace["decoder"].classes_.tolist() == ["negative", "positive"]
    assert (tmp_path / "runs.sqlite").is_file()


def test_exported_members():
    """``__all__`` is the public surface, as in httpx: every public name of the package
    is exported, and nothing else leaks (``importlib``, ``annotations``, ``TYPE_CHECKING``)."""
    import types

    for name in maas_tune.__all__:
        getattr(maas_tune, name)  # loads the lazily imported names
    submodules = {
        name
        for name, value in vars(maas_tune).items()
        if isinstance(value, types.ModuleType) and name not in maas_tune.__all__
    }
    public = sorted(
        name
        for name in vars(maas_tune)
        if (not name.startswith("_") or name == "__version__") and name not in submodules
    )
    assert maas_tune.__all__ == public
    listed = [n for n in dir(maas_tune) if not n.startswith("_") or n == "__version__"]
    assert sorted(set(listed) - submodules) == maas_tune.__all__
