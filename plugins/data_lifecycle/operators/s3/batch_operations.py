"""An S3 Batch Operations plan for copies too many to make one by one: the job manifest and CreateJob.

Above a threshold of due objects, copy-then-delete writes the job's manifest (CSV of bucket,key in
S3, written with ``IfNoneMatch``) and a ``CreateJob`` request for an ``S3PutObjectCopy`` into the
archive class, validated before anything is sent: the operation and its target, the manifest's
format and ETag (read back from S3), the completion report, the IAM role and account from the
connection. It is submitted only where asked and where the endpoint answers ``s3control:CreateJob``;
otherwise the plan is returned as written and validated, and the summary says it was not submitted.
Batch Operations copies; it does not delete. The next run of the operator finds the copies, verifies
each by HEAD (size, SHA-256, class) and deletes only their sources.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from data_lifecycle.exceptions import LifecycleConfigError

# CreateJob: "Format ... S3BatchOperations_CSV_20180820"; a CSV manifest row is bucket,key (key
# URL-encoded) and an optional version id.
MANIFEST_FORMAT = "S3BatchOperations_CSV_20180820"
REPORT_FORMAT = "Report_CSV_20180820"
ROLE_ARN_RE = re.compile(r"arn:aws:iam::(?P<account>\d{12}):role/[\w+=,.@/-]{1,512}")
ACCOUNT_RE = re.compile(r"\d{12}")
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", "GLACIER_IR"})
# Codes an endpoint answers for an API it does not implement (the moto server has no CreateJob).
UNSUPPORTED_CODES = frozenset({"NotImplemented", "InvalidAction", "UnknownOperation", "404", "501"})
SETTINGS = ("threshold", "manifest_bucket", "manifest_prefix", "report_bucket", "report_prefix")


def check_settings(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The operator's ``batch_operations`` argument, checked: a clear error names what is wrong."""
    unknown = set(spec) - {*SETTINGS, "role_arn", "submit", "priority"}
    missing = [k for k in SETTINGS if spec.get(k) in (None, "")]
    if unknown or missing:
        raise LifecycleConfigError(
            f"{where}: batch_operations needs {', '.join(SETTINGS)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {sorted(unknown)}" if unknown else "")
        )
    threshold = spec["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise LifecycleConfigError(f"{where}: batch_operations.threshold must be a positive integer")
    if spec.get("role_arn") and not ROLE_ARN_RE.fullmatch(str(spec["role_arn"])):
        raise LifecycleConfigError(
            f"{where}: batch_operations.role_arn {spec['role_arn']!r} is not an IAM role ARN"
        )
    return dict(spec)


def role_arn_for(spec: Mapping[str, Any], connection_extra: Mapping[str, Any], where: str) -> str:
    """The role Batch Operations assumes: the setting, else the AWS connection's
    ``batch_operations_role_arn`` extra. Without one no plan can be written."""
    role = spec.get("role_arn") or connection_extra.get("batch_operations_role_arn")
    if not role or not ROLE_ARN_RE.fullmatch(str(role)):
        raise LifecycleConfigError(
            f"{where}: a Batch Operations job needs an IAM role ARN (batch_operations.role_arn or the "
            f"connection's batch_operations_role_arn extra), got {role!r}"
        )
    return str(role)


def write_manifest(client: Any, bucket: str, key: str, source_bucket: str, keys: Iterable[str]) -> str:
    """Write the job manifest (never over another) and return its ETag as S3 reports it."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for source_key in keys:
        writer.writerow([source_bucket, quote(source_key, safe="/")])
    body = text.getvalue().encode()
    client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="text/csv")
    return str(client.head_object(Bucket=bucket, Key=key)["ETag"])


def create_job_request(
    *,
    account_id: str,
    role_arn: str,
    manifest_bucket: str,
    manifest_key: str,
    manifest_etag: str,
    dest_bucket: str,
    storage_class: str,
    report_bucket: str,
    report_prefix: str,
    description: str,
    priority: int = 10,
) -> dict[str, Any]:
    """The ``CreateJob`` parameters of an ``S3PutObjectCopy`` into ``dest_bucket`` in ``storage_class``.

    The client token is derived from the manifest (key and ETag), so a retried submission of the
    same plan is the same job, not a second one.
    """
    token = hashlib.sha256(f"{manifest_bucket}/{manifest_key}@{manifest_etag}".encode()).hexdigest()[:64]
    return {
        "AccountId": account_id,
        "ConfirmationRequired": True,
        "Operation": {
            "S3PutObjectCopy": {
                "TargetResource": f"arn:aws:s3:::{dest_bucket}",
                "StorageClass": storage_class,
                "MetadataDirective": "COPY",
                "ChecksumAlgorithm": "SHA256",
            }
        },
        "Report": {
            "Bucket": f"arn:aws:s3:::{report_bucket}",
            "Format": REPORT_FORMAT,
            "Enabled": True,
            "Prefix": report_prefix.rstrip("/"),
            "ReportScope": "AllTasks",
        },
        "ClientRequestToken": token,
        "Manifest": {
            "Spec": {"Format": MANIFEST_FORMAT, "Fields": ["Bucket", "Key"]},
            "Location": {
                "ObjectArn": f"arn:aws:s3:::{manifest_bucket}/{manifest_key}",
                "ETag": manifest_etag,
            },
        },
        "Description": description[:256],
        "Priority": priority,
        "RoleArn": role_arn,
    }


def validate_job_request(request: Mapping[str, Any], *, s3_client: Any, dest_bucket: str) -> list[str]:
    """Everything wrong with a CreateJob request, one line each (empty when it may be submitted)."""
    from botocore.session import get_session
    from botocore.validate import ParamValidator

    problems: list[str] = []
    model = get_session().get_service_model("s3control").operation_model("CreateJob")
    shape = model.input_shape
    assert shape is not None  # CreateJob takes parameters
    report = ParamValidator().validate(dict(request), shape)
    if report.has_errors():
        problems.append(f"CreateJob parameters: {report.generate_report()}")
    operation = request.get("Operation", {})
    copy = operation.get("S3PutObjectCopy")
    if list(operation) != ["S3PutObjectCopy"] or not copy:
        problems.append(f"operation must be S3PutObjectCopy alone, got {sorted(operation)}")
    else:
        if copy.get("TargetResource") != f"arn:aws:s3:::{dest_bucket}":
            problems.append(
                f"target {copy.get('TargetResource')!r} is not the archive bucket {dest_bucket!r}"
            )
        if copy.get("StorageClass") not in ARCHIVE_CLASSES:
            problems.append(f"storage class {copy.get('StorageClass')!r} is not an archive class")
        if copy.get("ChecksumAlgorithm") != "SHA256":
            problems.append("copies must carry a SHA256 checksum (the next run verifies them by it)")
    role = str(request.get("RoleArn", ""))
    match = ROLE_ARN_RE.fullmatch(role)
    if not match:
        problems.append(f"role {role!r} is not an IAM role ARN")
    elif match["account"] != request.get("AccountId"):
        problems.append(
            f"role account {match['account']} is not the job's account {request.get('AccountId')}"
        )
    if not ACCOUNT_RE.fullmatch(str(request.get("AccountId", ""))):
        problems.append(f"account id {request.get('AccountId')!r} is not 12 digits")
    job_report = request.get("Report", {})
    if not job_report.get("Enabled") or job_report.get("ReportScope") != "AllTasks":
        problems.append("the completion report must be enabled for all tasks")
    location = request.get("Manifest", {}).get("Location", {})
    arn = str(location.get("ObjectArn", ""))
    if request.get("Manifest", {}).get("Spec", {}).get("Format") != MANIFEST_FORMAT:
        problems.append(f"manifest format must be {MANIFEST_FORMAT}")
    if not arn.startswith("arn:aws:s3:::") or "/" not in arn:
        problems.append(f"manifest {arn!r} is not an S3 object ARN")
    else:
        bucket, _, key = arn.removeprefix("arn:aws:s3:::").partition("/")
        etag = s3_client.head_object(Bucket=bucket, Key=key)["ETag"]
        if etag != location.get("ETag"):
            problems.append(f"manifest ETag {location.get('ETag')} is not the object's {etag}")
    return problems


def submit_job(s3control: Any, request: Mapping[str, Any]) -> dict[str, Any]:
    """CreateJob where the endpoint supports it; otherwise say why it was not submitted."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    try:
        response = s3control.create_job(**request)
    except EndpointConnectionError as exc:
        # s3control addresses {account}.<endpoint>: a local S3 endpoint has no such host.
        return {"submitted": False, "reason": f"the s3control endpoint is not reachable ({exc})"}
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in UNSUPPORTED_CODES or status in UNSUPPORTED_CODES:
            return {
                "submitted": False,
                "reason": f"the endpoint does not support s3control:CreateJob ({code or status})",
            }
        raise
    return {"submitted": True, "job_id": response["JobId"]}


def plan_job(
    *,
    client: Any,
    s3control: Any | None,
    spec: Mapping[str, Any],
    connection_extra: Mapping[str, Any],
    source_bucket: str,
    dest_bucket: str,
    storage_class: str,
    keys: list[str],
    run_label: str,
    where: str,
) -> dict[str, Any]:
    """Write the manifest of ``keys``, build and validate the CreateJob request, submit it if asked.

    The manifest key is derived from the run (``run_label``): a rerun finds its own manifest (the
    conditional write refuses to replace it) and reuses it, and the same client token makes a
    resubmission the same job.
    """
    from botocore.exceptions import ClientError

    role = role_arn_for(spec, connection_extra, where)
    account = ROLE_ARN_RE.fullmatch(role)["account"]  # type: ignore[index]
    manifest_key = f"{str(spec['manifest_prefix']).rstrip('/')}/{source_bucket}/{run_label}/manifest.csv"
    try:
        etag = write_manifest(client, spec["manifest_bucket"], manifest_key, source_bucket, sorted(keys))
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) not in ("PreconditionFailed", "412"):
            raise
        etag = str(client.head_object(Bucket=spec["manifest_bucket"], Key=manifest_key)["ETag"])
    request = create_job_request(
        account_id=account,
        role_arn=role,
        manifest_bucket=spec["manifest_bucket"],
        manifest_key=manifest_key,
        manifest_etag=etag,
        dest_bucket=dest_bucket,
        storage_class=storage_class,
        report_bucket=spec["report_bucket"],
        report_prefix=spec["report_prefix"],
        description=f"data-lifecycle archive of s3://{source_bucket} ({len(keys)} objects)",
        priority=int(spec.get("priority", 10)),
    )
    problems = validate_job_request(request, s3_client=client, dest_bucket=dest_bucket)
    if problems:
        raise LifecycleConfigError(f"{where}: the Batch Operations job is not valid: " + "; ".join(problems))
    outcome: dict[str, Any] = {"submitted": False, "reason": "submit is off (written and validated only)"}
    if spec.get("submit") and s3control is not None:
        outcome = submit_job(s3control, request)
    return {
        "objects": len(keys),
        "manifest": f"s3://{spec['manifest_bucket']}/{manifest_key}",
        "manifest_etag": etag,
        "request": request,
        **outcome,
    }


def plan_for(op: Any, client: Any, keys: list[str], cutoff: Any) -> dict[str, Any]:
    """``plan_job`` for a copy-then-delete operator's due ``keys``; the summary of the plan."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    extra = op.hook.get_connection(op.aws_conn_id).extra_dejson
    s3control = AwsBaseHook(aws_conn_id=op.aws_conn_id, client_type="s3control").get_conn()
    plan = plan_job(
        client=client,
        s3control=s3control,
        spec=op.batch_operations,
        connection_extra=extra,
        source_bucket=op.source_bucket,
        dest_bucket=op.dest_bucket,
        storage_class=op.storage_class,
        keys=keys,
        run_label=cutoff.strftime("%Y-%m-%dT%H%M%SZ"),
        where=op.task_id,
    )
    op.log.info(
        "%d due object(s) over the threshold: Batch Operations manifest %s (%s); submitted: %s %s",
        len(keys),
        plan["manifest"],
        plan["manifest_etag"],
        plan["submitted"],
        plan.get("job_id") or plan.get("reason", ""),
    )
    return {k: v for k, v in plan.items() if k != "request"}
