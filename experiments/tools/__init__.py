"""Developer tools: checks and measurements run by hand, not used by the library.

``python -m experiments.tools.fuzz`` fuzzes the proxy language against the screening;
``python -m experiments.tools.scoring_speed`` measures scorer and search speed.
"""
