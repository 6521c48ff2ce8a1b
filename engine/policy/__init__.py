"""Policy files in, a validated :class:`~engine.policy.model.PolicySet` out.

* :mod:`~engine.policy.yamlread` — one YAML file to data plus the place of every node, hostile input refused
  (syntax errors put in words with a hint by :mod:`~engine.policy.yamlhints`);
* :mod:`~engine.policy.schema` — each file against ``schemas/<kind>.schema.json``;
* :mod:`~engine.policy.compile` — every cross-file check, expressions compiled once
  (:mod:`~engine.policy.expressions`, names from :mod:`~engine.policy.contexts`,
  message templates from :mod:`~engine.policy.templating`);
* :mod:`~engine.policy.loader` — ``load_policies``/``check``: the three steps over a directory;
* :mod:`~engine.policy.model` — the immutable ``PolicySet`` the runtime decides with;
* :mod:`~engine.policy.problems` — located problems and their stable codes;
* :mod:`~engine.policy.resources` — where the shipped schemas, policies and templates are.

May import: the standard library, PyYAML, jsonschema and :mod:`engine.errors`. Imports nothing of the
runtime (engine core, stores, simulation, reporting, command line); a contract in ``pyproject.toml``
checks it.
"""
