"""The operator console: rooms, publishers, recordings, a player and the nodes, on the node's
port, with operator sign-in and offline API docs (SPEC §6)."""

from cloudrec.console.auth import OperatorAuth, SignInRequired
from cloudrec.console.routes import mount_console

__all__ = ["OperatorAuth", "SignInRequired", "mount_console"]
