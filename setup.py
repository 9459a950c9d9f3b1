"""What pyproject.toml cannot say: the repository's top-level `assets/` ships as the package
`workbench_assets` (demo data, the multiple-choice suite, bias pairs), so a non-editable
install has them; `workbench.locations.asset()` is how code finds them."""

from setuptools import find_namespace_packages, find_packages, setup

PLUGINS = find_packages("plugins", include=["workbench*"])
# Every directory under assets/ is a data package, so any file added there ships.
ASSETS = ["workbench_assets", *(f"workbench_assets.{p}" for p in find_namespace_packages("assets", exclude=["*__pycache__*"]))]

setup(
    packages=[*find_packages(".", include=["workbench", "workbench.*"]), *PLUGINS, *ASSETS],
    package_dir={**{p: "plugins/" + p.replace(".", "/") for p in PLUGINS}, "workbench_assets": "assets"},
    package_data={
        "": ["*.tcss", "*.json", "*.jsonl", "*.yaml", "*.txt"],
        **{p: ["*"] for p in ASSETS},
    },
    exclude_package_data={"": ["*.pyc"]},
)
