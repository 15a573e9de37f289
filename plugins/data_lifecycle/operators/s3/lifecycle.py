"""S3 lifecycle rules applied by merge: ours by rule ID, everyone else's kept."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from data_lifecycle.exceptions import (
    LifecycleConfigError,
)
from data_lifecycle.operators.s3.common import (
    error_code,
)
from data_lifecycle.rendered import as_bool
from data_lifecycle.s3_lifecycle_rules import merge_rules, validate_rules

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import Context


class S3ApplyLifecycleOperator(BaseOperator):
    """Merge our lifecycle rules into a bucket's configuration by rule ID.

    PutBucketLifecycleConfiguration replaces the whole configuration, so the current one is read
    first: rules with other IDs are kept untouched, rules marked ``absent`` are removed, and
    ``TransitionDefaultMinimumObjectSize`` is passed back as it was. Nothing is written when the
    merged rules equal the current ones. Returns the diff.

    :param bucket: the bucket to configure.
    :param rules: rules in our format (see ``data_lifecycle.s3_lifecycle_rules``); validated here.
    :param aws_conn_id: the AWS connection.
    :param dry_run: compute and return the diff without writing (templated).
    """

    template_fields: Sequence[str] = ("dry_run",)

    def __init__(
        self,
        *,
        bucket: str,
        rules: Sequence[Mapping[str, Any]],
        aws_conn_id: str = "lifecycle_aws",
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not bucket:
            raise LifecycleConfigError(f"{self.task_id}: bucket is required")
        self.bucket = bucket
        self.rules = [dict(rule) for rule in rules]
        self.aws_conn_id = aws_conn_id
        # Shadows BaseOperator.dry_run(), a render-only helper Airflow 3 never calls: the flag is templated.
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        try:
            self.warnings = validate_rules(self.rules)
        except LifecycleConfigError as exc:
            raise LifecycleConfigError(f"{self.task_id} (bucket {bucket!r}): {exc}") from exc

    @cached_property
    def hook(self) -> S3Hook:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        dry_run = as_bool(self.dry_run, field="dry_run")
        client: Any = self.hook.get_conn()
        for warning in self.warnings:
            self.log.warning("%s", warning)
        current: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        try:
            response = client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
            current = response.get("Rules", [])
            if response.get("TransitionDefaultMinimumObjectSize"):
                extra["TransitionDefaultMinimumObjectSize"] = response["TransitionDefaultMinimumObjectSize"]
        except ClientError as exc:
            if error_code(exc) == "NoSuchBucket":
                raise LifecycleConfigError(f"S3 bucket {self.bucket!r} does not exist") from exc
            if error_code(exc) != "NoSuchLifecycleConfiguration":
                raise
        merged, diff = merge_rules(current, self.rules)
        put = diff.changes and not dry_run
        if put:
            if merged:
                client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": merged}, **extra
                )
            else:
                # A configuration needs at least one rule: removing the last one deletes it.
                client.delete_bucket_lifecycle(Bucket=self.bucket)
        result = {
            "bucket": self.bucket,
            "added": diff.added,
            "changed": diff.changed,
            "removed": diff.removed,
            "unchanged": diff.unchanged,
            "put": put,
            "warnings": list(self.warnings),
            "dry_run": dry_run,
        }
        self.log.info(
            "Lifecycle of s3://%s: added %s, changed %s, removed %s, unchanged %s, %d other rule(s) kept; %s",
            self.bucket,
            diff.added,
            diff.changed,
            diff.removed,
            diff.unchanged,
            len(current) - len(diff.changed) - len(diff.removed) - len(diff.unchanged),
            "written" if put else ("dry run, nothing written" if diff.changes else "already up to date"),
        )
        return result
