"""Every proxy file committed to the repository (examples/, results/, experiments/) exports to a module that
imports, carries no unused definition, and scores like the library on a small network."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from evoproxy.export import export_source
from evoproxy.language.tree import FORMAT, parse_proxy
from mqbench.networks.nb201 import NB201Network
from mqbench.networks.resnet_cifar import CifarResNet
from primitives.items import QUANT_NAMES
from test_export import unused_definitions

ROOT = Path(__file__).resolve().parent.parent
ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"
BITS = [8, 2, 3, 4, 5, 6, 4, 8]  # CifarResNet(8): 7 convs + the linear head
MAX_PROBES = 2  # Hessian proxies (hawq_v2: 32 probes) scored with fewer probes: the code path is the same


def _proxy_files() -> dict:
    """{the proxy's content: [files holding it]} of the committed proxy files (many runs share a best proxy)."""
    found: dict = {}
    for path in sorted(p for d in ("examples", "results", "experiments") for p in (ROOT / d).rglob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and obj.get("format") == FORMAT and "tree" in obj:
            key = json.dumps({k: obj.get(k) for k in ("tree", "orientation", "primitives", "layer_weights")},
                             sort_keys=True)
            found.setdefault(key, []).append(path.relative_to(ROOT).as_posix())
    return found


FILES = _proxy_files()


def test_the_committed_proxy_files_are_found():
    assert sum(len(v) for v in FILES.values()) >= 40 and len(FILES) >= 20
    assert any("layer_weights" in json.loads((ROOT / v[0]).read_text()) for v in FILES.values())


@pytest.mark.parametrize("paths", list(FILES.values()), ids=[v[0] for v in FILES.values()])
def test_committed_proxy_file_exports_and_scores(paths, tmp_path):
    obj = json.loads((ROOT / paths[0]).read_text())
    source = export_source(parse_proxy(obj, paths[0]), "exported")
    assert unused_definitions(source) == [], paths[0]
    probes = obj.get("primitives", {}).get("hutchinson_probes") or 0
    if probes > MAX_PROBES:
        obj["primitives"]["hutchinson_probes"] = MAX_PROBES
        source = export_source(parse_proxy(obj, paths[0]), "exported")
    proxy = parse_proxy(obj, paths[0])
    path = tmp_path / "exported.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("exported", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    torch.manual_seed(0)
    if proxy.tree.terminals() & set(QUANT_NAMES):
        model, bits = CifarResNet(8).eval(), BITS  # its layer positions are ResNet-20's first ones (calibrated files)
    else:
        model, bits = NB201Network(ARCH, C=16, N=1).train(), None  # C=16: NB201's positions (calibrated files)
    want, got = proxy.score(model, x, y, bits), mod.score(model, x, y, bits)
    assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-6), (paths, got, want)
