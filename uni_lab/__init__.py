"""uni_lab: path attributions and UNI for image classifiers, stored as labelled xarray/zarr.

The public surface: the plugin decorators (``baseline``, ``path``, ``explainer``, ``attack``,
``metric``, ``model``), ``create``/``get``/``list_plugins`` to use what is registered,
``create_model``/``wrap`` for classifiers in pixel space, ``run`` for whole stores, ``evaluate``
to add metrics, attacks and corruptions to one and ``open_store`` to read one (``ds.uni`` is registered on import).
"""
from . import accessor  # noqa: F401  registers the ``ds.uni`` accessor on every xarray Dataset
from . import evaluate_config, run_config
from .errors import InputError, PluginError, StoreError, UniLabError
from .hookspecs import hookimpl
from .registry import attack, baseline, create, explainer, get, list_plugins, metric, model, path

__version__ = "0.1.0"

# Torch-backed names load on first use, so `import uni_lab` (and every `uni-lab` command's
# argument parsing) does not pay for importing torch.
_LAZY = {"Explanation": "explanation", "Classifier": "models", "create_model": "models", "wrap": "models",
         "open_store": "store"}
_SUBMODULES = ("plot",)  # matplotlib loads only when plotting is asked for


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'uni_lab' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_LAZY) + list(_SUBMODULES))


def explain(method: str, model, x, target=None, seeds=None, **params) -> "Explanation":
    """Run one method (``"ig:black"``, ``"uni"``, ...) on a pixel-space batch; see :mod:`uni_lab.methods`."""
    from .methods import explain as _explain

    return _explain(method, model, x, target=target, seeds=seeds, **params)


def run(*args, **kwargs):
    from .runner import write_store

    return write_store(run_config.RunConfig(*args, **kwargs))


run.__signature__, run.__doc__ = run_config.signature(), run_config.run_doc()  # torch-free: help() answers at once


def evaluate(*args, **kwargs):
    from .evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


evaluate.__signature__, evaluate.__doc__ = evaluate_config.signature(), evaluate_config.evaluate_doc()
