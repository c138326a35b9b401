"""Re-encrypt stored partner secrets with the newest FIELD_ENCRYPTION_KEYS key (see docs/deploy.md)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from integrations.services.field_keys import field_keys_rotate


class Command(BaseCommand):
    help = "Re-encrypt every encrypted field with the first (newest) key in FIELD_ENCRYPTION_KEYS."

    def handle(self, *args, **options):
        result = field_keys_rotate()
        self.stdout.write(
            f"Re-encrypted {result.rotated} value(s) with the newest key"
            + (
                f"; {result.skipped_changed} changed meanwhile (already written with the newest key)"
                if result.skipped_changed
                else ""
            )
            + "."
        )
        if result.undecryptable:
            raise CommandError(
                f"{len(result.undecryptable)} value(s) could not be decrypted with any configured key "
                f"(keep the key they were written with in FIELD_ENCRYPTION_KEYS): " + ", ".join(result.undecryptable)
            )
