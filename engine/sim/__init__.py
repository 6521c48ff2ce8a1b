"""Simulated days and replayed traces: the policies measured on real traffic shapes.

* :mod:`~engine.sim.simulate` — ``policy-engine simulate``'s run: scenario, world, baselines, history;
* :mod:`~engine.sim.replay` — a recorded trace through one or two policy sets;
* :mod:`~engine.sim.driver` — many concurrent ``acall`` s through a fake clock (discrete events);
* :mod:`~engine.sim.workload`, :mod:`~engine.sim.scenarios`, :mod:`~engine.sim.world` — the shipped
  workload, the scripted faults, and how a model answers at a moment;
* :mod:`~engine.sim.trace` and :mod:`~engine.sim.convert` — the trace format and the readers of the
  shared traces and of a history database;
* :mod:`~engine.sim.tally`, :mod:`~engine.sim.baselines`, :mod:`~engine.sim.summary`,
  :mod:`~engine.sim.progress` — what was spent, the no-fallback and naive-retry baselines, the summary.

May import: the core, the policy and store packages, and reporting (for the day's report).
Never the command line.
"""
