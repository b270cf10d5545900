"""Deployable artifacts of a model version: verified exports, the model card, and inference.

- :mod:`phase2.deploy.settings`: the recipe's ``export:`` section (formats, parity tolerances).
- :mod:`phase2.deploy.export`: Ultralytics' exporter at the protocol's image size.
- :mod:`phase2.deploy.parity`: an export measured against the .pt it came from.
- :mod:`phase2.deploy.card`: ``MODEL_CARD.md`` and ``model_card.json``.
- :mod:`phase2.deploy.package`: all of the above for one registration.
- :mod:`phase2.deploy.predict`: detections as JSON lines and annotated images.
"""
