"""caio-bench: benchmark ML models served online, from Airflow or a laptop."""

__version__ = "0.1.0"
