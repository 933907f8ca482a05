"""The operator console: rooms, publishers, recordings, a player and the nodes, on the node's
port, with operator sign-in and offline API docs.

- ``routes``: the pages and JSON routes (:func:`~cloudrec.console.routes.mount_console`);
- ``views``: what the JSON shows, read from the directory, the workers and the task store;
- ``auth``: operator sign-in; ``files``: recorded files served to the player; ``redact``:
  secrets kept out of what is shown; ``docs``, ``assets``: the bundled API docs and scripts.
"""
