"""``from redis_server import RedisServer`` for tests: a real redis-server on a free loopback port.

The class lives in ``twotower.store.testing`` so that benchmarks can use it too; see its docstring.
"""

from twotower.store.testing import RedisServer, free_port, ping

__all__ = ["RedisServer", "free_port", "ping"]
