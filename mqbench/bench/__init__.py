"""Benchmarks: MQ-Bench tables (build and query) and the one ``Benchmark`` interface over tables and specs.

Entry points: :func:`mqbench.bench.benchmarks.get_benchmark` / ``load_bench`` (a benchmark by name, spec
file or :class:`~mqbench.bench.spec.BenchmarkSpec`), :func:`mqbench.bench.build.build_table` (build an
MQ-Bench table), :class:`mqbench.bench.table.MQTable` (query one). The committed tables themselves are
data, in ``mqbench/tables/``; this package is named ``bench`` so that folder keeps its name.
"""
