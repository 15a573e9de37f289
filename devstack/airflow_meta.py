"""Create the pools and variables of ``airflow_settings.yaml`` in the Airflow metadata DB.

Run by ``devstack up`` in a process whose environment points Airflow at the local stack.
Connections are not stored: the stack exports them as ``AIRFLOW_CONN_*`` variables instead.
"""

from __future__ import annotations

from devstack.settings import AirflowSettings


def main() -> None:
    from airflow.models import Pool, Variable

    settings = AirflowSettings()
    for pool in settings.pools:
        Pool.create_or_update_pool(
            name=pool["pool_name"],
            slots=int(pool["pool_slot"]),
            description=pool.get("pool_description") or "",
            include_deferred=False,
        )
    for variable in settings.variables:
        Variable.set(variable["variable_name"], variable["variable_value"])  # noqa: AIR311
    print(f"pools: {len(settings.pools)}, variables: {len(settings.variables)}")


if __name__ == "__main__":
    main()
