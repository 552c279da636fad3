"""Built-in plugins. They register with the same public decorators a user would use, and
arrive through the same ``uni_lab`` entry-point group as any third-party package.
Every module in this package is imported, so a new built-in is one new file."""
import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
