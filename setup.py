"""Ships kernelspecs/ and firmware/ inside the package (edgekernel/data/...) at build time.

The top-level kernelspecs/ and firmware/ stay the source of truth in the checkout. Inside the
package they land next to the code under every install scheme (venv, --user, --prefix, --target,
conda), where importlib.resources finds them; data-files under share/ would land in the scheme's
share/ directory, which the code cannot locate reliably. Everything else is in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# top-level directory of the checkout/sdist -> directory inside the built package
PACKAGED_DATA = {"kernelspecs": "edgekernel/data/kernelspecs", "firmware": "edgekernel/data/firmware"}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        for source, target in PACKAGED_DATA.items():
            dest = Path(self.build_lib) / target
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData})
