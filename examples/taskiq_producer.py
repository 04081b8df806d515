"""Enqueue a task to Courier workers from Python with taskiq, and wait for its result.

    pip install -r examples/requirements.txt
    python examples/taskiq_producer.py test_di_task '{"chat_id": 42}'

Settings are Courier's own environment variables, with Courier's defaults:
COURIER_NATS__URL (one URL, or several separated by commas), COURIER_NATS__STREAM,
COURIER_NATS__SUBJECT, COURIER_NATS__DURABLE, COURIER_REDIS__URL and
COURIER_REDIS__KEY_PREFIX (empty, or ending in ":"); and, used only if no worker
ran yet, the stream and consumer settings (COURIER_NATS__ACK_WAIT, ...).
"""

import asyncio
import json
import os
import re
import sys
from typing import Any

import nats
import ormsgpack
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from taskiq.abc.serializer import TaskiqSerializer
from taskiq.kicker import AsyncKicker
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import RedisAsyncResultBackend

setting = os.environ.get
SERVERS = setting("COURIER_NATS__URL", "nats://127.0.0.1:4222").split(",")
STREAM = setting("COURIER_NATS__STREAM", "COURIER")
SUBJECT = setting("COURIER_NATS__SUBJECT", "courier.tasks")
DURABLE = setting("COURIER_NATS__DURABLE", "courier-worker")
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


async def workers_consumer() -> ConsumerConfig:
    """The durable consumer as Courier's workers made it: taskiq-nats' startup()
    rewrites the consumer with the config it is given, so give it this one."""
    client = await nats.connect(SERVERS)
    try:
        return (await client.jetstream().consumer_info(STREAM, DURABLE)).config
    except NotFoundError:  # No worker ran yet: what one makes from the same settings.
        return ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=seconds(setting("COURIER_NATS__ACK_WAIT", "30s")),
            max_deliver=int(setting("COURIER_NATS__MAX_DELIVER", "20")),
            max_ack_pending=int(setting("COURIER_NATS__MAX_ACK_PENDING", "1024")),
        )
    finally:
        await client.close()


async def main(task_name: str, kwargs: dict[str, Any]) -> None:
    assert KEY_PREFIX == "" or KEY_PREFIX.endswith(":"), "taskiq-redis adds the ':' itself"
    broker = PullBasedJetStreamBroker(
        servers=SERVERS,
        subject=SUBJECT,
        stream_name=STREAM,
        durable=DURABLE,
        # The stream as a worker makes it, should no worker have made it yet.
        stream_config=StreamConfig(
            name=STREAM,
            subjects=[SUBJECT, f"{SUBJECT}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=seconds(setting("COURIER_NATS__DUPLICATE_WINDOW", "2m")),
            num_replicas=int(setting("COURIER_NATS__STREAM_REPLICAS", "1")),
        ),
        consumer_config=await workers_consumer(),
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
