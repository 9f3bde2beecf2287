"""The benchmark tabs in the Airflow UI: an Airflow plugin (``plugin``), its FastAPI app
(``app``) and the rules that find a run's report (``locate``)."""
