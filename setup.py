"""Package layout: ``plugins/`` installs as ``irkit.plugins``, ``runtime/`` as ``irkit.runtime``.

Everything else is in pyproject.toml; this file only computes the package list, which
pyproject's static tables cannot express for remapped directories.
"""

from setuptools import find_packages, setup


def _remapped(directory: str, namespace: str) -> list[str]:
    found = find_packages(where=".", include=[directory, f"{directory}.*"])
    return [namespace + name[len(directory) :] for name in found]


packages = find_packages(include=["irkit", "irkit.*"])
packages += _remapped("plugins", "irkit.plugins") + _remapped("runtime", "irkit.runtime")

setup(
    packages=packages,
    package_dir={"irkit": "irkit", "irkit.plugins": "plugins", "irkit.runtime": "runtime"},
    package_data={"": ["*.lark", "*.json", "*.js", "*.h", "*.mjs", "*.zig", "*.html"]},
)
