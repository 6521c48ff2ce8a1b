"""Policy tests: scripted scenarios that check a policy set does what its owners meant.

* :mod:`~engine.policytest.spec` — reads ``*_test.yaml`` files (kind ``policy_test``, validated against
  ``schemas/policy_test.schema.json``) into test cases with resolved times;
* :mod:`~engine.policytest.run` — runs one case on a :class:`~engine.testing.FakeClock`: scripted calls,
  reloads and forced states, then expectations about decisions, breakers, budgets, events, anomalies and
  the day's recommendations;
* :mod:`~engine.policytest.suite` — finds and runs files, and the coverage of breakers, budgets,
  candidates, anomaly and recommendation rules;
* :mod:`~engine.policytest.output` — results as text, JSON or JUnit XML.

May import: the policy loading, the engine core, :mod:`engine.testing` and :mod:`engine.reporting` (for the
day's recommendations). Imports no command line or simulation; a contract in ``pyproject.toml`` checks it.
"""
