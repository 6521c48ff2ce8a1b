"""What a policy set does, in words: ``explain`` (why a tier would pick the model it picks now) and
``diff`` (what changed in meaning between two sets).

* :mod:`~engine.inspect.explain` — the candidate chain of a tier with each candidate's verdict and the rule
  behind it, the model chosen, and what would change the answer; on a throwaway engine, optionally
  seeded with the state a history store saved;
* :mod:`~engine.inspect.diff` — the changes in meaning between two compiled sets (the ``--replay`` effect is
  run by :mod:`engine.sim` from the command line).

May import: the policy loading, the engine core, :mod:`engine.testing`, the stores' read-only helpers and
:mod:`engine.sim` (for replays). Imports no command line; a contract in ``pyproject.toml`` checks it.
"""
