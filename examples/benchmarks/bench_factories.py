"""Model factories for the example benchmark specs (plug-in code: a spec names them as ``module:function``).

The specs put this folder on ``sys.path`` (``[model] python_path = ["."]``), so no package is edited.
"""
from __future__ import annotations


def nb201(row: dict):
    """NAS: one network per table row (``row`` maps column -> text). The benchmark seeds torch with the
    spec's ``init_seed`` right before this call, so the random initialisation is reproducible."""
    from mqbench.networks.nb201 import NB201Network

    return NB201Network(row["ArchitectureString"], num_classes=10)


def cifar_resnet32(checkpoint: str):
    """MQ: the FP network, called once with the spec's checkpoint path (verified by sha256 first)."""
    from mqbench.networks.resnet_cifar import load_pretrained

    return load_pretrained(32, checkpoint)
