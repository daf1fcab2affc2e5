"""Image data: where it lives and how batches are drawn from it.

Entry points: :func:`mqbench.data.datasets.parse_dataset` / ``load_batch`` / ``iterate_split`` (one entry
for every image dataset: CIFAR-10/100, ImageFolder trees) and :mod:`mqbench.data.dataroot` (the data and
cache roots, checkpoints by name + sha256). Nothing is imported here, so importing a module of the
room stays as light as that module.
"""
