"""ParZC as a baseline: learned node-wise weighting of hand-made proxies' per-layer statistics (issue 15).

    model = parzc("nb201-cifar10", samples=100, seed=0)       # fit on the search split only
    model.save("parzc.json"); model = ParZC.load("parzc.json")  # JSON, parsed by our code (no pickle)
    s = model.value(stats)                                     # score of one item's NetworkStats

ParZC (Dong et al. 2024, "Parametric Zero-Cost Proxies for Efficient NAS") observes that the node-wise
(per-layer) zero-cost statistics of a network do not contribute equally to its final performance and learns
how to weigh them with a Mixer Architecture with Bayesian Network (MABN), trained with DiffKendall. Our
reading, written from the paper's description (not its code):

* **node-wise statistics**: for each item a matrix layer position x hand-made proxy whose entry is the
  proxy's per-layer term (:func:`evoproxy.tree.layer_terms_on` of the proxy file's tree, times its
  orientation; layer positions as in :mod:`evoproxy.calibrate`). Default proxies: ``snip``, ``grad_norm``,
  ``fisher``, ``l2_norm``, ``params`` (the registered hand-made NAS proxies whose tree is a sum over layers);
  on MQ tables also ``bit_sum``, ``model_size`` and ``hawq_v2`` (the snip-like terms do not depend on the
  bit configuration). ``synflow`` is not in the set: its saliency needs |W| and a network without BatchNorm,
  which no statistic provides (``virtual_grad`` uses the network as it is).
* **scale-free features**, fitted on the training items per proxy p: x = sign(t) log1p(|t| / s_p) with s_p
  the median non-zero |t|, then standardised (mean, std over the training items' present positions); one
  more feature channel marks whether the position is present in the item (NAS-Bench-201 edges without a
  convolution have none).
* **MABN-style mixer** over the [positions x features] matrix: a token-mixing MLP across positions (residual,
  hidden ``token_hidden``), a channel MLP per position (``channel_hidden``), and a Bayesian head giving each
  position a predicted mean mu_l and log-variance v_l of its contribution. Training samples the contribution
  z_l = mu_l + exp(v_l / 2) eps (reparameterisation), evaluation uses mu_l; the score is sum_l a_l m_l z_l
  with a learned per-position weight a_l (from 1) and presence m_l. Loss:
  1 - diff_kendall(z-scored score, truth, T) + weight_decay * (mean of squared mixer weights + mean (a - 1)^2)
  + kl * mean KL(N(mu, e^v) || N(0, 1)). Adam, full batch, float64, seeded by a local generator, CPU.

Positions a scored item has but the training items had not are ignored (counted in ``unseen``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evoproxy.errors import ConfigError

FORMAT = "evoproxy.parzc/1"
NAS_PROXIES = ("snip", "grad_norm", "fisher", "l2_norm", "params")
MQ_PROXIES = NAS_PROXIES + ("bit_sum", "model_size", "hawq_v2")
PROXY_DIR = Path(__file__).resolve().parent.parent / "examples" / "proxies"
SHAPES = {"a": ("L",), "t1": ("H", "L"), "tb1": ("H",), "t2": ("L", "H"), "tb2": ("L",), "c1": ("C", "F"),
          "cb1": ("C",), "hm": ("C",), "bm": (), "hv": ("C",), "bv": ()}


def default_proxies(mq: bool) -> dict:
    """{label: Proxy} of the node-wise statistics used by default (NAS or MQ set)."""
    from evoproxy.tree import load_proxy

    return {name: load_proxy(PROXY_DIR / f"{name}.json") for name in (MQ_PROXIES if mq else NAS_PROXIES)}


def nodewise(proxies: dict, stats) -> dict:
    """{layer position: [term of each proxy]} of one item's ``NetworkStats`` (OpError/ArithmeticError propagate)."""
    from evoproxy.tree import layer_terms_on

    out: dict = {}
    for j, proxy in enumerate(proxies.values()):
        keys, terms = layer_terms_on(proxy.tree, stats)
        for key, t in zip(keys, terms):
            out.setdefault(key, [0.0] * len(proxies))[j] += proxy.orientation * float(t)
    return out


def check_rows(rows) -> None:
    """ConfigError (one line) when the items' layer positions do not recur (as :func:`evoproxy.calibrate.check_positions`)."""
    from evoproxy.calibrate import check_positions

    check_positions([(list(r), [0.0] * len(r)) for r in rows])


@dataclass
class ParZC:
    """A fitted ParZC model: statistics' proxies, positions, feature transform and mixer weights."""

    proxies: dict  # label -> Proxy (the node-wise statistics)
    positions: list
    transform: dict  # "scale", "mean", "std": one number per proxy
    params: dict  # name -> np.ndarray (float64), shapes in SHAPES
    config: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------------- scoring
    def features(self, rows):
        """(X [N, L, P+1], presence M [N, L], unseen positions per item) as float64 tensors."""
        return _features(rows, self.positions, self.transform)

    def scores(self, rows) -> np.ndarray:
        """Scores of items given as node-wise rows ({position: [terms]}); NaN for a row that is None."""
        import torch

        good = [i for i, r in enumerate(rows) if r is not None]
        out = np.full(len(rows), math.nan)
        if good:
            x, m, _ = self.features([rows[i] for i in good])
            with torch.no_grad():
                s, _, _ = _forward({k: torch.as_tensor(v) for k, v in self.params.items()}, x, m)
            out[good] = s.numpy()
        return out

    def value(self, stats) -> float:
        """The score of one item's ``NetworkStats`` (needs the statistics of :meth:`statistics_request`)."""
        return float(self.scores([nodewise(self.proxies, stats)])[0])

    def statistics_request(self, batch: int = 64):
        return union_request(self.proxies.values(), batch)

    def score(self, model, inputs, targets, bit_config=None) -> float:
        """Score a network (and an MQ bit configuration) on a batch, like :meth:`evoproxy.tree.Proxy.score`."""
        from primitives.items import model_statistics

        (stats,) = model_statistics(model, inputs, targets, self.statistics_request(len(inputs)),
                                    None if bit_config is None else [bit_config])
        return self.value(stats)

    # ------------------------------------------------------------------------------------- JSON
    def to_json(self) -> dict:
        return {"format": FORMAT, "proxies": {k: p.to_json() for k, p in self.proxies.items()},
                "positions": list(self.positions), "transform": {k: list(map(float, v)) for k, v in self.transform.items()},
                "config": dict(self.config), "params": {k: np.asarray(v).tolist() for k, v in self.params.items()},
                "fit": dict(self.fit)}

    def save(self, path) -> Path:
        from mqbench.fileio import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, obj, source: str = "parzc") -> "ParZC":
        """Parse and validate a document of :meth:`to_json` (ConfigError naming the problem)."""
        from evoproxy.tree import parse_proxy

        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ConfigError(f"{source}: not a ParZC model (format must be {FORMAT!r})")
        try:
            proxies = {str(k): parse_proxy(v, f"{source}: proxies[{k!r}]") for k, v in obj["proxies"].items()}
            positions = [str(p) for p in obj["positions"]]
            transform = {k: [float(v) for v in obj["transform"][k]] for k in ("scale", "mean", "std")}
            params = {k: np.asarray(obj["params"][k], dtype=np.float64) for k in SHAPES}
            config, fit = dict(obj.get("config", {})), dict(obj.get("fit", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source}: malformed ParZC model ({type(exc).__name__}: {exc})") from None
        dims = {"L": len(positions), "F": len(transform["scale"]) + 1, "H": params["t1"].shape[0] if params["t1"].ndim == 2 else -1,
                "C": params["c1"].shape[0] if params["c1"].ndim == 2 else -1}
        for k, shape in SHAPES.items():
            want = tuple(dims[d] for d in shape)
            if params[k].shape != want or not np.isfinite(params[k]).all():
                raise ConfigError(f"{source}: params[{k!r}] must be finite with shape {want}, got {params[k].shape}")
        n_p = len(transform["scale"])
        if not n_p or (proxies and len(proxies) != n_p) or any(len(v) != n_p or not all(map(math.isfinite, v))
                                                                for v in transform.values()):
            raise ConfigError(f"{source}: transform needs one finite scale, mean and std per proxy")
        return cls(proxies, positions, transform, params, config, fit)

    @classmethod
    def load(cls, path) -> "ParZC":
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"ParZC model not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read ParZC model {path}: {exc}") from None
        return cls.from_json(obj, str(path))


# ------------------------------------------------------------------------------------- features and network

def fit_transform(rows, n_proxies: int) -> dict:
    """Per-proxy scale (median non-zero |t|), then mean/std of sign(t) log1p(|t| / scale), over the rows."""
    terms = np.array([t for r in rows for t in r.values()], dtype=np.float64).reshape(-1, n_proxies)
    scale, mean, std = [], [], []
    for j in range(n_proxies):
        col = terms[:, j]
        nz = np.abs(col[col != 0])
        s = float(np.median(nz)) if nz.size else 1.0
        x = np.sign(col) * np.log1p(np.abs(col) / s)
        sd = float(x.std()) if x.size > 1 else 0.0
        scale.append(s)
        mean.append(float(x.mean()) if x.size else 0.0)
        std.append(sd if sd > 0 else 1.0)
    return {"scale": scale, "mean": mean, "std": std}


def _features(rows, positions, transform):
    import torch

    index = {p: i for i, p in enumerate(positions)}
    n_p = len(transform["scale"])
    x = np.zeros((len(rows), len(positions), n_p + 1))
    unseen = []
    scale, mean, std = (np.asarray(transform[k]) for k in ("scale", "mean", "std"))
    for r, row in enumerate(rows):
        missing = 0
        for pos, terms in row.items():
            i = index.get(pos)
            if i is None:
                missing += 1
                continue
            t = np.asarray(terms, dtype=np.float64)
            if t.shape != (n_p,):
                raise ConfigError(f"a node-wise row has {t.size} statistics per position, the model {n_p}")
            x[r, i, :n_p] = (np.sign(t) * np.log1p(np.abs(t) / scale) - mean) / std
            x[r, i, n_p] = 1.0
        unseen.append(missing)
    x = torch.as_tensor(x)
    return x, x[:, :, -1].clone(), unseen


def _forward(p: dict, x, m, noise=None):
    """(scores [N], mu [N, L], log-variance [N, L]); ``noise`` (a generator) samples the Bayesian head."""
    import torch
    import torch.nn.functional as fn

    mixed = fn.gelu(x.transpose(1, 2) @ p["t1"].T + p["tb1"]) @ p["t2"].T + p["tb2"]  # across positions
    u = x + mixed.transpose(1, 2)
    h = fn.gelu(u @ p["c1"].T + p["cb1"])  # across features, per position
    mu, logvar = h @ p["hm"] + p["bm"], (h @ p["hv"] + p["bv"]).clamp(-10.0, 10.0)
    z = mu
    if noise is not None:
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=noise, dtype=mu.dtype)
    return (z * m * p["a"]).sum(dim=1), mu, logvar


def _init(n_pos: int, n_feat: int, token_hidden: int, channel_hidden: int, gen) -> dict:
    import torch

    def normal(*shape, std):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    return {"a": torch.ones(n_pos, dtype=torch.float64),
            "t1": normal(token_hidden, n_pos, std=n_pos ** -0.5), "tb1": torch.zeros(token_hidden, dtype=torch.float64),
            "t2": torch.zeros(n_pos, token_hidden, dtype=torch.float64), "tb2": torch.zeros(n_pos, dtype=torch.float64),
            "c1": normal(channel_hidden, n_feat, std=n_feat ** -0.5), "cb1": torch.zeros(channel_hidden, dtype=torch.float64),
            "hm": normal(channel_hidden, std=channel_hidden ** -0.5), "bm": torch.zeros((), dtype=torch.float64),
            "hv": torch.zeros(channel_hidden, dtype=torch.float64), "bv": torch.full((), -2.0, dtype=torch.float64)}


def fit_parzc(rows, truth, proxies: dict | None = None, *, seed: int = 0, token_hidden: int = 8,
              channel_hidden: int = 16, steps: int = 300, lr: float = 0.01, weight_decay: float = 0.01,
              temperature: float = 0.1, kl: float = 1e-3) -> ParZC:
    """A :class:`ParZC` fitted on node-wise ``rows`` ({position: [one term per proxy]}) and the items' truth.
    ``proxies`` ({label: Proxy}) are what the terms came from (kept with the model; None for synthetic rows)."""
    import time

    from primitives.core import fixed_threads

    rows = list(rows)
    truth = np.asarray(truth, dtype=np.float64)
    if len(rows) != len(truth) or len(rows) < 2:
        raise ConfigError(f"ParZC needs >= 2 items with one truth each, got {len(rows)} rows and {len(truth)} truths")
    check_rows(rows)
    n_p = len(next(iter(rows[0].values())))
    proxies = proxies if proxies is not None else {}
    if proxies and len(proxies) != n_p:
        raise ConfigError(f"{len(proxies)} proxies given for rows with {n_p} statistics per position")
    t0 = time.perf_counter()
    with fixed_threads(1):  # small tensors: one thread is fastest and the result does not depend on the machine
        return _fit(rows, truth, proxies, n_p, t0, seed, token_hidden, channel_hidden, steps, lr, weight_decay,
                    temperature, kl)


def _fit(rows, truth, proxies, n_p, t0, seed, token_hidden, channel_hidden, steps, lr, weight_decay, temperature, kl):
    import time

    import torch

    from evoproxy.metrics import diff_kendall, kendall

    positions = sorted({p for r in rows for p in r})
    transform = fit_transform(rows, n_p)
    x, m, _ = _features(rows, positions, transform)
    y = torch.as_tensor(truth)
    gen = torch.Generator().manual_seed(int(seed))
    params = {k: v.requires_grad_(True) for k, v in _init(len(positions), n_p + 1, token_hidden, channel_hidden, gen).items()}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    mixer = [v for k, v in params.items() if k in ("t1", "t2", "c1", "hm", "hv")]
    present = m.sum().clamp_min(1.0)
    for _ in range(int(steps)):
        opt.zero_grad()
        s, mu, logvar = _forward(params, x, m, noise=gen)
        z = (s - s.mean()) / (s.std() + 1e-12)
        decay = sum(w.pow(2).mean() for w in mixer) / len(mixer) + (params["a"] - 1).pow(2).mean()
        kl_term = (0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar) * m).sum() / present
        loss = 1 - diff_kendall(z, y, temperature) + weight_decay * decay + kl * kl_term
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    params = {k: v.detach().numpy().copy() for k, v in params.items()}
    model = ParZC(proxies, positions, transform, params,
                  {"token_hidden": token_hidden, "channel_hidden": channel_hidden})
    unweighted = [sum(sum(v) for v in r.values()) for r in rows]
    model.fit = {"items": len(rows), "positions": len(positions), "statistics": list(proxies) or n_p,
                 "search_kendall_unweighted_sum": kendall(unweighted, truth),
                 "search_kendall_after": kendall(model.scores(rows), truth), "seed": int(seed), "steps": int(steps),
                 "lr": lr, "weight_decay": weight_decay, "temperature": temperature, "kl": kl,
                 "seconds": seconds, "objective": "1 - diff_kendall + weight_decay * decay + kl * KL"}
    return model


# ------------------------------------------------------------------------------------- benchmarks

def union_request(proxies, batch: int = 64):
    """One :class:`primitives.items.StatsRequest` covering every proxy (ConfigError on different noise_std)."""
    from primitives.items import StatsRequest

    proxies = list(proxies)
    noise = {float(p.extraction.get("noise_std", 0.01)) for p in proxies}
    if len(noise) > 1:
        raise ConfigError(f"the proxies use different noise_std values {sorted(noise)}")
    names = sorted({t for p in proxies for t in p.tree.terminals()})
    probes = max(int(p.extraction.get("hutchinson_probes", 0)) for p in proxies)
    return StatsRequest.of(names, probes, noise.pop(), batch)


def item_rows(proxies: dict, stats_list) -> list:
    """Node-wise rows of many items; None for an item whose terms fail or are not finite."""
    from evoproxy.opkernels import OpError

    rows = []
    for st in stats_list:
        try:
            row = nodewise(proxies, st)
        except (OpError, ArithmeticError):
            row = None
        if row is not None and not all(math.isfinite(t) for v in row.values() for t in v):
            row = None
        rows.append(row)
    return rows


def parzc(bench: str, samples: int = 100, seed: int = 0, proxies=None, *, batch: int = 64, table=None,
          gt_column_name=None, checkpoint=None, progress: bool = False, **fit_options) -> ParZC:
    """ParZC fitted on ``samples`` items of ``bench``'s search split (sample ``seed``); ``proxies``: proxy files
    or Proxy objects of the node-wise statistics (default: :data:`NAS_PROXIES`, on MQ tables :data:`MQ_PROXIES`)."""
    from evoproxy.tree import Proxy, load_proxy
    from mqbench.benchmarks import BenchRef
    from primitives.workspace import Workspace

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ConfigError(f"--samples must be an integer >= 2, got {samples!r}")
    ref, b = BenchRef.resolve(bench, table, gt_column_name, checkpoint)
    b.verify()
    if proxies is None:
        proxies = default_proxies(b.quantizer is not None)
    else:
        proxies = {Path(str(p)).stem if not isinstance(p, Proxy) else (p.source or f"proxy{i}"):
                   (p if isinstance(p, Proxy) else load_proxy(p)) for i, p in enumerate(proxies)}
    ids = b.sample(samples, seed, "search")
    truth = [float(v) for v in b.ground_truth(ids)]
    rows = item_rows(proxies, Workspace(ref, b).statistics(ids, union_request(proxies.values(), batch), progress=progress))
    kept = [(r, y) for r, y in zip(rows, truth) if r is not None]
    model = fit_parzc([r for r, _ in kept], [y for _, y in kept], proxies, seed=seed, **fit_options)
    model.fit.update({"bench": bench, "split": "search", "samples": len(ids), "failed": len(ids) - len(kept), "batch": batch})
    return model
