"""`manage.py sync_connection ID [--full] [--entity customers|invoices|pdfs]`

Runs a sync in the foreground, progress on stderr; the last stdout line is one JSON object
{"run_id", "state", "api_requests", "created", "updated", "unchanged", "failed"}. Exit status 1
when the run failed.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import Connection, SyncRun
from integrations.selectors import run_progress


class Command(BaseCommand):
    help = "Sync one HaloPSA connection now (incremental unless --full; --entity for one entity type)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("connection_id", type=int)
        parser.add_argument(
            "--full", action="store_true", help="Re-read everything and flag records deleted in HaloPSA."
        )
        parser.add_argument(
            "--entity", choices=["customers", "invoices", "pdfs"], help="Sync only this entity type (in full)."
        )

    def handle(self, *args, **options) -> None:
        from integrations.services.sync import LEASE_CONFLICT_MESSAGE, sync_execute

        connection = Connection.objects.filter(pk=options["connection_id"]).first()
        if connection is None:
            raise CommandError(f"Connection {options['connection_id']} does not exist.")
        if options["entity"]:
            scope, entity = SyncRun.Scope.ENTITY, options["entity"]
        else:
            scope, entity = (SyncRun.Scope.FULL if options["full"] else SyncRun.Scope.INCREMENTAL), ""
        run = SyncRun.objects.create(connection=connection, scope=scope, entity=entity, trigger=SyncRun.Trigger.CLI)
        self.stderr.write(f"Sync run {run.pk}: {run.get_scope_display()} of {connection}")

        def progress(current: SyncRun) -> None:
            # The dashboard's words ("Step 3 of 4: invoices, 300 of 1,200"): per step, so no total grows mid-run.
            self.stderr.write(
                f"  {run_progress(current)['progress_text']} "
                f"(created {current.created}, updated {current.updated}, unchanged {current.unchanged}, failed {current.failed})"
            )

        run = sync_execute(run=run, progress=progress)
        if run.message:
            self.stderr.write(run.message)
        if run.message == LEASE_CONFLICT_MESSAGE:
            self.stderr.write("Wait for the running sync to finish, then try again.")
        summary = {
            "run_id": run.pk,
            "state": run.state,
            "api_requests": run.api_requests,
            "created": run.created,
            "updated": run.updated,
            "unchanged": run.unchanged,
            "failed": run.failed,
        }
        self.stdout.write(json.dumps(summary))
        if run.state == SyncRun.State.FAILED:
            raise SystemExit(1)
