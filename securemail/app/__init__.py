"""The composition root: settings → objects. Nothing else builds engines, stores or stages.

``open_home`` (a person's home: keys, audit; home.py), ``open_gateway`` (the serve process: every
object of the gateway, handed down; gateway.py), ``open_child(home, role)`` (a crypto worker's or the
delivery child's own objects; child.py), ``open_bridge`` (a person's local bridge; bridge.py). The
processes' entry points (securemail/roles/, cli/) call these and run what they were handed; nothing
built here imports this package back. One root in four files, each under the size limit.
"""

from .bridge import open_bridge
from .child import ChildParts, open_child
from .gateway import (build_delivery, make_stage, open_checkpointer, open_gateway, role_command)
from .home import Core, manifest_path, migrate_database, open_home, open_locator, prepare_schema
from .observe import open_metrics, setup_logging, share_metrics

__all__ = ["ChildParts", "Core", "build_delivery", "make_stage", "manifest_path", "migrate_database",
           "open_bridge", "open_checkpointer", "open_child", "open_gateway", "open_home", "open_locator",
           "prepare_schema", "role_command", "open_metrics", "setup_logging", "share_metrics"]
