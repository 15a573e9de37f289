# Astro Runtime 3.3 (Airflow 3.3). The image installs requirements.txt and packages.txt and
# copies dags/, plugins/ and include/ into /usr/local/airflow, which is on PYTHONPATH.
FROM astrocrpublic.azurecr.io/runtime:3.3-2
