"""Reads one result record the way taskiq-redis' RedisAsyncResultBackend does,
with the settings and serializer of examples/taskiq_producer.py, and prints it
as JSON:

    python taskiq_reader.py <task_id>
"""

import asyncio
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples"))

from taskiq_producer import KEY_PREFIX, REDIS_URL, Msgpack  # noqa: E402
from taskiq_redis import RedisAsyncResultBackend  # noqa: E402


async def main(task_id: str) -> None:
    backend = RedisAsyncResultBackend(REDIS_URL, prefix_str=KEY_PREFIX[:-1] or None, serializer=Msgpack())
    try:
        result = await backend.get_result(task_id)
    finally:
        await backend.shutdown()
    error = result.error
    print(
        json.dumps(
            {
                "task_id": task_id,
                "is_err": result.is_err,
                "return_value": result.return_value,
                "error_type": None if error is None else type(error).__name__,
                "error": None if error is None else str(error),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
