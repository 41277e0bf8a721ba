"""The evaluation kinds `eval.kinds` can name, one module each.

To add one: a module with `evaluate(exp, model_spec, params) -> results`, a table, a plot and a
`KIND = common.Kind(...)`, and one entry below. The runner, the outputs and the sweep's cache
take it from here; nothing else changes.
"""

from nopejax.eval import lm, passkey, tasks

KINDS = {k.name: k for k in (tasks.KIND, lm.KIND, passkey.KIND)}
