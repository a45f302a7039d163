"""The package list, which pyproject.toml cannot express (everything else is in pyproject.toml).

`[tool.setuptools.packages.find]` only finds packages whose folder has the package's name; the top-level `assets/`
folder ships as the package `engine.assets` (mapped in `[tool.setuptools.package-dir]`), so the list is the found
`app` and `engine` packages plus that one. A wheel installs the assets in `site-packages/engine/assets/`; an
editable install (`pip install -e .`, used by `make`) maps `engine.assets` back to the checkout's `assets/`.
"""

from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["app", "app.*", "engine", "engine.*"], exclude=["*__pycache__*"])
      + ["engine.assets"])
