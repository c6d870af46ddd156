from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers and hosts"

    def ready(self) -> None:
        # Docker hosts are probed, and orphan containers swept, from the controller's tick.
        from workers.hosts import hosts_tick
        from workers.runtimes.local import remove_leftover_cgroups, rotate_replica_logs
        from workers.tick import register_tick_hook

        register_tick_hook(hosts_tick)
        # Local replicas' logs are kept bounded, and cgroups of gone replicas removed.
        register_tick_hook(rotate_replica_logs)
        register_tick_hook(remove_leftover_cgroups)
        # Samples of every endpoint's counters for the dashboard's charts.
        from workers.metrics import sample_tick

        register_tick_hook(sample_tick)
