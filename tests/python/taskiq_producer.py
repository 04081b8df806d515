"""A Python producer on the taskiq stack (taskiq + taskiq-nats
PullBasedJetStreamBroker + taskiq-redis RedisAsyncResultBackend, msgpack)
that enqueues to a Courier worker and reads the result the way taskiq does.

    python taskiq_producer.py send <task_name> '<kwargs json>'   -> JSON result
    python taskiq_producer.py read <task_id>                     -> JSON result

Configured by the same names Courier uses: COURIER_NATS__URL,
COURIER_NATS__STREAM, COURIER_NATS__SUBJECT, COURIER_NATS__DURABLE,
COURIER_NATS__ACK_WAIT_SECONDS, COURIER_NATS__MAX_DELIVER,
COURIER_NATS__MAX_ACK_PENDING, COURIER_REDIS__URL, COURIER_REDIS__KEY_PREFIX.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import ormsgpack
from nats.js.api import AckPolicy, ConsumerConfig
from taskiq.abc.serializer import TaskiqSerializer
from taskiq.kicker import AsyncKicker
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import RedisAsyncResultBackend


class MsgpackSerializer(TaskiqSerializer):
    """MessagePack both ways (taskiq 0.13 ships no ormsgpack serializer)."""

    def dumpb(self, value: Any) -> bytes:
        return ormsgpack.packb(value)

    def loadb(self, value: bytes) -> Any:
        return ormsgpack.unpackb(value)


env = os.environ
serializer = MsgpackSerializer()
prefix = env["COURIER_REDIS__KEY_PREFIX"]
# Courier's key is prefix + task id; taskiq-redis writes "<prefix_str>:<id>".
assert prefix == "" or prefix.endswith(":"), "use a key prefix ending in ':'"
backend = RedisAsyncResultBackend(
    redis_url=env["COURIER_REDIS__URL"],
    prefix_str=prefix[:-1] or None,
    serializer=serializer,
)
durable = env["COURIER_NATS__DURABLE"]
broker = PullBasedJetStreamBroker(
    servers=env["COURIER_NATS__URL"],
    subject=env["COURIER_NATS__SUBJECT"],
    stream_name=env["COURIER_NATS__STREAM"],
    durable=durable,
    # Courier's consumer settings: without them taskiq-nats' startup()
    # rewrites the shared durable consumer with its own defaults.
    consumer_config=ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=float(env["COURIER_NATS__ACK_WAIT_SECONDS"]),
        max_deliver=int(env["COURIER_NATS__MAX_DELIVER"]),
        max_ack_pending=int(env["COURIER_NATS__MAX_ACK_PENDING"]),
    ),
).with_result_backend(backend).with_serializer(serializer)


def as_json(task_id: str, result: Any) -> str:
    error = result.error
    return json.dumps(
        {
            "task_id": task_id,
            "is_err": result.is_err,
            "return_value": result.return_value,
            "execution_time": result.execution_time,
            "error_type": type(error).__name__ if error is not None else None,
            "error": str(error) if error is not None else None,
        }
    )


async def main() -> None:
    command = sys.argv[1]
    await broker.startup()
    try:
        if command == "send":
            kicker = AsyncKicker(task_name=sys.argv[2], broker=broker, labels={})
            task = await kicker.kiq(**json.loads(sys.argv[3]))
            result = await task.wait_result(timeout=30)
            print(as_json(task.task_id, result))
        elif command == "read":
            result = await backend.get_result(sys.argv[2])
            print(as_json(sys.argv[2], result))
        else:
            raise SystemExit(f"unknown command {command}")
    finally:
        await broker.shutdown()


asyncio.run(main())
