"""The command line: one module per command group; ``main.py`` wires them together.

Each group module exposes ``register(app)``, keeps its heavy imports inside the command
functions, and so ``tierlm --help`` starts fast.
"""
