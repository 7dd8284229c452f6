"""Who the harness is to Shoal, and how it proves it.

- `Credentials` (user, password) and `ADMIN`: the one admin user of every
  cluster the harness forms (`ADMIN_USER`, `ADMIN_PASSWORD`). Nodes and
  `shoal up` get it in their environment (`child_env`), never on a command
  line: a command line is visible to every user of the machine.
- `CLUSTER_USER` and `read_cluster_secret()`: the cluster's own user, whose
  password is the 64 hex digits a node keeps in `<data dir>/cluster-secret`
  (what nodes prove to each other on the admin and data ports).
- `basic_authorization()`: an HTTP Basic `Authorization` value.
- `read_credentials_file()`: the `username=…` / `password=…` file `shoal up`
  keeps under its --dir.
- `child_env()`: a child process's environment.

Everything here is plain data and files: the REST and data-port helpers
that send credentials live in `harness.rest` and `harness.wire`.
"""

import base64
import os
from pathlib import Path
from typing import NamedTuple


class Credentials(NamedTuple):
    user: str
    password: str


# The admin of every cluster the harness forms (the name Couchbase and
# `shoal up` use by default; the password is long enough for any rule).
ADMIN_USER = "Administrator"
ADMIN_PASSWORD = "shoal-e2e-admin-password"
ADMIN = Credentials(ADMIN_USER, ADMIN_PASSWORD)

# The user a node logs in as to prove the cluster secret
# (node/src/access.rs `CLUSTER_USER`).
CLUSTER_USER = "@cluster"

# The file a node keeps its cluster secret in, inside its data dir
# (node/src/access.rs `SECRET_FILE`).
CLUSTER_SECRET_FILE = "cluster-secret"

# The credentials a child process would pick up from its environment: the
# harness sets the ones a child should have and removes the rest, so
# nothing leaks in from the shell that runs the tests.
CREDENTIAL_ENV = ("SHOAL_USERNAME", "SHOAL_PASSWORD", "SHOAL_BUCKET_PASSWORD")


def read_cluster_secret(data_dir):
    """The cluster secret a node keeps in `data_dir` (64 hex digits): its
    own until it joins a cluster, the cluster's after. A failure if there
    is none."""
    path = Path(data_dir) / CLUSTER_SECRET_FILE
    secret = path.read_text().strip()
    assert len(secret) == 64 and all(c in "0123456789abcdefABCDEF" for c in secret), (
        f"{path} does not hold 64 hex digits: {secret[:80]!r}"
    )
    return secret


def cluster_credentials(data_dir):
    """`CLUSTER_USER` with the secret kept in `data_dir`."""
    return Credentials(CLUSTER_USER, read_cluster_secret(data_dir))


def basic_authorization(credentials):
    """The `Authorization` header value of HTTP Basic `credentials`."""
    token = base64.b64encode(f"{credentials.user}:{credentials.password}".encode()).decode()
    return f"Basic {token}"


def read_credentials_file(path):
    """`Credentials` from a `username=…` / `password=…` file (the one
    `shoal up` writes); a failure unless it has both lines."""
    fields = {}
    for line in Path(path).read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            fields[name] = value
    assert "username" in fields and "password" in fields, f"{path} lacks a username= or password= line"
    return Credentials(fields["username"], fields["password"])


def child_env(credentials=None, bucket_password=None):
    """This process's environment without any Shoal credentials of its
    own, with `credentials` as SHOAL_USERNAME/SHOAL_PASSWORD and
    `bucket_password` as SHOAL_BUCKET_PASSWORD when given."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_ENV}
    if credentials is not None:
        env["SHOAL_USERNAME"], env["SHOAL_PASSWORD"] = credentials.user, credentials.password
    if bucket_password is not None:
        env["SHOAL_BUCKET_PASSWORD"] = bucket_password
    return env
