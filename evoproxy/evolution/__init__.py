"""The search: proxies evolved on a benchmark's search split, chosen on its validation split.

Entry point: :class:`evoproxy.evolution.engine.Search` (``run()`` writes the run folder) with a
:class:`~evoproxy.evolution.searchconfig.SearchConfig` (all settings, one dataclass). The rest serve it:
screening and racing (multi-fidelity), selection and islands, fitness, budget sizing, the search samples
and their statistics, validation and the run-folder files. The room is called ``evolution`` because
``evoproxy.search`` is the public search function. Nothing is imported here.
"""
