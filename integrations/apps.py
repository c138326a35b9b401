from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "integrations"
    verbose_name = "HaloPSA integrations"

    def ready(self) -> None:
        # Registers the deploy checks (no schedules here: ready() runs during migrate too).
        from integrations import checks  # noqa: F401
