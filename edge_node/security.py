"""TLS and bearer tokens on every link, written once for both servers and both SDKs.

Servers (``edge-node serve``, ``moe2 serve``) take a certificate and key (TLS), optionally a
client CA (mutual TLS), and a token file (or an environment variable; never a command-line value,
which any user can read in ``ps``). A server interceptor checks ``authorization: Bearer <token>``
metadata in constant time (``hmac.compare_digest``) before the request message is even parsed:
no or a wrong token is UNAUTHENTICATED. Fleet-changing RPCs need a separate admin token; a
client token gets PERMISSION_DENIED there. ``grpc.health.v1`` stays open (probes need it).

A server bound to anything but loopback refuses to start without TLS and a token unless it is
told ``--insecure`` (then it logs a warning). Reflection is on for loopback binds only unless
asked for.

Clients (both SDKs, the CLI tools, the orchestrator reaching its nodes) take a CA, an optional
client certificate and key, and a token, and open their channel with :func:`open_channel`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

logger = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "Bearer "
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods reachable without a token: health probes (load balancers, the orchestrator)."""

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class SecurityError(Exception):
    """A TLS or token set-up problem, as one line naming the flag or file."""


def read_secret(path: Path, flag: str) -> str:
    """A token from a file (surrounding whitespace stripped); SecurityError naming the flag."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SecurityError(f"{flag}: {path} does not exist") from None
    except OSError as err:
        raise SecurityError(f"{flag}: {path} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SecurityError(f"{flag}: {path} is not UTF-8 text") from None
    if not text:
        raise SecurityError(f"{flag}: {path} is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise SecurityError(f"{flag}: {path} must hold one token without spaces")
    return text


def read_pem(path: Path, flag: str) -> bytes:
    """A PEM file's bytes; SecurityError naming the flag when missing or not PEM."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecurityError(f"{flag}: {path} does not exist") from None
    except OSError as err:
        raise SecurityError(f"{flag}: {path} cannot be read: {err.strerror}") from None
    if b"-----BEGIN " not in data:
        raise SecurityError(f"{flag}: {path} is not a PEM file")
    return data


def token_from(path: Path | None, flag: str, env_var: str) -> str | None:
    """The token from ``flag``'s file, else from the environment variable, else None."""
    if path is not None:
        return read_secret(path, flag)
    value = os.environ.get(env_var, "").strip() if env_var else ""
    return value or None


def is_loopback(host: str) -> bool:
    """Whether every address host names is a loopback address (an unknown name is not)."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    if name == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(name, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


# -- servers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """How a server authenticates itself and its callers. The default is loopback plaintext."""

    certificate: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)  # secrets stay out of logs
    client_ca: bytes | None = None
    token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    insecure: bool = False
    reflection: bool | None = None

    @classmethod
    def load(
        cls,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
        token_file: Path | None = None,
        token_env: str = "",
        admin_token_file: Path | None = None,
        admin_token_env: str = "",
        insecure: bool = False,
        reflection: bool | None = None,
    ) -> ServerSecurity:
        """Read the files the flags name.

        Raises:
            SecurityError: a missing or unreadable file, a certificate without its key, or a
                client CA without server TLS; the message names the flag.
        """
        if (tls_cert is None) != (tls_key is None):
            raise SecurityError("--tls-cert and --tls-key: give both or neither")
        if tls_client_ca is not None and tls_cert is None:
            raise SecurityError("--tls-client-ca: needs --tls-cert and --tls-key")
        security = cls(
            certificate=read_pem(tls_cert, "--tls-cert") if tls_cert else None,
            private_key=read_pem(tls_key, "--tls-key") if tls_key else None,
            client_ca=read_pem(tls_client_ca, "--tls-client-ca") if tls_client_ca else None,
            token=token_from(token_file, "--token-file", token_env),
            admin_token=token_from(admin_token_file, "--admin-token-file", admin_token_env),
            insecure=insecure,
            reflection=reflection,
        )
        if (
            security.token is not None
            and security.admin_token is not None
            and hmac.compare_digest(security.token.encode(), security.admin_token.encode())
        ):
            raise SecurityError("--admin-token-file: must differ from the client token")
        return security

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self.certificate is not None

    @property
    def authenticates(self) -> bool:
        """Whether callers must present a token."""
        return self.token is not None or self.admin_token is not None

    def credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials (client certificates required when a client CA is set), or None."""
        if self.certificate is None or self.private_key is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def bind_refusal(self, host: str) -> str | None:
        """Why binding host is refused (non-loopback without TLS and a token), or None."""
        missing = self._missing(host)
        if missing is None or self.insecure:
            return None
        return (
            f"--host {host} is not loopback and the server has no {missing}; "
            "add them, or pass --insecure to serve the network unprotected"
        )

    def check_bind(self, host: str) -> None:
        """Refuse a non-loopback bind without TLS and a token unless insecure (then warn).

        Raises:
            SecurityError: naming ``--insecure``.
        """
        refusal = self.bind_refusal(host)
        if refusal is not None:
            raise SecurityError(refusal)
        missing = self._missing(host)
        if missing is not None:
            logger.warning(
                "serving %s without %s (--insecure): anyone on the network may call",
                host,
                missing,
            )

    def _missing(self, host: str) -> str | None:
        if is_loopback(host) or (self.tls and self.token is not None):
            return None
        return " and ".join(
            part
            for part, absent in (
                ("TLS (--tls-cert/--tls-key)", not self.tls),
                ("a token (--token-file)", self.token is None),
            )
            if absent
        )

    def reflection_enabled(self, host: str) -> bool:
        """Reflection as asked, else only on loopback binds."""
        return self.reflection if self.reflection is not None else is_loopback(host)

    def interceptors(self, admin_methods: Sequence[str] = ()) -> list[grpc.aio.ServerInterceptor]:
        """The token check, when the server has a token."""
        if not self.authenticates:
            return []
        return [TokenInterceptor(self, frozenset(admin_methods))]

    def token_refusal(
        self, presented: str | None, *, admin_rpc: bool, name: str
    ) -> tuple[grpc.StatusCode, str] | None:
        """The status and message refusing a caller's token, or None to let the call through.

        The one token rule (also for any other front end of the same server): client calls
        accept the client or the admin token, and are open when the server has no client
        token; admin calls accept only the admin token and refuse a valid client token with
        PERMISSION_DENIED (also when no admin token is configured: then nobody may change the
        fleet over the network). Comparisons are constant-time.
        """
        if not self.authenticates:
            return None
        offered = presented or ""
        admin = _matches(offered, self.admin_token)
        client = _matches(offered, self.token)
        if admin or (not admin_rpc and (client or self.token is None)):
            return None
        if admin_rpc and client:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{name}: needs the admin token; a client token may not change the fleet",
            )
        return grpc.StatusCode.UNAUTHENTICATED, f"{name}: missing or invalid token"


def _presented(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return text[len(BEARER_PREFIX) :] if text.startswith(BEARER_PREFIX) else ""
    return None


def _matches(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


def _refusing(
    handler: grpc.RpcMethodHandler[_Req, _Resp], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind that refuses without parsing the request."""

    async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    if handler.response_streaming:

        async def refuse_stream(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await refuse(context)
            yield  # pragma: no cover  # makes this an async generator; abort raised above

        behaviour: Callable[..., Any] = refuse_stream
    else:

        async def refuse_unary(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await refuse(context)

        behaviour = refuse_unary
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour)
    return grpc.unary_unary_rpc_method_handler(behaviour)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token (``ServerSecurity.token_refusal``) before the request is parsed.

    Health stays open; ``admin_methods`` are the fleet-changing RPCs.
    """

    def __init__(self, security: ServerSecurity, admin_methods: frozenset[str]) -> None:
        self._security = security
        self._admin_methods = admin_methods

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        presented = _presented(handler_call_details.invocation_metadata)
        refusal = self._security.token_refusal(
            presented, admin_rpc=method in self._admin_methods, name=method.rsplit("/", 1)[-1]
        )
        if refusal is None:
            return handler
        logger.info(
            "%s -> %s (token %s)",
            method,
            refusal[0].name,
            "absent" if presented is None else "rejected",
        )
        refused: grpc.RpcMethodHandler[_Req, _Resp] = _refusing(handler, *refusal)
        return refused


# -- clients ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """How a client reaches a server: TLS (with a CA and maybe a client certificate), a token."""

    tls: bool = False
    ca: bytes | None = None
    certificate: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)  # secrets stay out of logs
    token: str | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        *,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        token_file: Path | None = None,
        token_env: str = "",
        names: tuple[str, str, str, str] = ("--tls-ca", "--tls-cert", "--tls-key", "--token-file"),
    ) -> ClientSecurity:
        """Read the files; TLS is on when a CA or a client certificate is given.

        ``names`` are what errors call the four inputs (flags, or cluster-file keys).

        Raises:
            SecurityError: a missing or unreadable file, a certificate without its key.
        """
        ca_name, cert_name, key_name, token_name = names
        if (tls_cert is None) != (tls_key is None):
            raise SecurityError(f"{cert_name} and {key_name}: give both or neither")
        return cls(
            tls=tls_ca is not None or tls_cert is not None,
            ca=read_pem(tls_ca, ca_name) if tls_ca else None,
            certificate=read_pem(tls_cert, cert_name) if tls_cert else None,
            private_key=read_pem(tls_key, key_name) if tls_key else None,
            token=token_from(token_file, token_name, token_env),
        )


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(AUTHORIZATION_KEY, BEARER_PREFIX + token)
    replaced: grpc.aio.ClientCallDetails = details._replace(metadata=metadata)  # type: ignore[attr-defined]
    return replaced


class _UnaryUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)


class _UnaryStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)


class _StreamUnaryToken(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._token), request_iterator)


class _StreamStreamToken(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._token), request_iterator)


def token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call kind (grpc.aio files each under one kind only)."""
    return [
        _UnaryUnaryToken(token),
        _UnaryStreamToken(token),
        _StreamUnaryToken(token),
        _StreamStreamToken(token),
    ]


def open_channel(
    target: str,
    security: ClientSecurity | None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel to target: TLS when security says so, with the token on every call."""
    interceptors = token_interceptors(security.token) if security and security.token else None
    if security is not None and security.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=security.ca,
            private_key=security.private_key,
            certificate_chain=security.certificate,
        )
        return grpc.aio.secure_channel(
            target, credentials, options=list(options), interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
