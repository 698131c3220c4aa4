"""The fault-injection suite (`pytest tests/faults`): killed workers and pipelines, S3 outages and cut bodies,
a second writer. Stages run for real, as in the integration tests, whose helpers these share."""

from tests.integration.conftest import smoke_data, smoke_stage1, smoke_stage2  # noqa: F401  (fixtures)
