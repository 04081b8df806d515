"""Enqueue a task to Courier workers from Python with taskiq, and wait for its result.

    pip install -r examples/requirements.txt
    python examples/taskiq_producer.py test_di_task '{"chat_id": 42}'

Settings are Courier's own environment variables, with Courier's defaults:
COURIER_NATS__URL (one URL, or several separated by commas), COURIER_NATS__STREAM,
COURIER_NATS__SUBJECT, COURIER_REDIS__URL and COURIER_REDIS__KEY_PREFIX (empty, or
ending in ":"); if no worker made the stream yet, also COURIER_NATS__DUPLICATE_WINDOW
and COURIER_NATS__STREAM_REPLICAS.
"""

import asyncio
import json
import os
import re
import sys
from typing import Any

import ormsgpack
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from taskiq.abc.serializer import TaskiqSerializer
from taskiq.kicker import AsyncKicker
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import RedisAsyncResultBackend

setting = os.environ.get
SERVERS = setting("COURIER_NATS__URL", "nats://127.0.0.1:4222").split(",")
STREAM = setting("COURIER_NATS__STREAM", "COURIER")
SUBJECT = setting("COURIER_NATS__SUBJECT", "courier.tasks")
REDIS_URL = setting("COURIER_REDIS__URL", "redis://127.0.0.1:6379")
KEY_PREFIX = setting("COURIER_REDIS__KEY_PREFIX", "")


def seconds(duration: str) -> float:
    """A Courier duration ("30s", "500ms", "1m 30s"; a bare number is seconds)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}
    return sum(float(n) * units[unit] for n, unit in re.findall(r"([\d.]+)\s*(ms|s|m|h|d|)", duration))


class Msgpack(TaskiqSerializer):
    """MessagePack both ways, as Courier reads and writes."""

    def dumpb(self, value: Any) -> bytes:
        return ormsgpack.packb(value)

    def loadb(self, value: bytes) -> Any:
        return ormsgpack.unpackb(value)


class Producer(PullBasedJetStreamBroker):
    """Publishes only. taskiq-nats' startup() would also create the pull consumer,
    rewriting the one Courier's workers share with its own config: a producer
    reads no messages, so it makes none."""

    async def _startup_consumer(self) -> None:
        pass


async def main(task_name: str, kwargs: dict[str, Any]) -> None:
    assert KEY_PREFIX == "" or KEY_PREFIX.endswith(":"), "taskiq-redis adds the ':' itself"
    broker = Producer(
        servers=SERVERS,
        subject=SUBJECT,
        stream_name=STREAM,
        # The stream as a worker makes it, should no worker have made it yet.
        stream_config=StreamConfig(
            name=STREAM,
            subjects=[SUBJECT, f"{SUBJECT}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=seconds(setting("COURIER_NATS__DUPLICATE_WINDOW", "2m")),
            num_replicas=int(setting("COURIER_NATS__STREAM_REPLICAS", "1")),
        ),
    ).with_serializer(Msgpack())
    prefix = KEY_PREFIX[:-1] or None
    broker = broker.with_result_backend(RedisAsyncResultBackend(REDIS_URL, prefix_str=prefix, serializer=Msgpack()))
    await broker.startup()
    try:
        task = await AsyncKicker(task_name=task_name, broker=broker, labels={}).kiq(**kwargs)
        result = await task.wait_result(timeout=30)
        error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        out = {"task_id": task.task_id, "is_err": result.is_err, "return_value": result.return_value, "error": error}
        print(json.dumps(out))
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "test_di_task"
    asyncio.run(main(name, json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"chat_id": 42}))
