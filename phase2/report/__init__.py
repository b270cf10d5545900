"""The review report of one pipeline run.

- ``inputs``: what the report reads from the run's files, and what only the report step writes
  (baseline evaluation, detection tiles, promotion, task timings); the tables built from them.
- ``charts``: the matplotlib charts; ``html``: the self-contained HTML page (``template.html``).
- ``wandb_report``: the W&B Report; ``past_runs``: the report of a past run (``phase2 report``).
"""
