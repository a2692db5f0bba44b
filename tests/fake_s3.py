"""A fake S3 for tests: moto's S3 server on 127.0.0.1, with presigned-URL verification.

moto (5.x) stores and serves objects faithfully but does not check the signature or the
expiry of presigned URLs, so a small WSGI layer in front of moto's own application verifies
them the way S3 does (SigV4 query auth, recomputed with botocore's signer) and answers S3's
403 error documents. Everything else is moto.
"""

from __future__ import annotations

import hmac
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import boto3.session
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from reelgate.media.s3 import S3Storage

ACCESS_KEY = "reelgate-test-key"
SECRET_KEY = "reelgate-test-secret"
REGION = "us-east-1"
MIB = 1024 * 1024

# --- the fake S3: moto plus presigned-URL verification ---------------------------------

_S3_ERRORS = {
    "SignatureDoesNotMatch": "The request signature we calculated does not match the "
    "signature you provided. Check your key and signing method.",
    "AccessDenied": "Request has expired",
    "InvalidAccessKeyId": "The AWS Access Key Id you provided does not exist in our records.",
    "AuthorizationQueryParametersError": "Query-string authentication version 4 requires the "
    "X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
    "and X-Amz-Expires parameters.",
}


class PresignVerifier:
    """WSGI middleware: refuse presigned requests whose signature or expiry is wrong."""

    def __init__(self, app: Any, secrets: dict[str, str]) -> None:
        self.app = app
        self.secrets = secrets

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        query = environ.get("QUERY_STRING", "")
        if "X-Amz-Signature=" in query:
            code = self._refusal(environ, query)
            if code is not None:
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{code}</Code><Message>{_S3_ERRORS[code]}</Message></Error>"
                ).encode()
                start_response(
                    "403 Forbidden",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                )
                return [body]
        return self.app(environ, start_response)

    def _refusal(self, environ: dict[str, Any], query: str) -> str | None:
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            access_key, _day, region, service, _ = params["X-Amz-Credential"].split("/")
            amz_date = params["X-Amz-Date"]
            expires = int(params["X-Amz-Expires"])
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            signature = params["X-Amz-Signature"]
        except (KeyError, ValueError):
            return "AuthorizationQueryParametersError"
        secret = self.secrets.get(access_key)
        if secret is None:
            return "InvalidAccessKeyId"
        # The path exactly as sent (still percent-encoded): S3 signs it unnormalised.
        raw_path = environ.get("RAW_URI", environ["PATH_INFO"]).split("?", 1)[0]
        unsigned = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
        host = environ["HTTP_HOST"]
        request = AWSRequest(
            method=environ["REQUEST_METHOD"],
            url=f"http://{host}{raw_path}?{unsigned}",
            headers={"host": host},
        )
        request.context["timestamp"] = amz_date
        auth = S3SigV4QueryAuth(Credentials(access_key, secret), service, region, expires)
        expected = auth.signature(
            auth.string_to_sign(request, auth.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, signature):
            return "SignatureDoesNotMatch"
        if datetime.now(UTC) > signed_at + timedelta(seconds=expires):
            return "AccessDenied"
        return None


ENV_ACCESS_KEY = "reelgate-env-key"
ENV_SECRET_KEY = "reelgate-env-secret"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    # What moto.server.ThreadedMotoServer does, with the verifier wrapped around the app.
    app = PresignVerifier(
        DomainDispatcherApplication(create_backend_app),
        {ACCESS_KEY: SECRET_KEY, ENV_ACCESS_KEY: ENV_SECRET_KEY},
    )
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint: str) -> Any:
    """A plain boto3 client, for looking at the bucket from outside the adapter."""
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    return session.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"reelgate-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


def make_s3(endpoint: str, url: str, **kwargs: Any) -> S3Storage:
    kwargs = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, **kwargs}
    return S3Storage(url, endpoint_url=endpoint, region=REGION, **kwargs)
