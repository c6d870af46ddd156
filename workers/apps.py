from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers and hosts"

    def ready(self) -> None:
        # Docker hosts are probed, and orphan containers swept, from the controller's tick.
        from workers.controller import register_tick_hook
        from workers.hosts import hosts_tick

        register_tick_hook(hosts_tick)
