"""The wheel carries the topologies and Avro schemas kept at the repository root.

They live at the root (``topologies/``, ``schemas/avro/``) for people and tools that read the
repository; the build copies them into ``streamfed/_data`` so that an installed wheel finds them
(``streamfed.topology.loader`` looks there first). Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("topologies", "schemas/avro")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        target = Path(self.build_lib) / "streamfed" / "_data"
        for folder in SHIPPED:
            shutil.copytree(ROOT / folder, target / folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*~"))


setup(cmdclass={"build_py": BuildPyWithData})
