"""The Prefect tasks of the phase2 flow: one module per stage, each task a short typed adapter.

A task calls its stage's plain functions (in the ``phase2`` package), publishes what people
look at through :func:`phase2.infra.publishing.publish`, and returns paths, URIs and small
models only. Retries are safe: every stage is idempotent (deterministic outputs, a COMPLETE
marker for training, registration keyed by run).
"""

RETRIES = 2
RETRY_DELAY_S = 5
