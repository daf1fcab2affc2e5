"""Benchmark networks: CIFAR ResNets (option-A) and NAS-Bench-201 cell networks."""
from mqbench.networks.nb201 import NB201Network, parse_arch, OPS as NB201_OPS  # noqa: F401
from mqbench.networks.resnet_cifar import CifarResNet, cifar_resnet, load_pretrained  # noqa: F401
