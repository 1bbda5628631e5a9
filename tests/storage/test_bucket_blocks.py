"""prefect-aws's S3Bucket and prefect-gcp's GcsBucket as storage_block: instances and saved
references, on the session's moto S3 server and GCS emulator; their credentials reach the
filesystem and nothing else; bad blocks are clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, cast

import gcsfs
import pandas as pd
import pytest
import s3fs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters
from prefect_gcp import GcpCredentials, GcsBucket
from pydantic import SecretStr

from prefect_tune.flows import Tuner, grid_search
from prefect_tune.storage import Checkpoint, ConfigError, RunConfig, storage_from_block
from prefect_tune.tasks import report

from ..conftest import SECRET, drain_prefect_workers, gcs_options, s3_options

pytestmark = pytest.mark.usefixtures("prefect_server")


def trainer(config: dict[str, Any]) -> None:
    report({"loss": config["x"]}, checkpoint=Checkpoint.from_dict({"x": config["x"]}))
    if config["x"] > 1.5:
        raise RuntimeError("trial failure for the record")


def sweep(name: str, storage_block: Any) -> Any:
    return Tuner(trainer, param_space={"x": grid_search([1.0, 2.0])},
                 run_config=RunConfig(name=name, storage_block=storage_block)).fit()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_bucket(endpoint: str) -> str:
    bucket = unique("bkt")
    s3fs.S3FileSystem(**s3_options(endpoint)).mkdir(bucket)
    return bucket


def aws_credentials(endpoint: str, session_token: str | None = None) -> AwsCredentials:
    """Credentials for the moto server; the secret key is the recognisable SECRET."""
    return AwsCredentials(
        aws_access_key_id="testing", aws_secret_access_key=SecretStr(SECRET),
        aws_session_token=session_token, region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )


@pytest.fixture(scope="module")
def service_account() -> dict[str, str]:
    """A service account key as GCP issues it (a real RSA key, so that GcpCredentials
    accepts it); its key id is the recognisable SECRET."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {
        "type": "service_account", "project_id": "test", "private_key_id": SECRET,
        "private_key": pem, "client_email": "sweeps@test.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    }


@pytest.fixture
def gcs_emulator(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The GCS emulator, chosen as gcsfs and google-cloud-storage choose one."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    return gcs_endpoint


def secrets_in(data: bytes, service_account: dict[str, str] | None = None) -> list[str]:
    """Which secrets `data` holds: SECRET, or a line of the service account's key."""
    found = [SECRET] if SECRET.encode() in data else []
    if service_account is not None:
        found += [line for line in service_account["private_key"].splitlines()[1:-1]
                  if line.encode() in data]
    return found


def assert_no_secret_in_runs(names: list[str], extra: str | None = None) -> None:
    """No flow run named in `names` has a secret in its parameters, logs or artifacts."""
    drain_prefect_workers()
    secrets = [SECRET] + ([extra] if extra else [])
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)))
        assert sorted(r.name for r in runs) == sorted(names)
        recorded = [json.dumps([r.parameters for r in runs], default=str)]
        for run in runs:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            assert logs
            recorded += [log.message for log in logs]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs])))
        assert artifacts
        recorded.append(json.dumps([a.data for a in artifacts], default=str))
    assert not [text for text in recorded for secret in secrets if secret in text]


def test_s3_bucket_instance_holds_a_sweep_under_its_folder(moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    # prefect-aws keeps the session token in a plain (not secret) field: it must not leak
    # either.
    block = S3Bucket(bucket_name=bucket, bucket_folder="/team/sweeps/",
                     credentials=aws_credentials(moto_endpoint, f"token-{SECRET}"))
    name = unique("s3b")

    grid = sweep(name, block)

    assert grid.experiment_path == f"s3://{bucket}/team/sweeps/{name}"
    assert grid.num_terminated == 1 and grid.num_errors == 1
    assert [r.checkpoint.to_dict() for r in grid if r.checkpoint] == [{"x": 1.0}, {"x": 2.0}]
    fs = s3fs.S3FileSystem(**s3_options(moto_endpoint))
    table = pd.read_csv(fs.open(f"{bucket}/team/sweeps/{name}/results.csv"))
    assert sorted(table["loss"]) == [1.0, 2.0]
    files = fs.find(bucket)
    assert any(f.endswith("error.txt") for f in files)
    assert {path: secrets_in(fs.cat_file(path)) for path in files} == {f: [] for f in files}
    assert_no_secret_in_runs([name])


def test_saved_s3_bucket_with_saved_credentials_by_reference(moto_endpoint: str) -> None:
    """"s3-bucket/<name>" is loaded through the Prefect API, with its credentials saved
    as a block of their own; neither saved document shows the secret."""
    bucket = new_bucket(moto_endpoint)
    credentials_name, bucket_name, name = unique("aws"), unique("s3"), unique("s3ref")
    aws_credentials(moto_endpoint).save(credentials_name)
    S3Bucket(bucket_name=bucket, bucket_folder="runs",
             credentials=cast(AwsCredentials, AwsCredentials.load(credentials_name))
             ).save(bucket_name)

    grid = sweep(name, f"s3-bucket/{bucket_name}")

    assert grid.experiment_path == f"s3://{bucket}/runs/{name}"
    fs = s3fs.S3FileSystem(**s3_options(moto_endpoint))
    assert fs.exists(f"{bucket}/runs/{name}/results.csv")
    files = fs.find(bucket)
    assert {path: secrets_in(fs.cat_file(path)) for path in files} == {f: [] for f in files}
    assert_no_secret_in_runs([name])
    with get_client(sync_client=True) as client:
        documents = [client.read_block_document_by_name(n, slug, include_secrets=False)
                     for n, slug in ((credentials_name, "aws-credentials"),
                                     (bucket_name, "s3-bucket"))]
    assert SECRET not in json.dumps([d.data for d in documents], default=str)


def test_s3_bucket_with_minio_credentials(moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    storage = storage_from_block(S3Bucket(bucket_name=bucket, credentials=MinIOCredentials(
        minio_root_user="testing", minio_root_password=SecretStr(SECRET),
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint))))
    assert storage.url == f"s3://{bucket}"
    storage.write_bytes(storage.join("a.txt"), b"ok")
    assert s3fs.S3FileSystem(**s3_options(moto_endpoint)).cat_file(f"{bucket}/a.txt") == b"ok"


def test_aws_credentials_fields_become_s3fs_options() -> None:
    """Every AwsCredentials field that s3fs has a place for lands there; no field
    means boto's default credential chain (no key of ours)."""
    block = S3Bucket(bucket_name="b", credentials=AwsCredentials(
        aws_access_key_id="AKIA", aws_secret_access_key=SecretStr(SECRET), aws_session_token="tok",
        region_name="eu-west-1", profile_name="team",
        aws_client_parameters=AwsClientParameters(
            endpoint_url="https://s3.example.com", use_ssl=False, verify=False,
            api_version="2006-03-01",
            config={"retries": {"max_attempts": 3}, "signature_version": "s3v4"}),
    ))
    fs = storage_from_block(block).fs
    assert (fs.key, fs.secret, fs.token, fs.use_ssl) == ("AKIA", SECRET, "tok", False)
    assert fs.kwargs == {"profile": "team"}
    assert fs.client_kwargs == {"region_name": "eu-west-1", "api_version": "2006-03-01",
                                "endpoint_url": "https://s3.example.com", "verify": False}
    assert fs.config_kwargs == {"retries": {"max_attempts": 3}}

    default = storage_from_block(S3Bucket(bucket_name="b", credentials=AwsCredentials()))
    assert (default.fs.key, default.fs.secret, default.fs.token) == (None, None, None)
    assert default.fs.client_kwargs == {} and not default.fs.anon
    unsigned = storage_from_block(S3Bucket(bucket_name="b", credentials=AwsCredentials(
        aws_client_parameters=AwsClientParameters(config={"signature_version": "unsigned"}))))
    assert unsigned.fs.anon


def test_gcs_bucket_instance_holds_a_sweep_under_its_folder(
    gcs_emulator: str, service_account: dict[str, str]
) -> None:
    folder, name = unique("gcsb"), unique("gcs")
    block = GcsBucket(bucket="sweeps", bucket_folder=folder, gcp_credentials=GcpCredentials(
        service_account_info=service_account, project="test"))

    grid = sweep(name, block)

    assert grid.experiment_path == f"gs://sweeps/{folder}/{name}"
    assert [r.checkpoint.to_dict() for r in grid if r.checkpoint] == [{"x": 1.0}, {"x": 2.0}]
    fs = gcsfs.GCSFileSystem(**gcs_options(gcs_emulator))
    table = pd.read_csv(fs.open(f"sweeps/{folder}/{name}/results.csv"))
    assert sorted(table["loss"]) == [1.0, 2.0]
    files = fs.find(f"sweeps/{folder}")
    assert any(f.endswith("error.txt") for f in files)
    assert {path: secrets_in(fs.cat_file(path), service_account) for path in files} == {
        f: [] for f in files}
    assert_no_secret_in_runs([name], service_account["private_key"].splitlines()[1])


def test_saved_gcs_bucket_by_reference(gcs_emulator: str, service_account: dict[str, str]) -> None:
    block_name, folder, name = unique("gcs"), unique("ref"), unique("gcsref")
    GcsBucket(bucket="sweeps", bucket_folder=folder, gcp_credentials=GcpCredentials(
        service_account_info=service_account, project="test")).save(block_name)

    grid = sweep(name, f"gcs-bucket/{block_name}")

    assert grid.experiment_path == f"gs://sweeps/{folder}/{name}"
    fs = gcsfs.GCSFileSystem(**gcs_options(gcs_emulator))
    assert fs.exists(f"sweeps/{folder}/{name}/results.csv")


def test_gcp_credentials_become_gcsfs_options(
    service_account: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Away from an emulator the service account (info or file) is gcsfs's token and the
    project its project; without one, Google's default credentials, of that project."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(service_account))
    email = service_account["client_email"]
    for credentials in (GcpCredentials(service_account_info=service_account, project="p1"),
                        GcpCredentials(service_account_file=key_file, project="p1")):
        fs = storage_from_block(GcsBucket(bucket="b", gcp_credentials=credentials)).fs
        assert fs.project == "p1"
        assert fs.credentials.credentials.service_account_email == email

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))  # the default chain
    storage = storage_from_block(GcsBucket(bucket="b", bucket_folder="f",
                                           gcp_credentials=GcpCredentials(project="test")))
    assert storage.url == "gs://b/f"
    assert storage.fs.credentials.method == "google_default"
    assert storage.fs.credentials.credentials.service_account_email == email
    with pytest.raises(ConfigError, match="'other' does not match the google default project"):
        storage_from_block(GcsBucket(bucket="b", gcp_credentials=GcpCredentials(project="other")))


BAD_S3 = [
    ({"bucket_name": ""}, r"S3Bucket\(bucket_name=''\) is not a bucket name"),
    ({"bucket_name": "s3://b/x"}, r"bucket_name='s3://b/x'.*give the bare name"),
    ({"bucket_name": "b", "bucket_folder": "a/../../other"}, r"bucket_folder='a/../../other'"),
    ({"bucket_name": "b", "credentials": AwsCredentials(aws_access_key_id="AKIA")},
     "only one of aws_access_key_id and aws_secret_access_key"),
    ({"bucket_name": "b", "credentials": AwsCredentials(
        aws_access_key_id="AKIA", aws_secret_access_key=SecretStr(SECRET), assume_role_arn="arn:r")},
     r"assume_role_arn=\.\.\.\) is not supported.*profile_name"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_S3)
def test_bad_s3_bucket_is_a_clear_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        sweep(unique("bad"), S3Bucket(**fields))
    assert SECRET not in str(caught.value)


def test_blocks_that_name_no_bucket_are_clear_errors(service_account: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"GcsBucket\(bucket=''\) is not a bucket name"):
        storage_from_block(GcsBucket(bucket="", gcp_credentials=GcpCredentials(
            service_account_info=service_account, project="p")))
    with pytest.raises(ConfigError, match=r"AwsCredentials block.*names no bucket.*S3Bucket"):
        storage_from_block(AwsCredentials(aws_access_key_id="AKIA",
                                          aws_secret_access_key=SecretStr(SECRET)))
    supported = (r"is not supported: use TuneStorage, RemoteFileSystem, LocalFileSystem, "
                 r"S3Bucket \(prefect-aws\) or GcsBucket \(prefect-gcp\)")
    with pytest.raises(ConfigError, match=f"type AwsClientParameters {supported}"):
        storage_from_block(AwsClientParameters())
    with pytest.raises(ConfigError, match=f"type Secret {supported}") as caught:
        sweep(unique("bad"), Secret(value=SecretStr(SECRET)))
    assert SECRET not in str(caught.value)


def test_saved_bucket_without_its_package_names_the_extra(
    moto_endpoint: str, service_account: dict[str, str]
) -> None:
    """A process without prefect-aws / prefect-gcp is told which extra installs them."""
    s3_name, gcs_name = unique("s3"), unique("gcs")
    S3Bucket(bucket_name="b", credentials=aws_credentials(moto_endpoint)).save(s3_name)
    GcsBucket(bucket="b", gcp_credentials=GcpCredentials(
        service_account_info=service_account, project="p")).save(gcs_name)
    script = (
        "import sys\n"
        "sys.modules['prefect_aws'] = sys.modules['prefect_gcp'] = None  # not installed\n"
        "from prefect_tune.storage import ConfigError, storage_from_block\n"
        f"for ref in ('s3-bucket/{s3_name}', 'gcs-bucket/{gcs_name}'):\n"
        "    try:\n"
        "        storage_from_block(ref)\n"
        "    except ConfigError as exc:\n"
        "        print('error:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: storage_block='s3-bucket/{s3_name}' could not be loaded: "
        + "block type 's3-bucket' needs prefect-aws: pip install 'prefect-tune[aws]'",
        f"error: storage_block='gcs-bucket/{gcs_name}' could not be loaded: "
        + "block type 'gcs-bucket' needs prefect-gcp: pip install 'prefect-tune[gcp]'",
    ]
