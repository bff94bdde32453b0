"""Serve the model over HTTP as a Ray Serve application: a REST API and a web page.

Open the printed address in a browser: drop an image, name its category, and see the anomaly map
over it (with the colour scale and the 0.5 decision threshold), the answer, and a chat for
follow-up questions about the same image. Programs POST to /v1/inspect (docs/serving.md):

  curl -F image=@part.png -F category=bottle http://127.0.0.1:8000/v1/inspect

The model is resolved once, here, then every replica loads it once. Requests that arrive within
--batch-wait-ms of each other go through the model together (up to --max-batch-size). It starts
a local Ray, or joins RAY_ADDRESS (so it runs under `ray job submit` too), and serves until
Ctrl-C, which removes the application.

examples:
  python -m pipeline serve                                # the champion of runs/demo's registry
  python -m pipeline serve --model runs/demo/train --references-dir runs/demo/data
  python -m pipeline serve --host 0.0.0.0 --port 8080 --replicas 2 --device cuda --token-file ~/.token
"""

import argparse

from pipeline.model_ref import add_model_arguments

HELP = "serve the model as a REST API and a web page on Ray Serve (until Ctrl-C)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="model replicas, each its own process (default 1)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where replicas run the model (default auto: one GPU each when the Ray cluster has GPUs)",
    )
    parser.add_argument(
        "--cpus-per-replica",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs Ray reserves for each replica (default 1)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=4,
        metavar="N",
        help="most requests one model call takes together (default 4)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=20.0,
        metavar="MS",
        help="how long a request waits for others to batch with (default 20)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=10.0,
        metavar="MB",
        help="largest request (image and references together); larger ones get 413 (default 10)",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=32,
        metavar="N",
        help="requests each HTTP proxy holds waiting for a replica; more get 503 with Retry-After at once "
        "(default 32; keep it above replicas x 2 x --max-batch-size)",
    )
    parser.add_argument(
        "--references-dir",
        metavar="DIR",
        help="normal images per category (DIR/<category>/train/good/ or DIR/<category>/): a request "
        "without references of its own gets the few-shot map from them (a model retrained with feedback: "
        "name its recorded dataset, and its recorded feedback folder's normals are the cover)",
    )
    parser.add_argument(
        "--feedback-dir",
        metavar="DIR",
        help="keep POST /v1/feedback verdicts here (the page's Mark normal / Mark defect); confirmed "
        "normals join their category's memory bank at the next request (same layout as `pipeline feedback`)",
    )
    parser.add_argument(
        "--bank-budget",
        type=int,
        metavar="N",
        help="patches per layer of each memory bank (default: the checkpoint's memory_bank.max_patches)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="require 'Authorization: Bearer <token>' on the API, the token being FILE's first line "
        "(default: $ANOMALYGPT_TOKEN if set, else no token: anyone who reaches the port may use it)",
    )


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    import sys
    import time

    from pipeline.serve.options import ServeSettings, resolve_options

    settings = ServeSettings(
        model=args.model,
        store=args.store,
        device=args.device,
        replicas=args.replicas,
        cpus_per_replica=args.cpus_per_replica,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_upload_mb=args.max_upload_mb,
        max_queued_requests=args.max_queued,
        references_dir=args.references_dir,
        feedback_dir=args.feedback_dir,
        token_file=args.token_file,
        bank_budget=args.bank_budget,
    )
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        _check_port_free(args.host, args.port)
    options = resolve_options(settings)  # the model first, then Ray (local, or RAY_ADDRESS)

    from ray import serve

    from pipeline.serve.app import APP_NAME, build_app

    serve.start(http_options={"host": args.host, "port": args.port})
    print(f"starting {options.settings.replicas} replica(s) of {options.checkpoint} ...", file=sys.stderr)
    if options.cover_dir:
        print(
            f"references: {options.settings.references_dir}, with the confirmed normals of "
            f"{options.cover_dir} (the model's retraining feedback) as cover",
            file=sys.stderr,
        )
    serve.run(build_app(options), name=APP_NAME, route_prefix="/")
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"serving {args.model} on {options.device} at http://{shown}:{args.port}/", flush=True)
    if options.token_sha256 is not None:
        print("the API needs 'Authorization: Bearer <token>' (the page asks for it)", file=sys.stderr)
    elif args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: no token and --host {args.host}: anyone who reaches port {args.port} can use the "
            "API and add feedback (serve --token-file FILE; docs/serving.md 'Security')",
            file=sys.stderr,
        )
    from pipeline.serve.metrics import metrics_address

    metrics = metrics_address()
    print(f"Prometheus metrics ({metrics['prefix']}*): {metrics['url']} (each node's; /healthz names it)")
    print("Ctrl-C stops it", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `ray job stop` and `kill` stop it as Ctrl-C does
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr, flush=True)
    finally:
        serve.delete(APP_NAME)
        if local:
            serve.shutdown()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int) -> None:
    """A local Serve cannot bind a busy port and retries without saying so: fail at once instead."""
    import socket

    from pipeline.core.errors import UnavailableError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UnavailableError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port or --host"
            ) from exc
