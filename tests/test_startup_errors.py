"""Start-up failures a variable fixes: the process says which variable and exits 2, without a stack.

They surface deep in start-up (uvicorn's lifespan, the engine's thread, the socket bind); these tests check
that each reaches the user as the variable and the fix, and that ``AsgiServer`` hands the real exception
to its caller instead of the ``SystemExit`` uvicorn raises inside its task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette

from brigade.config_error import ConfigurationError
from brigade.devtools.process import Service, free_port
from brigade.devtools.servers import kafka_service
from brigade.httpserver import AsgiServer, PortUnavailable
from brigade.kafka_config import KafkaCredentialsRejected, check_kafka
from schemas.settings import Settings
from tests.brigade_process import brigade_env

SASL = {
    "BRIGADE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "BRIGADE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "BRIGADE_KAFKA_SASL_USERNAME": "alice",
    "BRIGADE_KAFKA_SASL_PASSWORD": "wrong",
}


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A broker that requires SCRAM and, memory only and never told of a user, refuses every credential."""
    service = kafka_service(port=free_port(), log_dir=tmp_path_factory.mktemp("sasl"), authentication=True).start()
    yield service
    service.stop()


class _Misconfigured(ConfigurationError):
    variable = "BRIGADE_SOMETHING"


def _failing_app() -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise _Misconfigured("the lifespan's own words")
        yield  # pragma: no cover

    return Starlette(lifespan=lifespan)


async def test_a_failed_lifespan_start_up_raises_its_own_exception() -> None:
    server = AsgiServer(_failing_app(), host="127.0.0.1", port=0)
    with pytest.raises(_Misconfigured, match="the lifespan's own words"):
        await server.start(timeout_s=10)
    await asyncio.sleep(0)  # the loop still runs: uvicorn's SystemExit did not escape the task


async def test_a_taken_port_names_the_variable_that_sets_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AsgiServer(Starlette(), host="127.0.0.1", port=port, port_variable="BRIGADE_PORT")
        with pytest.raises(PortUnavailable, match=f"127.0.0.1:{port}") as raised:
            await server.start(timeout_s=10)
    assert raised.value.variable == "BRIGADE_PORT"


def _sasl_settings(bootstrap: str) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="alice",
        kafka_sasl_password="wrong",
    )


async def test_refused_kafka_credentials_name_the_user_not_the_password(sasl_broker: Service) -> None:
    with pytest.raises(KafkaCredentialsRejected, match="refused user 'alice' with SCRAM-SHA-512") as raised:
        await check_kafka(_sasl_settings(f"127.0.0.1:{sasl_broker.port}"))
    assert "wrong" not in str(raised.value)


async def test_an_unreachable_broker_is_not_refused_credentials(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="brigade.kafka_config"):
        await check_kafka(_sasl_settings(f"127.0.0.1:{free_port()}"), timeout_s=2)
        await check_kafka(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"))  # no SASL: not even a connection
    assert [r.getMessage() for r in caplog.records] == ["kafka unreachable at start-up; SASL credentials not checked"]


def test_the_model_variable_is_the_one_that_names_the_model() -> None:
    settings = Settings(model="builtin:tiny", class_models={"large": "/models/big", "medium": "/models/big"})
    assert settings.model_variable("/models/big") == "BRIGADE_CLASS_LARGE_MODEL, BRIGADE_CLASS_MEDIUM_MODEL"
    assert settings.model_variable("builtin:tiny") == "BRIGADE_MODEL"
    assert settings.model_variable("/resolved/elsewhere") == "BRIGADE_MODEL"


@pytest.mark.parametrize(
    ("command", "variables", "expected"),
    [
        ("ingress", {"BRIGADE_MODEL": "/no/such/model"}, "BRIGADE_MODEL: model '/no/such/model' is neither"),
        ("worker", {"BRIGADE_CLASS_SMALL_MODEL": "builtin:nope"}, "BRIGADE_CLASS_SMALL_MODEL: unknown built-in"),
        ("ingress", {"BRIGADE_PORT": "{taken}"}, "BRIGADE_PORT: could not listen on 127.0.0.1:"),
        ("worker", {"BRIGADE_METRICS_PORT": "{taken}"}, "BRIGADE_METRICS_PORT: could not listen on"),
        ("worker", {"BRIGADE_REDIS_URL": "redis://nobody:wrong@{redis}/0"}, "BRIGADE_REDIS_URL: Redis at 127.0.0.1"),
        ("ingress", {**SASL, "BRIGADE_KAFKA_BOOTSTRAP": "{sasl}"}, "BRIGADE_KAFKA_SASL_PASSWORD: the broker refused"),
        ("worker", {**SASL, "BRIGADE_KAFKA_BOOTSTRAP": "{sasl}"}, "BRIGADE_KAFKA_SASL_PASSWORD: the broker refused"),
    ],
)
async def test_brigade_exits_2_naming_the_variable(
    settings: Settings,
    topics: list[str],
    sasl_broker: Service,
    command: str,
    variables: dict[str, str],
    expected: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        redis = settings.redis_url.removeprefix("redis://").split("/")[0]
        sasl = f"127.0.0.1:{sasl_broker.port}"
        values = {name: value.format(taken=port, redis=redis, sasl=sasl) for name, value in variables.items()}
        env = brigade_env(
            settings, BRIGADE_HOST="127.0.0.1", BRIGADE_PORT="0", BRIGADE_METRICS_PORT="0", BRIGADE_WORKER_CLASS="small"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "brigade", command, env={**env, **values}, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = stderr.decode(errors="replace")
    assert proc.returncode == 2, text
    assert expected in text
    assert "Traceback" not in text, "a configuration error is its message, not a stack"
    assert "wrong" not in text, "a password never reaches the log"
