"""The operator page "EDS network": a view model built from the catalogue, its HTML, and the FastAPI app.

The Airflow plugin (`plugins/eds_network_ui.py`) mounts `create_app(...)` under `/eds` and hands it Airflow's
own authentication dependency, so the page and its JSON API (`/eds/api/...`) sit behind the same login as the
Airflow UI. This module does not import Airflow.

What the page shows, all from the catalogue (counts, dates, statuses, ids: never a patient value):
  - bases x levels: for every network base, the last local run, its platform's last mutualised run and last
    national delivery run: status, rows, quality status, when; links to the DAG runs (and Data Docs if any);
  - onboarding milestones of every base (network and the seven reference bases): the five milestones with
    their dates, a placeholder where not reached, milestones reached out of order flagged;
  - lead times (contract signed -> available) against the 7-month target, and their distribution;
  - national deliveries and their receipts;
  - deliveries the national milestone gate held back, with a form to record the missing milestone, and a form
    to record, correct and evidence any milestone (`POST /milestones`: same origin, an anti-forgery token bound
    to the session, the user the plugin's `recorder` dependency names, audited in the catalogue).
"""

from __future__ import annotations

from eds_network.ui.app import create_app
from eds_network.ui.render import render_html
from eds_network.ui.view import data_docs_file, data_docs_index, network_view, recent_audit

__all__ = ["create_app", "data_docs_file", "data_docs_index", "network_view", "recent_audit", "render_html"]
