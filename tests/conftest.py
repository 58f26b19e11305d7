"""Shared fixtures: the tiny seeded model is built once per test session."""

import warnings

import pytest
import torch

from actalign.models import load_model


@pytest.fixture(scope="session")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2-135m")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        yield
