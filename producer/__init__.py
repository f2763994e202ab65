"""The ingress side: HTTP API (native and OpenAI-compatible), Python client, routing and admission."""
