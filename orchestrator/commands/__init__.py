"""The orchestrator's own commands (`moe2 serve`, `ask`, `plan`, `experts`, `optimize`).

Each module exposes ``add_parser(subparsers, name, help_text)`` and ``run(args) -> int`` and
imports its heavy dependencies inside ``run``, so building the parser stays cheap. The `moe2`
dispatcher (``testbed/cli.py``) lists them next to the testbed's commands.
"""
