"""The serving tests' model, engine and server, made once per test file."""

import pytest
from openai import OpenAI

from gptscratch.model import GPT
from gptscratch.serve import serving_in_thread
from gptscratch.serve.engine import Engine
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model()


@pytest.fixture(scope="module")
def engine(model):
    engine = Engine(model, max_batch=4, max_queue=16).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def url(engine):
    with serving_in_thread(engine, "tiny") as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
