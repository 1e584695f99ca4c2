import pytest

from tests.toy_envs import EchoEnv


@pytest.fixture
def echo_env():
    return EchoEnv()
