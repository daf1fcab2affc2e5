"""The ``evoproxy`` command: a thin argparse layer over the library.

Each subcommand is registered with ``@command(name, help)`` and receives the parsed arguments.
User errors (:class:`evoproxy.errors.EvoproxyError`) are printed as one line and exit with 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from evoproxy.errors import EvoproxyError
from evoproxy.preflight import preflight

_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}
OLD_NAMES = {"bench": "table"}  # a command's former name -> its name ("bench" is what --bench names: a benchmark)


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register ``fn(args) -> int|None`` as subcommand ``name``; ``configure`` adds its options."""

    def wrap(fn: Callable) -> Callable:
        _COMMANDS[name] = (help, configure, fn)
        return fn

    return wrap


@command("data", "list the datasets, tables and checkpoints the project knows, found or missing")
def cmd_data(args: argparse.Namespace) -> int:
    from mqbench.dataroot import cache_root, data_root, human_size, inventory

    rows = inventory()
    print(f"data root: {data_root()}  (set EVOPROXY_DATA to change)")
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        status = "found  " if r["found"] else ("MISSING" if r["required"] else "absent ")
        print(f"  {r['key']:<{width}}  {status}  {human_size(r['size']):>9}  {r['path']}")
        if not r["found"]:
            print(f"  {'':<{width}}  -> {r['what']}; official source: {r['source']}")
    try:
        print(f"cache: {cache_root()}  (set EVOPROXY_CACHE to change)")
    except EvoproxyError as exc:
        print(f"cache: unavailable ({exc})")
    missing = [r["key"] for r in rows if r["required"] and not r["found"]]
    if missing:
        print(f"{len(missing)} required item(s) missing: {', '.join(missing)}")
        return 1
    return 0


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None, help="NAS-Bench-201 architecture string (default: row --index of the table)")
    p.add_argument("--index", type=int, default=1, help="row of the NATS table to use when --arch is not given")
    p.add_argument("--batch", type=int, default=64, help="CIFAR-10 training images in the batch")
    p.add_argument("--seed", type=int, default=0, help="batch, network-init and probe seed")
    p.add_argument("--probes", type=int, default=4, help="Hutchinson probes for the Hessian (0: skip)")


@command("demo", "extract the per-layer statistics of one NAS-Bench-201 network and print a summary", _demo_options)
def cmd_demo(args: argparse.Namespace) -> int:
    import time

    import torch

    from mqbench.cifar10 import sample_batch
    from mqbench.networks.nb201 import NB201Network
    from primitives import extract

    if args.arch is None:
        from mqbench.benchmarks import get_benchmark

        bench = get_benchmark("nb201-cifar10")
        arch, acc = bench.arch(args.index), float(bench.ground_truth([args.index])[0])
        print(f"architecture (row {args.index}): {arch}  CIFAR-10 test accuracy {acc:.2f}%")
    else:
        arch = args.arch
        print(f"architecture: {arch}")
    torch.manual_seed(args.seed)
    model = NB201Network(arch).train()
    x, y = sample_batch("train", args.batch, args.seed)
    start = time.perf_counter()
    stats = extract(model, x, y, hutchinson_probes=args.probes, seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"{'layer':<24}  {'kind':<6}  " + "  ".join(f"{c:>10}" for c in (
        "weight", "params", "MACs", "|W|", "|G|", "mean A_out", "fisher", "tr H")))
    for layer in stats.layers:
        t = layer.tensors
        trace = f"{float(t['hessian_trace']):10.3g}" if "hessian_trace" in t else f"{'-':>10}"
        print(f"{layer.name[:24]:<24}  {layer.kind:<6}  {'x'.join(map(str, layer.weight_shape)):>10}  "
              f"{layer.params:>10}  {layer.flops:>10}  {t['weight'].norm():10.3g}  {t['weight_grad'].norm():10.3g}  "
              f"{t['act_out'].mean():10.3g}  {t['fisher'].sum():10.3g}  {trace}")
    print(f"{len(stats.layers)} layers, {stats.total_params} parameters, {stats.total_flops / 1e6:.1f} M MACs per image; "
          f"{len(stats.layers[0].tensors)} statistics per layer extracted in {seconds:.2f} s")
    return 0


def _parallel_options(p: argparse.ArgumentParser) -> None:
    """--backend and --scheduler, worded as the search's (see :mod:`mqbench.parallel`)."""
    from evoproxy.searchconfig import add_arguments

    add_arguments(p, only=("backend", "scheduler"))


def _device_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", default="cpu", metavar="{cpu,cuda,auto}",
                   help=f"where {what} run: cpu (default, bit-deterministic), cuda (or cuda:N), or auto (cuda when available)")


def _table_options(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="table_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="build (or resume) an MQ-Bench table: bit configurations -> PTQ top-1")
    b.add_argument("--model", default="resnet20", help="CIFAR ResNet with a checkpoint in the data root (resnet20, resnet32, ...) "
                                                     "or an ImageNet network (resnet18, resnet50, mobilenet_v2; needs --checkpoint)")
    b.add_argument("--data", default=None, help="dataset: cifar10 (default), cifar100=PATH, imagenet=PATH, "
                                                "imagefolder=PATH (train/ and val/ class folders)")
    b.add_argument("--resize", type=int, default=None, help="ImageFolder: shorter side resized to this (default 256)")
    b.add_argument("--crop", type=int, default=None, help="ImageFolder: centre crop size (default 224)")
    b.add_argument("--configs", type=int, default=500, help="sampled configurations (the uniform 2/3/4/8-bit anchors come on top)")
    b.add_argument("--seed", type=int, default=0, help="seed of the configuration sample")
    b.add_argument("--calib-seed", type=int, default=0, help="seed of the 1024 calibration images")
    b.add_argument("--calib-images", type=int, default=1024)
    b.add_argument("--jobs", type=int, default=2, help="worker processes")
    b.add_argument("--checkpoint", default=None, help="FP checkpoint (default: the data root's)")
    b.add_argument("--anchors", default="2,3,4,8", help="uniform bit-widths built first, comma-separated, or 'none' "
                                                        "(MQ-Bench-101 has none)")
    b.add_argument("--limit", type=int, default=None, help="stop after this many new rows")
    b.add_argument("--out", required=True, help="CSV to write (a .meta.json sidecar goes beside it)")
    _device_option(b, "PTQ and evaluation")
    b.add_argument("--ptq", default="rtn", choices=("rtn", "adaround"), help="weight rounding: round to nearest (the committed tables) or AdaRound with block reconstruction")
    b.add_argument("--adaround-iters", type=int, default=None, help="AdaRound iterations per block (default 200; BRECQ used 20000)")
    _parallel_options(b)
    st = sub.add_parser("stats", help="size, top-1 spread and trivial-proxy correlations of a table")
    st.add_argument("table")
    st.add_argument("--json", action="store_true")
    c = sub.add_parser("compare", help="Spearman/Kendall between the top-1 of two tables on their common configurations")
    c.add_argument("tables", nargs=2)
    c.add_argument("--json", action="store_true")


@command("table", "build and compare MQ-Bench tables (a benchmark's table of accuracies)", _table_options)
def cmd_table(args: argparse.Namespace) -> int:
    if args.table_command == "build":
        from mqbench.build import build_table, parse_anchors
        from mqbench.ptq import PTQSettings

        extra = {} if args.adaround_iters is None else {"adaround_iters": args.adaround_iters}
        settings = PTQSettings(calib_images=args.calib_images, calib_seed=args.calib_seed, method=args.ptq, **extra)
        pre = None
        if args.resize is not None or args.crop is not None:
            from mqbench.imagefolder import Preprocess

            pre = Preprocess(args.resize or max(256, args.crop or 0), args.crop or 224)
        out = build_table(args.model, args.configs, args.seed, args.out, jobs=args.jobs,
                          checkpoint=args.checkpoint, ptq=settings, limit=args.limit, data=args.data,
                          device=args.device, preprocess=pre, anchors=parse_anchors(args.anchors))
        print(f"wrote {out}")
        return 0
    if args.table_command == "stats":
        import json

        from mqbench.table import table_summary

        summary = table_summary(args.table)
        if args.json:
            print(json.dumps(summary))
        else:
            for key, value in summary.items():
                print(f"{key:>36}: {value:.4f}" if isinstance(value, float) else f"{key:>36}: {value}")
        return 0
    from mqbench.table import compare_tables

    result = compare_tables(*args.tables)
    if args.json:
        import json

        print(json.dumps(result))
    else:
        print(f"n={result['n']} common configurations: Spearman {result['spearman']:.4f}, "
              f"Kendall {result['kendall']:.4f}, mean |diff| {result['mean_abs_diff']:.3f} points")
    return 0


def _proxy_run_options(p: argparse.ArgumentParser, bench_required: bool = True) -> None:
    p.add_argument("--bench", required=bench_required, help="benchmark name (nb201-cifar10, mq-resnet20-cifar10, ...) or a spec file (*.toml, see examples/benchmarks/)")
    p.add_argument("--samples", type=int, default=100, help="benchmark items to score")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument("--split", default="holdout", choices=("holdout", "search", "all"), help="which part of the benchmark to sample")
    p.add_argument("--gt-column", default=None, help="ground-truth column (NAS-Bench-201: CIFAR10/CIFAR100/ImageNet...)")
    p.add_argument("--table", default=None, help="benchmark table (default: the benchmark's own)")
    p.add_argument("--checkpoint", default=None, help="MQ tables: FP checkpoint file (default: found by name in the data root; verified by sha256)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (scores do not depend on it)")
    p.add_argument("--batch", type=int, default=64, help="CIFAR-10 training images in the batch")
    _device_option(p, "statistics and baselines")
    _parallel_options(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxy", required=True, help="a registered proxy name (see 'evoproxy baselines --list') "
                                                "or a proxy JSON file (e.g. runs/NAME/best.json)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also write a scatter plot of score vs ground truth (Spearman in the title) to this file")
    _proxy_run_options(p)


@command("evaluate", "score one proxy on a benchmark sample: Spearman, Kendall, rho@k, partial Spearman", _evaluate_options)
def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from evoproxy.evaluation import caption, human_report, proxy_reports
    from evoproxy.metrics import json_safe

    items = None
    if args.plot:
        from evoproxy import plot
        from evoproxy.errors import ConfigError

        try:
            plot.check_path(args.plot)
        except ValueError as exc:
            raise ConfigError(f"--plot: {exc}") from exc
        items = {}
    reports = proxy_reports(args.bench, [args.proxy], args.samples, args.seed, args.split, table=args.table,
                            gt_column_name=args.gt_column, jobs=args.jobs, batch=args.batch, items=items,
                            checkpoint=args.checkpoint, device=args.device)
    name = next(iter(reports))
    rep = reports[name]
    if args.plot:
        scores = [r["scores"].get(name, float("nan")) for r in items["results"]]
        try:
            plot.scatter({name: scores}, items["truth"], args.plot, truth_label=f"ground truth ({rep['gt_column']})",
                         title=f"{name} on {rep['bench']}",
                         caption=f"{rep['split'].capitalize()} split, sample seed {rep['seed']}, batch {rep['batch']}.")
        except OSError as exc:
            raise ConfigError(f"--plot: cannot write {args.plot}: {exc}") from exc
    if args.json:
        print(json.dumps(json_safe(rep)))
    else:
        print(caption(reports))
        print(human_report(reports))
        for f in rep["failures"]:
            print(f"  failed: id {f['id']}: {f['reason']}")
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


def _baselines_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxies", default=None, help="comma-separated proxy names (default: every proxy of the benchmark's kind)")
    p.add_argument("--out", default=None, help="folder for baselines.csv / baselines.md "
                                               "(default: results/baselines/<bench>_<split>_n<N>_seed<S>)")
    p.add_argument("--list", action="store_true", help="list the registered proxies and exit")
    _proxy_run_options(p, bench_required=False)


@command("baselines", "score several proxies on the same benchmark sample and write the report as CSV + markdown", _baselines_options)
def cmd_baselines(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from evoproxy.baselines import describe, proxy_names
    from evoproxy.errors import ConfigError
    from evoproxy.evaluation import human_report, proxy_reports, write_baselines
    from mqbench.benchmarks import BenchRef
    from evoproxy.metrics import json_safe

    if args.list:
        for kind in ("nas", "mq"):
            for name in proxy_names(kind):
                print(f"{kind:>3}  {name:<12} {describe(name)}")
        return 0
    if not args.bench:
        raise ConfigError("--bench is required (or --list)")
    if args.proxies:
        names = [n.strip() for n in args.proxies.split(",") if n.strip()]
    else:
        _, bench = BenchRef.resolve(args.bench, args.table, args.gt_column, args.checkpoint)
        names = proxy_names(bench.kind)
    reports = proxy_reports(args.bench, names, args.samples, args.seed, args.split, table=args.table,
                            gt_column_name=args.gt_column, jobs=args.jobs, batch=args.batch, checkpoint=args.checkpoint,
                            device=args.device)
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent.parent / "results" / "baselines" /
                                           f"{Path(args.bench).stem if args.bench.endswith('.toml') else args.bench}"
                                           f"_{args.split}_n{args.samples}_seed{args.seed}")
    csv_path, md_path = write_baselines(reports, out)
    if args.json:
        print(f"wrote {csv_path} and {md_path}")
        print(json.dumps(json_safe(reports)))
    else:
        print(human_report(reports))
        print(f"wrote {csv_path} and {md_path}")
    return 0


def _search_options(p: argparse.ArgumentParser) -> None:
    from evoproxy.searchconfig import add_arguments

    add_arguments(p)  # one option per SearchConfig field
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


@command("search", "evolve a proxy on a benchmark's search split; writes the run folder", _search_options)
def cmd_search(args: argparse.Namespace) -> int:
    from evoproxy.evolution import run_search
    from evoproxy.searchconfig import from_arguments

    config = from_arguments(args)
    result = run_search(config, resume=args.resume)
    s = result.best.search
    print(f"best: {result.best.formula}")
    print(f"search {s['fitness']} {s['fitness_value']:.4f} (Spearman {s['search_spearman']:.4f}, "
          f"partial {s['search_partial_spearman']:.4f}) on {s['samples']} search samples, generation {s['generation_found']}")
    if result.stopped:
        print(f"stopped early: {result.stopped}")
    print(f"wrote {result.out / 'best.json'}; score it on the holdout with: "
          f"evoproxy evaluate --bench {args.bench} --proxy {result.out / 'best.json'} --samples 1000 --seed 1")
    return 0


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="proxy JSON file (e.g. runs/NAME/best.json)")
    p.add_argument("-o", "--out", default=None, help="Python file to write (default: print the module)")


@command("export", "write a proxy file as a standalone Python module (depends only on torch)", _export_options)
def cmd_export(args: argparse.Namespace) -> int:
    from evoproxy.export import export_file

    source = export_file(args.file, args.out)
    if args.out is None:
        sys.stdout.write(source)
    else:
        print(f"wrote {args.out}: score(model, inputs, targets, bit_config=None) -> float")
    return 0


def _show_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="proxy JSON file")
    p.add_argument("--latex", action="store_true", help="also print the formula as LaTeX")


@command("show", "print a proxy file's formula, orientation, statistics, extraction settings and search info", _show_options)
def cmd_show(args: argparse.Namespace) -> int:
    import json

    from evoproxy.tree import load_proxy

    proxy = load_proxy(args.file)
    print(f"formula:     {proxy.formula}")
    if args.latex:
        print(f"latex:       {proxy.latex()}")
    print(f"orientation: {proxy.orientation:+d} (score = {'' if proxy.orientation == 1 else '-'}value of the tree)")
    terminals = sorted(proxy.tree.terminals())
    settings = ", ".join(f"{k} {v}" for k, v in proxy.extraction.items())
    print(f"statistics:  {', '.join(terminals)}" + (f"  ({settings})" if settings else ""))
    print(f"size:        {proxy.tree.size()} nodes, depth {proxy.tree.depth()}")
    if proxy.search:
        print("search:")
        width = max(len(str(k)) for k in proxy.search)
        for key, value in proxy.search.items():
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            print(f"  {key:<{width}}  {text}")
    return 0


def _allocate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxy", required=True, help="an MQ baseline name (hawq_v2, bit_sum, model_size, ...; see "
                                                "'evoproxy baselines --list') or a proxy JSON file")
    p.add_argument("--model", required=True, help="a model with a committed MQ-Bench table (resnet20, resnet32)")
    p.add_argument("--budget", required=True, help="uniform-K (size of the uniform K-bit configuration), a size "
                                                 "such as 0.1MB or 98KB (MB = 2^20 bytes), or BOPs such as 1.2GBOPs")
    p.add_argument("--ptq", action="store_true", help="measure the chosen configuration's top-1 with the table's PTQ "
                                                    "(minutes on a CPU; cached)")
    p.add_argument("--ptq-cache", default=None, help="PTQ cache CSV (default: <cache root>/allocation/ptq_cache.csv)")
    p.add_argument("--table", default=None, help="MQ-Bench table (default: the model's committed one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the additivity test and the evolutionary search")
    p.add_argument("--batch", type=int, default=64, help="CIFAR-10 training images the proxy sees")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


@command("allocate", "choose per-layer bit-widths within a size or BOPs budget that a proxy scores highest",
         _allocate_options)
def cmd_allocate(args: argparse.Namespace) -> int:
    import json

    from evoproxy.allocation import allocate
    from evoproxy.metrics import json_safe

    r = allocate(args.proxy, args.model, args.budget, ptq=args.ptq, ptq_cache=args.ptq_cache, table=args.table,
                 seed=args.seed, batch=args.batch, progress=not args.json)
    if r.failed:
        print(f"warning: proxy failed on {r.failed} of {r.scored} configurations scored (first: {r.first_failure})",
              file=sys.stderr)
    if args.json:
        print(json.dumps(json_safe(r.to_dict())))
        return 0
    add = r.additivity
    how = (f"exact DP (layer-additive: max relative error {add['max_rel_error']:.2g} on {add['checks']} checks)"
           if r.optimiser == "dp" else f"evolutionary search (not layer-additive: {add['reason']})")
    print(f"model:     {r.model}\nproxy:     {r.proxy}\nbudget:    {r.budget}\noptimiser: {how}")
    print(f"bits:      {r.bits_str}  (searchable layers)\nsize:      {r.size_mb:.4f} MB\nBOPs:      {r.bops_g:.4f} G")
    print(f"score:     {r.score:.6g}  ({r.evaluations} configurations scored)")
    if r.top1 is not None:
        print(f"top-1:     {r.top1:.2f} %  (PTQ as the MQ-Bench table)")
    width = max(len(n) for n in r.layer_names)
    for i, (name, bits) in enumerate(zip(r.layer_names, r.bits)):
        print(f"  {i:>3}  {name:<{width}}  {bits} bit" + ("" if i in r.searchable else " (fixed)"))
    return 0


# ---- calibrate (issue 15): learned per-layer-position weights
def _calibrate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxy", default=None, help="proxy JSON file whose root aggregates over layers (with --parzc: "
                   "optional comma-separated proxy files of the node-wise statistics)")
    p.add_argument("--parzc", action="store_true", help="fit the ParZC baseline (evoproxy.parzc) instead")
    p.add_argument("--bench", required=True, help="benchmark name or spec file (its search split is used)")
    p.add_argument("--samples", type=int, default=50, help="search-split items to fit on")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument("--weight-decay", type=float, default=0.01, help="pull of the weights towards 1 (the proxy as is)")
    p.add_argument("--temperature", type=float, default=0.1, help="diff_kendall temperature (standardised scores)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps")
    p.add_argument("--batch", type=int, default=64, help="CIFAR-10 training images in the batch")
    p.add_argument("--table", default=None, help="benchmark table (default: the benchmark's own)")
    p.add_argument("--out", required=True, help="proxy JSON file to write (the proxy with its layer_weights)")


@command("calibrate", "learn per-layer-position weights of a proxy's layer terms on a benchmark's search split",
         _calibrate_options)
def cmd_calibrate(args: argparse.Namespace) -> int:
    from evoproxy.calibrate import calibrate
    from evoproxy.errors import ConfigError

    if args.parzc:
        from evoproxy.parzc import parzc

        model = parzc(args.bench, args.samples, args.seed, args.proxy.split(",") if args.proxy else None,
                      batch=args.batch, table=args.table, weight_decay=args.weight_decay,
                      temperature=args.temperature, steps=args.steps)
        fit = model.fit
        print(f"ParZC on {fit['positions']} layer positions x {len(model.proxies)} statistics, fitted on "
              f"{fit['items']} search items of {args.bench}: Kendall {fit['search_kendall_unweighted_sum']:.4f} "
              f"(unweighted sum) -> {fit['search_kendall_after']:.4f} (in-sample); wrote {model.save(args.out)}")
        return 0
    if not args.proxy:
        raise ConfigError("--proxy is required (or --parzc)")
    proxy = calibrate(args.proxy, args.bench, args.samples, args.seed, batch=args.batch,
                      weight_decay=args.weight_decay, temperature=args.temperature, steps=args.steps,
                      table=args.table)
    fit = proxy.layer_weights["fit"]
    path = proxy.save(args.out)
    print(f"{fit['positions']} layer positions fitted on {fit['samples'] - fit['failed']} search items of "
          f"{args.bench}: Kendall {fit['search_kendall_before']:.4f} -> {fit['search_kendall_after']:.4f} (search "
          f"split, in-sample); wrote {path}")
    return 0
# ---- end calibrate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evoproxy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, configure, fn) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(_fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in OLD_NAMES:  # still accepted, not listed: one word, one meaning
        print(f"note: 'evoproxy {argv[0]}' is now 'evoproxy {OLD_NAMES[argv[0]]}'", file=sys.stderr)
        argv[0] = OLD_NAMES[argv[0]]
    args = build_parser().parse_args(argv)
    try:
        preflight(args)  # an --out that cannot be written: one line now, not a traceback later; --scheduler unused
        if getattr(args, "backend", None) is None:
            return int(args._fn(args) or 0)
        from mqbench.parallel import use_backend

        # every parallel call of the command runs on this backend (a local Dask cluster starts on first use)
        with use_backend(args.backend, args.scheduler, jobs=getattr(args, "jobs", 1)):
            return int(args._fn(args) or 0)
    except EvoproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. head: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
