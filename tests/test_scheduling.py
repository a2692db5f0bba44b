"""The parallel run keeps a module's tests together when the module has a module fixture of
its own (tests/scheduling.py), so the fixture is built once per run, and still spreads the
other tests over every worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.scheduling import defines_module_fixture

ROOT = Path(__file__).resolve().parent.parent


def test_module_fixtures_are_found_in_the_source() -> None:
    assert defines_module_fixture(ROOT / "tests" / "test_local_backend.py")
    assert not defines_module_fixture(ROOT / "tests" / "test_scheduling.py")


def test_a_module_fixture_is_built_once_across_workers(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")  # not the repository's settings
    (suite / "conftest.py").write_text('pytest_plugins = ["tests.scheduling"]\n')
    (suite / "test_shared.py").write_text(textwrap.dedent(f"""
        import os, time, pytest

        @pytest.fixture(scope="module")
        def expensive():
            with open({str(tmp_path / "built")!r}, "a") as f:
                f.write(os.environ.get("PYTEST_XDIST_WORKER", "-") + "\\n")
            yield

        @pytest.mark.parametrize("i", range(6))
        def test_uses_it(expensive, i):
            time.sleep(0.1)
    """))
    (suite / "test_other.py").write_text(textwrap.dedent(f"""
        import os, time, pytest

        @pytest.mark.parametrize("i", range(12))
        def test_alone(i):
            time.sleep(0.2)
            with open({str(tmp_path / "others")!r}, "a") as f:
                f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "3", "-p",
                          "no:cacheprovider", str(suite)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "18 passed" in out.stdout, out.stdout
    assert len((tmp_path / "built").read_text().split()) == 1
    # The rest went to every worker, not one.
    assert len(set((tmp_path / "others").read_text().split())) == 3
