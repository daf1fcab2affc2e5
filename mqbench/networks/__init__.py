"""Benchmark networks: CIFAR ResNets (option-A), NAS-Bench-201 cell networks, and ImageNet networks
(ResNet-18/50, MobileNetV2) in the torchvision state-dict layout."""
from mqbench.networks.nb201 import NB201Network, parse_arch, OPS as NB201_OPS  # noqa: F401
from mqbench.networks.resnet_cifar import CifarResNet, cifar_resnet, load_pretrained  # noqa: F401
from mqbench.networks.imagenet import NETWORKS as IMAGENET_NETWORKS, build_network, load_imagenet_checkpoint  # noqa: F401
