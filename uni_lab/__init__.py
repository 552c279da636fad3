"""uni_lab: path attributions and UNI for image classifiers, stored as labelled xarray/zarr.

The public surface: the plugin decorators (``baseline``, ``path``, ``explainer``, ``attack``,
``metric``, ``model``), ``create``/``get``/``list_plugins`` to use what is registered,
``create_model``/``wrap`` for classifiers in pixel space, and ``run`` for whole stores.
"""
from .errors import InputError, PluginError, StoreError, UniLabError
from .explanation import Explanation
from .hookspecs import hookimpl
from .models import Classifier, create_model, wrap
from .registry import attack, baseline, create, explainer, get, list_plugins, metric, model, path, registry

__version__ = "0.1.0"


def explain(method: str, model, x, target=None, seeds=None, **params) -> Explanation:
    """Run one method (``"ig:black"``, ``"uni"``, ...) on a pixel-space batch; see :mod:`uni_lab.methods`."""
    from .methods import explain as _explain

    return _explain(method, model, x, target=target, seeds=seeds, **params)


def run(*args, **kwargs):
    """Explain images with methods and write a store; see :func:`uni_lab.runner.run`."""
    from .runner import run as _run

    return _run(*args, **kwargs)
