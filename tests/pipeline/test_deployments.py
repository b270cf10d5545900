"""The work-pool base job templates in deployments/: the real Prefect server accepts them, and
prefect-docker / prefect-kubernetes render them for a flow run (no docker engine or cluster):
GPU requests, image, shared memory, credentials from Prefect blocks / Kubernetes Secrets."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from phase2.infra.settings import PROJECT_ROOT

TEMPLATES = PROJECT_ROOT / "deployments"
POOL_TYPES = {"process.json": "process", "docker.json": "docker", "kubernetes.json": "kubernetes"}


def template(name: str) -> dict:
    return json.loads((TEMPLATES / name).read_text())


def flow_run():
    from prefect.client.schemas.objects import FlowRun

    return FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4(), deployment_id=uuid.uuid4())


def render(configuration_cls, name: str, values: dict, pool_type: str):
    """Template + job variables → the worker's job configuration, prepared for one flow run
    (block references resolved against the real server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import Flow, WorkPool

    async def go():
        async with get_client() as client:
            config = await configuration_cls.from_template_and_values(template(name), values, client=client)
        config.prepare_for_flow_run(
            flow_run(),
            flow=Flow(id=uuid.uuid4(), name="phase2"),
            work_pool=WorkPool(name=f"phase2-{pool_type}", type=pool_type),
            worker_name="worker-1",
        )
        return config

    return asyncio.run(go())


@pytest.fixture(scope="module")
def credential_blocks(local_stack):
    """The blocks the docker template reads its credentials from, with known test values."""
    from prefect.blocks.system import Secret
    from prefect_aws import AwsCredentials

    values = {
        "AWS_ACCESS_KEY_ID": "AKIA-test-id",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        "WANDB_API_KEY": "wandb-test-key",
    }
    AwsCredentials(
        aws_access_key_id=values["AWS_ACCESS_KEY_ID"], aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"]
    ).save("phase2-s3", overwrite=True)
    Secret(value=values["WANDB_API_KEY"]).save("phase2-wandb-api-key", overwrite=True)
    return values


@pytest.mark.parametrize("name", sorted(POOL_TYPES))
def test_server_accepts_template_as_pool(local_stack, name):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = f"tmpl-{POOL_TYPES[name]}-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        created = client.create_work_pool(
            WorkPoolCreate(name=pool, type=POOL_TYPES[name], base_job_template=template(name))
        )
        try:
            assert created.base_job_template == template(name)
        finally:
            client.delete_work_pool(pool)


def test_server_rejects_template_with_undeclared_variable(local_stack):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    broken = template("kubernetes.json")
    del broken["variables"]["properties"]["gpu_count"]
    with get_client(sync_client=True) as client, pytest.raises(Exception, match="gpu_count"):
        client.create_work_pool(
            WorkPoolCreate(name=f"tmpl-bad-{uuid.uuid4().hex[:6]}", type="kubernetes", base_job_template=broken)
        )


def test_docker_template_renders_gpus_image_and_block_credentials(credential_blocks):
    from docker.types import HostConfig
    from prefect_docker.worker import DockerWorkerJobConfiguration

    config = render(
        DockerWorkerJobConfiguration,
        "docker.json",
        {"image": "registry.example/phase2:1.2.3", "gpu_count": 2, "env": {"PHASE2_S3_BUCKET": "b"}},
        "docker",
    )
    assert config.image == "registry.example/phase2:1.2.3"
    for key, value in credential_blocks.items():  # resolved from the blocks, not written in the template
        assert config.env[key] == value
        assert value not in (TEMPLATES / "docker.json").read_text()
    assert config.env["PHASE2_S3_BUCKET"] == "b"  # deployment env merged over the template's
    assert config.env["PREFECT__FLOW_RUN_ID"]
    kwargs = config.container_create_kwargs
    assert kwargs["device_requests"] == [{"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}]
    # docker-py builds the engine's HostConfig from these (no engine needed).
    host = HostConfig(version="1.43", **kwargs)
    assert host["DeviceRequests"][0]["Count"] == 2 and host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert host["ShmSize"] == 8 * 1024**3
    all_gpus = render(DockerWorkerJobConfiguration, "docker.json", {}, "docker")
    assert all_gpus.container_create_kwargs["device_requests"][0]["count"] == -1


def test_kubernetes_template_renders_gpu_requests_image_and_secret_env(local_stack):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = render(
        KubernetesWorkerJobConfiguration,
        "kubernetes.json",
        {
            "image": "registry.example/phase2:1.2.3",
            "gpu_count": 2,
            "secret_name": "team-creds",
            "env": {"PHASE2_S3_BUCKET": "b"},
        },
        "kubernetes",
    )
    manifest = config.job_manifest
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert manifest["kind"] == "Job" and manifest["metadata"]["namespace"] == "phase2"
    assert manifest["spec"]["backoffLimit"] == 0  # a failed pod is a failed run; Prefect retries tasks
    assert container["image"] == "registry.example/phase2:1.2.3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["memory"] == "16Gi"
    assert container["envFrom"] == [{"secretRef": {"name": "team-creds"}}]  # keys stay in the cluster
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PHASE2_S3_BUCKET"] == "b" and env["PREFECT__FLOW_RUN_ID"]
    assert not {"AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"} & set(env)
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container["args"][:3] == ["prefect", "flow-run", "execute"], container["args"]
    # The manifest deserializes into the Kubernetes API's own V1Job model.
    from kubernetes_asyncio.client import ApiClient

    async def as_v1_job():
        async with ApiClient() as api:
            return api._ApiClient__deserialize(manifest, "V1Job")

    job = asyncio.run(as_v1_job())
    assert (
        job.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    )  # quantities are strings there
    assert job.spec.template.spec.containers[0].env_from[0].secret_ref.name == "team-creds"
