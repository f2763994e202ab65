"""The worker side: fetch from a class's topic, batch, run the engine, stream tokens to Redis."""
