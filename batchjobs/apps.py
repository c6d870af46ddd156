from django.apps import AppConfig


class BatchjobsConfig(AppConfig):
    name = "batchjobs"
    verbose_name = "Batch jobs"

    def ready(self) -> None:
        # The controller's tick runs every active job's loop and tears finished ones down.
        from batchjobs.runner import batch_tick
        from workers.tick import register_tick_hook

        register_tick_hook(batch_tick)
        from batchjobs.image_jobs import image_jobs_tick

        register_tick_hook(image_jobs_tick)
        from batchjobs.triggers import triggers_tick

        register_tick_hook(triggers_tick)
