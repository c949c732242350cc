"""Names of a package loaded from its modules on first use (PEP 562), so that importing the
package (as ``e2llm eval --help`` or ``e2llm train --help`` do) pulls in no torch."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Mapping, Sequence


def lazy_names(package: str, where: Mapping[str, Sequence[str]], public: Sequence[str],
               namespace: dict) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for ``package``: ``where`` maps a submodule to the names it gives;
    a submodule's own name (``package.trainer``) also loads it, as an eager import would have
    made it an attribute. ``namespace`` is the package's globals(): a name, once loaded, is kept."""
    module_of = {name: module for module, names in where.items() for name in names}
    folder = Path(namespace["__file__"]).parent

    def getattr_(name: str):
        module = module_of.get(name)
        if module is None:
            if (folder / f"{name}.py").is_file():
                return importlib.import_module(f".{name}", package)
            raise AttributeError(f"module '{package}' has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(public))

    return getattr_, dir_
