from django.apps import AppConfig


class EndpointsConfig(AppConfig):
    name = "endpoints"
    verbose_name = "Model endpoints"

    def ready(self):
        from endpoints.callbacks import drain
        from workers.tick import register_tick_hook

        register_tick_hook(drain)
