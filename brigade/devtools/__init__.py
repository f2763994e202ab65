"""Local stand-ins for Kafka and Redis, for ``brigade dev`` and the tests. Needs the ``dev`` extra.

Nothing in the runtime path imports this package: production points at real Kafka and Redis.
"""
