"""The Data Lifecycle page: a FastAPI app the Airflow API server mounts (see plugins/data_lifecycle_page.py)."""
