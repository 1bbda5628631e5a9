"""Prefect's S3Bucket (prefect-aws) and GcsBucket (prefect-gcp) blocks as storage.

Neither package is imported: both are optional, so their blocks are recognised by class
name and package. The blocks' credentials go straight into the options of the fsspec
filesystem (s3fs, gcsfs) and nowhere else; a block without credentials gets the default
AWS or Google credential chain.
"""

from __future__ import annotations

import os
from typing import Any

from prefect_tune.storage.errors import ConfigError
from prefect_tune.storage.filesystem import Storage, resolve_storage

#: The block types this module maps, as named in the "unsupported type" error.
SUPPORTED = "S3Bucket (prefect-aws) or GcsBucket (prefect-gcp)"
#: Block type slugs of prefect-aws and prefect-gcp, and the extra that installs each.
EXTRAS = {
    "s3-bucket": "aws", "aws-credentials": "aws", "minio-credentials": "aws",
    "gcs-bucket": "gcp", "gcp-credentials": "gcp",
}
_PACKAGES = ("prefect_aws", "prefect_gcp")
_CREDENTIALS = {
    "AwsCredentials": "S3Bucket(bucket_name=..., credentials=...)",
    "MinIOCredentials": "S3Bucket(bucket_name=..., credentials=...)",
    "GcpCredentials": "GcsBucket(bucket=..., gcp_credentials=...)",
}


def install_hint(slug: str) -> str | None:
    """How to install the package of block type `slug`; None if it is not one of these."""
    extra = EXTRAS.get(slug)
    return None if extra is None else (
        f"block type {slug!r} needs prefect-{extra}: pip install 'prefect-tune[{extra}]'"
    )


def _kind(obj: object) -> str | None:
    """The prefect-aws/prefect-gcp class `obj` is an instance of (subclasses included),
    as "<package>.<class name>"; None for anything else."""
    for cls in type(obj).__mro__:
        package = cls.__module__.split(".", 1)[0]
        if package in _PACKAGES:
            return f"{package}.{cls.__name__}"
    return None


def bucket_storage(block: object) -> Storage | None:
    """The storage of an S3Bucket or GcsBucket block: s3://<bucket_name>/<bucket_folder>
    or gs://<bucket>/<bucket_folder>, with the block's credentials. None for any other
    type but the credentials blocks of prefect-aws and prefect-gcp.

    Raises:
        ConfigError: the bucket or folder is not usable, the credentials are incomplete,
            or `block` is a credentials block (which names no bucket).
    """
    kind = _kind(block)
    if kind is None:
        return None
    name = kind.split(".", 1)[1]
    if name == "S3Bucket":
        url = _url("s3", "S3Bucket(bucket_name={!r})", getattr(block, "bucket_name", None),
                   getattr(block, "bucket_folder", ""))
        return resolve_storage(url, _s3_options(getattr(block, "credentials", None)))
    if name == "GcsBucket":
        url = _url("gs", "GcsBucket(bucket={!r})", getattr(block, "bucket", None),
                   getattr(block, "bucket_folder", ""))
        return resolve_storage(url, _gcs_options(getattr(block, "gcp_credentials", None)))
    if name in _CREDENTIALS:
        raise ConfigError(
            f"storage_block is a {name} block: it holds credentials but names no bucket; "
            f"use {_CREDENTIALS[name]} with these credentials"
        )
    return None


def _url(scheme: str, field: str, bucket: object, folder: object) -> str:
    """scheme://bucket/folder, the folder without empty segments; `field` names the
    bucket in errors ("S3Bucket(bucket_name={!r})")."""
    if not isinstance(bucket, str) or not bucket or any(
            c in "/\\:" or c.isspace() for c in bucket):
        raise ConfigError(
            f"{field.format(bucket)} is not a bucket name: give the bare name, e.g. "
            "'my-bucket', and any folder in it as bucket_folder"
        )
    if not isinstance(folder, str):
        raise ConfigError(f"bucket_folder={folder!r} must be a string, e.g. 'sweeps'")
    parts = [part for part in folder.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise ConfigError(
            f"bucket_folder={folder!r} has '.' or '..' in it: give a folder inside the "
            "bucket, e.g. 'team/sweeps'"
        )
    return "/".join([f"{scheme}://{bucket}", *parts])


def _secret(value: Any) -> Any:
    """The plain value of a pydantic secret (None stays None)."""
    return None if value is None else value.get_secret_value()


def _s3_options(credentials: object) -> dict[str, Any]:
    """s3fs options of AwsCredentials or MinIOCredentials (none: the default chain)."""
    if credentials is None:
        return {}
    kind = _kind(credentials)
    options: dict[str, Any]
    if kind == "prefect_aws.AwsCredentials":
        if getattr(credentials, "assume_role_arn", None):
            raise ConfigError(
                "AwsCredentials(assume_role_arn=...) is not supported for storage: a sweep "
                "outlives the role's temporary credentials. Use a profile that assumes the "
                "role (role_arn in ~/.aws/config) as profile_name instead"
            )
        options = {
            "key": getattr(credentials, "aws_access_key_id", None),
            "secret": _secret(getattr(credentials, "aws_secret_access_key", None)),
            "token": getattr(credentials, "aws_session_token", None),
            "profile": getattr(credentials, "profile_name", None),
        }
        if bool(options["key"]) != bool(options["secret"]):
            raise ConfigError(
                "AwsCredentials has only one of aws_access_key_id and aws_secret_access_key: "
                "set both, or neither for the default AWS credential chain"
            )
    elif kind == "prefect_aws.MinIOCredentials":
        options = {
            "key": getattr(credentials, "minio_root_user", None),
            "secret": _secret(getattr(credentials, "minio_root_password", None)),
        }
    else:
        raise ConfigError(
            f"S3Bucket credentials of type {type(credentials).__name__} are not supported: "
            "use AwsCredentials or MinIOCredentials"
        )
    params = getattr(credentials, "aws_client_parameters", None)
    verify = getattr(params, "verify_cert_path", None) or getattr(params, "verify", None)
    options["use_ssl"] = getattr(params, "use_ssl", True)
    options["client_kwargs"] = {key: value for key, value in {
        "region_name": getattr(credentials, "region_name", None),
        "endpoint_url": getattr(params, "endpoint_url", None),
        "api_version": getattr(params, "api_version", None),
        "verify": verify if verify is None or isinstance(verify, bool) else str(verify),
    }.items() if value is not None}
    config = dict(getattr(params, "config", None) or {})
    if config.pop("signature_version", None) == "unsigned":  # as prefect-aws: no signing
        options["anon"] = True
    if config:
        options["config_kwargs"] = config
    return {key: value for key, value in options.items() if value is not None}


def _gcs_options(credentials: object) -> dict[str, Any]:
    """gcsfs options of GcpCredentials (no service account: Google's default credentials,
    which must then be of `project` if one is set)."""
    if credentials is None:
        return {}
    if _kind(credentials) != "prefect_gcp.GcpCredentials":
        raise ConfigError(
            f"GcsBucket credentials of type {type(credentials).__name__} are not supported: "
            "use GcpCredentials"
        )
    info = _secret(getattr(credentials, "service_account_info", None))
    path = getattr(credentials, "service_account_file", None)
    # Without a service account GcpCredentials uses Google's default credentials, and so
    # does gcsfs with "google_default"; gcsfs's own chain would fall back to anonymous
    # access when they are missing, or belong to a project other than `project`.
    options: dict[str, Any] = {
        "token": dict(info) if info else str(path) if path else "google_default"}
    project = getattr(credentials, "project", None)
    if project:
        options["project"] = project
    # GcpCredentials has no endpoint: the GCS emulator is chosen by STORAGE_EMULATOR_HOST,
    # which gcsfs and google-cloud-storage (GcsBucket's own client) both honour. An
    # emulator takes no real credentials (a service account would first fetch a token
    # from Google), so it is reached anonymously; the endpoint is kept in the options so
    # that processes the storage is passed to use it too.
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator not in ("", "default"):
        options["token"] = "anon"
        options["endpoint_url"] = emulator if "://" in emulator else f"http://{emulator}"
    return options
