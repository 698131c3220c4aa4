"""The fault-injection suite (`pytest tests/faults`): killed workers and pipelines, S3 outages and cut bodies,
a second writer. Stages run for real, as in the integration tests, whose helpers and session runs
(tests/conftest.py) these share."""
