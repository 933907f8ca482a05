"""A worker process: ``python -m cloudrec.workers.main``, started by the node's supervisor.

It reads one JSON line on stdin (settings, index, node, secret), serves its internal API on a
port of its own, resumes the tasks it owned, and then prints ``READY {json}`` on stdout: it
counts as started only once it said so. The supervisor keeps stdin open; when it closes (the
front died, even by SIGKILL) the worker exits at once, leaving its tasks active so that they
resume where the node or its rooms come back. SIGTERM is a drain: the worker finalises its
recordings (reason ``shutdown``) and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI

from cloudrec.config import settings_from_json
from cloudrec.logs import configure
from cloudrec.stores import open_stores
from cloudrec.workers.internal import internal_router
from cloudrec.workers.worker import Worker

log = logging.getLogger("cloudrec.worker")


def _watch_parent() -> None:
    """Exit when the supervisor's end of stdin closes: the node is gone. Reads the raw file
    descriptor: a daemon thread blocked in ``sys.stdin``'s buffered reader makes the
    interpreter's own exit abort ("_enter_buffered_busy")."""
    try:
        while os.read(sys.stdin.fileno(), 4096):
            pass
    finally:
        os._exit(0)


async def run(config: dict[str, Any]) -> None:
    settings = settings_from_json(config["settings"])
    index, node, secret = int(config["index"]), str(config["node"]), str(config["secret"])
    stores = open_stores(settings)
    tasks, outbox = stores.tasks, stores.outbox
    worker = Worker(settings, index, node, tasks, outbox, front_url=config.get("front_url", ""),
                    secret=secret)
    ready: list[Worker] = []
    app = FastAPI(openapi_url=None)
    app.include_router(internal_router(lambda: ready[0] if ready else None, secret))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host = settings.internal_host or settings.host
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the front decides; Ctrl-C reaches all
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    await worker.open()
    ready.append(worker)
    port = sock.getsockname()[1]
    print("READY " + json.dumps({"url": f"http://{host}:{port}", "relay": worker.relay_address,
                                 "pid": os.getpid()}), flush=True)
    await stop.wait()
    log.info("worker %s draining", worker.id)
    ready.clear()
    await worker.close()
    await stores.close()
    server.should_exit = True
    await serving


def main() -> None:
    config = json.loads(sys.stdin.readline())
    settings = config["settings"]
    tag = f"w{config['index']}"
    configure(str(settings.get("log_level", "info")), str(settings.get("log_format", "text")),
              tag=tag, static={"worker": tag})
    threading.Thread(target=_watch_parent, daemon=True).start()
    asyncio.run(run(config))


if __name__ == "__main__":
    main()
