"""Run the HaloPSA sandbox in the foreground: `python manage.py halopsa_sandbox --port 8765 --dataset demo`."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the HaloPSA API simulator (issue 3) until Ctrl-C / SIGTERM."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        # Django reserves --version for its own version; the brief's CLI uses it for HaloPSA's.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument(
            "--dataset",
            default="demo",
            help='"tiny", "demo", "bench", or JSON sizes like \'{"customers": 50, "invoices": 500}\'',
        )
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--version", dest="halo_version", default=None, help="HaloPSA version to report")
        parser.add_argument("--rate-limit", type=int, default=300, help="requests per window; 0 disables")
        parser.add_argument("--rate-window", type=float, default=300)
        parser.add_argument("--token-lifetime", type=float, default=3600)
        parser.add_argument("--tenant", default=None)
        parser.add_argument(
            "--profile",
            default="default",
            help='HaloPSA variants to play: "default", "all", or comma-separated names '
            "(see halosandbox/shapes.py PROFILE_VARIANTS)",
        )
        parser.add_argument(
            "--clock-offset-minutes",
            type=int,
            default=None,
            help="with the local_clock variant: the instance's clock minus UTC (default -420)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from halosandbox import SandboxServer
        from halosandbox.shapes import DEFAULT_VERSION, parse_profile

        dataset: Any = options["dataset"]
        if dataset.strip().startswith("{"):
            try:
                dataset = json.loads(dataset)
            except ValueError as exc:
                raise CommandError(f"--dataset is not valid JSON: {exc}") from exc
        try:
            parse_profile(options["profile"], options["clock_offset_minutes"])
        except ValueError as exc:
            raise CommandError(f"--profile/--clock-offset-minutes: {exc}") from exc
        try:
            server = SandboxServer(
                dataset=dataset,
                seed=options["seed"],
                host=options["host"],
                port=options["port"],
                version=options["halo_version"] or DEFAULT_VERSION,
                token_lifetime=options["token_lifetime"],
                rate_limit=options["rate_limit"],
                rate_window=options["rate_window"],
                tenant=options["tenant"],
                profile=options["profile"],
                clock_offset_minutes=options["clock_offset_minutes"],
            )
            server.start()
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc

        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        info = server.describe()
        self.stdout.write(
            f"HaloPSA sandbox running at {server.url} (dataset {info['dataset']}, seed {info['seed']}, "
            f"version {info['version']}; {info['customers']} customers, {info['invoices']} invoices)"
        )
        profile = server.profile
        if profile.variants:
            self.stdout.write(f"profile: {profile.name} (clock offset {profile.clock_offset_minutes} min)")
        self.stdout.write(f"client_id: {server.client_id}")
        self.stdout.write(f"client_secret: {server.client_secret}")
        if server.tenant:
            self.stdout.write(f"tenant: {server.tenant}")
        self.stdout.write(f"control API: {server.url}/_sandbox/   (Ctrl-C to stop)")
        self.stdout.flush()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            server.stop()
            self.stdout.write("HaloPSA sandbox stopped.")
