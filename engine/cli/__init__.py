"""The command line: ``validate-policies`` and ``policy-engine`` with its subcommands.

* :mod:`~engine.cli.main` — the entry points and ``validate``;
* :mod:`~engine.cli.watch`, :mod:`~engine.cli.sim` (``simulate``, ``replay``),
  :mod:`~engine.cli.report` (``report``, ``status``), :mod:`~engine.cli.convert`.

Every argument parser lives here, so the core and the stores hold no ``argparse``. May import
anything; nothing imports it (``engine.__main__`` and the console scripts aside), which a contract
in ``pyproject.toml`` checks. Each subcommand's module is imported only when it runs.
"""
