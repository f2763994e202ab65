"""brigade: a Kafka-fed, KEDA-scaled worker fleet for LLM inference with Redis token streams."""

__version__ = "0.1.0"
