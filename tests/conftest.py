"""Shared fixtures live in tests/plugins/, one module per real service or data source."""

pytest_plugins = [
    "tests.plugins.data",
    "tests.plugins.learned_model",
    "tests.plugins.s3",
    "tests.plugins.prefect_stack",
    "tests.plugins.reliability",
    "tests.plugins.webhook",
]
