"""The entry points of the gateway's child processes, above the composition root.

Each is a small ``main``: ``app.open_child(home, role)``, then run what it was handed.
``python -m securemail.roles.crypto HOME FD LOG_LEVEL`` is a crypto worker (procs/cpu.py is its
parent's side), ``python -m securemail.roles.delivery HOME OWNER LOG_LEVEL`` the delivery child
(procs/delivery.py). The serve process's own entry point is ``securemail serve`` (cli/serve.py).
"""
