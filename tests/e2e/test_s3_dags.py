"""The S3 cleanup DAGs, end to end against the moto server: tiers, archives and expiry."""

from __future__ import annotations

from tests.e2e.conftest import run_dag


class TestCleanupS3Objects:
    def test_expires_old_tmp_and_exports_only(self, dagbag, dreamseed, pg):
        before = dreamseed.keys("dreamseed-uploads")
        user_keys = {k for k in before if k.startswith("user_")}
        assert user_keys and any(k.startswith("tmp/") for k in before)

        assert run_dag(dagbag, "cleanup_s3_objects").state == "success"
        after = dreamseed.keys("dreamseed-uploads")
        assert set(after) == user_keys

        assert run_dag(dagbag, "cleanup_s3_objects").state == "success"
        assert set(dreamseed.keys("dreamseed-uploads")) == user_keys


class TestApplyStorageTiers:
    def test_applies_rules_and_archives_old_logs_to_glacier(
        self, dagbag, dreamseed, pg, s3_client, lifecycle_env
    ):
        logs_before = dreamseed.keys("dreamseed-logs", prefix="app/")
        assert logs_before

        assert run_dag(dagbag, "apply_storage_tiers").state == "success"
        for entry in lifecycle_env.policy.storage_tiers:
            rules = s3_client.get_bucket_lifecycle_configuration(Bucket=entry.bucket)["Rules"]
            assert {r["ID"] for r in rules} >= {r["id"] for r in entry.rules if not r.get("absent")}
            assert not {r["ID"] for r in rules} & {r["id"] for r in entry.rules if r.get("absent")}
        assert dreamseed.keys("dreamseed-logs", prefix="app/") == {}
        archived = dreamseed.keys("dreamseed-log-archive", prefix="app/")
        assert set(archived) == set(logs_before)
        assert set(archived.values()) == {"GLACIER"}

        again = run_dag(dagbag, "apply_storage_tiers")
        assert again.state == "success"
        assert dreamseed.keys("dreamseed-log-archive", prefix="app/") == archived
