"""A research project's own credential on the embedded stack: one moto IAM user per project area that can list
and read `projects/<id>/` in the HDH's bucket and nothing else (the secure processing environment's login).

Kept with the zones' users in `.eds*/secrets/s3_users.json` under `project:<id>` (moto forgets its users when it
stops, and so does that file). In production the SPE's operator issues this credential.
"""

from __future__ import annotations

import json

from eds_network.core.config import Network
from eds_network.dev import access
from eds_network.orchestration import grants


def area_policy(network: Network, project_id: str) -> dict:
    bucket = network.national.landing_zone.bucket
    prefix = f"projects/{project_id}/"
    return {"Version": "2012-10-17", "Statement": grants._area(bucket, prefix, grants.READ, prefix_conditions=False)}


def project_area_login(stack, network: Network, project_id: str) -> access.Login:
    """The project's read-only login (created on first use)."""
    import boto3

    users = access.s3_logins(stack)
    name = f"project:{project_id}"
    if name in users:
        return users[name]
    admin = users[access.ADMIN_S3_USER]
    iam = boto3.client(
        "iam",
        endpoint_url=stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=admin.login,
        aws_secret_access_key=admin.password,
    )
    login = access._iam_user(iam, f"eds-project-{project_id}", area_policy(network, project_id))
    path = access._s3_users_file(stack)
    data = json.loads(path.read_text())
    data[name] = vars(login)
    access._write_secret(path, data)
    return login
